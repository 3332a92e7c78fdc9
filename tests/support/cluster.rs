//! The cluster fixture: one standalone node or a Redis plus nodes under a fresh
//! KEY_PREFIX, so that one test body runs on both engines; joining helpers.

use serde_json::Value;

use super::assert::{assert_user, user_joined};
use super::client::TestClient;
use super::node::TestNode;
use super::redis::RedisServer;
use super::util::{key_prefix, room_id};

/// Either one standalone node, or one RedisServer plus `n` nodes sharing a unique
/// KEY_PREFIX.
pub struct Cluster {
    // Nodes are declared first so that they are dropped before their Redis.
    nodes: Vec<TestNode>,
    redis: Option<RedisServer>,
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
            prefix,
        }
    }

    /// Node `i`. Standalone: the only node, whatever `i` is.
    pub fn node(&self, i: usize) -> &TestNode {
        match self.redis {
            None => &self.nodes[0],
            Some(_) => self.nodes.get(i).unwrap_or_else(|| {
                panic!("the cluster has {} nodes, no node({i})", self.nodes.len())
            }),
        }
    }

    pub fn is_redis(&self) -> bool {
        self.redis.is_some()
    }

    /// The cluster's Redis; panics on a standalone cluster.
    pub fn redis_server(&self) -> &RedisServer {
        self.redis.as_ref().expect("this cluster has no Redis")
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
