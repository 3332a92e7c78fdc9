//! Routes. Handlers are thin: parse ids, ask the broker, shape JSON.

mod activity;
mod admin;
mod error;
mod extract;
mod ice;
pub mod listener;
mod ops;
mod pending;
mod ws;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use error::AppError;
use extract::PathParams;

/// Largest REST request body. Admin bodies are a few hundred bytes; axum's 2 MiB
/// default would let each slow client make the node buffer megabytes.
const MAX_BODY_BYTES: usize = 64 * 1024;

use crate::ids::{RoomId, UserId};
use crate::protocol::UserInfo;
use crate::state::AppState;

/// Every endpoint of the node on one router.
pub fn router(state: AppState) -> Router {
    let cors = cors(&state);
    Router::new()
        .route("/ws/{room_id}/{user_id}", get(ws::upgrade))
        .route("/rooms", get(admin::list_rooms).post(admin::create_room))
        .route(
            "/rooms/{room_id}",
            get(admin::get_room).delete(admin::delete_room),
        )
        .route("/rooms/{room_id}/users", get(room_users))
        .route("/rooms/{room_id}/users/{user_id}", delete(admin::kick_user))
        .route("/users/{user_id}", get(user))
        .route("/tokens", post(admin::create_token))
        .route("/metrics", get(ops::metrics))
        .route("/stats", get(ops::stats))
        .route("/nodes", get(ops::nodes))
        .route("/ice-servers", get(ice::ice_servers))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { AppError::NotFound })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(cors)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_span,
        ))
        .with_state(state)
}

/// Puts each request in a span with the node id, so handler logs carry it in JSON
/// logs too. The path is logged, never the query string (tokens, passwords).
async fn request_span(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "http",
        node_id = %state.config.node_id,
        method = %request.method(),
        path = %request.uri().path(),
    );
    next.run(request).instrument(span).await
}

/// CORS for browser dashboards, from the same `ALLOWED_ORIGINS` as WebSockets.
fn cors(state: &AppState) -> CorsLayer {
    let origins = match &state.config.security.allowed_origins {
        None => AllowOrigin::any(),
        Some(list) => AllowOrigin::list(list.iter().filter_map(|o| HeaderValue::from_str(o).ok())),
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
}

async fn room_users(
    State(state): State<AppState>,
    presented: admin::Bearer,
    PathParams(room_id): PathParams<String>,
) -> Result<Json<serde_json::Value>, AppError> {
    let room = RoomId::parse(&room_id).map_err(|_| AppError::InvalidId)?;
    admin::authorize_membership(&state, &presented, Some(room.as_str()))?;
    let users = state.broker.room_users(&room).await?;
    Ok(Json(
        json!({"room_id": room.as_str(), "count": users.len(), "users": users}),
    ))
}

async fn user(
    State(state): State<AppState>,
    presented: admin::Bearer,
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

async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "node_id": state.config.node_id.as_str(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

async fn readyz(State(state): State<AppState>) -> Response {
    let (status, word) = if state.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if state.registered_run().is_none() {
        // Not ready before the node registered itself: a member it took before
        // could never be evicted by the cluster should the node die.
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    } else if state.broker.ready().await {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    let mut body = json!({
        "status": word,
        "node_id": state.config.node_id.as_str(),
        "mode": state.broker.mode(),
        "redis_mode": state.broker.redis_mode(),
    });
    if let Some(shards) = state.broker.shards().await {
        body["shards"] = json!(shards);
    }
    (status, Json(body)).into_response()
}
