//! Per-connection flood control (PROTOCOL.md section 6): a token bucket of frames
//! and one of bytes, both full at connect, and the "dropped frames in 10
//! consecutive seconds" abuse rule. The byte bucket exists because frames alone
//! let one member send 200 frames of 64 KiB inside the burst, which overflows the
//! outbound queue of every other member of its room.

use std::time::Instant;

use crate::config::RateLimit;

/// Seconds in a row with dropped frames that close the connection (4429).
const ABUSE_SECONDS: u64 = 10;

/// What to do with one client frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Within the limit: handle it.
    Allow,
    /// No token: answer `rate_limited` and drop it.
    Drop,
    /// Dropping has gone on for too long: close with 4429.
    Abuse,
}

/// A token bucket, full at start; `None` never limits.
struct Bucket {
    limit: Option<RateLimit>,
    tokens: f64,
}

impl Bucket {
    fn new(limit: Option<RateLimit>) -> Self {
        Self {
            limit,
            tokens: limit.map_or(0.0, |l| l.burst),
        }
    }

    fn refill(&mut self, elapsed_secs: f64) {
        if let Some(limit) = self.limit {
            self.tokens = (self.tokens + elapsed_secs * limit.per_second).min(limit.burst);
        }
    }

    fn has(&self, cost: f64) -> bool {
        self.limit.is_none() || self.tokens >= cost
    }

    fn take(&mut self, cost: f64) {
        if self.limit.is_some() {
            self.tokens -= cost;
        }
    }
}

/// One connection's buckets.
pub(super) struct RateLimiter {
    frames: Bucket,
    bytes: Bucket,
    refilled: Instant,
    started: Instant,
    /// Second (since `started`) of the latest drop, and how many seconds in a row had one.
    last_drop_second: Option<u64>,
    streak: u64,
}

impl RateLimiter {
    /// Full buckets of frames and of bytes; `None` never limits.
    pub(super) fn new(frames: Option<RateLimit>, bytes: Option<RateLimit>, now: Instant) -> Self {
        Self {
            frames: Bucket::new(frames),
            bytes: Bucket::new(bytes),
            refilled: now,
            started: now,
            last_drop_second: None,
            streak: 0,
        }
    }

    /// Charges one frame of `len` bytes arriving at `now`: a frame token and
    /// `len` byte tokens, or nothing when either bucket is short.
    pub(super) fn check(&mut self, len: usize, now: Instant) -> Verdict {
        if self.frames.limit.is_none() && self.bytes.limit.is_none() {
            return Verdict::Allow;
        }
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.frames.refill(elapsed);
        self.bytes.refill(elapsed);
        self.refilled = now;
        let bytes = len as f64;
        if self.frames.has(1.0) && self.bytes.has(bytes) {
            self.frames.take(1.0);
            self.bytes.take(bytes);
            return Verdict::Allow;
        }
        let second = now.saturating_duration_since(self.started).as_secs();
        self.streak = match self.last_drop_second {
            Some(s) if s == second => self.streak,
            Some(s) if s + 1 == second => self.streak + 1,
            _ => 1,
        };
        self.last_drop_second = Some(second);
        if self.streak >= ABUSE_SECONDS {
            Verdict::Abuse
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limit(per_second: f64, burst: f64) -> Option<RateLimit> {
        Some(RateLimit { per_second, burst })
    }

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(limit(10.0, 3.0), None, t0);
        assert_eq!(
            [r.check(1, t0), r.check(1, t0), r.check(1, t0)],
            [Verdict::Allow; 3]
        );
        assert_eq!(r.check(1, t0), Verdict::Drop);
        assert_eq!(r.check(1, t0 + Duration::from_millis(100)), Verdict::Allow);
        assert_eq!(r.check(1, t0 + Duration::from_millis(100)), Verdict::Drop);
    }

    #[test]
    fn bytes_are_limited_beside_frames() {
        let t0 = Instant::now();
        // Plenty of frame tokens; 1000 bytes of burst refilled at 100 bytes/s.
        let mut r = RateLimiter::new(limit(1000.0, 1000.0), limit(100.0, 1000.0), t0);
        assert_eq!(r.check(600, t0), Verdict::Allow);
        assert_eq!(r.check(600, t0), Verdict::Drop);
        // A smaller frame still fits what is left; a dropped frame costs nothing.
        assert_eq!(r.check(400, t0), Verdict::Allow);
        assert_eq!(r.check(1, t0), Verdict::Drop);
        assert_eq!(r.check(200, t0 + Duration::from_secs(2)), Verdict::Allow);
        assert_eq!(r.check(1, t0 + Duration::from_secs(2)), Verdict::Drop);
        // Bytes alone, frames unlimited.
        let mut r = RateLimiter::new(None, limit(100.0, 100.0), t0);
        assert_eq!(r.check(100, t0), Verdict::Allow);
        assert_eq!(r.check(1, t0), Verdict::Drop);
    }

    #[test]
    fn ten_seconds_of_drops_is_abuse_and_a_gap_resets() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(limit(1.0, 1.0), None, t0);
        let mut verdicts = Vec::new();
        for ms in (0..10_500).step_by(100) {
            verdicts.push(r.check(1, t0 + Duration::from_millis(ms)));
        }
        assert_eq!(verdicts.last(), Some(&Verdict::Abuse));
        assert!(!verdicts[..90].contains(&Verdict::Abuse));

        let mut r = RateLimiter::new(limit(1.0, 1.0), None, t0);
        for s in 0..9 {
            r.check(1, t0 + Duration::from_secs(s));
            r.check(1, t0 + Duration::from_secs(s));
        }
        // One quiet second breaks the streak.
        for s in 10..18 {
            r.check(1, t0 + Duration::from_secs(s));
            assert_ne!(r.check(1, t0 + Duration::from_secs(s)), Verdict::Abuse);
        }
    }

    #[test]
    fn off_means_off() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(None, None, t0);
        assert!((0..10_000).all(|_| r.check(65_536, t0) == Verdict::Allow));
    }
}
