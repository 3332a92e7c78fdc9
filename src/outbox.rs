//! A connection's outbound queue and its close signal.
//!
//! Anyone may push frames (the subscriber dispatching deliveries, the session's own
//! reader answering errors) without blocking: the queue is bounded in bytes, and a
//! push that would overflow it closes the session as a slow consumer instead of
//! growing memory or stalling the pusher (PROTOCOL.md section 6, `MAX_QUEUE_BYTES`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Why the node ends a session; the table in `End::ending` (session/mod.rs) maps
/// each to its error frame, close code and `user_left` reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A newer session of the same user took over.
    Replaced,
    /// An administrator removed the user.
    Kicked,
    /// The outbound queue overflowed.
    SlowConsumer,
    /// The node is shutting down.
    Shutdown,
    /// No frame from the client for two ping intervals.
    Timeout,
    /// Frames dropped by the rate limit in 10 consecutive seconds.
    RateLimited,
    /// The cluster declared this node dead (it was paused past its heartbeat):
    /// its sessions must not live on; clients reconnect.
    NodeExpired,
    /// The member resumed on another connection: this one closes without a word.
    Resumed,
    /// Frames for this session were lost between Redis and the node and its
    /// mailbox no longer holds them: it closes rather than show the client a gap.
    Lost,
}

/// One frame on its way to the socket.
pub struct Outgoing {
    /// Final JSON text.
    pub text: String,
    /// When a relayed frame was published (Unix microseconds), for delivery latency.
    pub published_us: Option<u64>,
}

/// The sending side, cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Outgoing>,
    shared: Arc<Shared>,
}

struct Shared {
    queued: AtomicUsize,
    limit: usize,
    reason: OnceLock<CloseReason>,
    closed: CancellationToken,
}

/// The receiving side, owned by the session's writer.
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Outgoing>,
    shared: Arc<Shared>,
}

/// A new queue bounded to `limit` bytes whose close signal is a child of `parent`,
/// so cancelling `parent` (node shutdown) closes every session.
pub fn channel(limit: usize, parent: &CancellationToken) -> (Outbox, Inbox) {
    // Unbounded in count, bounded in bytes by `push`: overflow closes the session.
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        queued: AtomicUsize::new(0),
        limit,
        reason: OnceLock::new(),
        closed: parent.child_token(),
    });
    (
        Outbox {
            tx,
            shared: shared.clone(),
        },
        Inbox { rx, shared },
    )
}

impl Outbox {
    /// Queues a frame. Returns false when the session is closing or this frame
    /// overflowed the queue (which starts the close).
    pub fn push(&self, frame: String) -> bool {
        self.push_stamped(frame, None)
    }

    /// Queues a relayed frame with the time it was published.
    pub fn push_stamped(&self, frame: String, published_us: Option<u64>) -> bool {
        if self.shared.closed.is_cancelled() {
            return false;
        }
        let len = frame.len();
        let before = self.shared.queued.fetch_add(len, Ordering::AcqRel);
        if before + len > self.shared.limit {
            self.shared.queued.fetch_sub(len, Ordering::AcqRel);
            self.close(CloseReason::SlowConsumer);
            return false;
        }
        let item = Outgoing {
            text: frame,
            published_us,
        };
        if self.tx.send(item).is_err() {
            self.shared.queued.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Asks the session to close; the first reason given wins.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.shared.reason.set(reason);
        self.shared.closed.cancel();
    }
}

impl Inbox {
    /// The next queued frame; cancel-safe.
    pub async fn recv(&mut self) -> Option<Outgoing> {
        let item = self.rx.recv().await?;
        self.shared
            .queued
            .fetch_sub(item.text.len(), Ordering::AcqRel);
        Some(item)
    }

    /// The next queued frame if one is waiting, without waiting: the writer takes
    /// a whole burst before it flushes the socket once.
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        let item = self.rx.try_recv().ok()?;
        self.shared
            .queued
            .fetch_sub(item.text.len(), Ordering::AcqRel);
        Some(item)
    }

    /// A token cancelled once the session has been asked to close.
    pub fn close_token(&self) -> CancellationToken {
        self.shared.closed.clone()
    }

    /// Why the session was asked to close. A cancelled parent with no reason of its
    /// own means the node is shutting down.
    pub fn close_reason(&self) -> Option<CloseReason> {
        if !self.shared.closed.is_cancelled() {
            return None;
        }
        Some(
            self.shared
                .reason
                .get()
                .copied()
                .unwrap_or(CloseReason::Shutdown),
        )
    }

    /// Stops further pushes, so nothing is queued for a session that is ending.
    pub fn seal(&mut self) {
        self.rx.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overflow_closes_as_slow_consumer() {
        let root = CancellationToken::new();
        let (out, mut inbox) = channel(10, &root);
        assert!(out.push("12345".into()));
        assert!(out.push("12345".into()));
        assert!(!out.push("1".into()));
        assert_eq!(inbox.close_reason(), Some(CloseReason::SlowConsumer));
        assert_eq!(inbox.recv().await.map(|o| o.text).as_deref(), Some("12345"));
    }

    #[tokio::test]
    async fn draining_frees_budget() {
        let root = CancellationToken::new();
        let (out, mut inbox) = channel(10, &root);
        for _ in 0..5 {
            assert!(out.push("1234567890".into()));
            assert_eq!(
                inbox.recv().await.map(|o| o.text).as_deref(),
                Some("1234567890")
            );
        }
        assert_eq!(inbox.close_reason(), None);
    }

    #[test]
    fn parent_cancel_means_shutdown_and_first_reason_wins() {
        let root = CancellationToken::new();
        let (out, inbox) = channel(10, &root);
        root.cancel();
        assert_eq!(inbox.close_reason(), Some(CloseReason::Shutdown));
        let root = CancellationToken::new();
        let (out2, inbox2) = channel(10, &root);
        out2.close(CloseReason::Replaced);
        out2.close(CloseReason::Kicked);
        assert_eq!(inbox2.close_reason(), Some(CloseReason::Replaced));
        drop(out);
    }
}
