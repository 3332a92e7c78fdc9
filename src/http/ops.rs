//! Operations endpoints: `/metrics` for Prometheus (open unless `METRICS_TOKEN`),
//! and the admin-only `/stats` (this node) and `/nodes` (the cluster).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::admin::{Admin, Bearer};
use super::AppError;
use crate::auth;
use crate::broker::StoreStatus;
use crate::protocol::now_rfc3339_millis;
use crate::state::AppState;

pub(super) async fn metrics(
    State(state): State<AppState>,
    presented: Bearer,
) -> Result<Response, AppError> {
    if let Some(token) = state.config.security.metrics_token.as_deref() {
        match presented.0.as_deref() {
            None => return Err(AppError::Unauthorized),
            Some(p) if !auth::secret_matches(Some(token), Some(p)) => {
                return Err(AppError::Forbidden)
            }
            Some(_) => {}
        }
    }
    let body = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

pub(super) async fn stats(_: Admin, State(state): State<AppState>) -> Json<Value> {
    let snapshot = state.stats.snapshot();
    let mut redis = match state.broker.store_status().await {
        StoreStatus::Standalone => json!({"state": "standalone"}),
        StoreStatus::Up { used_memory } => json!({"state": "up", "used_memory": used_memory}),
        StoreStatus::Down => json!({"state": "down", "used_memory": null}),
    };
    if let Some(shards) = state.broker.shards().await {
        redis["shards"] = json!(shards);
    }
    Json(json!({
        "node_id": state.config.node_id.as_str(),
        "mode": state.broker.mode(),
        "redis_mode": state.broker.redis_mode(),
        "connections": state.connections(),
        "rooms": state.registry.rooms().len(),
        "uptime_seconds": snapshot.uptime_seconds,
        "messages_in": snapshot.messages_in,
        "messages_out": snapshot.messages_out,
        "messages_in_per_second": snapshot.messages_in_per_second,
        "messages_out_per_second": snapshot.messages_out_per_second,
        "rss_bytes": snapshot.rss_bytes,
        "cpu_seconds": snapshot.cpu_seconds,
        "redis": redis,
    }))
}

pub(super) async fn nodes(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<Value>, AppError> {
    let nodes = match state.broker.nodes().await? {
        Some(nodes) => nodes,
        None => vec![json!({
            "node_id": state.config.node_id.as_str(),
            "addr": format!("{}:{}", state.config.host, state.config.port),
            "connections": state.connections(),
            "rooms": state.registry.rooms().len(),
            "heartbeat_at": now_rfc3339_millis(),
        })],
    };
    Ok(Json(json!({"nodes": nodes, "count": nodes.len()})))
}
