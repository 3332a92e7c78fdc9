//! Operations endpoints: `/metrics` for Prometheus (open unless `METRICS_TOKEN`),
//! and the admin-only `/stats` (this node) and `/nodes` (the cluster).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::admin::{Admin, Bearer};
use super::error::ErrorBody;
use super::openapi::{ADMIN_401, ADMIN_403, UNAVAILABLE_503};
use super::AppError;
use crate::auth;
use crate::broker::{ShardHealth, StoreStatus};
use crate::protocol::now_rfc3339_millis;
use crate::state::AppState;

/// The Prometheus text exposition format, version 0.0.4.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Prometheus metrics of this node.
///
/// Open unless `METRICS_TOKEN` is set, so Prometheus can scrape it.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    security((), ("metrics_token" = [])),
    responses(
        (status = 200, description = "The metrics, in the Prometheus text format.", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8"),
        (status = 401, description = "`unauthorized` (`METRICS_TOKEN` set): no bearer token.", body = ErrorBody),
        (status = 403, description = "`forbidden` (`METRICS_TOKEN` set): a wrong token.", body = ErrorBody),
    ),
)]
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
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        body,
    )
        .into_response())
}

/// The body of `GET /stats`: this node's figures.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Stats {
    /// The node that answered.
    node_id: String,
    /// `redis` (nodes sharing a Redis) or `standalone` (state in memory).
    #[schema(example = "standalone")]
    mode: String,
    /// How Redis is reached: `single`, `sentinel` or `cluster`; `null` standalone.
    #[schema(example = "single", required = true)]
    redis_mode: Option<String>,
    /// WebSocket sessions open on this node.
    connections: usize,
    /// Rooms with a member on this node.
    rooms: usize,
    /// Seconds since the process started.
    uptime_seconds: u64,
    /// Frames received from clients since start.
    messages_in: u64,
    /// Frames written to clients since start.
    messages_out: u64,
    /// Recent rate of `messages_in`.
    messages_in_per_second: f64,
    /// Recent rate of `messages_out`.
    messages_out_per_second: f64,
    /// Resident memory; `null` where the platform does not say.
    #[schema(required = true)]
    rss_bytes: Option<u64>,
    /// CPU time used; `null` where the platform does not say.
    #[schema(required = true)]
    cpu_seconds: Option<f64>,
    /// The state store.
    redis: StoreState,
}

/// The state store as `/stats` shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct StoreState {
    /// Whether the store answers.
    state: StoreStateName,
    /// Bytes Redis uses (`null` when it did not say, or is down); absent standalone.
    // Absent and `null` differ, hence the nested option.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>, required = false)]
    used_memory: Option<Option<u64>>,
    /// On a Redis Cluster only: each master, and whether it answered just now.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Vec<ShardHealth>, required = false)]
    shards: Option<Vec<ShardHealth>>,
}

/// Whether the state store answers.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum StoreStateName {
    /// No shared store: the node runs in memory.
    Standalone,
    /// Redis answers.
    Up,
    /// Redis does not answer.
    Down,
}

/// This node's figures.
#[utoipa::path(
    get,
    path = "/stats",
    tag = "operations",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Connections, rooms, messages in and out, rates, memory, CPU, uptime and the store's state.", body = Stats),
        (status = 401, description = ADMIN_401, body = ErrorBody),
        (status = 403, description = ADMIN_403, body = ErrorBody),
    ),
)]
pub(super) async fn stats(_: Admin, State(state): State<AppState>) -> Json<Stats> {
    let snapshot = state.stats.snapshot();
    let (name, used_memory) = match state.broker.store_status().await {
        StoreStatus::Standalone => (StoreStateName::Standalone, None),
        StoreStatus::Up { used_memory } => (StoreStateName::Up, Some(used_memory)),
        StoreStatus::Down => (StoreStateName::Down, Some(None)),
    };
    let redis = StoreState {
        state: name,
        used_memory,
        shards: state.broker.shards().await,
    };
    Json(Stats {
        node_id: state.config.node_id.as_str().to_owned(),
        mode: state.broker.mode().to_owned(),
        redis_mode: state.broker.redis_mode().map(str::to_owned),
        connections: state.connections(),
        rooms: state.registry.rooms().len(),
        uptime_seconds: snapshot.uptime_seconds,
        messages_in: snapshot.messages_in,
        messages_out: snapshot.messages_out,
        messages_in_per_second: snapshot.messages_in_per_second,
        messages_out_per_second: snapshot.messages_out_per_second,
        rss_bytes: snapshot.rss_bytes,
        cpu_seconds: snapshot.cpu_seconds,
        redis,
    })
}

/// The body of `GET /nodes`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Nodes {
    /// Every live node of the cluster (this one alone when standalone).
    nodes: Vec<NodeEntry>,
    /// How many `nodes`.
    count: usize,
}

/// One live node and its load.
// Deserialize too: in a cluster these are read back from the heartbeats the nodes
// write to Redis.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(super) struct NodeEntry {
    /// The node's `NODE_ID`.
    node_id: String,
    /// The node's current incarnation; absent standalone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false)]
    run: Option<String>,
    /// The address it listens on, `host:port`.
    addr: String,
    /// WebSocket sessions open on it.
    connections: usize,
    /// Rooms with a member on it.
    rooms: usize,
    /// When it started (RFC 3339 UTC, milliseconds); absent standalone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false)]
    started_at: Option<String>,
    /// Its last heartbeat (RFC 3339 UTC, milliseconds); now, standalone.
    heartbeat_at: String,
}

/// The live nodes of the cluster and their load.
#[utoipa::path(
    get,
    path = "/nodes",
    tag = "operations",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every live node; a standalone node lists itself.", body = Nodes),
        (status = 401, description = ADMIN_401, body = ErrorBody),
        (status = 403, description = ADMIN_403, body = ErrorBody),
        (status = 503, description = UNAVAILABLE_503, body = ErrorBody),
    ),
)]
pub(super) async fn nodes(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<Nodes>, AppError> {
    let nodes: Vec<NodeEntry> = match state.broker.nodes().await? {
        // A heartbeat not of this shape (written by some other program under the
        // prefix) is skipped, as the broker skips one that is not JSON.
        Some(beats) => beats
            .into_iter()
            .filter_map(|beat| serde_json::from_value(beat).ok())
            .collect(),
        None => vec![NodeEntry {
            node_id: state.config.node_id.as_str().to_owned(),
            run: None,
            addr: format!("{}:{}", state.config.host, state.config.port),
            connections: state.connections(),
            rooms: state.registry.rooms().len(),
            started_at: None,
            heartbeat_at: now_rfc3339_millis(),
        }],
    };
    Ok(Json(Nodes {
        count: nodes.len(),
        nodes,
    }))
}
