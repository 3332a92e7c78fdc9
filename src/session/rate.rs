//! Per-connection flood control (PROTOCOL.md section 6): a token bucket, full at
//! connect, and the "dropped frames in 10 consecutive seconds" abuse rule.

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

/// One connection's bucket.
pub(super) struct RateLimiter {
    limit: Option<RateLimit>,
    tokens: f64,
    refilled: Instant,
    started: Instant,
    /// Second (since `started`) of the latest drop, and how many seconds in a row had one.
    last_drop_second: Option<u64>,
    streak: u64,
}

impl RateLimiter {
    /// A full bucket; `None` never limits.
    pub(super) fn new(limit: Option<RateLimit>, now: Instant) -> Self {
        Self {
            limit,
            tokens: limit.map_or(0.0, |l| l.burst),
            refilled: now,
            started: now,
            last_drop_second: None,
            streak: 0,
        }
    }

    /// Charges one frame arriving at `now`.
    pub(super) fn check(&mut self, now: Instant) -> Verdict {
        let Some(limit) = self.limit else {
            return Verdict::Allow;
        };
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limit.per_second).min(limit.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
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
        let mut r = RateLimiter::new(limit(10.0, 3.0), t0);
        assert_eq!([r.check(t0), r.check(t0), r.check(t0)], [Verdict::Allow; 3]);
        assert_eq!(r.check(t0), Verdict::Drop);
        assert_eq!(r.check(t0 + Duration::from_millis(100)), Verdict::Allow);
        assert_eq!(r.check(t0 + Duration::from_millis(100)), Verdict::Drop);
    }

    #[test]
    fn ten_seconds_of_drops_is_abuse_and_a_gap_resets() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(limit(1.0, 1.0), t0);
        let mut verdicts = Vec::new();
        for ms in (0..10_500).step_by(100) {
            verdicts.push(r.check(t0 + Duration::from_millis(ms)));
        }
        assert_eq!(verdicts.last(), Some(&Verdict::Abuse));
        assert!(!verdicts[..90].contains(&Verdict::Abuse));

        let mut r = RateLimiter::new(limit(1.0, 1.0), t0);
        for s in 0..9 {
            r.check(t0 + Duration::from_secs(s));
            r.check(t0 + Duration::from_secs(s));
        }
        // One quiet second breaks the streak.
        for s in 10..18 {
            r.check(t0 + Duration::from_secs(s));
            assert_ne!(r.check(t0 + Duration::from_secs(s)), Verdict::Abuse);
        }
    }

    #[test]
    fn off_means_off() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(None, t0);
        assert!((0..10_000).all(|_| r.check(t0) == Verdict::Allow));
    }
}
