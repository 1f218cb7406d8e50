//! HTTP API (DESIGN §4): routes, extractors that turn every rejection into
//! the contract's JSON error, and the write / operator endpoints. Viewer
//! transports live in `front`.

mod admin;
mod extract;
mod openapi;
pub mod snapshot;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::unix_now;
use crate::error::ApiError;
use crate::ingest::{Accepted, BatchEvent, BatchItem, DanmakuRequest, EventRequest};
pub use admin::require_admin;
pub use extract::{parse_json, ApiQuery, RawBody, RoomPath};

pub fn router(state: AppState) -> Router {
    let limit = state.config.server.max_body_bytes;
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::serve))
        .route("/v1/demo/token", post(demo_token))
        .route("/v1/rooms/{room}/danmaku", post(post_danmaku))
        .route("/v1/rooms/{room}/events", post(post_event))
        // A literal segment (matchit 0.8 gives ':' no meaning); a batch may
        // be as large as `max_batch_events` single bodies.
        .route(
            "/v1/rooms/{room}/events:batch",
            post(post_events_batch).layer(DefaultBodyLimit::max(
                limit.saturating_mul(state.config.ingest.max_batch_events.max(1)),
            )),
        )
        .route(
            "/v1/rooms/{room}/snapshot",
            get(snapshot::handler).layer(Extension(snapshot::SnapshotCache::new())),
        )
        .route("/v1/rooms/{room}/ws", get(crate::front::ws::handler))
        .route("/v1/rooms/{room}/poll", get(crate::front::poll::handler))
        .route("/v1/rooms/{room}/sse", get(crate::front::sse::handler))
        .route("/v1/rooms/{room}/lives", get(crate::replay::lives))
        .route("/v1/rooms/{room}/replay", get(crate::replay::replay))
        .route(
            "/v1/admin/rooms/{room}/live/start",
            post(crate::replay::live_start),
        )
        .route(
            "/v1/admin/rooms/{room}/live/end",
            post(crate::replay::live_end),
        )
        .route(
            "/v1/admin/rooms/{room}/settings",
            get(admin::get_settings)
                .put(admin::patch_settings)
                .patch(admin::patch_settings),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Operations only (`processor` role): health, readiness, metrics.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

async fn index() -> Html<&'static str> {
    Html(include_str!("../../static/index.html"))
}

async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../static/app.js"),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Ready when the store and the bus answer and the node is not stopping.
async fn readyz(State(s): State<AppState>) -> Response {
    let t = Duration::from_secs(1);
    let store = matches!(tokio::time::timeout(t, s.store.ping()).await, Ok(Ok(())));
    let bus = matches!(tokio::time::timeout(t, s.bus.ping()).await, Ok(Ok(())));
    let stopping = s.stopping.is_cancelled();
    // The archive and the replay Redis serve replay and archiving only: a
    // node without them still serves live rooms, so it stays in the load
    // balancer ("degraded", 200) rather than out of it.
    let archive = matches!(
        tokio::time::timeout(t, s.replay.archive().ping()).await,
        Ok(Ok(()))
    );
    let replay_redis = s.replay.ping_redis().await;
    let ready = store && bus && !stopping;
    let whole = archive && replay_redis != Some(false);
    let status = match (ready, whole) {
        (false, _) => "not_ready",
        (true, false) => "degraded",
        (true, true) => "ready",
    };
    let mut checks = serde_json::json!({
        "store": store, "bus": bus, "accepting": !stopping, "archive": archive,
    });
    if let Some(up) = replay_redis {
        checks["replay_redis"] = up.into();
    }
    let body = serde_json::json!({"status": status, "checks": checks});
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    s.metrics.bus_pending.set(s.bus.pending() as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render() + &s.replay.metrics.render(),
    )
        .into_response()
}

/// Counts a refusal that happened before ingest saw the request.
fn counted<T>(s: &AppState, r: Result<T, ApiError>) -> Result<T, ApiError> {
    if let Err(e) = &r {
        s.metrics.reject(e.code);
    }
    r
}

fn refuse_if_stopping(s: &AppState) -> Result<(), ApiError> {
    if s.stopping.is_cancelled() {
        return Err(ApiError::unavailable(
            "shutting_down",
            "this node is shutting down",
        ));
    }
    Ok(())
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

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn post_danmaku(
    State(s): State<AppState>,
    RoomPath(room): RoomPath,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let (viewer, req) = counted(&s, {
        refuse_if_stopping(&s).and_then(|()| {
            let viewer = s
                .auth
                .viewer(header_str(&headers, "authorization"))
                .map_err(ApiError::from)?;
            let req: DanmakuRequest = parse_json(&body)?;
            Ok((viewer, req))
        })
    })?;
    let a = s.ingest.danmaku(&room, &viewer, peer.ip(), req).await?;
    Ok(accepted(a))
}

/// Verifies the gift backend's signature headers over `body`.
fn check_signed(s: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    refuse_if_stopping(s)?;
    s.auth.gift_signature(
        header_str(headers, "x-timestamp"),
        header_str(headers, "x-signature"),
        body,
        unix_now(),
    )?;
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
    State(s): State<AppState>,
    RoomPath(room): RoomPath,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let (key, fingerprint_source, req) = counted(&s, {
        check_signed(&s, &headers, &body).and_then(|()| {
            let key = header_str(&headers, "idempotency-key").ok_or_else(|| {
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

/// Signed once for the whole body (the same headers as a single event);
/// each event carries its own `idempotency_key`. Answers `207 Multi-Status`
/// with one result per event, in order: `{"index","status":202,"id"}` (plus
/// `"replayed":true` for a retried key) or `{"index","status","error":
/// {"code","message"},"retry_after_s"?}`. The batch as a whole is refused
/// (401, 400, 413 `too_many_events`, 503) only when no event can be looked at.
async fn post_events_batch(
    State(s): State<AppState>,
    RoomPath(room): RoomPath,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let max = s.config.ingest.max_batch_events;
    let items = counted(&s, {
        check_signed(&s, &headers, &body).and_then(|()| parse_batch(&body, max))
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
}

/// Development only: a viewer token for the page and the README tour.
async fn demo_token(
    State(s): State<AppState>,
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
    if name.is_empty() || name.chars().count() > 32 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "bad_name",
            "name must be 1-32 characters without control characters",
        ));
    }
    let id = format!("demo-{:08x}", rand::random::<u32>());
    let ttl = 24 * 3600;
    Ok(Json(serde_json::json!({
        "token": s.auth.issue(&id, name, ttl),
        "user": {"id": id, "name": name},
        "expires_in": ttl,
    })))
}
