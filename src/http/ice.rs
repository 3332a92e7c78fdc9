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
use serde::Deserialize;
use serde_json::json;

use super::admin::Bearer;
use super::error::AppError;
use super::extract::QueryParams;
use crate::auth;
use crate::ids::UserId;
use crate::protocol::rfc3339_millis;
use crate::state::AppState;

#[derive(Deserialize)]
pub(super) struct IceQuery {
    user_id: Option<String>,
}

pub(super) async fn ice_servers(
    State(state): State<AppState>,
    bearer: Bearer,
    QueryParams(query): QueryParams<IceQuery>,
) -> Result<Response, AppError> {
    let user = credential_user(&state, &bearer, query.user_id.as_deref())?;
    let handout = state.config.ice.for_user(&user, SystemTime::now());
    let expires_at = handout.expires_at.and_then(rfc3339_millis);
    let body = json!({"ice_servers": handout.servers, "expires_at": expires_at});
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
