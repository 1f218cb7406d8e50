//! The access log (`log.access`): one line per request — method, path,
//! status, latency, client address — at `info` under the target
//! `danmaku::access` (filter it with `DANMAKU_LOG`, e.g.
//! `info,danmaku::access=warn`). The path is logged without its query
//! string and no header is logged, so viewer tokens (`?token=`), admin and
//! moderator tokens and gift signatures never reach the log. The client is
//! the address every per-address limit keys on (trusted proxies resolved). A WebSocket or
//! SSE stream is logged when its response starts (status 101 / 200), with
//! the time to that point.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::state::AppState;

pub async fn log_request(State(s): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| {
            super::client_addr::client_ip(
                c.0.ip(),
                request.headers(),
                &s.config.server.trusted_proxies,
            )
        });
    let response = next.run(request).await;
    tracing::info!(
        target: "danmaku::access",
        %method,
        path,
        status = response.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        client = ?client,
        "request"
    );
    response
}
