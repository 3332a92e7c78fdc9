//! The data-plane connection: one multiplexed, auto-reconnecting connection for
//! every relay of the node. redis-rs reconnects it when the socket fails, but not
//! when Redis merely stops answering (a frozen proxy, a half-open TCP path): its
//! response timeout is treated as retryable. So a timeout here replaces the whole
//! connection, and the next relay dials afresh.

use std::sync::{RwLock, RwLockReadGuard};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisError;

/// The current relay connection and a generation number, so that of several
/// relays failing on the same dead connection only the first replaces it.
pub(super) struct RelayConn {
    client: redis::Client,
    config: ConnectionManagerConfig,
    current: RwLock<(u64, ConnectionManager)>,
}

impl RelayConn {
    pub(super) fn new(
        client: redis::Client,
        config: ConnectionManagerConfig,
    ) -> Result<Self, RedisError> {
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Self {
            client,
            config,
            current: RwLock::new((0, conn)),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, (u64, ConnectionManager)> {
        // The pair is replaced whole under the write lock; a poisoned lock still holds a valid pair.
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A handle to the current connection (cheap: a shared sender) and its generation.
    pub(super) fn get(&self) -> (u64, ConnectionManager) {
        let guard = self.read();
        (guard.0, guard.1.clone())
    }

    /// Reports a failed command on generation `generation`; a timeout replaces the connection.
    pub(super) fn failed(&self, generation: u64, error: &RedisError) {
        if !error.is_timeout() || self.read().0 != generation {
            return;
        }
        let Ok(fresh) =
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
        else {
            return;
        };
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.0 == generation {
            tracing::warn!("redis stopped answering on the relay connection; replacing it");
            *current = (generation + 1, fresh);
            crate::metrics::reconnected("relay");
        }
    }
}
