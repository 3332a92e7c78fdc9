//! One client text frame: validate, then answer (`pong`, `error`) or relay it.
//! Every failure becomes an `error` frame to the sender; the connection stays usable.

use crate::app::AppState;
use crate::broker::RelayOutcome;
use crate::ids::{RoomId, UserId};
use crate::protocol::{
    error_frame, parse_client_frame_as, pong_frame, relayed_frame, ClientFrame, ErrorCode, Relay,
    Role,
};

use super::outbox::Outbox;

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
    let reply_error = |code: ErrorCode, message: &str| {
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
                Ok(RelayOutcome::Delivered) => {}
                Ok(outcome) => {
                    tracing::warn!(target_user = target, kind = %msg.kind, ?outcome, "relay target not found");
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
            if let Err(e) = state.broker.relay_to_room(room, user, &frame).await {
                tracing::warn!(kind = %msg.kind, error = %e, "broadcast failed");
                reply_error(
                    ErrorCode::Unavailable,
                    "the broadcast could not be relayed; it was not delivered",
                );
            }
        }
    }
}
