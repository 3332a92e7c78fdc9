//! Routes. Handlers are thin: parse ids, ask the broker, answer typed bodies
//! (the same types `GET /openapi.json` documents).

mod activity;
mod admin;
mod client;
mod error;
mod extract;
mod health;
mod ice;
pub mod listener;
mod members;
mod openapi;
mod ops;
mod pending;
mod ws;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, Method};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use error::AppError;

/// Largest REST request body. Admin bodies are a few hundred bytes; axum's 2 MiB
/// default would let each slow client make the node buffer megabytes.
const MAX_BODY_BYTES: usize = 64 * 1024;

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
        .route("/rooms/{room_id}/users", get(members::room_users))
        .route("/rooms/{room_id}/users/{user_id}", delete(admin::kick_user))
        .route("/users/{user_id}", get(members::user))
        .route("/tokens", post(admin::create_token))
        .route("/metrics", get(ops::metrics))
        .route("/stats", get(ops::stats))
        .route("/nodes", get(ops::nodes))
        .route("/ice-servers", get(ice::ice_servers))
        .route("/", get(client::demo))
        .route("/client/signal-client.js", get(client::client_js))
        .route("/client/signal-client.d.ts", get(client::client_dts))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi::openapi_json))
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
