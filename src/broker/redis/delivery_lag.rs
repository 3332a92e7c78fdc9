//! How far this node's subscriber is behind what Redis publishes for it, so the
//! node can read its clients more slowly while it catches up.
//!
//! Redis does not hold back a publisher for a slow subscriber: it buffers the
//! subscriber's messages and, past `client-output-buffer-limit pubsub` (32 MB by
//! default), drops the connection, and with it every frame in the buffer. Bursts
//! make publishing cheap, so a room whose members all broadcast flat out can
//! outrun the nodes' subscribers. Each relayed frame carries when it was
//! published; the subscriber compares that with when it reads it. Clocks of two
//! nodes may differ, so the lag is the age above the smallest age seen in the
//! last window (what an empty queue looks like, skew included), not the age itself.
//! A node's sessions wait (bounded) before each burst while its lag is high, so
//! their clients' TCP windows fill and they slow down, instead of Redis dropping
//! the subscription.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the smallest age seen is remembered.
const WINDOW: Duration = Duration::from_secs(5);
/// A lag older than this is stale: a subscriber that read nothing since is idle,
/// not behind (one that is behind reads back to back). Short, because a lag is
/// only updated by frames: once the sessions wait and the backlog has drained,
/// no frame comes to lower it, and for this long every session waited for
/// nothing (at 100 ms the fanout run spent most of its time so: 200,000
/// deliveries/s, 320,000-360,000 at 10 ms, nothing lost either way).
const FRESH: Duration = Duration::from_millis(10);

/// The subscriber's lag, fed by every relayed frame it reads.
pub(crate) struct DeliveryLag {
    /// Microseconds the latest frame waited above the baseline.
    lag_us: AtomicU64,
    /// When `lag_us` was written (microseconds since `created`).
    observed_us: AtomicU64,
    created: Instant,
    /// The wall clock at `created` (Unix microseconds): "now" in wall-clock terms
    /// is derived from it and one monotonic reading. A constant offset from the
    /// real wall clock cancels like skew does, and a clock read per frame is
    /// measurable here (it was ~3 % of a node's CPU in the fanout run).
    created_wall_us: u64,
    window: Mutex<Window>,
}

/// The smallest age (microseconds, may be negative with clock skew) of the
/// current and of the previous window.
struct Window {
    started: Instant,
    current: Option<i64>,
    previous: Option<i64>,
}

impl DeliveryLag {
    pub(crate) fn new() -> Self {
        Self {
            lag_us: AtomicU64::new(0),
            observed_us: AtomicU64::new(0),
            created: Instant::now(),
            created_wall_us: crate::envelope::now_us(),
            window: Mutex::new(Window {
                started: Instant::now(),
                current: None,
                previous: None,
            }),
        }
    }

    /// Notes a frame published at `published_us` (Unix microseconds, the
    /// publishing node's clock), read now.
    pub(crate) fn observe(&self, published_us: u64) {
        let now = Instant::now();
        let since = micros(now.saturating_duration_since(self.created));
        self.observe_at(
            published_us,
            self.created_wall_us.saturating_add(since),
            now,
        );
    }

    /// [`Self::observe`] of a frame read at `now_us` (this node's wall clock) and
    /// `now` (monotonic).
    fn observe_at(&self, published_us: u64, now_us: u64, now: Instant) {
        let age = i64::try_from(now_us)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(published_us).unwrap_or(i64::MAX));
        let baseline = {
            // Only the subscriber's task writes; a poisoned lock still holds numbers.
            let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
            if now.saturating_duration_since(w.started) >= WINDOW {
                w.previous = w.current.take();
                w.started = now;
            }
            w.current = Some(w.current.map_or(age, |m| m.min(age)));
            w.previous
                .map_or(age, |p| p.min(age))
                .min(w.current.unwrap_or(age))
        };
        let lag = u64::try_from(age.saturating_sub(baseline)).unwrap_or(0);
        self.lag_us.store(lag, Ordering::Relaxed);
        self.observed_us.store(
            micros(now.saturating_duration_since(self.created)),
            Ordering::Relaxed,
        );
    }

    /// The subscriber's current lag (zero when it read no relayed frame lately).
    pub(crate) fn lag(&self) -> Duration {
        let observed = self.observed_us.load(Ordering::Relaxed);
        if self.since_created().saturating_sub(observed) > FRESH.as_micros() as u64 {
            return Duration::ZERO;
        }
        Duration::from_micros(self.lag_us.load(Ordering::Relaxed))
    }

    fn since_created(&self) -> u64 {
        micros(self.created.elapsed())
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_age_above_the_smallest_age_seen() {
        let lag = DeliveryLag::new();
        // A clock 40 ms ahead of the publisher's: ages of 40 ms mean no backlog.
        lag.observe_at(1_000_000, 1_040_000, Instant::now());
        assert_eq!(lag.lag(), Duration::ZERO);
        lag.observe_at(1_000_000, 1_140_000, Instant::now());
        assert_eq!(lag.lag(), Duration::from_millis(100));
        lag.observe_at(1_200_000, 1_241_000, Instant::now());
        assert_eq!(lag.lag(), Duration::from_millis(1));
        // A publisher whose clock is behind lowers the baseline.
        lag.observe_at(1_300_000, 1_310_000, Instant::now());
        assert_eq!(lag.lag(), Duration::ZERO);
    }
}
