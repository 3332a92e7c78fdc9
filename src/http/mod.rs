//! Routes. Handlers are thin: parse ids, ask the broker, shape JSON.

mod error;
mod ws;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

pub use error::AppError;

use crate::app::AppState;
use crate::ids::{RoomId, UserId};
use crate::protocol::UserInfo;

/// Every endpoint of the node on one router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ws/{room_id}/{user_id}", get(ws::upgrade))
        .route("/rooms/{room_id}/users", get(room_users))
        .route("/users/{user_id}", get(user))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { AppError::NotFound })
        .with_state(state)
}

async fn room_users(
    State(state): State<AppState>,
    Path(room_id): Path<String>,
) -> Result<Json<serde_json::Value>, AppError> {
    let room = RoomId::parse(&room_id).map_err(|_| AppError::InvalidId)?;
    let users = state.broker.room_users(&room).await?;
    Ok(Json(
        json!({"room_id": room.as_str(), "count": users.len(), "users": users}),
    ))
}

async fn user(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
) -> Result<Json<UserInfo>, AppError> {
    let user = UserId::parse(&user_id).map_err(|_| AppError::InvalidId)?;
    state
        .broker
        .user(&user)
        .await?
        .map(Json)
        .ok_or(AppError::UserNotFound)
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
    } else if state.broker.ready().await {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    let body = json!({
        "status": word,
        "node_id": state.config.node_id.as_str(),
        "mode": state.broker.mode(),
    });
    (status, Json(body)).into_response()
}
