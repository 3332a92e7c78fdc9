//! The cap on connections that have not become WebSockets (yet). A slowloris
//! client opens connections and never finishes a request; refusing new connections
//! at the cap would let it lock everyone out, so the cap closes the OLDEST pending
//! connection instead: an attacker's stalled sockets are always older than a probe's
//! or a browser's fresh request, which therefore gets through.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

/// Every pending connection of a listener, oldest first.
#[derive(Debug)]
pub struct Pending {
    cap: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    /// Keyed by admission order, so the first entry is the oldest.
    open: BTreeMap<u64, CancellationToken>,
}

/// One pending connection's place under the cap, held for as long as hyper serves
/// it as HTTP; dropped when it is closed or handed off as a WebSocket.
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    evicted: CancellationToken,
    pending: Arc<Pending>,
}

impl Pending {
    /// At most `cap` pending connections.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            inner: Mutex::new(Inner::default()),
        })
    }

    /// Admits a new connection, evicting the oldest one if the cap is reached.
    pub fn admit(self: &Arc<Self>) -> Ticket {
        let evicted = CancellationToken::new();
        let mut inner = self.lock();
        while inner.open.len() >= self.cap {
            if let Some((_, oldest)) = inner.open.pop_first() {
                oldest.cancel();
                metrics::counter!(crate::metrics::HTTP_EVICTED).increment(1);
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.open.insert(id, evicted.clone());
        metrics::gauge!(crate::metrics::HTTP_PENDING).set(inner.open.len() as f64);
        Ticket {
            id,
            evicted,
            pending: self.clone(),
        }
    }

    /// Closes the oldest pending connection, if any (to free a file descriptor when
    /// `accept` runs out of them); whether there was one.
    pub fn evict_oldest(&self) -> bool {
        let mut inner = self.lock();
        let Some((_, oldest)) = inner.open.pop_first() else {
            return false;
        };
        oldest.cancel();
        metrics::counter!(crate::metrics::HTTP_EVICTED).increment(1);
        metrics::gauge!(crate::metrics::HTTP_PENDING).set(inner.open.len() as f64);
        true
    }

    /// Connections pending now.
    pub fn len(&self) -> usize {
        self.lock().open.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map stays consistent even if a holder panicked mid-way.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Ticket {
    /// Resolves when this connection was evicted to make room for a newer one.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.pending.lock();
        if inner.open.remove(&self.id).is_some() {
            metrics::gauge!(crate::metrics::HTTP_PENDING).set(inner.open.len() as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_is_evicted_and_tickets_free_their_place() {
        let pending = Pending::new(2);
        let first = pending.admit();
        let second = pending.admit();
        let third = pending.admit();
        assert!(first.evicted.is_cancelled(), "the oldest makes room");
        assert!(!second.evicted.is_cancelled() && !third.evicted.is_cancelled());
        assert_eq!(pending.len(), 2);
        drop(first);
        assert_eq!(pending.len(), 2, "an evicted ticket was already removed");
        drop(second);
        assert_eq!(pending.len(), 1);
        let fourth = pending.admit();
        assert!(!third.evicted.is_cancelled() && !fourth.evicted.is_cancelled());
        assert!(pending.evict_oldest());
        assert!(third.evicted.is_cancelled());
        drop((third, fourth));
        assert_eq!(pending.len(), 0);
        assert!(!pending.evict_oldest());
    }
}
