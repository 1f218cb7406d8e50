//! The API's error shape: `{"error": {"code", "message"}}` with a fitting status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn too_many(code: &'static str, message: impl Into<String>, retry_after_s: u64) -> Self {
        ApiError {
            retry_after_s: Some(retry_after_s.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            retry_after_s: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503 `store_unavailable`: the live store did not answer. Callers log
    /// the underlying error with their own context.
    pub fn store_unavailable() -> Self {
        Self::unavailable("store_unavailable", "the live store is unavailable")
    }

    /// 503 `shutting_down`: this node takes no new work.
    pub fn shutting_down() -> Self {
        Self::unavailable("shutting_down", "this node is shutting down")
    }

    /// The one "is this node stopping?" check of every entry point that
    /// takes new work (posts, new viewer streams, WebSocket sends).
    pub fn refuse_if_stopping(stopping: &CancellationToken) -> Result<(), Self> {
        if stopping.is_cancelled() {
            return Err(Self::shutting_down());
        }
        Ok(())
    }

    /// The JSON body, also used inside WebSocket `error` messages.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after_s {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        res
    }
}
