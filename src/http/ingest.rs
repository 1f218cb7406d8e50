//! The write endpoints: viewer danmaku posts, signed gift-backend events
//! (single and batched) and development tokens. Parsing and signatures
//! here; validation, idempotency and publishing in `crate::ingest`.

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::extract::{header_str, parse_json, ClientIp, RawBody, RoomPath};
use super::routes::Routes;
use super::state::IngestState;
use crate::auth::{unix_now, GiftRequest};
use crate::error::ApiError;
use crate::ingest::{Accepted, BatchEvent, BatchItem, DanmakuRequest, EventRequest};

/// `body_limit` is the server's single-body limit: a batch may be as large
/// as `max_batch_events` single bodies.
pub(super) fn routes(body_limit: usize, max_batch_events: usize) -> Routes {
    Routes::new()
        .post("/v1/demo/token", demo_token)
        .post("/v1/rooms/{room}/danmaku", post_danmaku)
        .post("/v1/rooms/{room}/events", post_event)
        // A literal segment (matchit 0.8 gives ':' no meaning).
        .post("/v1/rooms/{room}/events:batch", post_events_batch)
        .with_last(|h| {
            h.layer(DefaultBodyLimit::max(
                body_limit.saturating_mul(max_batch_events.max(1)),
            ))
        })
}

/// Counts a refusal that happened before ingest saw the request.
fn counted<T>(s: &IngestState, r: Result<T, ApiError>) -> Result<T, ApiError> {
    if let Err(e) = &r {
        s.metrics.reject(e.code);
    }
    r
}

fn accepted(a: Accepted) -> Response {
    let mut res = (
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, "application/json")],
        a.body,
    )
        .into_response();
    if a.replayed {
        res.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    res
}

async fn post_danmaku(
    State(s): State<IngestState>,
    RoomPath(room): RoomPath,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let (viewer, req) = counted(&s, {
        ApiError::refuse_if_stopping(&s.stopping).and_then(|()| {
            let viewer = s
                .auth
                .viewer_from_header(header_str(&headers, "authorization"))
                .map_err(ApiError::from)?;
            let req: DanmakuRequest = parse_json(&body)?;
            Ok((viewer, req))
        })
    })?;
    let a = s.ingest.danmaku(&room, &viewer, ip, req).await?;
    Ok(accepted(a))
}

/// Verifies the gift backend's signature headers over the request as
/// received: method, path (the room is in it; no query string), `key` (the
/// `Idempotency-Key`, empty for a batch) and `body`.
fn check_signed(
    s: &IngestState,
    headers: &HeaderMap,
    method: &Method,
    uri: &Uri,
    key: &str,
    body: &[u8],
) -> Result<(), ApiError> {
    ApiError::refuse_if_stopping(&s.stopping)?;
    let req = GiftRequest {
        timestamp: header_str(headers, "x-timestamp"),
        signature: header_str(headers, "x-signature"),
        method: method.as_str(),
        path: uri.path(),
        idempotency_key: key,
        body,
    };
    s.auth.gift_signature(&req, unix_now())?;
    Ok(())
}

/// The event's canonical JSON (keys sorted, no whitespace): what its
/// idempotency fingerprint is taken over, so a retry matches whatever its
/// formatting, single or batched.
fn canonical(value: &serde_json::Value) -> Vec<u8> {
    let mut value = value.clone();
    value.sort_all_objects();
    serde_json::to_vec(&value).expect("a JSON value serialises")
}

fn invalid_body(e: serde_json::Error) -> ApiError {
    ApiError::bad_request("invalid_body", e.to_string())
}

async fn post_event(
    State(s): State<IngestState>,
    RoomPath(room): RoomPath,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let key = header_str(&headers, "idempotency-key");
    let (key, fingerprint_source, req) = counted(&s, {
        // A missing key signs as an empty line; it is refused just below.
        check_signed(&s, &headers, &method, &uri, key.unwrap_or(""), &body).and_then(|()| {
            let key = key.ok_or_else(|| {
                ApiError::bad_request("missing_idempotency_key", "Idempotency-Key is required")
            })?;
            let (fingerprint_source, req) = parse_event(&body)?;
            Ok((key.to_string(), fingerprint_source, req))
        })
    })?;
    let a = s
        .ingest
        .event(&room, &key, &fingerprint_source, req)
        .await?;
    Ok(accepted(a))
}

/// Parses a `POST /v1/rooms/{room}/events` body (after the signature check):
/// the event and its idempotency fingerprint source (canonical JSON).
/// Refusals are `malformed_json` / `invalid_body`.
pub fn parse_event(body: &[u8]) -> Result<(Vec<u8>, EventRequest), ApiError> {
    let value: serde_json::Value = parse_json(body)?;
    let req = EventRequest::deserialize(&value).map_err(invalid_body)?;
    Ok((canonical(&value), req))
}

/// `POST /v1/rooms/{room}/events:batch` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    events: Vec<serde_json::Value>,
}

/// Parses a `POST /v1/rooms/{room}/events:batch` body (after the signature
/// check) into one result per event, in order. The batch as a whole is
/// refused (`malformed_json`, `invalid_body`, `empty_batch`, 413
/// `too_many_events`) only when no event can be looked at.
pub fn parse_batch(
    body: &[u8],
    max_events: usize,
) -> Result<Vec<Result<BatchItem, ApiError>>, ApiError> {
    let req: BatchRequest = parse_json(body)?;
    if req.events.is_empty() {
        return Err(ApiError::bad_request(
            "empty_batch",
            "events must hold at least one event",
        ));
    }
    if req.events.len() > max_events {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!("a batch holds at most {max_events} events"),
        ));
    }
    Ok(req.events.into_iter().map(batch_item).collect())
}

/// Signed once for the whole body (the same headers as a single event, with
/// an empty key line); each event carries its own `idempotency_key`. Answers `207 Multi-Status`
/// with one result per event, in order: `{"index","status":202,"id"}` (plus
/// `"replayed":true` for a retried key) or `{"index","status","error":
/// {"code","message"},"retry_after_s"?}`. The batch as a whole is refused
/// (401, 400, 413 `too_many_events`, 503) only when no event can be looked at.
async fn post_events_batch(
    State(s): State<IngestState>,
    RoomPath(room): RoomPath,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let max = s.config.ingest.max_batch_events;
    let items = counted(&s, {
        check_signed(&s, &headers, &method, &uri, "", &body).and_then(|()| parse_batch(&body, max))
    })?;
    let results = s.ingest.events(&room, items).await;
    let results: Vec<serde_json::Value> = results
        .into_iter()
        .enumerate()
        .map(|(index, r)| match r {
            Ok(a) => {
                let mut v = serde_json::from_str::<serde_json::Value>(&a.body)
                    .unwrap_or_else(|_| serde_json::json!({}));
                v["index"] = index.into();
                v["status"] = StatusCode::ACCEPTED.as_u16().into();
                if a.replayed {
                    v["replayed"] = true.into();
                }
                v
            }
            Err(e) => {
                let mut v = e.body();
                v["index"] = index.into();
                v["status"] = e.status.as_u16().into();
                if let Some(s) = e.retry_after_s {
                    v["retry_after_s"] = s.into();
                }
                v
            }
        })
        .collect();
    Ok((
        StatusCode::MULTI_STATUS,
        Json(serde_json::json!({ "results": results })),
    )
        .into_response())
}

/// One event of a batch: its key, canonical JSON (without the key) and body.
fn batch_item(mut value: serde_json::Value) -> Result<BatchItem, ApiError> {
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "each event must be a JSON object",
        ));
    }
    if value.get("idempotency_key").is_none() {
        return Err(ApiError::bad_request(
            "missing_idempotency_key",
            "each event needs \"idempotency_key\"",
        ));
    }
    let event = BatchEvent::deserialize(&value).map_err(invalid_body)?;
    if let Some(obj) = value.as_object_mut() {
        obj.remove("idempotency_key");
    }
    let (idempotency_key, req) = event.into_parts();
    Ok(BatchItem {
        idempotency_key,
        fingerprint_source: canonical(&value),
        req,
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DemoTokenRequest {
    #[serde(default)]
    name: Option<String>,
    /// A VIP level for the token's `vip` claim (to try VIP ranking).
    #[serde(default)]
    vip: Option<u32>,
}

/// Development only: a viewer token for the page and the README tour.
async fn demo_token(
    State(s): State<IngestState>,
    RawBody(body): RawBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !s.auth.demo_tokens_enabled() {
        return Err(ApiError::not_found(
            "demo tokens are only issued with the development secret",
        ));
    }
    let req: DemoTokenRequest = if body.is_empty() {
        DemoTokenRequest::default()
    } else {
        parse_json(&body)?
    };
    let name = req.name.unwrap_or_else(|| "guest".to_string());
    let name = name.trim();
    crate::ingest::validate::check_name("name", name)?;
    let id = format!("demo-{:08x}", rand::random::<u32>());
    let ttl = 24 * 3600;
    Ok(Json(serde_json::json!({
        "token": s.auth.issue_with_vip(&id, name, ttl, req.vip),
        "user": {"id": id, "name": name},
        "expires_in": ttl,
    })))
}
