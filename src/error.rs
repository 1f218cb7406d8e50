//! The API's error shape: `{"error": {"code", "message"}}` with a fitting status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use tokio_util::sync::CancellationToken;

use crate::log_throttle::LogThrottle;

/// Live-store failures, throttled for the whole node: in an outage every
/// request fails alike (`log_throttle.rs`).
static STORE_FAILURE_LINES: LogThrottle = LogThrottle::new(std::time::Duration::from_secs(1));

/// Logs a failed live-store call for `what` (in `room`, if about one):
/// at most one line a second for the node, each carrying how many failures
/// it stands for since the line before (`suppressed`).
pub fn log_store_failure(what: &str, room: Option<&str>, error: &dyn std::fmt::Display) {
    if let Some(suppressed) = STORE_FAILURE_LINES.admit_now() {
        tracing::warn!(
            what,
            room = room.unwrap_or("-"),
            %error,
            suppressed,
            "live store call failed"
        );
    }
}

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

    /// 503 `store_unavailable`: the live store did not answer (in time).
    pub fn store_unavailable() -> Self {
        Self::unavailable("store_unavailable", "the live store is unavailable")
    }

    /// 503 `store_unavailable` for a live-store call for `what` that failed
    /// with `error`, logged through the node's throttle
    /// ([`log_store_failure`]).
    pub fn store_failed(what: &str, room: Option<&str>, error: &dyn std::fmt::Display) -> Self {
        log_store_failure(what, room, error);
        Self::store_unavailable()
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
