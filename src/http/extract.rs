//! Extractors whose rejections are the contract's JSON errors, and the
//! request-header helpers the handlers share.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::state::AppState;
use crate::error::ApiError;
use crate::message::valid_room;

pub use crate::json::parse_json;

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

/// The client's address: the connection's peer, or whom a trusted proxy's
/// forwarding header names (`server.trusted_proxies`, [`super::client_addr`]).
/// What every per-address limit keys on.
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() else {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the connection's address is unknown",
            ));
        };
        Ok(ClientIp(super::client_addr::client_ip(
            peer.ip(),
            &parts.headers,
            &state.config.server.trusted_proxies,
        )))
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

/// Whether any `If-None-Match` header of the request names `etag` (a
/// quoted tag, strong or `W/`): the one revalidation rule of every cached
/// answer (snapshot, replay).
pub fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| if_none_match_hits(v, etag))
}

/// Whether an `If-None-Match` value names `etag` (weak comparison, as RFC
/// 9110 §13.1.2 asks: `W/"x"` matches `"x"`; `*` matches anything).
fn if_none_match_hits(value: &str, etag: &str) -> bool {
    let etag = etag.strip_prefix("W/").unwrap_or(etag);
    let mut rest = value.trim();
    if rest == "*" {
        return true;
    }
    while !rest.is_empty() {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_ascii_whitespace());
        let tag = rest.strip_prefix("W/").unwrap_or(rest);
        let Some(body) = tag.strip_prefix('"') else {
            // Not an entity tag: skip to the next list element.
            rest = tag.split_once(',').map_or("", |(_, r)| r);
            continue;
        };
        let Some(end) = body.find('"') else {
            return false;
        };
        if tag[..end + 2] == *etag {
            return true;
        }
        rest = &body[end + 1..];
    }
    false
}

/// A header's value as text, if it is text.
pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_forms() {
        let e = "\"abc\"";
        assert!(if_none_match_hits("\"abc\"", e));
        assert!(if_none_match_hits("W/\"abc\"", e));
        assert!(if_none_match_hits("\"x\", W/\"abc\"", e));
        assert!(if_none_match_hits("\"x\",\"abc\"", e));
        assert!(if_none_match_hits("*", e));
        assert!(
            if_none_match_hits("\"a,b\", \"abc\"", e),
            "comma inside a tag"
        );
        assert!(!if_none_match_hits("\"abcd\"", e));
        assert!(!if_none_match_hits("abc", e));
        assert!(!if_none_match_hits("\"abc", e));
        assert!(!if_none_match_hits("", e));
        assert!(!if_none_match_hits("bogus, \"x\"", e));
        assert!(if_none_match_hits("bogus, \"abc\"", e));
    }

    #[test]
    fn every_if_none_match_header_counts() {
        let mut h = HeaderMap::new();
        assert!(!if_none_match(&h, "\"abc\""));
        h.append(header::IF_NONE_MATCH, "\"x\"".parse().unwrap());
        h.append(header::IF_NONE_MATCH, "W/\"abc\"".parse().unwrap());
        assert!(if_none_match(&h, "\"abc\""));
    }
}
