//! `GET /ice-servers` (PROTOCOL.md section 12): the ICE servers a client would get
//! in `room_users`, for clients that set up media before joining. The TURN
//! credentials are for the bearer token's user in jwt mode (where a bearer is
//! required: a client token, or the admin token), else for `user_id` when it is a
//! valid id, else for a random id.

use std::time::SystemTime;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::admin::Bearer;
use super::error::{AppError, ErrorBody};
use super::extract::QueryParams;
use super::openapi::BEARER_401;
use crate::auth;
use crate::ids::UserId;
use crate::protocol::rfc3339_millis;
use crate::state::AppState;

/// The query of `GET /ice-servers`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct IceQuery {
    /// Whose TURN credentials (outside jwt mode); a random `anon-…` id when
    /// absent or not a valid id.
    user_id: Option<String>,
}

/// The body of `GET /ice-servers`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct IceServersAnswer {
    /// RTCIceServer objects, ready for `new RTCPeerConnection({iceServers})`:
    /// `ICE_SERVERS` as configured, then the TURN entry when TURN is configured.
    ice_servers: Vec<IceServer>,
    /// When the TURN credentials expire (RFC 3339 UTC, milliseconds); `null`
    /// without TURN.
    #[schema(example = "2026-11-24T09:00:00.000Z", required = true)]
    expires_at: Option<String>,
}

/// One RTCIceServer (the keys `ICE_SERVERS` is checked for at startup).
// Deserialize too: the configured list is read into this shape.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(super) struct IceServer {
    /// One URL or several (`stun:`, `stuns:`, `turn:` or `turns:`).
    urls: IceUrls,
    /// TURN user name; for the generated entry `<expiry>:<user_id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false)]
    username: Option<String>,
    /// TURN password; for the generated entry base64(HMAC-SHA1(TURN_SECRET, username)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false)]
    credential: Option<String>,
}

/// `urls` of an RTCIceServer: browsers take a string or an array.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub(super) enum IceUrls {
    /// One URL.
    One(String),
    /// Several URLs.
    Many(Vec<String>),
}

/// The ICE servers a client would get in `room_users`.
///
/// For clients that set up media before joining. In jwt mode a bearer is
/// required (a client token, whose `sub` the TURN credentials are for, or the
/// admin token).
#[utoipa::path(
    get,
    path = "/ice-servers",
    tag = "session",
    params(IceQuery),
    security((), ("client_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "The list, with the TURN credentials' expiry.", body = IceServersAnswer,
            headers(("Cache-Control" = String, description = "`no-store`: the answer carries credentials."))),
        (status = 400, description = "`invalid_request`: a malformed or repeated query key.", body = ErrorBody),
        (status = 401, description = BEARER_401, body = ErrorBody),
        (status = 500, description = "`internal`: the configured list did not have the RTCIceServer shape.", body = ErrorBody),
    ),
)]
pub(super) async fn ice_servers(
    State(state): State<AppState>,
    bearer: Bearer,
    QueryParams(query): QueryParams<IceQuery>,
) -> Result<Response, AppError> {
    let user = credential_user(&state, &bearer, query.user_id.as_deref())?;
    let handout = state.config.ice.for_user(&user, SystemTime::now());
    let expires_at = handout.expires_at.and_then(rfc3339_millis);
    // Cannot fail: `ICE_SERVERS` was checked for exactly this shape at startup,
    // and the TURN entry is built in it.
    let ice_servers = handout
        .servers
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<Vec<IceServer>, _>>()
        // The cause is not logged: it could quote a credential.
        .map_err(|_| AppError::Internal("an ICE server entry is not an RTCIceServer".into()))?;
    let body = IceServersAnswer {
        ice_servers,
        expires_at,
    };
    // Credentials: never kept by a cache on the way.
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

/// Whose TURN credentials these are.
fn credential_user(
    state: &AppState,
    bearer: &Bearer,
    asked: Option<&str>,
) -> Result<String, AppError> {
    if let Some(verifier) = &state.verifier {
        let token = bearer.0.as_deref().ok_or(AppError::Unauthorized)?;
        let admin = state.config.security.admin_token.as_deref();
        if !auth::secret_matches(admin, Some(token)) {
            let claims = verifier.verify(token).map_err(|_| AppError::Unauthorized)?;
            return Ok(claims.sub);
        }
    }
    Ok(match asked.map(UserId::parse) {
        Some(Ok(user)) => user.to_string(),
        _ => format!("anon-{}", uuid::Uuid::new_v4().simple()),
    })
}
