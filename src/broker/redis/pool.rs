//! The pool of command connections (joins, leaves, REST, upkeep): a deadpool
//! manager that dials the [`Source`]'s primary, so after a Sentinel failover new
//! connections go to the new master, and that on checkout checks a connection that
//! sat idle still answers (and, when the primary can move, is still the master: a
//! demoted master answers PING but refuses writes). A connection in steady use is
//! not checked: a PING per checkout doubled the round trips of every command (a
//! join makes several), and a connection that fails a command is taken out of the
//! pool instead (`RedisBroker::pooled`). On a Redis Cluster every pooled object is
//! a handle to the node's one cluster connection, which keeps its per-shard
//! connections healthy by itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use redis::{AsyncConnectionConfig, RedisError};

use super::conn::RedisConn;
use super::source::{self, Source};

/// A connection checked out less than this long ago is handed out unchecked: it
/// answered (or was taken out of the pool for failing) that recently.
const CHECK_WHEN_IDLE: Duration = Duration::from_secs(1);

/// The engine's pool of command connections.
pub(super) type CommandPool = managed::Pool<PrimaryManager>;

/// One pooled command connection (dereferences to a [`RedisConn`]).
pub(super) type Pooled = managed::Object<PrimaryManager>;

/// Makes and checks pooled connections to the primary.
pub(super) struct PrimaryManager {
    source: Arc<Source>,
    config: AsyncConnectionConfig,
    pings: AtomicU64,
}

impl PrimaryManager {
    pub(super) fn new(source: Arc<Source>, config: AsyncConnectionConfig) -> Self {
        Self {
            source,
            config,
            pings: AtomicU64::new(0),
        }
    }
}

impl managed::Manager for PrimaryManager {
    type Type = RedisConn;
    type Error = RedisError;

    async fn create(&self) -> Result<RedisConn, RedisError> {
        if self.source.is_cluster() {
            return Ok(RedisConn::Cluster(self.source.cluster().await?));
        }
        let client = self.source.client().await?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        Ok(RedisConn::Multiplexed(conn))
    }

    async fn recycle(&self, conn: &mut RedisConn, metrics: &Metrics) -> RecycleResult<RedisError> {
        if matches!(conn, RedisConn::Cluster(_)) {
            // A PING would go to every shard; the cluster connection repairs itself.
            return Ok(());
        }
        if metrics.last_used() < CHECK_WHEN_IDLE {
            return Ok(());
        }
        let nonce = self.pings.fetch_add(1, Ordering::Relaxed).to_string();
        let echoed: String = redis::cmd("PING").arg(&nonce).query_async(conn).await?;
        if echoed != nonce {
            return Err(RecycleError::message("PING answered out of turn"));
        }
        if self.source.follows_failovers() && !source::is_master(conn).await {
            return Err(RecycleError::message("no longer the master"));
        }
        Ok(())
    }
}
