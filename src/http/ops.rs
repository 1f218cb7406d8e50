//! The page, health, readiness, metrics and the API document.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;

use super::openapi;
use super::routes::Routes;
use super::state::AppState;

/// Health, readiness and metrics: every role serves these.
pub(super) fn health_routes() -> Routes {
    liveness_route()
        .get("/readyz", readyz)
        .get("/metrics", metrics)
}

/// `/healthz` alone: on every listener a node has.
pub(super) fn liveness_route() -> Routes {
    Routes::new().get("/healthz", healthz)
}

/// The viewer page and the API document, then [`health_routes`].
pub(super) fn routes() -> Routes {
    Routes::new()
        .get("/", index)
        .get("/app.js", app_js)
        .get("/danmaku-client.js", client_js)
        .merge(health_routes())
        .get("/openapi.json", openapi::serve)
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

/// The viewer SDK (clients/js) as one ES module, which app.js imports; built
/// by `npm run build` there and committed, so serving it needs no npm step.
async fn client_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../static/danmaku-client.js"),
    )
        .into_response()
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// How long `/readyz` waits for each dependency. The checks run at once, so
/// the answer comes within about this much even when the node is cut off
/// from everything it needs (a load balancer's health check gives up after a
/// few seconds; a late answer would read as a dead node, not a drained one).
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Ready when the store and the bus answer and the node is not stopping.
async fn readyz(State(s): State<AppState>) -> Response {
    let t = READY_CHECK_TIMEOUT;
    let (store, bus, archive, replay_redis) = tokio::join!(
        tokio::time::timeout(t, s.store.ping()),
        tokio::time::timeout(t, s.bus.ping()),
        tokio::time::timeout(t, s.replay.archive().ping()),
        s.replay.ping_redis(),
    );
    let store = matches!(store, Ok(Ok(())));
    let bus = matches!(bus, Ok(Ok(())));
    // Draining: still serving, but the load balancer should send no more.
    let stopping = s.draining.is_cancelled() || s.stopping.is_cancelled();
    // The archive and the replay Redis serve replay and archiving only: a
    // node without them still serves live rooms, so it stays in the load
    // balancer ("degraded", 200) rather than out of it.
    let archive = matches!(archive, Ok(Ok(())));
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
    let mut body = serde_json::json!({"status": status, "checks": checks});
    let archive_metrics = &s.replay.metrics;
    if archive_metrics
        .archiver_running
        .load(std::sync::atomic::Ordering::Acquire)
    {
        // How far behind the archiver is (docs/replay.md); informative: a
        // node whose archiver lags still serves.
        body["archiver"] = serde_json::json!({
            "lag_seconds": archive_metrics.archiver_lag_seconds.get(),
            "lag_messages": archive_metrics.archiver_lag_messages.get(),
        });
    }
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    s.metrics.bus_pending.set(s.bus.pending() as i64);
    let health = s.store.health();
    s.metrics.set_store_health(health.unreachable, health.trips);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render() + &s.replay.metrics.render(),
    )
        .into_response()
}
