//! Cluster upkeep for a Redis node, one loop every [`HEARTBEAT_INTERVAL`]:
//! - **heartbeat**: `P node:{id}` with a [`NODE_TTL`] says the node is alive;
//!   `P node:{id}:sessions` lists the sessions it holds (kept by the join and leave
//!   scripts);
//! - **dead nodes**: a node whose heartbeat expired is claimed by exactly one
//!   survivor (an atomic claim), which evicts its sessions so their rooms hear
//!   `user_left` (`timeout`) within seconds, not at the 30-minute key TTL;
//! - **declared dead**: a node that was paused past its TTL and comes back finds
//!   the survivor's marker, and closes its stale sessions with `unavailable` + 1013
//!   instead of reviving them;
//! - **Redis lost its state** (a reconnect of the subscriber, with no marker): every
//!   live local session is written back, then, after other nodes had time to do the
//!   same, each local session's view is reconciled with the truth, announcing the
//!   joins and leaves its client missed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::broker::redis::RedisBroker;
use crate::broker::Broker;
use crate::protocol::now_rfc3339_millis;
use crate::session::outbox::CloseReason;

/// How often a node beats and looks for dead peers.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// How long a heartbeat lasts: three missed beats make a node dead.
pub const NODE_TTL: Duration = Duration::from_secs(6);
/// When, after re-registering, views are reconciled: late enough that the other
/// nodes (reconnecting with up to 2 s backoff) have re-registered theirs.
const RECONCILE_AFTER: [Duration; 2] = [Duration::from_secs(4), Duration::from_secs(9)];

/// Runs the upkeep until `cancel`; returns at once for a standalone node.
pub async fn run(state: AppState, addr: SocketAddr, cancel: CancellationToken) {
    let Broker::Redis(redis) = &*state.broker else {
        return;
    };
    let started_at = now_rfc3339_millis();
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen_epoch = 0;
    let mut beaten = false;
    let mut reconcile_at: Vec<Instant> = Vec::new();
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
        let epoch = redis.subscriber_epoch();
        // A dead relay connection is found and replaced here, not by a client's message.
        redis.ping_relay().await;

        let info = serde_json::json!({
            "node_id": state.config.node_id.as_str(),
            "addr": addr.to_string(),
            "connections": state.connections(),
            "rooms": state.registry.rooms().len(),
            "started_at": started_at,
            "heartbeat_at": now_rfc3339_millis(),
        })
        .to_string();
        // The beat comes first: a node declared dead must close its sessions, never
        // write them back, even if its subscriber reconnected meanwhile.
        let declared_dead = match redis.heartbeat(&info, NODE_TTL).await {
            // A marker found by the first beat was left for a previous run of this
            // node id, whose sessions are long gone; this run's are not stale.
            Ok(dead) => dead && beaten,
            Err(_) => continue, // logged by the broker, once per outage
        };
        beaten = true;
        if declared_dead {
            tracing::error!(
                sessions = state.registry.len(),
                "this node was declared dead while unreachable; closing its sessions (clients reconnect)"
            );
            state.registry.close_all(CloseReason::NodeExpired);
        }

        if epoch != seen_epoch {
            // Logged and reflected in readiness by the broker; retried at the next reconnect.
            let _ = redis.check_payload_key().await;
            if seen_epoch == 0 {
                clean_previous_run(&state, redis).await;
            }
            // Any connection after the first may face a Redis that lost its state
            // (even one made before the first tick saw the node connected).
            if epoch > 1 && !declared_dead {
                restore_sessions(&state, redis).await;
                let now = Instant::now();
                reconcile_at = RECONCILE_AFTER.iter().map(|d| now + *d).collect();
            }
            seen_epoch = epoch;
        }

        clean_dead_nodes(redis).await;

        let now = Instant::now();
        if reconcile_at.first().is_some_and(|t| *t <= now) {
            reconcile_at.remove(0);
            reconcile_views(&state).await;
        }
    }
}

async fn clean_previous_run(state: &AppState, redis: &RedisBroker) {
    match redis.clean_previous_run(&state.registry).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            sessions = n,
            "evicted sessions left by a previous run of this node"
        ),
        Err(e) => tracing::warn!(error = %e, "could not check for a previous run's sessions"),
    }
}

async fn clean_dead_nodes(redis: &RedisBroker) {
    let Ok(dead) = redis.dead_nodes().await else {
        return;
    };
    for node in dead {
        match redis.clean_dead_node(&node).await {
            // Zero: another survivor claimed it first (or it held nobody).
            Ok(0) => tracing::debug!(dead_node = %node, "dead node had nothing left to evict"),
            Ok(n) => {
                crate::metrics::node_cleaned();
                tracing::warn!(dead_node = %node, sessions = n, "node stopped beating; evicted its sessions");
            }
            Err(e) => {
                tracing::warn!(dead_node = %node, error = %e, "dead node cleanup interrupted; retried next beat")
            }
        }
    }
}

/// Writes every live local session back into Redis after it lost its state.
async fn restore_sessions(state: &AppState, redis: &RedisBroker) {
    let sessions = state.registry.snapshot();
    let mut restored = 0;
    for (user, handle) in &sessions {
        match redis.restore(user, handle).await {
            Ok(true) => restored += 1,
            Ok(false) => {
                // Someone else holds this user now: this session is stale.
                handle.outbox.close(CloseReason::Replaced);
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
async fn reconcile_views(state: &AppState) {
    let mut corrections = 0;
    for room in state.registry.rooms() {
        match state.broker.room_members(&room).await {
            Ok(truth) => corrections += state.registry.reconcile(&room, &truth),
            Err(e) => {
                tracing::warn!(error = %e, "view reconciliation interrupted");
                return;
            }
        }
    }
    tracing::info!(corrections, "reconciled room views after redis reconnected");
}
