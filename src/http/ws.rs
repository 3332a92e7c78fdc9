//! `GET /ws/{room_id}/{user_id}`. Refused connections are still upgraded, so a
//! browser can read the `error` frame and close code (PROTOCOL.md section 2).

use axum::extract::rejection::PathRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::response::Response;

use crate::app::AppState;
use crate::ids::{RoomId, UserId};
use crate::protocol::{close_code, ErrorCode};
use crate::session;

/// tungstenite's default read buffer is 128 KiB per connection; signaling frames
/// are small, and at 100k connections that default alone would be 12 GiB.
const READ_BUFFER_BYTES: usize = 8 * 1024;

pub(super) async fn upgrade(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    ws: WebSocketUpgrade,
) -> Response {
    let max = state.config.max_message_bytes;
    let ws = ws
        .max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"));
    let ids = path.ok().and_then(|Path((room, user))| {
        Some((RoomId::parse(&room).ok()?, UserId::parse(&user).ok()?))
    });
    let tracker = state.tracker.clone();

    let Some((room, user)) = ids else {
        tracing::info!("connection refused: invalid room or user id");
        return ws.on_upgrade(move |socket| {
            tracker.track_future(session::reject(
                socket,
                ErrorCode::InvalidId,
                close_code::INVALID_ID,
                "invalid room_id or user_id",
            ))
        });
    };
    if state.is_draining() {
        return ws.on_upgrade(move |socket| {
            tracker.track_future(session::reject(
                socket,
                ErrorCode::Shutdown,
                close_code::GOING_AWAY,
                "node shutting down; reconnect",
            ))
        });
    }
    let Some(slot) = state.try_admit() else {
        tracing::warn!(
            limit = state.config.max_connections,
            "connection refused: node at MAX_CONNECTIONS"
        );
        return ws.on_upgrade(move |socket| {
            tracker.track_future(session::reject(
                socket,
                ErrorCode::Unavailable,
                close_code::TRY_AGAIN_LATER,
                "node at its connection limit; retry",
            ))
        });
    };
    ws.on_upgrade(move |socket| {
        tracker.track_future(async move {
            session::run(socket, state, room, user).await;
            drop(slot);
        })
    })
}
