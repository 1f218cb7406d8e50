//! The viewer transports' HTTP side: the WebSocket upgrade, the `Origin`
//! allow-list, per-address slots and viewer tokens, then the session in
//! `crate::front` (`ws::run`, `poll::run`, `sse::open`).

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::header::SEC_WEBSOCKET_EXTENSIONS;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;

use super::cors::origin_allowed;
use super::extract::{header_str, ApiQuery, ClientIp, RoomPath};
use super::listener::ClientSocket;
use super::routes::Routes;
use super::watch_gate::admit;
use crate::error::ApiError;
use crate::fanout::deflate::WsDeflate;
use crate::fanout::feed::ViewerFeed;
use crate::fanout::gzip::accepts_gzip;
use crate::front::poll::PollQuery;
use crate::front::ws_extensions::accept_permessage_deflate;
use crate::front::{poll, sse, ws, StreamQuery, Viewers};

pub(super) fn routes() -> Routes {
    Routes::new()
        .get("/v1/rooms/{room}/ws", ws_handler)
        .get("/v1/rooms/{room}/poll", poll_handler)
        .get("/v1/rooms/{room}/sse", sse_handler)
}

async fn ws_handler(
    State(s): State<Viewers>,
    RoomPath(room): RoomPath,
    ApiQuery(q): ApiQuery<StreamQuery>,
    ClientIp(ip): ClientIp,
    client: Option<Extension<ClientSocket>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade =
        upgrade.map_err(|e| ApiError::new(e.status(), "websocket_required", e.body_text()))?;
    ApiError::refuse_if_stopping(&s.stopping)?;
    check_origin(&s.config.server.allowed_origins, &headers)?;
    let slot = s.viewer_slots.acquire(ip)?;
    // Browsers cannot set headers on a WebSocket: the query may carry the
    // bare token; a header must say `Bearer`. A bad token is refused on any
    // room (it would be used for sending); a private room needs one naming it.
    let admitted = admit(&s.control, &s.auth, &room, q.token.as_deref(), &headers).await?;
    let private = admitted.private;
    let viewer = admitted.token.transpose()?;
    let (feed, hello) = ViewerFeed::open(&s.hubs, &room, q.epoch.as_deref(), q.cursor).await?;
    let hello = serde_json::to_string(&hello).expect("hello serialises");
    let raw = client.map(|Extension(ClientSocket(raw))| raw);
    // permessage-deflate needs the raw socket: compressed frames are
    // pre-encoded bytes, and compressed client messages are inflated in its
    // read path before tungstenite sees them.
    let extension = raw
        .as_ref()
        .filter(|_| s.config.fanout.ws_compression)
        .and_then(|_| {
            let offers = headers.get_all(SEC_WEBSOCKET_EXTENSIONS).iter();
            accept_permessage_deflate(offers.filter_map(|v| v.to_str().ok()))
        });
    let deflate = extension.map(|_| WsDeflate {
        min_bytes: s.config.fanout.ws_compression_min_bytes,
        level: s.config.fanout.ws_compression_level,
    });
    let raw = raw.filter(|_| s.config.fanout.direct_writes || deflate.is_some());
    if let (Some(raw), Some(_)) = (&raw, deflate) {
        raw.inflate_client_messages(ws::MAX_READ_MESSAGE);
    }
    let mut response = upgrade
        // Small read buffer: tungstenite zero-fills it before every read (BENCHMARKS F1).
        .read_buffer_size(512)
        .max_message_size(ws::MAX_READ_MESSAGE)
        .max_frame_size(ws::MAX_READ_MESSAGE)
        .on_upgrade(move |socket| async move {
            let _slot = slot; // held for the life of the connection
            let session = ws::Opened {
                room,
                viewer,
                private,
                ip,
            };
            ws::run(socket, raw, deflate, s, session, feed, hello).await
        });
    if let Some(answer) = extension {
        let answer = HeaderValue::from_static(answer);
        response
            .headers_mut()
            .insert(SEC_WEBSOCKET_EXTENSIONS, answer);
    }
    Ok(response)
}

async fn poll_handler(
    State(s): State<Viewers>,
    RoomPath(room): RoomPath,
    ApiQuery(q): ApiQuery<PollQuery>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // Checked on every request: a poller's token expiring refuses its next poll.
    admit(&s.control, &s.auth, &room, q.token.as_deref(), &headers).await?;
    let _slot = s.viewer_slots.acquire(ip)?;
    let gzip = s.config.poll.gzip && accepts_gzip(&headers);
    poll::run(&s, &room, q, gzip).await
}

async fn sse_handler(
    State(s): State<Viewers>,
    RoomPath(room): RoomPath,
    ApiQuery(q): ApiQuery<StreamQuery>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    ApiError::refuse_if_stopping(&s.stopping)?;
    check_origin(&s.config.server.allowed_origins, &headers)?;
    let admitted = admit(&s.control, &s.auth, &room, q.token.as_deref(), &headers).await?;
    let viewer = admitted.viewer().cloned();
    let slot = s.viewer_slots.acquire(ip)?;
    let cursor = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("bad_last_event_id", "Last-Event-ID must be a cursor")
                })?,
        ),
        None => q.cursor,
    };
    let private = admitted.private;
    sse::open(&s, &room, q.epoch.as_deref(), cursor, viewer, private, slot).await
}

/// WebSocket / SSE `Origin` allow-list (empty list: any origin; `*` too).
/// Requests without an Origin (non-browser clients) are not affected.
fn check_origin(allowed: &[String], headers: &HeaderMap) -> Result<(), ApiError> {
    if allowed.is_empty() {
        return Ok(());
    }
    let Some(origin) = header_str(headers, "origin") else {
        return Ok(());
    };
    if origin_allowed(allowed, origin.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this origin may not open viewer streams",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_allow_list() {
        let mut h = HeaderMap::new();
        assert!(
            check_origin(&["https://a.example".into()], &h).is_ok(),
            "no Origin"
        );
        h.insert("origin", "https://b.example".parse().unwrap());
        assert!(check_origin(&[], &h).is_ok(), "empty list allows all");
        let e = check_origin(&["https://a.example".into()], &h).unwrap_err();
        assert_eq!(e.code, "origin_not_allowed");
        assert!(check_origin(&["*".into()], &h).is_ok(), "* allows all");
    }
}
