//! `GET /ws/{room_id}/{user_id}`. Checks run in a fixed order: ids (4400), origin
//! (HTTP 403 before any upgrade, against cross-site WebSocket hijacking), node
//! capacity (1013), token (4401 / 4403); the room's own rules follow in the session.
//! Refused connections past the origin check are still upgraded, so a browser can
//! read the `error` frame and close code (PROTOCOL.md section 2).

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{OnFailedUpgrade, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ErrorBody;
use super::openapi::{ROOM_ID, USER_ID};
use super::AppError;
use crate::auth::{bearer, Denied};
use crate::ids::{RoomId, UserId};
use crate::protocol::{close_code, ErrorCode};
use crate::session::{self, Credentials};
use crate::state::AppState;

/// tungstenite's read buffer is allocated (and zeroed) with every connection and
/// kept for its life: its default is 128 KiB. Signaling frames are small, and the
/// listener's read-ahead (`SocketBuffers` in listener.rs) takes up to 8 KiB per
/// syscall and hands it out in these chunks, so a small buffer costs no extra
/// syscalls; a larger frame still grows it (tungstenite reserves a whole frame).
const READ_BUFFER_BYTES: usize = 256;

/// tungstenite hands each frame to the socket at once: its write buffer keeps
/// the capacity of the largest write it ever held for the connection's life, so
/// a burst collected there stayed allocated in every idle session. A burst's
/// frames collect in the listener's `SocketBuffers` instead, which writes them
/// in one system call when the session flushes and then frees them.
const WRITE_BUFFER_BYTES: usize = 0;

/// tungstenite's write buffer holds only what the socket did not take: at most
/// one frame of the outbound queue (itself bounded by `MAX_QUEUE_BYTES`) plus
/// control replies, behind the listener's bounded batch.
fn write_buffer_bound(max_queue_bytes: usize) -> usize {
    max_queue_bytes.saturating_add(16 * 1024)
}

/// Query parameters a client may send. They are never logged.
#[derive(Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct WsQuery {
    /// A client token (jwt mode); `Authorization: Bearer` works too.
    token: Option<String>,
    /// The room's password, for a password-protected room.
    password: Option<String>,
    /// A resume token (PROTOCOL.md section 11).
    resume: Option<String>,
    /// The last `seq` the resuming client received.
    last_seq: Option<String>,
}

/// Whether a request's `Origin` may open sessions. No `Origin` (native apps, servers) is allowed.
pub(super) fn origin_allowed(state: &AppState, headers: &HeaderMap) -> bool {
    let (Some(allowed), Some(origin)) = (
        &state.config.security.allowed_origins,
        headers.get(header::ORIGIN),
    ) else {
        return true;
    };
    origin.to_str().is_ok_and(|o| {
        allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(o.trim_end_matches('/')))
    })
}

/// Upgrades only to send one `error` frame and the close code.
fn refuse<F: OnFailedUpgrade>(
    ws: WebSocketUpgrade<F>,
    state: &AppState,
    code: ErrorCode,
    close: u16,
    text: &'static str,
) -> Response {
    let tracker = state.tracker.clone();
    ws.on_upgrade(move |socket| tracker.track_future(session::reject(socket, code, close, text)))
}

/// Opens a signaling session: a WebSocket of JSON text frames (PROTOCOL.md
/// sections 2 to 6).
///
/// A refused connection (bad id, wrong or missing token or password, full
/// room or node, draining node) is still upgraded: the server sends one `error`
/// frame, then closes with the close code of section 6 (4400 `invalid_id`, 4401
/// `unauthorized`, 4403 `forbidden` or `room_full`, 1013 `unavailable`, 1001
/// `shutdown`), so that browsers can read why. Only the origin check answers in
/// HTTP.
#[utoipa::path(
    get,
    path = "/ws/{room_id}/{user_id}",
    tag = "session",
    params(
        ("room_id" = String, Path, description = ROOM_ID),
        ("user_id" = String, Path, description = USER_ID),
        WsQuery,
    ),
    security((), ("client_token" = [])),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket session (or, for a refused connection, one `error` frame and a close code)."),
        (status = 403, description = "`forbidden_origin`: an `Origin` outside `ALLOWED_ORIGINS` (no upgrade, against cross-site WebSocket hijacking).", body = ErrorBody),
        (status = 426, description = "`upgrade_required`: a plain HTTP request, not a WebSocket handshake.", body = ErrorBody),
    ),
)]
pub(super) async fn upgrade(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<WsQuery>, QueryRejection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(WebSocketUpgradeRejection::MethodNotGet(_)) => {
            return AppError::MethodNotAllowed.into_response()
        }
        // Plain HTTP (or a malformed handshake) on the WebSocket endpoint.
        Err(_) => return AppError::UpgradeRequired.into_response(),
    };
    let max = state.config.max_message_bytes;
    let ws = ws
        .max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        // Replies to client pings are written by the WebSocket library itself, past
        // our outbound queue: without this bound a client that sends pings and never
        // reads grows the node's memory without limit.
        .max_write_buffer_size(write_buffer_bound(state.config.max_queue_bytes))
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"));

    let ids = path.ok().and_then(|Path((room, user))| {
        Some((RoomId::parse(&room).ok()?, UserId::parse(&user).ok()?))
    });
    let Some((room, user)) = ids else {
        tracing::info!("connection refused: invalid room or user id");
        return refuse(
            ws,
            &state,
            ErrorCode::InvalidId,
            close_code::INVALID_ID,
            "invalid room_id or user_id",
        );
    };
    if !origin_allowed(&state, &headers) {
        tracing::warn!(room_id = %room, user_id = %user, "connection refused: origin not allowed");
        return AppError::ForbiddenOrigin.into_response();
    }
    if state.is_draining() {
        return refuse(
            ws,
            &state,
            ErrorCode::Shutdown,
            close_code::GOING_AWAY,
            "node shutting down; reconnect",
        );
    }
    if state.registered_run().is_none() {
        tracing::info!(room_id = %room, user_id = %user, "connection refused: node not registered with the cluster yet");
        return refuse(
            ws,
            &state,
            ErrorCode::Unavailable,
            close_code::TRY_AGAIN_LATER,
            "node starting; retry",
        );
    }
    let Some(slot) = state.try_admit() else {
        tracing::warn!(
            limit = state.config.max_connections,
            "connection refused: node at MAX_CONNECTIONS"
        );
        return refuse(
            ws,
            &state,
            ErrorCode::Unavailable,
            close_code::TRY_AGAIN_LATER,
            "node at its connection limit; retry",
        );
    };

    let query = query.map(|Query(q)| q).unwrap_or_default();
    let mut credentials = Credentials {
        claims: None,
        password: query.password,
        resume: crate::resume_token::ResumeAsk::from_query(
            query.resume.as_deref(),
            query.last_seq.as_deref(),
        ),
    };
    if let Some(verifier) = &state.verifier {
        let token = query.token.as_deref().or_else(|| {
            bearer(
                headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok()),
            )
        });
        match verifier.admit(token, room.as_str(), user.as_str()) {
            Ok(claims) => credentials.claims = Some(claims),
            Err(Denied::Unauthorized) => {
                tracing::info!(room_id = %room, user_id = %user, "connection refused: missing or invalid token");
                return refuse(
                    ws,
                    &state,
                    ErrorCode::Unauthorized,
                    close_code::UNAUTHORIZED,
                    "missing, invalid or expired token",
                );
            }
            Err(Denied::Forbidden) => {
                tracing::info!(room_id = %room, user_id = %user, "connection refused: token is for another user or room");
                return refuse(
                    ws,
                    &state,
                    ErrorCode::Forbidden,
                    close_code::FORBIDDEN,
                    "token not valid for this user or room",
                );
            }
        }
    }

    // axum keeps this callback inside the connection's task for the task's whole
    // life (it is a capture of the task's future), so what it captures is boxed:
    // two pointers instead of a few hundred bytes in every idle connection.
    let tracker = state.tracker.clone();
    let start = Box::new((state, room, user, credentials, slot));
    ws.on_upgrade(move |socket| {
        let (state, room, user, credentials, slot) = *start;
        tracker.track_future(session::run(socket, state, room, user, credentials, slot))
    })
}
