//! HTTP errors: one enum, one mapping to status and `{"error":{"code","message"}}`.
//! Internal causes are logged here, once, and never sent to the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::broker::BrokerError;

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
}

impl AppError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::InvalidId => (
                StatusCode::BAD_REQUEST,
                "invalid_id",
                "ids are 1 to 64 characters from A-Z a-z 0-9 _ - .",
            ),
            Self::UserNotFound => (
                StatusCode::NOT_FOUND,
                "user_not_found",
                "no such user is connected",
            ),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the cluster state store is unreachable; retry",
            ),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        if let Self::Unavailable(cause) = &self {
            tracing::error!(error = %cause, "request failed: redis unavailable");
        }
        (
            status,
            Json(json!({"error": {"code": code, "message": message}})),
        )
            .into_response()
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
