//! `GET /healthz` and `GET /readyz` (PROTOCOL.md section 8): liveness that never
//! depends on Redis, and readiness that does. Open, so that load balancers and
//! orchestrators need no credentials.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::broker::ShardHealth;
use crate::state::AppState;

/// The body of `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Health {
    /// Always `ok`: an answer at all is the news.
    status: HealthStatus,
    /// The node that answered.
    node_id: String,
    /// The node's version (Cargo package version).
    version: String,
}

/// The only `status` of `GET /healthz`.
// An enum of one, so that the document says which value to expect.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum HealthStatus {
    Ok,
}

/// The body of `GET /readyz`, 200 and 503 alike.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Readiness {
    /// `ready` (200); otherwise 503 and why.
    status: ReadyStatus,
    /// The node that answered.
    node_id: String,
    /// `redis` (nodes sharing a Redis) or `standalone` (state in memory).
    #[schema(example = "standalone")]
    mode: String,
    /// How Redis is reached: `single`, `sentinel` or `cluster`; `null` standalone.
    #[schema(example = "single", required = true)]
    redis_mode: Option<String>,
    /// On a Redis Cluster only: each master, and whether it answered just now.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Vec<ShardHealth>, required = false)]
    shards: Option<Vec<ShardHealth>>,
}

/// Why a node is or is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum ReadyStatus {
    /// Serving: the store answers and the node is registered.
    Ready,
    /// Shutting down: send no new sessions here.
    Draining,
    /// Not yet registered with the cluster.
    Starting,
    /// The store or the subscriber connection is down.
    Unavailable,
}

/// Liveness: answers while the process runs.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    security(()),
    responses(
        (status = 200, description = "The process runs; never depends on Redis.", body = Health),
    ),
)]
pub(super) async fn healthz(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: HealthStatus::Ok,
        node_id: state.config.node_id.as_str().to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

/// Readiness: whether this node can serve sessions now.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    security(()),
    responses(
        (status = 200, description = "Ready: Redis reachable and subscribed (or standalone), node registered.", body = Readiness),
        (status = 503, description = "Not ready: `starting`, `draining` or `unavailable` (Redis, the subscriber connection or a Cluster master down, or this node's payload key differs from the cluster's).", body = Readiness),
    ),
)]
pub(super) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let status = if state.is_draining() {
        ReadyStatus::Draining
    } else if state.registered_run().is_none() {
        // Not ready before the node registered itself: a member it took before
        // could never be evicted by the cluster should the node die.
        ReadyStatus::Starting
    } else if state.broker.ready().await {
        ReadyStatus::Ready
    } else {
        ReadyStatus::Unavailable
    };
    let code = if status == ReadyStatus::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        status,
        node_id: state.config.node_id.as_str().to_owned(),
        mode: state.broker.mode().to_owned(),
        redis_mode: state.broker.redis_mode().map(str::to_owned),
        shards: state.broker.shards().await,
    };
    (code, Json(body))
}
