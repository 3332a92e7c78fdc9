//! The admin API (PROTOCOL.md section 8): rooms, kicks and tokens. Every handler
//! takes an [`Admin`] guard, so none can forget the bearer check. Handlers act
//! through the broker, so they work whichever node gets the request and whichever
//! nodes hold the users.

use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::ErrorBody;
use super::extract::{JsonBody, PathParams, QueryParams};
use super::openapi::{
    ADMIN_401, ADMIN_403, INVALID_ROOM_400, MEDIA_415, PAYLOAD_413, ROOM_ID, UNAVAILABLE_503,
    USER_ID,
};
use super::AppError;
use crate::auth::{self, bearer, AdminDenied};
use crate::broker::{RoomInfo, RoomMeta};
use crate::ids::{RoomId, UserId};
use crate::protocol::{now_rfc3339_millis, Role};
use crate::state::AppState;

/// Default and largest page of `GET /rooms`.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// Longest room password accepted (argon2 takes any length; this bounds the work).
const MAX_PASSWORD_LEN: usize = 1024;
/// `ttl_seconds` of `POST /tokens` when none is given.
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Proof that the request carried the admin bearer.
pub(super) struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let presented = bearer(
            parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        );
        auth::check_admin(state.config.security.admin_token.as_deref(), presented)
            .map(|()| Admin)
            .map_err(|denied| match denied {
                AdminDenied::Disabled => AppError::AdminDisabled,
                AdminDenied::Missing => AppError::Unauthorized,
                AdminDenied::Wrong => AppError::Forbidden,
            })
    }
}

/// The bearer of a request, for the membership endpoints in `AUTH_MODE=jwt`.
pub(super) struct Bearer(pub Option<String>);

impl FromRequestParts<AppState> for Bearer {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, AppError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        Ok(Bearer(bearer(header).map(str::to_owned)))
    }
}

/// In `AUTH_MODE=jwt`, membership is not public: the admin token or a client
/// token covering `room` is needed. `room` is `None` when the user asked about
/// does not exist (then only the admin sees the 404).
pub(super) fn authorize_membership(
    state: &AppState,
    presented: &Bearer,
    room: Option<&str>,
) -> Result<(), AppError> {
    let Some(verifier) = &state.verifier else {
        return Ok(());
    };
    let token = presented.0.as_deref().ok_or(AppError::Unauthorized)?;
    if auth::secret_matches(state.config.security.admin_token.as_deref(), Some(token)) {
        return Ok(());
    }
    let claims = verifier.verify(token).map_err(|_| AppError::Unauthorized)?;
    match room {
        Some(room) if claims.covers(room) => Ok(()),
        _ => Err(AppError::Forbidden),
    }
}

/// A room as `GET /rooms/{room_id}` and `POST /rooms` answer it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Room {
    /// The room's id.
    room_id: String,
    /// Members connected now, on every node.
    count: usize,
    /// Whether joining needs the room's password.
    password_protected: bool,
    /// Whether members are `host` or `audience` (PROTOCOL.md section 9).
    moderated: bool,
    /// The member limit; `null` for no limit, and for rooms that only exist
    /// through their members.
    #[schema(required = true)]
    max_users: Option<u32>,
    /// RFC 3339 UTC with milliseconds; `null` for rooms that only exist through
    /// their members.
    #[schema(example = "2026-11-24T08:00:00.123Z", required = true)]
    created_at: Option<String>,
}

impl Room {
    /// What the store knows of `room`, as clients see it (never the password hash).
    fn new(room: &str, info: &RoomInfo) -> Self {
        let meta = info.meta.as_ref();
        Self {
            room_id: room.to_owned(),
            count: info.count,
            password_protected: meta.is_some_and(|m| m.password_hash.is_some()),
            moderated: meta.is_some_and(|m| m.moderated),
            max_users: meta.and_then(|m| m.max_users),
            created_at: meta.map(|m| m.created_at.clone()),
        }
    }
}

/// The body of `GET /rooms`: one page of rooms.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RoomList {
    /// Rooms in id order.
    rooms: Vec<RoomCount>,
    /// Pass back as `cursor` for the next page; `null` on the last page.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

/// One room of a `GET /rooms` page.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RoomCount {
    /// The room's id.
    room_id: String,
    /// Members connected now, on every node.
    count: usize,
}

fn parse_room(id: &str) -> Result<RoomId, AppError> {
    RoomId::parse(id).map_err(|_| AppError::InvalidId)
}

/// The query of `GET /rooms`.
// `limit` is read as text, so that a bad value gets this endpoint's own message
// rather than serde's.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PageQuery {
    /// Rooms per page, 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// `next_cursor` of the previous page; absent or empty for the first.
    cursor: Option<String>,
}

/// Lists rooms, a page at a time.
///
/// Rooms in id order; pass `next_cursor` back as `cursor` until it is `null`.
#[utoipa::path(
    get,
    path = "/rooms",
    tag = "admin",
    params(PageQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "One page of rooms.", body = RoomList),
        (status = 400, description = "`invalid_request`: `limit` is not 1 to 1000, or a query key is malformed or repeated.", body = ErrorBody),
        (status = 401, description = ADMIN_401, body = ErrorBody),
        (status = 403, description = ADMIN_403, body = ErrorBody),
        (status = 503, description = UNAVAILABLE_503, body = ErrorBody),
    ),
)]
pub(super) async fn list_rooms(
    _: Admin,
    State(state): State<AppState>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<RoomList>, AppError> {
    let limit = match q.limit.as_deref() {
        None => DEFAULT_PAGE,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_PAGE).contains(l))
            .ok_or_else(|| {
                AppError::InvalidRequest(format!(
                    "limit must be a whole number from 1 to {MAX_PAGE}"
                ))
            })?,
    };
    let cursor = q.cursor.filter(|c| !c.is_empty());
    let page = state.broker.list_rooms(cursor.as_deref(), limit).await?;
    let rooms = page
        .rooms
        .into_iter()
        .map(|(room_id, count)| RoomCount { room_id, count })
        .collect();
    Ok(Json(RoomList {
        rooms,
        next_cursor: page.next_cursor,
    }))
}

/// One room.
#[utoipa::path(
    get,
    path = "/rooms/{room_id}",
    tag = "admin",
    params(("room_id" = String, Path, description = ROOM_ID)),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The room.", body = Room),
        (status = 400, description = INVALID_ROOM_400, body = ErrorBody),
        (status = 401, description = ADMIN_401, body = ErrorBody),
        (status = 403, description = ADMIN_403, body = ErrorBody),
        (status = 404, description = "`room_not_found`: no member and not created.", body = ErrorBody),
        (status = 503, description = UNAVAILABLE_503, body = ErrorBody),
    ),
)]
pub(super) async fn get_room(
    _: Admin,
    State(state): State<AppState>,
    PathParams(room_id): PathParams<String>,
) -> Result<Json<Room>, AppError> {
    let room = parse_room(&room_id)?;
    let info = state
        .broker
        .room_info(&room)
        .await?
        .ok_or(AppError::RoomNotFound)?;
    Ok(Json(Room::new(room.as_str(), &info)))
}

/// The body of `POST /rooms`; unknown fields are refused, so a typo (`maxUsers`)
/// is an error, not a silent default.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewRoom {
    /// The room's id; generated when absent.
    room_id: Option<String>,
    /// Makes the room password-protected (1 to 1024 bytes); stored only as an
    /// argon2 hash.
    password: Option<String>,
    /// The member limit (at least 1); none when absent.
    #[schema(minimum = 1)]
    max_users: Option<u32>,
    /// Members are `host` or `audience` (PROTOCOL.md section 9).
    #[serde(default)]
    moderated: bool,
    /// User ids who are hosts in a moderated room (when tokens do not say).
    #[serde(default)]
    hosts: Vec<String>,
}

/// Creates a room.
///
/// Such a room stays while empty for `ROOM_TTL_SECONDS`.
#[utoipa::path(
    post,
    path = "/rooms",
    tag = "admin",
    request_body = NewRoom,
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "Created; the new room.", body = Room),
        (status = 400, description = "`invalid_id`: `room_id` or a host is not a valid id; `invalid_request`: not JSON, an unknown field, `max_users` 0, or a password not 1 to 1024 bytes.", body = ErrorBody),
        (status = 401, description = ADMIN_401, body = ErrorBody),
        (status = 403, description = ADMIN_403, body = ErrorBody),
        (status = 409, description = "`room_exists`: a room with this id exists.", body = ErrorBody),
        (status = 413, description = PAYLOAD_413, body = ErrorBody),
        (status = 415, description = MEDIA_415, body = ErrorBody),
        (status = 500, description = "`internal`: hashing the password failed.", body = ErrorBody),
        (status = 503, description = UNAVAILABLE_503, body = ErrorBody),
    ),
)]
pub(super) async fn create_room(
    _: Admin,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewRoom>,
) -> Result<(StatusCode, Json<Room>), AppError> {
    let room = match &body.room_id {
        Some(id) => parse_room(id)?,
        None => parse_room(&uuid::Uuid::new_v4().simple().to_string())?,
    };
    if body.hosts.iter().any(|h| UserId::parse(h).is_err()) {
        return Err(AppError::InvalidId);
    }
    if body.max_users == Some(0) {
        return Err(AppError::InvalidRequest(
            "max_users must be at least 1".into(),
        ));
    }
    let password_hash = match body.password {
        None => None,
        Some(p) if p.is_empty() || p.len() > MAX_PASSWORD_LEN => {
            return Err(AppError::InvalidRequest(format!(
                "password must be 1 to {MAX_PASSWORD_LEN} bytes"
            )))
        }
        Some(p) => Some(
            // argon2 is slow by design: keep it off the async worker threads.
            tokio::task::spawn_blocking(move || auth::hash_password(&p))
                .await
                .ok()
                .flatten()
                .ok_or_else(|| AppError::Internal("password hashing failed".into()))?,
        ),
    };
    let meta = RoomMeta {
        created_at: now_rfc3339_millis(),
        password_hash,
        max_users: body.max_users,
        moderated: body.moderated,
        hosts: body.hosts,
    };
    if !state.broker.create_room(&room, &meta).await? {
        return Err(AppError::RoomExists);
    }
    tracing::info!(room_id = %room, moderated = meta.moderated, password = meta.password_hash.is_some(), "room created");
    let info = RoomInfo {
        count: 0,
        meta: Some(meta),
    };
    Ok((StatusCode::CREATED, Json(Room::new(room.as_str(), &info))))
}

/// Closes a room.
///
/// Every member, on every node, gets `kicked` and close code 4410.
#[utoipa::path(
    delete,
    path = "/rooms/{room_id}",
    tag = "admin",
    params(("room_id" = String, Path, description = ROOM_ID)),
    security(("admin_token" = [])),
    responses(
        (status = 204, description = "Closed."),
        (status = 400, description = INVALID_ROOM_400, body = ErrorBody),
        (status = 401, description = ADMIN_401, body = ErrorBody),
        (status = 403, description = ADMIN_403, body = ErrorBody),
        (status = 404, description = "`room_not_found`: no member and not created.", body = ErrorBody),
        (status = 503, description = UNAVAILABLE_503, body = ErrorBody),
    ),
)]
pub(super) async fn delete_room(
    _: Admin,
    State(state): State<AppState>,
    PathParams(room_id): PathParams<String>,
) -> Result<StatusCode, AppError> {
    let room = parse_room(&room_id)?;
    let kicked = state
        .broker
        .close_room(&room)
        .await?
        .ok_or(AppError::RoomNotFound)?;
    tracing::info!(room_id = %room, kicked, "room closed by an administrator");
    Ok(StatusCode::NO_CONTENT)
}

/// Force-disconnects a member, on whichever node holds it.
///
/// The user gets `kicked` and close code 4410; the room hears `user_left`
/// (`kicked`).
#[utoipa::path(
    delete,
    path = "/rooms/{room_id}/users/{user_id}",
    tag = "admin",
    params(
        ("room_id" = String, Path, description = ROOM_ID),
        ("user_id" = String, Path, description = USER_ID),
    ),
    security(("admin_token" = [])),
    responses(
        (status = 204, description = "Kicked."),
        (status = 400, description = "`invalid_id`: the room or user id is not valid.", body = ErrorBody),
        (status = 401, description = ADMIN_401, body = ErrorBody),
        (status = 403, description = ADMIN_403, body = ErrorBody),
        (status = 404, description = "`user_not_found`: the user is not in this room.", body = ErrorBody),
        (status = 503, description = UNAVAILABLE_503, body = ErrorBody),
    ),
)]
pub(super) async fn kick_user(
    _: Admin,
    State(state): State<AppState>,
    PathParams((room_id, user_id)): PathParams<(String, String)>,
) -> Result<StatusCode, AppError> {
    let room = parse_room(&room_id)?;
    let user = UserId::parse(&user_id).map_err(|_| AppError::InvalidId)?;
    if !state.broker.kick(&room, &user).await? {
        return Err(AppError::UserNotFound);
    }
    tracing::info!(room_id = %room, user_id = %user, "user kicked by an administrator");
    Ok(StatusCode::NO_CONTENT)
}

/// The body of `POST /tokens`; unknown fields are refused.
// `role` is read as text, so that a bad value gets this endpoint's own message
// rather than serde's.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewToken {
    /// The token's `sub`: the user it admits.
    user_id: String,
    /// The room it admits, or `*` for any room.
    room_id: String,
    /// The role in moderated rooms; no role means `audience` there.
    #[schema(value_type = Option<Role>)]
    role: Option<String>,
    /// Lifetime in seconds (default 3600); capped at `TOKEN_MAX_TTL_SECONDS`.
    #[schema(minimum = 1)]
    ttl_seconds: Option<u64>,
}

/// The body of a `POST /tokens` answer.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct IssuedToken {
    /// A client token (JWT) for `?token=` or `Authorization: Bearer`.
    token: String,
    /// RFC 3339 UTC with milliseconds.
    #[schema(example = "2026-11-24T09:00:00.000Z")]
    expires_at: String,
}

/// Issues a client token.
///
/// Needs `JWT_SECRET` (HS256).
#[utoipa::path(
    post,
    path = "/tokens",
    tag = "admin",
    request_body = NewToken,
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "Issued.", body = IssuedToken),
        (status = 400, description = "`invalid_id`: `user_id` or `room_id` is not valid; `invalid_request`: not JSON, an unknown field, a `role` other than peer, host or audience, or `ttl_seconds` 0.", body = ErrorBody),
        (status = 401, description = ADMIN_401, body = ErrorBody),
        (status = 403, description = ADMIN_403, body = ErrorBody),
        (status = 409, description = "`tokens_disabled`: `JWT_SECRET` is not set.", body = ErrorBody),
        (status = 413, description = PAYLOAD_413, body = ErrorBody),
        (status = 415, description = MEDIA_415, body = ErrorBody),
        (status = 500, description = "`internal`: signing failed.", body = ErrorBody),
    ),
)]
pub(super) async fn create_token(
    _: Admin,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewToken>,
) -> Result<(StatusCode, Json<IssuedToken>), AppError> {
    if state.config.security.token_secret.is_none() {
        return Err(AppError::TokensDisabled);
    }
    UserId::parse(&body.user_id).map_err(|_| AppError::InvalidId)?;
    if body.room_id != "*" {
        parse_room(&body.room_id)?;
    }
    let role = match body.role.as_deref() {
        None => None,
        Some("peer") => Some(Role::Peer),
        Some("host") => Some(Role::Host),
        Some("audience") => Some(Role::Audience),
        Some(_) => {
            return Err(AppError::InvalidRequest(
                "role must be peer, host or audience".into(),
            ))
        }
    };
    // A token that expires at once is never what a caller means; larger than
    // TOKEN_MAX_TTL_SECONDS is capped by `issue` (documented), and values that are
    // not a u64 at all were refused by the JSON extractor with 400.
    let ttl = match body.ttl_seconds {
        None => DEFAULT_TOKEN_TTL,
        Some(0) => {
            return Err(AppError::InvalidRequest(
                "ttl_seconds must be at least 1 (larger than TOKEN_MAX_TTL_SECONDS is capped)"
                    .into(),
            ))
        }
        Some(secs) => Duration::from_secs(secs),
    };
    let (token, exp) = auth::issue(
        &state.config.security,
        &body.user_id,
        &body.room_id,
        role,
        ttl,
    )
    .map_err(|e| AppError::Internal(e.to_string()))?;
    let expires_at = crate::protocol::rfc3339_millis(exp)
        .ok_or_else(|| AppError::Internal("token expiry out of range".into()))?;
    tracing::info!(user_id = %body.user_id, room_id = %body.room_id, "token issued");
    Ok((StatusCode::CREATED, Json(IssuedToken { token, expires_at })))
}
