//! The admin API (PROTOCOL.md section 8): rooms, kicks and tokens. Every handler
//! takes an [`Admin`] guard, so none can forget the bearer check. Handlers act
//! through the broker, so they work whichever node gets the request and whichever
//! nodes hold the users.

use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{JsonBody, PathParams, QueryParams};
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

fn room_json(room: &str, info: &RoomInfo) -> Value {
    let meta = info.meta.as_ref();
    json!({
        "room_id": room,
        "count": info.count,
        "password_protected": meta.is_some_and(|m| m.password_hash.is_some()),
        "moderated": meta.is_some_and(|m| m.moderated),
        "max_users": meta.and_then(|m| m.max_users),
        "created_at": meta.map(|m| m.created_at.clone()),
    })
}

fn parse_room(id: &str) -> Result<RoomId, AppError> {
    RoomId::parse(id).map_err(|_| AppError::InvalidId)
}

#[derive(Deserialize)]
pub(super) struct PageQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

pub(super) async fn list_rooms(
    _: Admin,
    State(state): State<AppState>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<Value>, AppError> {
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
    let rooms: Vec<Value> = page
        .rooms
        .iter()
        .map(|(id, count)| json!({"room_id": id, "count": count}))
        .collect();
    Ok(Json(
        json!({"rooms": rooms, "next_cursor": page.next_cursor}),
    ))
}

pub(super) async fn get_room(
    _: Admin,
    State(state): State<AppState>,
    PathParams(room_id): PathParams<String>,
) -> Result<Json<Value>, AppError> {
    let room = parse_room(&room_id)?;
    let info = state
        .broker
        .room_info(&room)
        .await?
        .ok_or(AppError::RoomNotFound)?;
    Ok(Json(room_json(room.as_str(), &info)))
}

/// `POST /rooms` body; unknown fields are refused so a typo (`maxUsers`) is an error, not a silent default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewRoom {
    room_id: Option<String>,
    password: Option<String>,
    max_users: Option<u32>,
    #[serde(default)]
    moderated: bool,
    #[serde(default)]
    hosts: Vec<String>,
}

pub(super) async fn create_room(
    _: Admin,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewRoom>,
) -> Result<Response, AppError> {
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
    Ok((StatusCode::CREATED, Json(room_json(room.as_str(), &info))).into_response())
}

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

/// `POST /tokens` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewToken {
    user_id: String,
    room_id: String,
    role: Option<String>,
    ttl_seconds: Option<u64>,
}

pub(super) async fn create_token(
    _: Admin,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewToken>,
) -> Result<Response, AppError> {
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
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token, "expires_at": expires_at})),
    )
        .into_response())
}
