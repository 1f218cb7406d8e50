//! WebSocket viewers: hello, shared batch frames, sends with acks, pings,
//! idle and slow-consumer cuts, and a close reason on shutdown.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;

use super::{ConnGuard, StreamQuery};
use crate::api::{ApiQuery, RoomPath};
use crate::app::AppState;
use crate::auth::ViewerClaims;
use crate::error::ApiError;
use crate::fanout::feed::{FeedEvent, ViewerFeed};
use crate::ingest::DanmakuRequest;
use crate::message::Style;

/// Largest message a viewer may send over the socket: a bigger one closes
/// the socket with 1009 and a reason (which quotes this figure).
const MAX_CLIENT_MESSAGE: usize = 4096;
/// What the WebSocket reader buffers at most for one message; past it the
/// socket is cut without a close frame (the reader cannot answer mid-frame).
const MAX_READ_MESSAGE: usize = 16 * MAX_CLIENT_MESSAGE;

pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;

pub async fn handler(
    State(s): State<AppState>,
    RoomPath(room): RoomPath,
    ApiQuery(q): ApiQuery<StreamQuery>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade =
        upgrade.map_err(|e| ApiError::new(e.status(), "websocket_required", e.body_text()))?;
    if s.stopping.is_cancelled() {
        return Err(ApiError::unavailable(
            "shutting_down",
            "this node is shutting down",
        ));
    }
    super::check_origin(&s.config.server.allowed_origins, &headers)?;
    let slot = s.viewer_slots.acquire(peer.ip())?;
    let bearer = q
        .token
        .as_deref()
        .or_else(|| headers.get("authorization").and_then(|v| v.to_str().ok()));
    let viewer = match bearer {
        Some(t) => Some(s.auth.viewer(Some(t))?),
        None => None,
    };
    let (feed, hello) = ViewerFeed::open(&s.hubs, &room, q.epoch.as_deref(), q.cursor).await?;
    let hello = serde_json::to_string(&hello).expect("hello serialises");
    Ok(upgrade
        // Small read buffer: tungstenite zero-fills it before every read (BENCHMARKS F1).
        .read_buffer_size(512)
        .max_message_size(MAX_READ_MESSAGE)
        .max_frame_size(MAX_READ_MESSAGE)
        .on_upgrade(move |socket| async move {
            let _slot = slot; // held for the life of the connection
            Session {
                s,
                room,
                viewer,
                ip: peer.ip(),
            }
            .run(socket, feed, hello)
            .await
        }))
}

/// A viewer's WebSocket text message: `{"type":"send","client_msg_id",
/// "text","style"?}` (the HTTP danmaku body), `{"type":"auth","token"}` or
/// `{"type":"ping"}`, parsed with [`crate::api::parse_json`]. Public for the
/// fuzz targets (docs/fuzzing.md).
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientMessage {
    Send {
        client_msg_id: String,
        text: String,
        #[serde(default)]
        style: Option<Style>,
    },
    Auth {
        token: String,
    },
    Ping,
}

struct Session {
    s: AppState,
    room: String,
    viewer: Option<ViewerClaims>,
    ip: IpAddr,
}

impl Session {
    async fn run(mut self, socket: WebSocket, mut feed: ViewerFeed, hello: String) {
        let _conn = ConnGuard::new(&self.s.metrics.connections, "ws");
        let cfg = &self.s.config.fanout;
        let mut socket = TimedSocket {
            socket,
            timeout: Duration::from_millis(cfg.send_timeout_ms.max(1)),
            metrics: self.s.metrics.clone(),
        };
        if !socket.send(Message::Text(hello.into())).await {
            return;
        }
        let ping_every = Duration::from_secs(cfg.ping_s.max(1));
        let idle = Duration::from_secs(cfg.idle_timeout_s.max(1));
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let idle_deadline = tokio::time::sleep(idle);
        tokio::pin!(idle_deadline);
        let closing = self.s.closing.clone();
        loop {
            tokio::select! {
                biased;
                _ = closing.cancelled() => {
                    for frame in feed.drain_ready() {
                        if !socket.send(Message::Text(frame.full.ws_text.clone())).await {
                            return;
                        }
                    }
                    close(&mut socket, CLOSE_GOING_AWAY, "server shutting down").await;
                    return;
                }
                event = feed.next() => {
                    let sent = match event {
                        FeedEvent::Frame { frame, lite } => {
                            socket.send(Message::Text(frame.encoded(lite).ws_text.clone())).await
                        }
                        FeedEvent::Hello(hello) => {
                            let text = serde_json::to_string(&hello).expect("hello serialises");
                            socket.send(Message::Text(text.into())).await
                        }
                        FeedEvent::SlowConsumer => {
                            close(&mut socket, CLOSE_POLICY, "slow consumer: reconnect with your cursor").await;
                            return;
                        }
                    };
                    if !sent {
                        return;
                    }
                }
                incoming = socket.recv() => {
                    let Some(Ok(message)) = incoming else { return };
                    idle_deadline.as_mut().reset(tokio::time::Instant::now() + idle);
                    match message {
                        Message::Text(text) if text.len() > MAX_CLIENT_MESSAGE => {
                            close(&mut socket, CLOSE_TOO_BIG, "message too big: at most 4096 bytes").await;
                            return;
                        }
                        Message::Text(text) => {
                            let reply = self.on_text(&text).await;
                            if !socket.send(Message::Text(reply.into())).await {
                                return;
                            }
                        }
                        Message::Binary(_) => {
                            let e = ApiError::bad_request("binary_not_accepted", "send JSON text messages");
                            if !socket.send(Message::Text(error_json(&e, None).into())).await {
                                return;
                            }
                        }
                        Message::Close(_) => return,
                        Message::Ping(_) | Message::Pong(_) => {}
                    }
                }
                _ = &mut idle_deadline => {
                    close(&mut socket, CLOSE_GOING_AWAY, "idle timeout").await;
                    return;
                }
                _ = ping.tick() => {
                    if !socket.send(Message::Ping(Default::default())).await {
                        return;
                    }
                }
            }
        }
    }

    /// Handles one client message; returns the reply to send.
    async fn on_text(&mut self, text: &str) -> String {
        let message: ClientMessage = match crate::api::parse_json(text.as_bytes()) {
            Ok(m) => m,
            Err(e) => return error_json(&e, None),
        };
        match message {
            ClientMessage::Ping => r#"{"type":"pong"}"#.to_string(),
            ClientMessage::Auth { token } => match self.s.auth.viewer(Some(&token)) {
                Ok(v) => {
                    let reply = serde_json::json!({"type": "auth_ok", "user": {"id": v.sub, "name": v.name}});
                    self.viewer = Some(v);
                    reply.to_string()
                }
                Err(f) => error_json(&ApiError::from(f), None),
            },
            ClientMessage::Send {
                client_msg_id,
                text,
                style,
            } => {
                let Some(viewer) = &self.viewer else {
                    let e = ApiError::from(crate::auth::AuthFailure::MissingToken);
                    self.s.metrics.reject(e.code);
                    return error_json(&e, Some(&client_msg_id));
                };
                if self.s.stopping.is_cancelled() {
                    let e = ApiError::unavailable("shutting_down", "this node is shutting down");
                    return error_json(&e, Some(&client_msg_id));
                }
                let req = DanmakuRequest {
                    client_msg_id: client_msg_id.clone(),
                    text,
                    style,
                };
                match self
                    .s
                    .ingest
                    .danmaku(&self.room, viewer, self.ip, req)
                    .await
                {
                    Ok(a) => {
                        let id = serde_json::from_str::<serde_json::Value>(&a.body)
                            .ok()
                            .and_then(|v| v["id"].as_str().map(String::from))
                            .unwrap_or_default();
                        serde_json::json!({"type": "ack", "client_msg_id": client_msg_id, "id": id})
                            .to_string()
                    }
                    Err(e) => error_json(&e, Some(&client_msg_id)),
                }
            }
        }
    }
}

fn error_json(e: &ApiError, client_msg_id: Option<&str>) -> String {
    let mut v = serde_json::json!({"type": "error", "code": e.code, "message": e.message});
    if let Some(id) = client_msg_id {
        v["client_msg_id"] = id.into();
    }
    if let Some(s) = e.retry_after_s {
        v["retry_after_s"] = s.into();
    }
    v.to_string()
}

/// A socket whose every write is bounded: a viewer that accepts nothing for
/// `fanout.send_timeout_ms` is cut (it holds a task and a ring slot otherwise).
struct TimedSocket {
    socket: WebSocket,
    timeout: Duration,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl TimedSocket {
    /// `false`: the connection is finished (error or write timeout).
    async fn send(&mut self, message: Message) -> bool {
        match tokio::time::timeout(self.timeout, self.socket.send(message)).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                self.metrics.slow_consumer_disconnects.inc();
                false
            }
        }
    }

    async fn recv(&mut self) -> Option<Result<Message, axum::Error>> {
        self.socket.recv().await
    }
}

async fn close(socket: &mut TimedSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    socket.send(Message::Close(Some(frame))).await;
}
