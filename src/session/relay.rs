//! Client text frames: validate each, then answer it (`pong`, `error`) or relay it;
//! the relays of consecutive frames go to the broker as one burst, in order.
//! Every failure becomes an `error` frame to the sender; the connection stays usable.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use crate::broker::{BrokerError, Outbound, RelayOutcome, Relayed};
use crate::ids::{RoomId, UserId};
use crate::log_limit::LogLimiter;
use crate::metrics;
use crate::protocol::{
    error_frame, parse_client_frame_as, pong_frame, relayed_frame, ClientFrame, ErrorCode, Relay,
    Role,
};
use crate::state::AppState;

use crate::outbox::Outbox;

/// `target_not_found` is logged at WARN (PROTOCOL.md section 4), but a client can
/// trigger it with every frame: node-wide, at most 10 lines per 10 s, the next
/// line carrying how many were suppressed.
static TARGET_NOT_FOUND_LOG: LazyLock<LogLimiter> =
    LazyLock::new(|| LogLimiter::new(10, Duration::from_secs(10)));

/// Handles one text frame from `user`; returns once any relay has been published.
pub(super) async fn handle_text(
    state: &AppState,
    room: &RoomId,
    user: &UserId,
    role: Role,
    outbox: &Outbox,
    text: &str,
) {
    handle_burst(state, room, user, role, outbox, &[text]).await;
}

/// Handles text frames `user` sent back to back, in order: the relays among them
/// go to the broker together (one round trip where it can), and an answer to
/// the sender (`pong`, `error`) is pushed only after the relays of the frames
/// before it, so the sender sees its answers in the order of its frames.
pub(super) async fn handle_burst<T: std::ops::Deref<Target = str>>(
    state: &AppState,
    room: &RoomId,
    user: &UserId,
    role: Role,
    outbox: &Outbox,
    texts: &[T],
) {
    let mut pending: Vec<Pending<'_>> = Vec::new();
    // The burst was read at once: one clock reading times all its relays.
    let started = Instant::now();
    for text in texts {
        match parse_client_frame_as(text, role) {
            Err(rejection) => {
                relay_pending(state, room, user, outbox, &mut pending).await;
                tracing::debug!(code = rejection.code.as_str(), "rejected frame");
                metrics::error_sent(rejection.code.as_str());
                if rejection.code == ErrorCode::Forbidden {
                    metrics::relay_failed(rejection.code.as_str());
                }
                outbox.push(rejection.to_frame());
            }
            Ok(ClientFrame::Ping { payload }) => {
                relay_pending(state, room, user, outbox, &mut pending).await;
                outbox.push(pong_frame(payload));
            }
            Ok(ClientFrame::Relay(relay)) if relay.target.as_deref() == Some(user.as_str()) => {
                relay_pending(state, room, user, outbox, &mut pending).await;
                reply_error(
                    outbox,
                    &relay,
                    ErrorCode::InvalidTarget,
                    "a message cannot target its sender",
                );
            }
            Ok(ClientFrame::Relay(relay)) => {
                let frame =
                    relayed_frame(&relay.kind, user, relay.target.as_deref(), relay.payload);
                pending.push(Pending {
                    relay,
                    frame,
                    started,
                });
            }
        }
    }
    relay_pending(state, room, user, outbox, &mut pending).await;
}

/// A validated relay waiting for its burst to be sent.
struct Pending<'a> {
    relay: Relay<'a>,
    /// The frame as the receivers get it (taken when the burst is sent).
    frame: String,
    started: Instant,
}

/// Sends the pending relays as one burst and answers the failed ones.
async fn relay_pending(
    state: &AppState,
    room: &RoomId,
    user: &UserId,
    outbox: &Outbox,
    pending: &mut Vec<Pending<'_>>,
) {
    if pending.is_empty() {
        return;
    }
    let burst: Vec<Outbound<'_>> = pending
        .iter_mut()
        .map(|p| {
            let frame = std::mem::take(&mut p.frame);
            match p.relay.target.as_deref() {
                Some(target) => Outbound::ToUser { target, frame },
                None => Outbound::ToRoom { frame },
            }
        })
        .collect();
    let results = state.broker.relay_burst(room, user, &burst).await;
    drop(burst);
    match results {
        Ok(results) => {
            for (p, result) in pending.iter().zip(results) {
                report(outbox, p, result);
            }
        }
        Err(e) => {
            tracing::warn!(frames = pending.len(), error = %e, "relay failed");
            for p in pending.iter() {
                reply_unavailable(outbox, &p.relay);
            }
        }
    }
    pending.clear();
}

/// Counts one relay's result and answers the sender when it failed.
fn report(outbox: &Outbox, p: &Pending<'_>, result: Result<Relayed, BrokerError>) {
    let msg = &p.relay;
    match result {
        Ok(Relayed::ToUser(RelayOutcome::Delivered)) => {
            metrics::relayed(&msg.kind, true, p.started.elapsed())
        }
        Ok(Relayed::ToUser(outcome)) => {
            if let Some(suppressed) = TARGET_NOT_FOUND_LOG.admit() {
                tracing::warn!(target_user = msg.target.as_deref(), kind = %msg.kind, ?outcome, suppressed, "relay target not found");
            }
            reply_error(
                outbox,
                msg,
                ErrorCode::TargetNotFound,
                "the target is not in this room",
            );
        }
        Ok(Relayed::ToRoom(_)) => metrics::relayed(&msg.kind, false, p.started.elapsed()),
        Err(e) => {
            tracing::warn!(target_user = msg.target.as_deref(), kind = %msg.kind, error = %e, "relay failed");
            reply_unavailable(outbox, msg);
        }
    }
}

/// The answer to a relay the store could not take: it was not delivered.
fn reply_unavailable(outbox: &Outbox, msg: &Relay<'_>) {
    let message = match msg.target {
        Some(_) => "the message could not be relayed; it was not delivered",
        None => "the broadcast could not be relayed; it was not delivered",
    };
    reply_error(outbox, msg, ErrorCode::Unavailable, message);
}

fn reply_error(outbox: &Outbox, msg: &Relay<'_>, code: ErrorCode, message: &str) {
    metrics::error_sent(code.as_str());
    if code != ErrorCode::InvalidTarget {
        metrics::relay_failed(code.as_str());
    }
    outbox.push(error_frame(code, message, msg.id, msg.target.as_deref()));
}
