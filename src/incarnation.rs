//! Which run of this node is current, and whether the cluster knows it yet.
//!
//! A node id outlives its processes: a supervisor restarts a killed node with the
//! same `NODE_ID` at once. Each process start (and each restart of the node's
//! membership after it was declared dead while paused) is an *incarnation* with
//! its own random run id. Sessions are recorded per incarnation in Redis, so the
//! cleanup of a dead or previous run never touches a session of another run.
//!
//! One [`Incarnation`] is shared (`Arc`) by the broker, the upkeep and the sessions:
//! the upkeep registers the current run and renews it; sessions record the run
//! they joined under and are refused while the current run is not registered.

use std::fmt;
use std::sync::{Mutex, MutexGuard};

/// A run id: 48 random bits, written as 12 lowercase hex digits (never a `:`, so
/// `NODE_ID:RUN` splits unambiguously).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RunId(u64);

impl RunId {
    /// A fresh random run id.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().as_u64_pair().0 & 0xffff_ffff_ffff)
    }

    /// Parses the 12 hex digits written by [`fmt::Display`].
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 12 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(Self)
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:012x}", self.0)
    }
}

struct State {
    run: RunId,
    /// The subscriber epoch during which the current run's heartbeat last
    /// succeeded; `None` until then. A reconnect (new epoch) may face a Redis that
    /// lost the registration, so the run counts as registered again only after a
    /// beat on the new connection.
    registered_epoch: Option<u64>,
}

/// The current run of this node and its registration state.
pub struct Incarnation {
    state: Mutex<State>,
}

impl Default for Incarnation {
    fn default() -> Self {
        Self::new()
    }
}

impl Incarnation {
    /// A new, unregistered run.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                run: RunId::random(),
                registered_epoch: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Two plain fields, always written together: no broken invariant on poison.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current run (registered or not).
    pub fn current(&self) -> RunId {
        self.lock().run
    }

    /// The current run if its registration holds for subscriber `epoch`.
    pub fn registered(&self, epoch: u64) -> Option<RunId> {
        let s = self.lock();
        (s.registered_epoch == Some(epoch)).then_some(s.run)
    }

    /// Records that `run`'s heartbeat succeeded during `epoch`. Ignored when `run`
    /// is no longer current (renewed meanwhile).
    pub fn mark_registered(&self, run: RunId, epoch: u64) {
        let mut s = self.lock();
        if s.run == run {
            s.registered_epoch = Some(epoch);
        }
    }

    /// Starts a new, unregistered run and returns the one it replaces.
    pub fn renew(&self) -> RunId {
        let mut s = self.lock();
        let old = s.run;
        while s.run == old {
            s.run = RunId::random();
        }
        s.registered_epoch = None;
        old
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_round_trip_and_renewal_unregisters() {
        let inc = Incarnation::new();
        let run = inc.current();
        assert_eq!(run.to_string().len(), 12);
        assert_eq!(RunId::parse(&run.to_string()), Some(run));
        assert_eq!(RunId::parse("xyz"), None);
        assert_eq!(inc.registered(1), None);
        inc.mark_registered(run, 1);
        assert_eq!(inc.registered(1), Some(run));
        assert_eq!(inc.registered(2), None, "a reconnect needs a new beat");
        let old = inc.renew();
        assert_eq!(old, run);
        assert_ne!(inc.current(), run);
        assert_eq!(inc.registered(1), None);
        inc.mark_registered(old, 1);
        assert_eq!(inc.registered(1), None, "a stale beat registers nothing");
    }
}
