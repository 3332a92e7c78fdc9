//! The data-plane connection: one multiplexed, auto-reconnecting connection for
//! every relay of the node. redis-rs reconnects it when the socket fails, but not
//! when Redis merely stops answering (a frozen proxy, a half-open TCP path): its
//! response timeout is treated as retryable. So a timeout here replaces the whole
//! connection, and the next relay dials afresh. When the primary can move
//! (Sentinel), any failure that says the server is gone or no longer the master
//! replaces it too, and the next relay dials whichever master the sentinels name.
//! On a Redis Cluster the relay uses the node's shared cluster connection, which
//! follows redirections, reconnects shards and refreshes its topology by itself.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisError;

use super::conn::RedisConn;
use super::source::Source;

/// The current relay connection and a generation number, so that of several
/// relays failing on the same dead connection only the first replaces it.
pub(super) struct RelayConn {
    source: Arc<Source>,
    config: ConnectionManagerConfig,
    /// `None` until the first relay, and after a failure that needs a new dial.
    current: RwLock<Option<(u64, ConnectionManager)>>,
    /// One dial at a time; the others wait for it and use its connection.
    dialling: tokio::sync::Mutex<u64>,
}

impl RelayConn {
    pub(super) fn new(source: Arc<Source>, config: ConnectionManagerConfig) -> Self {
        Self {
            source,
            config,
            current: RwLock::new(None),
            dialling: tokio::sync::Mutex::new(0),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Option<(u64, ConnectionManager)>> {
        // The pair is replaced whole under the write lock; a poisoned lock still holds a valid pair.
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A handle to the current connection (cheap: a shared sender) and its
    /// generation, dialling the primary first when there is none.
    pub(super) async fn get(&self) -> Result<(u64, RedisConn), RedisError> {
        if self.source.is_cluster() {
            return Ok((0, RedisConn::Cluster(self.source.cluster().await?)));
        }
        let (generation, conn) = self.get_managed().await?;
        Ok((generation, RedisConn::Managed(conn)))
    }

    async fn get_managed(&self) -> Result<(u64, ConnectionManager), RedisError> {
        if let Some(current) = self.read().clone() {
            return Ok(current);
        }
        let mut generation = self.dialling.lock().await;
        if let Some(current) = self.read().clone() {
            return Ok(current);
        }
        let client = self.source.client().await?;
        let conn = ConnectionManager::new_lazy_with_config(client, self.config.clone())?;
        *generation += 1;
        let fresh = (*generation, conn);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(fresh.clone());
        Ok(fresh)
    }

    /// Reports a failed command on generation `generation`; a timeout (or, when
    /// the primary can move, a lost or demoted server) drops the connection so the
    /// next relay dials afresh.
    pub(super) fn failed(&self, generation: u64, error: &RedisError) {
        if self.source.is_cluster() {
            return;
        }
        let moved = self.source.follows_failovers() && super::error::is_outage(error);
        if !error.is_timeout() && !moved {
            return;
        }
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            tracing::warn!(
                error = %error,
                "redis stopped answering on the relay connection; replacing it"
            );
            *current = None;
            crate::metrics::reconnected("relay");
        }
    }
}
