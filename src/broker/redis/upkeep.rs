//! Node upkeep for a Redis node (run through [`Broker::upkeep`](crate::broker::Broker::upkeep)):
//! - **registration**: each run of the node (an [`Incarnation`]) registers itself
//!   as `NODE_ID:RUN` in `P cluster:{nodes}` and beats `P node:{id}` (its run and
//!   info) with a [`NODE_TTL`]. The node is not ready and refuses sessions until
//!   the first beat of its current run succeeded on the current Redis connection,
//!   so no member is ever held by a run the cluster does not know. The first beat
//!   is retried every [`REGISTER_RETRY`], later ones come every [`HEARTBEAT_INTERVAL`];
//! - **dead runs**: a registered run whose node's heartbeat expired, or names
//!   another run (the node restarted with the same id), is claimed by any node
//!   (the node itself included), which evicts exactly that run's sessions so their
//!   rooms hear `user_left` (`timeout`) within seconds, not at the key TTL;
//! - **declared dead**: a run that was paused past its TTL and comes back finds
//!   the survivor's marker, closes exactly its sessions with `unavailable` + 1013
//!   and starts a new run for the sessions that come after;
//! - **Redis lost its state** (a reconnect of the subscriber, with no marker): the
//!   run registers again, every live local session is written back, then, after
//!   other nodes had time to do the same, each local session's view is reconciled
//!   with the truth, announcing the joins and leaves its client missed. For a
//!   [`NODE_TTL`] after a reconnect an expired heartbeat proves nothing (a failover
//!   may bring them back stale or not at all), so peers are not declared dead on it.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::RedisBroker;
use crate::broker::{Deliveries, NodeStatus};
use crate::ids::NodeId;
use crate::incarnation::Incarnation;
use crate::protocol::now_rfc3339_millis;

/// How often a registered node beats and looks for dead runs.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// How long a heartbeat lasts: three missed beats make a node dead.
pub const NODE_TTL: Duration = Duration::from_secs(6);
/// How long after trouble with Redis (a shard failing over, heartbeats that could
/// not be read) a missing heartbeat is not taken as a death: two TTLs.
const TROUBLE_QUIET: Duration = Duration::from_secs(12);
/// How often an unregistered node (starting, renewed, or reconnected to Redis)
/// tries to register: readiness waits for it, so it does not wait for a full beat.
pub const REGISTER_RETRY: Duration = Duration::from_millis(100);
/// How often graces that ended are looked for (any node ends any member's).
const GRACE_SWEEP: Duration = Duration::from_millis(250);
/// When, after re-registering, views are reconciled: late enough that the other
/// nodes (reconnecting with up to 2 s backoff) have re-registered theirs.
const RECONCILE_AFTER: [Duration; 2] = [Duration::from_secs(4), Duration::from_secs(9)];

/// What the beat loop tells the sweep loop after a reconnect.
struct AfterReconnect {
    /// Until then an expired heartbeat is not evidence of death.
    trust_expiry_at: Instant,
    /// When views are reconciled next.
    reconcile_at: Vec<Instant>,
}

/// Runs the upkeep of `redis` until `cancel`: `sessions` are the node's local
/// sessions, `incarnation` its runs, `node_id` and `node` what its heartbeat says.
///
/// Two loops run side by side: the beat (registration, heartbeat, restore after a
/// reconnect) and the sweeps (dead runs, ended graces, view reconciliation). A
/// sweep can take many round trips (evicting a dead node's hundreds of sessions);
/// in the beat loop it would delay this node's own heartbeat past its TTL, and the
/// cluster would declare a busy, healthy node dead.
pub(super) async fn run(
    redis: &RedisBroker,
    sessions: &dyn Deliveries,
    incarnation: &Incarnation,
    node_id: &NodeId,
    node: &NodeStatus,
    cancel: CancellationToken,
) {
    let shared = std::sync::Mutex::new(AfterReconnect {
        trust_expiry_at: Instant::now(),
        reconcile_at: Vec::new(),
    });
    let beats = beat_loop(
        redis,
        sessions,
        incarnation,
        node_id,
        node,
        &shared,
        &cancel,
    );
    let sweeps = sweep_loop(redis, sessions, &shared, &cancel);
    tokio::join!(beats, sweeps);
}

fn lock(shared: &std::sync::Mutex<AfterReconnect>) -> std::sync::MutexGuard<'_, AfterReconnect> {
    // Two plain fields: a panic elsewhere cannot leave them inconsistent.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

async fn beat_loop(
    redis: &RedisBroker,
    sessions: &dyn Deliveries,
    incarnation: &Incarnation,
    node_id: &NodeId,
    node: &NodeStatus,
    shared: &std::sync::Mutex<AfterReconnect>,
    cancel: &CancellationToken,
) {
    let started_at = now_rfc3339_millis();
    let mut seen_epoch = 0;
    let mut last_beat: Option<Instant> = None;
    let mut tick = tokio::time::interval(REGISTER_RETRY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                if let Err(e) = redis.deregister().await {
                    tracing::warn!(error = %e, "could not deregister; survivors will clean up after the heartbeat TTL");
                }
                return;
            }
            _ = tick.tick() => {}
        }
        if !redis.subscriber_connected() {
            continue;
        }
        // Read before the beat: a beat counts for the connection it followed, so a
        // reconnect during the beat means beating again.
        let epoch = redis.subscriber_epoch();
        let registered = redis.registered_run().is_some();
        if registered && last_beat.is_some_and(|t| t.elapsed() < HEARTBEAT_INTERVAL) {
            continue;
        }
        last_beat = Some(Instant::now());
        // A dead relay connection is found and replaced here, not by a client's message.
        redis.ping_relay().await;

        let run = incarnation.current();
        let info = serde_json::json!({
            "node_id": node_id.as_str(),
            "run": run.to_string(),
            "addr": node.addr.to_string(),
            "connections": (node.connections)(),
            "rooms": sessions.rooms().len(),
            "started_at": started_at,
            "heartbeat_at": now_rfc3339_millis(),
        })
        .to_string();
        if epoch != seen_epoch && epoch > 1 {
            // Before the beat registers this connection (and lets the sweep loop
            // run): heartbeats missing right after a reconnect prove nothing.
            lock(shared).trust_expiry_at = Instant::now() + NODE_TTL;
        }
        // The beat comes first: a run declared dead must close its sessions, never
        // write them back, even if its subscriber reconnected meanwhile.
        match redis.heartbeat(run, &info, NODE_TTL).await {
            Ok(false) => incarnation.mark_registered(run, epoch),
            Ok(true) => {
                renew(sessions, incarnation);
                // Registers the new run at the next tick, REGISTER_RETRY from now.
                continue;
            }
            Err(_) => continue, // logged by the broker, once per outage
        }

        if epoch != seen_epoch {
            // Logged and reflected in readiness by the broker; retried at the next reconnect.
            let _ = redis.check_payload_key().await;
            // Any connection after the first may face a Redis that lost its state
            // (even one made before the first tick saw the node connected).
            if epoch > 1 {
                restore_sessions(sessions, incarnation, redis).await;
                let now = Instant::now();
                let mut after = lock(shared);
                after.reconcile_at = RECONCILE_AFTER.iter().map(|d| now + *d).collect();
                after.trust_expiry_at = now + NODE_TTL;
            }
            seen_epoch = epoch;
        }
    }
}

/// Dead runs every beat interval, ended graces every [`GRACE_SWEEP`], and the view
/// reconciliations the beat loop scheduled, while this run is registered.
async fn sweep_loop(
    redis: &RedisBroker,
    sessions: &dyn Deliveries,
    shared: &std::sync::Mutex<AfterReconnect>,
    cancel: &CancellationToken,
) {
    let mut tick = tokio::time::interval(GRACE_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_dead_sweep: Option<Instant> = None;
    // When a dead-run sweep last could not read the heartbeats.
    let mut sweep_failed_at: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if redis.registered_run().is_none() {
            continue;
        }
        if let Err(e) = redis.end_graces().await {
            tracing::debug!(error = %e, "grace sweep interrupted; retried");
        }
        if last_dead_sweep.is_none_or(|t| t.elapsed() >= HEARTBEAT_INTERVAL) {
            last_dead_sweep = Some(Instant::now());
            // A heartbeat can be missing because its shard was failing over (on a
            // Redis Cluster its node could not beat there meanwhile, and needs up
            // to a beat plus a command timeout to beat again after the promotion):
            // after trouble of the subscription or of this sweep, expiry proves
            // nothing for two heartbeat TTLs.
            let quiet = |since: Duration| since >= TROUBLE_QUIET;
            let settled = redis.since_subscriber_trouble().is_none_or(quiet)
                && sweep_failed_at.is_none_or(|at| quiet(at.elapsed()));
            let trusted = settled && Instant::now() >= lock(shared).trust_expiry_at;
            if !clean_dead_runs(redis, trusted).await {
                sweep_failed_at = Some(Instant::now());
            }
        }
        let due = {
            let mut after = lock(shared);
            let now = Instant::now();
            let due = after.reconcile_at.first().is_some_and(|t| *t <= now);
            if due {
                after.reconcile_at.remove(0);
            }
            due
        };
        if due {
            reconcile_views(sessions, redis).await;
        }
    }
}

/// This run was declared dead while the node was unreachable: Redis no longer
/// knows its sessions. A new run takes over first (unregistered, so sessions are
/// refused until it beats), then exactly the old run's sessions close; in this
/// order, a session that read the old run after the close would find it renewed.
fn renew(sessions: &dyn Deliveries, incarnation: &Incarnation) {
    let old = incarnation.renew();
    let closed = sessions.close_expired_run(old);
    tracing::error!(
        run = %old,
        new_run = %incarnation.current(),
        sessions = closed,
        "this node was declared dead while unreachable; closed that run's sessions (clients reconnect) and started a new run"
    );
}

/// Evicts the dead runs' sessions; false when the heartbeats could not be read.
async fn clean_dead_runs(redis: &RedisBroker, missing_counts: bool) -> bool {
    let Ok(dead) = redis.dead_runs(missing_counts).await else {
        return false;
    };
    for (node, run) in dead {
        match redis.clean_dead_run(&node, &run, missing_counts).await {
            Ok(None) => tracing::debug!(dead_node = %node, %run, "run beats again; not dead"),
            // Zero: another node evicted them first (or it held nobody).
            Ok(Some(0)) => {
                tracing::debug!(dead_node = %node, %run, "dead run had nothing left to evict")
            }
            Ok(Some(n)) => {
                crate::metrics::node_cleaned();
                tracing::warn!(dead_node = %node, %run, sessions = n, "node run stopped beating; evicted its sessions");
            }
            Err(e) => {
                tracing::warn!(dead_node = %node, %run, error = %e, "dead run cleanup interrupted; retried next beat")
            }
        }
    }
    true
}

/// Writes every live local session back into Redis after it lost its state.
async fn restore_sessions(
    sessions: &dyn Deliveries,
    incarnation: &Incarnation,
    redis: &RedisBroker,
) {
    let current = incarnation.current();
    let mut restored = 0;
    // A session of an older run is closing already (its run was declared dead).
    for handle in sessions
        .local_sessions()
        .iter()
        .filter(|h| h.run == current)
    {
        match redis.restore(handle).await {
            Ok(true) => restored += 1,
            Ok(false) => {
                // Someone else holds this user now: this session is stale.
                sessions.close_replaced(&handle.user, handle.session);
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-registration interrupted; retried at the next reconnect");
                return;
            }
        }
    }
    tracing::info!(
        sessions = restored,
        "re-registered local sessions after redis reconnected"
    );
}

/// Announces to every local session the joins and leaves it missed.
async fn reconcile_views(sessions: &dyn Deliveries, redis: &RedisBroker) {
    let mut corrections = 0;
    for room in sessions.rooms() {
        match redis.room_members(&room).await {
            Ok(truth) => corrections += sessions.reconcile(&room, &truth),
            Err(e) => {
                tracing::warn!(error = %e, "view reconciliation interrupted");
                return;
            }
        }
    }
    tracing::info!(corrections, "reconciled room views after redis reconnected");
}
