//! One client text frame: validate, then answer (`pong`, `error`) or relay it.
//! Every failure becomes an `error` frame to the sender; the connection stays usable.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use crate::broker::RelayOutcome;
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
    match parse_client_frame_as(text, role) {
        Err(rejection) => {
            tracing::debug!(code = rejection.code.as_str(), "rejected frame");
            metrics::error_sent(rejection.code.as_str());
            if rejection.code == ErrorCode::Forbidden {
                metrics::relay_failed(rejection.code.as_str());
            }
            outbox.push(rejection.to_frame());
        }
        Ok(ClientFrame::Ping { payload }) => {
            outbox.push(pong_frame(payload));
        }
        Ok(ClientFrame::Relay(relay)) => relay_message(state, room, user, outbox, relay).await,
    }
}

async fn relay_message(
    state: &AppState,
    room: &RoomId,
    user: &UserId,
    outbox: &Outbox,
    msg: Relay<'_>,
) {
    let started = Instant::now();
    let reply_error = |code: ErrorCode, message: &str| {
        metrics::error_sent(code.as_str());
        if code != ErrorCode::InvalidTarget {
            metrics::relay_failed(code.as_str());
        }
        outbox.push(error_frame(code, message, msg.id, msg.target.as_deref()));
    };
    match msg.target.as_deref() {
        Some(target) if target == user.as_str() => {
            reply_error(
                ErrorCode::InvalidTarget,
                "a message cannot target its sender",
            );
        }
        Some(target) => {
            let frame = relayed_frame(&msg.kind, user, Some(target), msg.payload);
            match state.broker.relay_to_user(room, target, &frame).await {
                Ok(RelayOutcome::Delivered) => metrics::relayed(&msg.kind, true, started.elapsed()),
                Ok(outcome) => {
                    if let Some(suppressed) = TARGET_NOT_FOUND_LOG.admit() {
                        tracing::warn!(target_user = target, kind = %msg.kind, ?outcome, suppressed, "relay target not found");
                    }
                    reply_error(ErrorCode::TargetNotFound, "the target is not in this room");
                }
                Err(e) => {
                    tracing::warn!(target_user = target, kind = %msg.kind, error = %e, "relay failed");
                    reply_error(
                        ErrorCode::Unavailable,
                        "the message could not be relayed; it was not delivered",
                    );
                }
            }
        }
        None => {
            let frame = relayed_frame(&msg.kind, user, None, msg.payload);
            let result = state.broker.relay_to_room(room, user, &frame).await;
            if result.is_ok() {
                metrics::relayed(&msg.kind, false, started.elapsed());
            }
            if let Err(e) = result {
                tracing::warn!(kind = %msg.kind, error = %e, "broadcast failed");
                reply_error(
                    ErrorCode::Unavailable,
                    "the broadcast could not be relayed; it was not delivered",
                );
            }
        }
    }
}
