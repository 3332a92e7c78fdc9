//! HTTP errors: one enum, one mapping to status and `{"error":{"code","message"}}`.
//! Internal causes are logged here, once, and never sent to the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::broker::BrokerError;

/// The body of every HTTP error: `{"error":{"code","message"}}` (PROTOCOL.md
/// section 8).
// A type rather than `json!`, so that the answers and `/openapi.json` cannot drift apart.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong: a stable code and a message for humans.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable: clients branch on it.
    pub code: HttpErrorCode,
    /// For humans; may change between versions.
    pub message: String,
}

/// Every `code` an HTTP error can carry.
// An enum rather than strings, so that the document lists them all, from the very
// names the node sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HttpErrorCode {
    /// 400: an id breaks PROTOCOL.md section 1.
    InvalidId,
    /// 400: a malformed body, field or query parameter.
    InvalidRequest,
    /// 401: no usable bearer token.
    Unauthorized,
    /// 403: a bearer that does not grant this.
    Forbidden,
    /// 403: a WebSocket from an origin outside `ALLOWED_ORIGINS`.
    ForbiddenOrigin,
    /// 403: `ADMIN_TOKEN` is not configured.
    AdminDisabled,
    /// 404: no such endpoint.
    NotFound,
    /// 404: no such user is connected.
    UserNotFound,
    /// 404: no such room.
    RoomNotFound,
    /// 405: the path does not serve this method.
    MethodNotAllowed,
    /// 409: `POST /rooms` for an existing room.
    RoomExists,
    /// 409: `POST /tokens` without `JWT_SECRET`.
    TokensDisabled,
    /// 413: a body over the limit.
    PayloadTooLarge,
    /// 415: a body that is not `application/json`.
    UnsupportedMediaType,
    /// 426: a plain request to the WebSocket endpoint.
    UpgradeRequired,
    /// 500: something that should not fail did.
    Internal,
    /// 503: the cluster state store did not answer.
    Unavailable,
}

/// Everything a REST handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A path id does not match PROTOCOL.md section 1.
    #[error("invalid id")]
    InvalidId,
    /// `GET /users/{id}` for a user not connected anywhere.
    #[error("user not found")]
    UserNotFound,
    /// No route.
    #[error("not found")]
    NotFound,
    /// Redis could not answer.
    #[error("state store unavailable: {0}")]
    Unavailable(#[from] BrokerError),
    /// A WebSocket from an origin outside `ALLOWED_ORIGINS`.
    #[error("origin not allowed")]
    ForbiddenOrigin,
    /// `ADMIN_TOKEN` is not configured.
    #[error("admin disabled")]
    AdminDisabled,
    /// No or an unusable bearer token.
    #[error("unauthorized")]
    Unauthorized,
    /// A bearer that does not grant this.
    #[error("forbidden")]
    Forbidden,
    /// A malformed body or parameter; the message says what.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// `GET/DELETE /rooms/{id}` for a room that does not exist.
    #[error("room not found")]
    RoomNotFound,
    /// `POST /rooms` for a room that exists.
    #[error("room exists")]
    RoomExists,
    /// `POST /tokens` without `JWT_SECRET`.
    #[error("tokens disabled")]
    TokensDisabled,
    /// A method the route does not serve.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A body over the limit.
    #[error("payload too large")]
    PayloadTooLarge,
    /// A body that is not `application/json`.
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// A plain request to the WebSocket endpoint.
    #[error("upgrade required")]
    UpgradeRequired,
    /// Something that should not fail did (a hashing failure); logged, not shown.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AppError {
    fn parts(&self) -> (StatusCode, HttpErrorCode, &str) {
        match self {
            Self::ForbiddenOrigin => (
                StatusCode::FORBIDDEN,
                HttpErrorCode::ForbiddenOrigin,
                "this origin may not open sessions",
            ),
            Self::AdminDisabled => (
                StatusCode::FORBIDDEN,
                HttpErrorCode::AdminDisabled,
                "the admin API is disabled: set ADMIN_TOKEN to enable it",
            ),
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                HttpErrorCode::Unauthorized,
                "a valid bearer token is required",
            ),
            Self::Forbidden => (
                StatusCode::FORBIDDEN,
                HttpErrorCode::Forbidden,
                "this token does not grant access to this",
            ),
            Self::InvalidRequest(why) => (
                StatusCode::BAD_REQUEST,
                HttpErrorCode::InvalidRequest,
                why.as_str(),
            ),
            Self::RoomNotFound => (
                StatusCode::NOT_FOUND,
                HttpErrorCode::RoomNotFound,
                "no such room",
            ),
            Self::RoomExists => (
                StatusCode::CONFLICT,
                HttpErrorCode::RoomExists,
                "a room with this id exists",
            ),
            Self::TokensDisabled => (
                StatusCode::CONFLICT,
                HttpErrorCode::TokensDisabled,
                "token issuing needs JWT_SECRET",
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                HttpErrorCode::Internal,
                "internal error",
            ),
            Self::InvalidId => (
                StatusCode::BAD_REQUEST,
                HttpErrorCode::InvalidId,
                "ids are 1 to 64 characters from A-Z a-z 0-9 _ - .",
            ),
            Self::UserNotFound => (
                StatusCode::NOT_FOUND,
                HttpErrorCode::UserNotFound,
                "no such user is connected",
            ),
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                HttpErrorCode::NotFound,
                "no such endpoint",
            ),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                HttpErrorCode::MethodNotAllowed,
                "this endpoint does not answer this method",
            ),
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                HttpErrorCode::PayloadTooLarge,
                "the request body is over the limit",
            ),
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                HttpErrorCode::UnsupportedMediaType,
                "the body must be JSON with Content-Type: application/json",
            ),
            Self::UpgradeRequired => (
                StatusCode::UPGRADE_REQUIRED,
                HttpErrorCode::UpgradeRequired,
                "this endpoint only answers WebSocket upgrades",
            ),
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                HttpErrorCode::Unavailable,
                "the cluster state store is unreachable; retry",
            ),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        match &self {
            // A command Redis answered with an error was logged by the broker, once.
            Self::Unavailable(cause @ BrokerError::Command { .. }) => {
                tracing::debug!(error = %cause, "request failed: redis command error")
            }
            Self::Unavailable(cause) => {
                tracing::error!(error = %cause, "request failed: redis unavailable")
            }
            Self::Internal(cause) => tracing::error!(error = %cause, "request failed"),
            _ => {}
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message: message.to_owned(),
            },
        };
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn maps_to_status_and_body() {
        let resp = AppError::UserNotFound.into_response();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "user_not_found");
        let resp = AppError::Unavailable(BrokerError::SubscriberDown).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        assert!(!String::from_utf8_lossy(&body).contains("subscriber"));
    }
}
