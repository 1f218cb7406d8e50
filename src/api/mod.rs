//! HTTP API (DESIGN §4): routes, extractors that turn every rejection into
//! the contract's JSON error, and the write / operator endpoints. Viewer
//! transports live in `front`.

mod admin;
mod extract;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::unix_now;
use crate::error::ApiError;
use crate::ingest::{Accepted, DanmakuRequest, EventRequest};
pub use extract::{parse_json, ApiQuery, RawBody, RoomPath};

pub fn router(state: AppState) -> Router {
    let limit = state.config.server.max_body_bytes;
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/demo/token", post(demo_token))
        .route("/v1/rooms/{room}/danmaku", post(post_danmaku))
        .route("/v1/rooms/{room}/events", post(post_event))
        .route("/v1/rooms/{room}/ws", get(crate::front::ws::handler))
        .route("/v1/rooms/{room}/poll", get(crate::front::poll::handler))
        .route("/v1/rooms/{room}/sse", get(crate::front::sse::handler))
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
    let ready = store && bus && !stopping;
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {"store": store, "bus": bus, "accepting": !stopping},
    });
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
        s.metrics.render(),
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

async fn post_event(
    State(s): State<AppState>,
    RoomPath(room): RoomPath,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let (key, req) = counted(&s, {
        refuse_if_stopping(&s).and_then(|()| {
            s.auth.gift_signature(
                header_str(&headers, "x-timestamp"),
                header_str(&headers, "x-signature"),
                &body,
                unix_now(),
            )?;
            let key = header_str(&headers, "idempotency-key").ok_or_else(|| {
                ApiError::bad_request("missing_idempotency_key", "Idempotency-Key is required")
            })?;
            let req: EventRequest = parse_json(&body)?;
            Ok((key.to_string(), req))
        })
    })?;
    let a = s.ingest.event(&room, &key, &body, req).await?;
    Ok(accepted(a))
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
