//! The cluster fixture: one standalone node, or a Redis (one server, or a private
//! Redis Cluster) plus nodes under a fresh KEY_PREFIX, so that one test body runs
//! on every engine and deployment; joining helpers.

use serde_json::Value;

use super::assert::{assert_user, user_joined};
use super::client::TestClient;
use super::key_store::KeyStore;
use super::node::TestNode;
use super::redis::RedisServer;
use super::redis_cluster::RedisCluster;
use super::util::{key_prefix, room_id};

/// Either one standalone node, or one RedisServer (or Redis Cluster) plus `n`
/// nodes sharing a unique KEY_PREFIX.
pub struct Cluster {
    // Nodes are declared first so that they are dropped before their Redis.
    nodes: Vec<TestNode>,
    redis: Option<RedisServer>,
    redis_cluster: Option<RedisCluster>,
    prefix: String,
}

impl Cluster {
    pub async fn standalone() -> Self {
        Self::standalone_with(&[]).await
    }

    pub async fn standalone_with(extra_env: &[(&str, &str)]) -> Self {
        let prefix = key_prefix();
        let node = TestNode::start(None, &prefix, extra_env).await;
        Self {
            nodes: vec![node],
            redis: None,
            redis_cluster: None,
            prefix,
        }
    }

    pub async fn redis(n: usize) -> Self {
        Self::redis_with(n, &[]).await
    }

    pub async fn redis_with(n: usize, extra_env: &[(&str, &str)]) -> Self {
        let redis = RedisServer::start();
        let prefix = key_prefix();
        let nodes = start_nodes(&redis, &prefix, n, extra_env).await;
        Self {
            nodes,
            redis: Some(redis),
            redis_cluster: None,
            prefix,
        }
    }

    /// `n` nodes in `REDIS_MODE=cluster` on a private 3-master Redis Cluster.
    pub async fn redis_cluster_with(n: usize, extra_env: &[(&str, &str)]) -> Self {
        let redis_cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0))
            .await
            .expect("start a Redis Cluster");
        let prefix = key_prefix();
        let nodes = start_cluster_nodes(&redis_cluster, &prefix, n, extra_env).await;
        Self {
            nodes,
            redis: None,
            redis_cluster: Some(redis_cluster),
            prefix,
        }
    }

    /// Node `i`. Standalone: the only node, whatever `i` is.
    pub fn node(&self, i: usize) -> &TestNode {
        if !self.is_redis() {
            return &self.nodes[0];
        }
        self.nodes
            .get(i)
            .unwrap_or_else(|| panic!("the cluster has {} nodes, no node({i})", self.nodes.len()))
    }

    /// Whether the nodes share a Redis (one server or a Redis Cluster).
    pub fn is_redis(&self) -> bool {
        self.redis.is_some() || self.redis_cluster.is_some()
    }

    /// Where the nodes' keys are, for layout and cleanup checks; panics on a
    /// standalone cluster.
    pub fn store(&self) -> &dyn KeyStore {
        match (&self.redis, &self.redis_cluster) {
            (Some(redis), _) => redis,
            (_, Some(redis_cluster)) => redis_cluster,
            _ => panic!("this cluster has no Redis"),
        }
    }

    /// The Redis Cluster under the nodes; panics unless there is one.
    pub fn redis_cluster(&self) -> &RedisCluster {
        self.redis_cluster
            .as_ref()
            .expect("this cluster has no Redis Cluster")
    }

    /// The cluster's Redis; panics on a standalone cluster.
    pub fn redis_server(&self) -> &RedisServer {
        self.redis.as_ref().expect("this cluster has no Redis")
    }

    /// Starts one more node on the same backing as the cluster's nodes (the same
    /// Redis or Redis Cluster, the same KEY_PREFIX) and waits until it is ready; the
    /// caller owns it. `extra_env` is the new node's own, as in [`TestNode::start`]
    /// (the cluster's `extra_env` is not repeated). Panics on a standalone cluster.
    pub async fn start_node(&self, extra_env: &[(&str, &str)]) -> TestNode {
        match (&self.redis, &self.redis_cluster) {
            (Some(redis), _) => TestNode::start(Some(redis), &self.prefix, extra_env).await,
            (_, Some(redis_cluster)) => {
                let mut nodes =
                    start_cluster_nodes(redis_cluster, &self.prefix, 1, extra_env).await;
                nodes.pop().expect("one node started")
            }
            _ => panic!("a standalone cluster has no backing to start another node on"),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `P room:{room}`
    pub fn room_key(&self, room: &str) -> String {
        format!("{}room:{{{room}}}", self.prefix)
    }

    /// `P user:{user}`
    pub fn user_key(&self, user: &str) -> String {
        format!("{}user:{{{user}}}", self.prefix)
    }
}

/// Starts `n` nodes on one Redis concurrently.
pub async fn start_nodes(
    redis: &RedisServer,
    prefix: &str,
    n: usize,
    extra_env: &[(&str, &str)],
) -> Vec<TestNode> {
    futures::future::join_all((0..n).map(|_| TestNode::start(Some(redis), prefix, extra_env))).await
}

/// Starts `n` nodes in cluster mode on `redis_cluster` concurrently.
pub async fn start_cluster_nodes(
    redis_cluster: &RedisCluster,
    prefix: &str,
    n: usize,
    extra_env: &[(&str, &str)],
) -> Vec<TestNode> {
    let owned = redis_cluster.node_env();
    let mut env: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend_from_slice(extra_env);
    futures::future::join_all((0..n).map(|_| TestNode::start(None, prefix, &env))).await
}

/// Connects `user` to `room` on `node` and returns the client and its own USER.
pub async fn join(node: &TestNode, room: &str, user: &str) -> (TestClient, Value) {
    let (client, frame) = TestClient::connect_join(node, room, user).await;
    let me = frame["payload"]["self"].clone();
    assert_user(&me, user, room);
    (client, me)
}

/// Connects alice on node 0 and bob on node 1 into a fresh room; alice has seen bob join.
pub async fn pair(c: &Cluster) -> (String, TestClient, Value, TestClient, Value) {
    let room = room_id();
    let (mut alice, alice_user) = join(c.node(0), &room, "alice").await;
    let (bob, bob_user) = join(c.node(1), &room, "bob").await;
    alice.expect_frame(&user_joined(&bob_user)).await;
    (room, alice, alice_user, bob, bob_user)
}
