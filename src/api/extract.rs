//! Extractors whose rejections are the contract's JSON errors.

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use bytes::Bytes;
use serde::de::{DeserializeOwned, IgnoredAny};

use crate::app::AppState;
use crate::error::ApiError;
use crate::message::valid_room;

/// `{room}` path segment, validated.
pub struct RoomPath(pub String);

impl FromRequestParts<AppState> for RoomPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let room = Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(room)| room)
            .unwrap_or_default();
        if !valid_room(&room) {
            if parts.method == Method::POST {
                state.metrics.reject("bad_room"); // an ingest refusal
            }
            return Err(ApiError::bad_request(
                "bad_room",
                "room must be 1-64 characters of A-Z a-z 0-9 _ -",
            ));
        }
        Ok(RoomPath(room))
    }
}

/// Query string into `T`, or 400 `bad_query`.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::bad_request("bad_query", e.body_text()))
    }
}

/// The raw body within the configured size limit, or 413 `body_too_large`;
/// it must arrive whole within `server.body_read_timeout_ms`, or 408
/// `body_timeout` (a body trickled byte by byte holds no handler for ever).
pub struct RawBody(pub Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let deadline = std::time::Duration::from_millis(state.config.server.body_read_timeout_ms);
        let read = tokio::time::timeout(deadline, Bytes::from_request(req, state)).await;
        let result = match read {
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} ms",
                    deadline.as_millis()
                ),
            )),
            Ok(read) => read.map(RawBody).map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        "the request body is larger than allowed",
                    )
                } else {
                    ApiError::bad_request("bad_body", e.body_text())
                }
            }),
        };
        // Refused before any handler ran: count it here.
        if let Err(e) = &result {
            state.metrics.reject(e.code);
        }
        result
    }
}

/// Parses a JSON object: syntax errors → `malformed_json`, shape errors →
/// `invalid_body`. serde would also take a struct as the array of its fields
/// (`[[[]]]` as a batch, found by fuzzing): every body here is an object.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') && serde_json::from_slice::<IgnoredAny>(body).is_ok() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the body must be a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::bad_request("invalid_body", e.to_string()),
            _ => ApiError::bad_request("malformed_json", e.to_string()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Batch {
        events: Vec<serde_json::Value>,
    }

    #[test]
    fn bodies_must_be_json_objects() {
        assert!(parse_json::<Batch>(br#" {"events": [{}]}"#).is_ok());
        // serde alone would take `[[{}]]` as `{"events": [{}]}`.
        let e = parse_json::<Batch>(b"[[{}]]").unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            ("invalid_body", "the body must be a JSON object")
        );
        assert_eq!(
            parse_json::<Batch>(b"[[{}]").unwrap_err().code,
            "malformed_json"
        );
        assert_eq!(parse_json::<Batch>(b"").unwrap_err().code, "malformed_json");
        assert_eq!(parse_json::<Batch>(b"{}").unwrap_err().code, "invalid_body");
    }
}
