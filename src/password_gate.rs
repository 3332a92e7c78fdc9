//! Bounds the room-password checks that run at once. Each argon2 check takes
//! 19 MiB and tens of milliseconds of CPU by design, so unbounded parallel wrong
//! passwords were a memory and CPU attack on the node: now at most one check per
//! core runs, a join waits briefly for a turn, and past that it is refused with
//! `unavailable` (1013, retry later) instead of queueing without end.
//!
//! Each slot owns its 19 MiB of argon2 memory for the life of the node: allocated
//! per check on whichever blocking thread ran it, that memory stayed in the
//! allocator's per-thread arenas (40 wrong passwords left the node at 370 MB).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

/// How long a join waits for a free password check before it is refused.
pub const WAIT: Duration = Duration::from_secs(2);

/// The node-wide bound on concurrent password checks.
pub struct PasswordGate {
    permits: Arc<Semaphore>,
    wait: Duration,
    /// Working memory of the idle slots (at most one per permit, made on first use).
    memory: Arc<Mutex<Vec<Vec<argon2::Block>>>>,
}

/// Why a password could not be checked.
#[derive(Debug, PartialEq, Eq)]
pub enum GateError {
    /// Every check slot stayed busy for the whole wait.
    Busy,
}

impl PasswordGate {
    /// `checks` concurrent checks (at least one), waiting up to `wait` for a slot.
    pub fn new(checks: usize, wait: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(checks.max(1))),
            wait,
            memory: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// One check per available core: argon2 is CPU-bound, so more at once only
    /// adds memory, never throughput.
    pub fn per_core() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cores, WAIT)
    }

    /// Whether `password` matches `hash`, checked on a blocking thread once a slot
    /// is free.
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, GateError> {
        let permit = tokio::time::timeout(self.wait, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| GateError::Busy)?
            .map_err(|_| GateError::Busy)?;
        let memory = self.memory.clone();
        let checked = tokio::task::spawn_blocking(move || {
            // Holding a permit guarantees a buffer is idle or may be made.
            let mut blocks = take(&memory).unwrap_or_else(crate::auth::password_memory);
            let matches = crate::auth::verify_password_in(&password, &hash, &mut blocks);
            give_back(&memory, blocks);
            drop(permit);
            matches
        })
        .await;
        Ok(checked.unwrap_or(false))
    }
}

fn take(memory: &Mutex<Vec<Vec<argon2::Block>>>) -> Option<Vec<argon2::Block>> {
    memory.lock().unwrap_or_else(|e| e.into_inner()).pop()
}

fn give_back(memory: &Mutex<Vec<Vec<argon2::Block>>>, blocks: Vec<argon2::Block>) {
    memory
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(blocks);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_gate_refuses_after_its_wait() {
        let hash = crate::auth::hash_password("right").unwrap();
        let gate = PasswordGate::new(1, Duration::from_millis(50));
        let held = gate.permits.clone().acquire_owned().await.unwrap();
        assert_eq!(
            gate.verify("right".into(), hash.clone()).await,
            Err(GateError::Busy)
        );
        drop(held);
        assert_eq!(gate.verify("right".into(), hash.clone()).await, Ok(true));
        assert_eq!(gate.verify("wrong".into(), hash).await, Ok(false));
    }
}
