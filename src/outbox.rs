//! A connection's outbound queue and its close signal.
//!
//! Anyone may push frames (the subscriber dispatching deliveries, the session's own
//! reader answering errors) without blocking: the queue is bounded in bytes, and a
//! push that would overflow it closes the session as a slow consumer instead of
//! growing memory or stalling the pusher (PROTOCOL.md section 6, `MAX_QUEUE_BYTES`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Queue capacity kept once the queue is drained; a larger one is freed then, so
/// an idle session holds no more than this (a few `Outgoing`, 40 bytes each).
const KEEP_CAPACITY: usize = 4;

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
pub struct Outbox {
    shared: Arc<Shared>,
}

/// One allocation per session, and no queue storage until a frame is queued
/// (tokio's unbounded channel allocated a block of 32 slots, ~2 KiB with its
/// padding, for every idle connection).
struct Shared {
    queued: AtomicUsize,
    limit: usize,
    reason: OnceLock<CloseReason>,
    closed: CancellationToken,
    queue: Mutex<Queue>,
    /// Wakes the receiver after a push, a seal or the last sender's drop.
    ready: Notify,
}

/// The frames and the channel's ends, under one lock.
struct Queue {
    frames: VecDeque<Outgoing>,
    /// `Outbox` clones alive; at 0 the receiver gets `None` once drained.
    senders: usize,
    /// Set by [`Inbox::seal`] or the receiver's drop: pushes fail from then on.
    sealed: bool,
}

impl Shared {
    /// The queue; a panic elsewhere while holding it cannot leave it inconsistent
    /// (every update is a single push, pop or flag), so a poisoned lock is taken.
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What one look at the queue found.
enum Taken {
    Frame(Outgoing),
    /// Nothing queued now.
    Empty,
    /// Nothing queued, and nothing will be (sealed, or every sender gone).
    Ended,
}

/// The receiving side, owned by the session's writer.
pub struct Inbox {
    shared: Arc<Shared>,
}

/// A new queue bounded to `limit` bytes whose close signal is a child of `parent`,
/// so cancelling `parent` (node shutdown) closes every session.
pub fn channel(limit: usize, parent: &CancellationToken) -> (Outbox, Inbox) {
    // Unbounded in count, bounded in bytes by `push`: overflow closes the session.
    let shared = Arc::new(Shared {
        queued: AtomicUsize::new(0),
        limit,
        reason: OnceLock::new(),
        closed: parent.child_token(),
        queue: Mutex::new(Queue {
            frames: VecDeque::new(),
            senders: 1,
            sealed: false,
        }),
        ready: Notify::new(),
    });
    (
        Outbox {
            shared: shared.clone(),
        },
        Inbox { shared },
    )
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.shared.queue().senders += 1;
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let last = {
            let mut queue = self.shared.queue();
            queue.senders -= 1;
            queue.senders == 0
        };
        if last {
            self.shared.ready.notify_one();
        }
    }
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
        {
            let mut queue = self.shared.queue();
            if queue.sealed {
                drop(queue);
                self.shared.queued.fetch_sub(len, Ordering::AcqRel);
                return false;
            }
            queue.frames.push_back(item);
        }
        self.shared.ready.notify_one();
        true
    }

    /// Asks the session to close; the first reason given wins.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.shared.reason.set(reason);
        self.shared.closed.cancel();
    }
}

impl Inbox {
    /// The next queued frame; `None` once sealed or without senders and drained.
    /// Cancel-safe: a frame is taken only in the poll that returns it.
    pub async fn recv(&mut self) -> Option<Outgoing> {
        loop {
            match self.take() {
                Taken::Frame(item) => return Some(item),
                Taken::Ended => return None,
                // A push between the check and this wait leaves a permit: no lost wakeup.
                Taken::Empty => self.shared.ready.notified().await,
            }
        }
    }

    /// The next queued frame if one is waiting, without waiting: the writer takes
    /// a whole burst before it flushes the socket once.
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        match self.take() {
            Taken::Frame(item) => Some(item),
            Taken::Empty | Taken::Ended => None,
        }
    }

    fn take(&mut self) -> Taken {
        let mut queue = self.shared.queue();
        if let Some(item) = queue.frames.pop_front() {
            if queue.frames.is_empty() && queue.frames.capacity() > KEEP_CAPACITY {
                queue.frames = VecDeque::new();
            }
            drop(queue);
            self.shared
                .queued
                .fetch_sub(item.text.len(), Ordering::AcqRel);
            return Taken::Frame(item);
        }
        if queue.sealed || queue.senders == 0 {
            return Taken::Ended;
        }
        Taken::Empty
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
        self.shared.queue().sealed = true;
    }
}

impl Drop for Inbox {
    /// Like a dropped channel receiver: pushes fail and queued frames are freed,
    /// even while the registry still holds an `Outbox`.
    fn drop(&mut self) {
        let frames = {
            let mut queue = self.shared.queue();
            queue.sealed = true;
            std::mem::take(&mut queue.frames)
        };
        drop(frames);
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

    #[tokio::test]
    async fn sealed_or_senderless_queue_ends_after_draining() {
        let root = CancellationToken::new();
        let (out, mut inbox) = channel(100, &root);
        let second = out.clone();
        assert!(out.push("a".into()));
        drop(out);
        assert!(second.push("b".into()));
        drop(second);
        assert_eq!(inbox.recv().await.map(|o| o.text).as_deref(), Some("a"));
        assert_eq!(inbox.recv().await.map(|o| o.text).as_deref(), Some("b"));
        assert!(inbox.recv().await.is_none());
        let (out, mut inbox) = channel(100, &root);
        assert!(out.push("c".into()));
        inbox.seal();
        assert!(!out.push("d".into()));
        assert_eq!(inbox.recv().await.map(|o| o.text).as_deref(), Some("c"));
        assert!(inbox.recv().await.is_none());
        drop(inbox);
        assert!(!out.push("e".into()));
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_on_push() {
        let root = CancellationToken::new();
        let (out, mut inbox) = channel(100, &root);
        let waiter = tokio::spawn(async move { inbox.recv().await.map(|o| o.text) });
        tokio::task::yield_now().await;
        assert!(out.push("x".into()));
        let got = waiter.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.as_deref(), Some("x"));
    }
}
