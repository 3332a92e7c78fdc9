//! A node-wide budget for one kind of log line, so that one client repeating one
//! mistake cannot flood the log (and the disk, and the log pipeline behind it).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Lets at most `burst` lines through per `window`; the first line after a
/// suppressed stretch learns how many were dropped, so nothing is lost silently.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    window: Duration,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    written: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// A budget of `burst` lines per `window`.
    pub fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst,
            window,
            state: Mutex::new(Window {
                started: Instant::now(),
                written: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` when this line may be written, `n` being the lines suppressed
    /// since the last written one; `None` when it must be dropped.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        // The counters stay meaningful even if a holder panicked.
        let mut w = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if now.saturating_duration_since(w.started) >= self.window {
            w.started = now;
            w.written = 0;
        }
        if w.written < self.burst {
            w.written += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_reports_what_it_dropped() {
        let limiter = LogLimiter::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limiter.admit_at(t0), Some(0));
        assert_eq!(limiter.admit_at(t0), Some(0));
        assert_eq!(limiter.admit_at(t0), None);
        assert_eq!(limiter.admit_at(t0 + Duration::from_secs(9)), None);
        let later = t0 + Duration::from_secs(10);
        assert_eq!(limiter.admit_at(later), Some(2));
        assert_eq!(limiter.admit_at(later), Some(0));
        assert_eq!(limiter.admit_at(later), None);
    }
}
