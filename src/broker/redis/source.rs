//! Where every new connection of the engine goes: the one Redis of `single` mode,
//! or in `sentinel` mode the master the sentinels name at that moment. Connections
//! are made rarely (pool growth, a broken relay connection, a rebuilt subscriber),
//! so asking the sentinels each time costs little and follows a failover without a
//! separate watcher: once the old master is gone, the next connection finds the new.
//!
//! In `cluster` mode there is no single primary: the node shares one cluster
//! connection (redis-rs routes every command to its slot's shard and follows
//! redirections and failovers), and the subscriber gets cluster connections of its
//! own that hand sharded messages over as RESP3 pushes.

use std::time::Duration;

use redis::aio::AsyncPushSender;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{ProtocolVersion, RedisError, RedisResult};

use super::target::{tcp_settings, RedisTarget, TargetKind};

/// How long asking the sentinels for the master may take.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long connecting to a cluster (its topology, a connection per shard) may take.
const CLUSTER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds of one cluster command, redirections and retries included, so a shard
/// that is gone turns into an error (`unavailable`) within this time, not a hang.
const CLUSTER_COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
const CLUSTER_CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// Retries of a command that met a moving or failing shard; with the wait between
/// them (up to [`CLUSTER_MAX_RETRY_WAIT_MS`]) they cover a replica's promotion.
const CLUSTER_RETRIES: u32 = 6;
const CLUSTER_MAX_RETRY_WAIT_MS: u64 = 800;

/// Hands out a client for the current primary.
pub(super) struct Source {
    kind: SourceKind,
}

enum SourceKind {
    Single(redis::Client),
    /// Locked: redis-rs's sentinel client remembers which sentinel answered.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    /// The seeds, and the node's shared command connection once made.
    Cluster {
        seeds: Vec<redis::ConnectionInfo>,
        shared: tokio::sync::Mutex<Option<ClusterConnection>>,
    },
}

impl Source {
    /// A source for `target`; nothing is dialled yet.
    pub(super) fn new(target: &RedisTarget) -> RedisResult<Self> {
        let kind = match &target.kind {
            TargetKind::Single(info) => SourceKind::Single(redis::Client::open(info.clone())?),
            TargetKind::Sentinel {
                sentinels,
                master,
                settings,
            } => {
                let node = SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(settings.clone())
                    .set_tcp_settings(tcp_settings());
                SourceKind::Sentinel(tokio::sync::Mutex::new(SentinelClient::build(
                    sentinels.clone(),
                    master.as_str(),
                    Some(node),
                    SentinelServerType::Master,
                )?))
            }
            TargetKind::Cluster(seeds) => {
                // Checked now, so a bad seed list fails at startup.
                cluster_builder(seeds).build()?;
                SourceKind::Cluster {
                    seeds: seeds.clone(),
                    shared: tokio::sync::Mutex::new(None),
                }
            }
        };
        Ok(Self { kind })
    }

    /// Whether the primary can move (sentinel mode): connections must then check
    /// that the server they reach is still the master.
    pub(super) fn follows_failovers(&self) -> bool {
        matches!(self.kind, SourceKind::Sentinel(_))
    }

    /// Whether this is a Redis Cluster (commands go through [`Source::cluster`]).
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.kind, SourceKind::Cluster { .. })
    }

    /// The node's shared cluster connection, made on first use (and again after a
    /// failed first attempt). Only in cluster mode.
    pub(super) async fn cluster(&self) -> RedisResult<ClusterConnection> {
        let SourceKind::Cluster { seeds, shared } = &self.kind else {
            return Err(not_a_cluster());
        };
        let mut shared = shared.lock().await;
        if let Some(conn) = shared.as_ref() {
            return Ok(conn.clone());
        }
        let client = cluster_builder(seeds).build()?;
        let conn = connect_cluster(&client).await?;
        *shared = Some(conn.clone());
        Ok(conn)
    }

    /// A new cluster connection (RESP3) that hands every push (sharded messages,
    /// subscription confirmations) to `pushes`: the subscriber's. Only in cluster mode.
    pub(super) async fn cluster_pubsub(
        &self,
        pushes: impl AsyncPushSender,
    ) -> RedisResult<ClusterConnection> {
        let SourceKind::Cluster { seeds, .. } = &self.kind else {
            return Err(not_a_cluster());
        };
        let client = cluster_builder(seeds)
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(pushes)
            .build()?;
        connect_cluster(&client).await
    }

    /// A client for the primary now (single and sentinel mode).
    pub(super) async fn client(&self) -> RedisResult<redis::Client> {
        match &self.kind {
            SourceKind::Single(client) => Ok(client.clone()),
            SourceKind::Sentinel(sentinel) => {
                let ask = async { sentinel.lock().await.async_get_client().await };
                within(
                    SENTINEL_TIMEOUT,
                    "no sentinel named the master in time",
                    ask,
                )
                .await
            }
            SourceKind::Cluster { .. } => Err(not_a_cluster()),
        }
    }
}

/// The settings every cluster connection of the node shares.
fn cluster_builder(seeds: &[redis::ConnectionInfo]) -> ClusterClientBuilder {
    ClusterClientBuilder::new(seeds.to_vec())
        .tcp_settings(tcp_settings())
        .connection_timeout(CLUSTER_CONNECTION_TIMEOUT)
        .response_timeout(CLUSTER_COMMAND_TIMEOUT)
        .overall_response_timeout(Some(CLUSTER_COMMAND_TIMEOUT))
        .retries(CLUSTER_RETRIES)
        .max_retry_wait(CLUSTER_MAX_RETRY_WAIT_MS)
        .min_retry_wait(50)
}

async fn connect_cluster(client: &ClusterClient) -> RedisResult<ClusterConnection> {
    let connect = client.get_async_connection();
    within(
        CLUSTER_CONNECT_TIMEOUT,
        "no cluster seed answered in time",
        connect,
    )
    .await
}

/// `work`, or a timeout error saying `what` when it takes longer than `bound`.
async fn within<T>(
    bound: Duration,
    what: &'static str,
    work: impl std::future::Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    tokio::time::timeout(bound, work)
        .await
        .map_err(|_| RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what)))?
}

fn not_a_cluster() -> RedisError {
    RedisError::from(std::io::Error::other(
        "not a cluster: this connection is for REDIS_MODE=cluster",
    ))
}

/// Whether the server behind `conn` is a master (`ROLE`), for connections that
/// must not keep talking to a demoted one after a failover.
pub(super) async fn is_master<C: redis::aio::ConnectionLike + Send>(conn: &mut C) -> bool {
    let role: RedisResult<Vec<redis::Value>> = redis::cmd("ROLE").query_async(conn).await;
    matches!(role.as_deref(), Ok([redis::Value::BulkString(kind), ..]) if kind == b"master")
}
