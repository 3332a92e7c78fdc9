//! Runs a session's reader and writer side by side in its one task, each polled
//! only when its own waker fired: a frame queued for the client does not make
//! the reader poll the socket, nor a frame read wake the writer (one `select!`
//! would poll both on every wake-up; tungstenite zeroed its read buffer on
//! every spurious poll, a large share of a delivery's CPU).
//!
//! `FuturesUnordered` did this before, at the cost of a shared ready queue, a
//! task allocation per half and a box per half, held by every idle session.
//! Here the halves stay where the caller pinned them, and each has one small
//! flag with the task's waker.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

/// One half's wake-up: set by the half's waker, taken before the half is polled.
struct Flag {
    woken: AtomicBool,
    /// The task polling [`Halves`], woken with the flag.
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// One half: its future, its flag, and the waker it is polled with.
struct Half<'a, T> {
    future: Pin<&'a mut (dyn Future<Output = T> + Send)>,
    flag: Arc<Flag>,
    waker: Waker,
}

impl<'a, T> Half<'a, T> {
    fn new(future: Pin<&'a mut (dyn Future<Output = T> + Send)>) -> Self {
        // Woken at the start, so that the first poll polls it.
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(flag.clone());
        Self {
            future,
            flag,
            waker,
        }
    }

    /// Polls the future if its waker fired since its last poll.
    fn poll(&mut self, cx: &Context<'_>) -> Poll<T> {
        // Registered before the flag is taken: a wake-up in between still wakes
        // the task.
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        self.future
            .as_mut()
            .poll(&mut Context::from_waker(&self.waker))
    }
}

/// Resolves with the output of whichever half ends first; the other is left
/// as it is (the caller drops it).
pub(super) struct Halves<'a, T> {
    first: Half<'a, T>,
    second: Half<'a, T>,
    /// Which half goes first on the next poll. The halves share the task's
    /// cooperative budget, and the one polled first can spend it all: a reader
    /// with input always waiting (a client flooding pings) then starved the
    /// writer, whose heartbeat is what closes a client that never reads.
    second_first: bool,
}

impl<'a, T> Halves<'a, T> {
    pub(super) fn new(
        first: Pin<&'a mut (dyn Future<Output = T> + Send)>,
        second: Pin<&'a mut (dyn Future<Output = T> + Send)>,
    ) -> Self {
        Self {
            first: Half::new(first),
            second: Half::new(second),
            second_first: false,
        }
    }
}

impl<T> Future for Halves<'_, T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = &mut *self;
        let (a, b) = if this.second_first {
            (&mut this.second, &mut this.first)
        } else {
            (&mut this.first, &mut this.second)
        };
        this.second_first = !this.second_first;
        if let Poll::Ready(out) = a.poll(cx) {
            return Poll::Ready(out);
        }
        b.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A half is polled again only after its own waker fired.
    #[tokio::test]
    async fn each_half_is_polled_only_when_woken() {
        let polls = [AtomicUsize::new(0), AtomicUsize::new(0)];
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let first = async {
            loop {
                polls[0].fetch_add(1, Ordering::Relaxed);
                match rx.recv().await {
                    Some(3) | None => return "first",
                    Some(_) => {}
                }
            }
        };
        let second = std::future::poll_fn(|_| {
            polls[1].fetch_add(1, Ordering::Relaxed);
            Poll::<&str>::Pending
        });
        let (first, second) = (std::pin::pin!(first), std::pin::pin!(second));
        let halves = Halves::new(first, second);
        let sender = async {
            for i in 1..=3 {
                tokio::task::yield_now().await;
                tx.send(i).unwrap_or_else(|e| panic!("{e}"));
            }
        };
        let (out, ()) = tokio::join!(halves, sender);
        assert_eq!(out, "first");
        assert_eq!(
            polls[1].load(Ordering::Relaxed),
            1,
            "the idle half was polled once"
        );
        assert_eq!(polls[0].load(Ordering::Relaxed), 3);
    }
}
