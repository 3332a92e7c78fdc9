//! Where every new connection of the engine goes: the one Redis of `single` mode,
//! or in `sentinel` mode the master the sentinels name at that moment. Connections
//! are made rarely (pool growth, a broken relay connection, a rebuilt subscriber),
//! so asking the sentinels each time costs little and follows a failover without a
//! separate watcher: once the old master is gone, the next connection finds the new.

use std::time::Duration;

use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{RedisError, RedisResult};

use super::target::{RedisTarget, TargetKind};

/// How long asking the sentinels for the master may take.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(3);

/// Hands out a client for the current primary.
pub(super) struct Source {
    kind: SourceKind,
}

enum SourceKind {
    Single(redis::Client),
    /// Locked: redis-rs's sentinel client remembers which sentinel answered.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
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
                    .set_redis_connection_info(settings.clone());
                SourceKind::Sentinel(tokio::sync::Mutex::new(SentinelClient::build(
                    sentinels.clone(),
                    master.as_str(),
                    Some(node),
                    SentinelServerType::Master,
                )?))
            }
        };
        Ok(Self { kind })
    }

    /// Whether the primary can move (sentinel mode): connections must then check
    /// that the server they reach is still the master.
    pub(super) fn follows_failovers(&self) -> bool {
        matches!(self.kind, SourceKind::Sentinel(_))
    }

    /// A client for the primary now.
    pub(super) async fn client(&self) -> RedisResult<redis::Client> {
        match &self.kind {
            SourceKind::Single(client) => Ok(client.clone()),
            SourceKind::Sentinel(sentinel) => {
                let ask = async { sentinel.lock().await.async_get_client().await };
                tokio::time::timeout(SENTINEL_TIMEOUT, ask)
                    .await
                    .map_err(|_| {
                        RedisError::from(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "no sentinel named the master in time",
                        ))
                    })?
            }
        }
    }
}

/// Whether the server behind `conn` is a master (`ROLE`), for connections that
/// must not keep talking to a demoted one after a failover.
pub(super) async fn is_master<C: redis::aio::ConnectionLike + Send>(conn: &mut C) -> bool {
    let role: RedisResult<Vec<redis::Value>> = redis::cmd("ROLE").query_async(conn).await;
    matches!(role.as_deref(), Ok([redis::Value::BulkString(kind), ..]) if kind == b"master")
}
