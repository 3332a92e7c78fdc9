//! The membership endpoints (PROTOCOL.md section 8, core): who is in a room, and
//! where a user is connected. Open, except in `AUTH_MODE=jwt` (section 9), where
//! membership is not public.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::admin::{self, Bearer};
use super::error::ErrorBody;
use super::extract::PathParams;
use super::openapi::{BEARER_401, INVALID_ROOM_400, ROOM_ID, UNAVAILABLE_503, USER_ID};
use super::AppError;
use crate::ids::{RoomId, UserId};
use crate::protocol::{User, UserInfo};
use crate::state::AppState;

/// The body of `GET /rooms/{room_id}/users`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RoomUsers {
    /// The room asked about.
    room_id: String,
    /// How many `users`.
    count: usize,
    /// The members, on whichever node they are connected.
    users: Vec<User>,
}

/// The members of a room.
///
/// An unknown or empty room gives an empty list.
#[utoipa::path(
    get,
    path = "/rooms/{room_id}/users",
    tag = "membership",
    params(("room_id" = String, Path, description = ROOM_ID)),
    security((), ("client_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "The room's members (possibly none).", body = RoomUsers),
        (status = 400, description = INVALID_ROOM_400, body = ErrorBody),
        (status = 401, description = BEARER_401, body = ErrorBody),
        (status = 403, description = "`forbidden` (jwt mode only): a client token for another room.", body = ErrorBody),
        (status = 503, description = UNAVAILABLE_503, body = ErrorBody),
    ),
)]
pub(super) async fn room_users(
    State(state): State<AppState>,
    presented: Bearer,
    PathParams(room_id): PathParams<String>,
) -> Result<Json<RoomUsers>, AppError> {
    let room = RoomId::parse(&room_id).map_err(|_| AppError::InvalidId)?;
    admin::authorize_membership(&state, &presented, Some(room.as_str()))?;
    let users = state.broker.room_users(&room).await?;
    Ok(Json(RoomUsers {
        room_id: room.as_str().to_owned(),
        count: users.len(),
        users,
    }))
}

/// Where a user is connected.
///
/// The `USER` object plus the node holding the session.
#[utoipa::path(
    get,
    path = "/users/{user_id}",
    tag = "membership",
    params(("user_id" = String, Path, description = USER_ID)),
    security((), ("client_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "The user and the node holding the session.", body = UserInfo),
        (status = 400, description = "`invalid_id`: the user id is not valid.", body = ErrorBody),
        (status = 401, description = BEARER_401, body = ErrorBody),
        (status = 403, description = "`forbidden` (jwt mode only): a client token for another room, or for a user not connected (only the admin sees the 404).", body = ErrorBody),
        (status = 404, description = "`user_not_found`: the user is not connected anywhere.", body = ErrorBody),
        (status = 503, description = UNAVAILABLE_503, body = ErrorBody),
    ),
)]
pub(super) async fn user(
    State(state): State<AppState>,
    presented: Bearer,
    PathParams(user_id): PathParams<String>,
) -> Result<Json<UserInfo>, AppError> {
    let user = UserId::parse(&user_id).map_err(|_| AppError::InvalidId)?;
    let info = state.broker.user(&user).await?;
    admin::authorize_membership(
        &state,
        &presented,
        info.as_ref().map(|i| i.user.room_id.as_str()),
    )?;
    info.map(Json).ok_or(AppError::UserNotFound)
}
