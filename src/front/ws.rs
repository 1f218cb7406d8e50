//! WebSocket viewers: hello, shared batch frames, sends with acks, pings,
//! idle and slow-consumer cuts, and a close reason on shutdown. The
//! hand-over with the hub's direct writes is `fanout::direct::task_side`.

use std::net::IpAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};

use super::kicks::next_kick;
use futures_util::SinkExt;
use serde::Deserialize;

use super::{ConnGuard, Viewers};
use crate::auth::ViewerClaims;
use crate::error::ApiError;
use crate::fanout::deflate::{WsDeflate, WsEncoding};
use crate::fanout::direct::socket::SharedSocket;
use crate::fanout::direct::task_side::{
    backlog_waiting, flush, follow_attach, next_event, request_direct, send_in_order, switch,
    DirectSlot, Event, Outgoing, Sent, Source,
};
use crate::fanout::direct::DirectViewer;
use crate::fanout::feed::{FeedEvent, ViewerFeed};
use crate::ingest::DanmakuRequest;
use crate::message::Style;

/// Largest message a viewer may send over the socket: a bigger one closes
/// the socket with 1009 and a reason (which quotes this figure).
const MAX_CLIENT_MESSAGE: usize = 4096;
/// What the WebSocket reader buffers at most for one message; past it the
/// reader gives up on the connection (closed with 1009, the rest unread).
pub const MAX_READ_MESSAGE: usize = 16 * MAX_CLIENT_MESSAGE;

pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_PROTOCOL: u16 = 1002;
pub const CLOSE_BAD_DATA: u16 = 1007;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Runs a viewer's session on a socket the HTTP layer upgraded
/// (`crate::http::viewer`): `raw` is the connection for the hub's direct
/// writes and for pre-encoded frames (`None`: direct writes off and no
/// compression), `deflate` whether the viewer negotiated permessage-deflate
/// (then `raw` is set), `feed` and `hello` what `ViewerFeed::open` gave,
/// `opened` who watches what.
pub async fn run(
    socket: WebSocket,
    raw: Option<Arc<SharedSocket>>,
    deflate: Option<WsDeflate>,
    s: Viewers,
    opened: Opened,
    feed: ViewerFeed,
    hello: String,
) {
    Session {
        s,
        room: opened.room,
        viewer: opened.viewer,
        private: opened.private,
        renewed: false,
        ip: opened.ip,
    }
    .run(socket, raw, deflate, feed, hello)
    .await
}

/// The session's watcher, as the HTTP layer let it in.
pub struct Opened {
    pub room: String,
    /// The token's claims if one was given.
    pub viewer: Option<ViewerClaims>,
    /// The room was private: the socket closes (1008) when the token runs
    /// out, unless an `auth` message renewed it first.
    pub private: bool,
    pub ip: IpAddr,
}

/// A viewer's WebSocket text message: `{"type":"send","client_msg_id",
/// "text","style"?}` (the HTTP danmaku body), `{"type":"auth","token"}` or
/// `{"type":"ping"}`, parsed with [`crate::json::parse_json`]. Public for the
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
    s: Viewers,
    room: String,
    viewer: Option<ViewerClaims>,
    private: bool,
    /// An `auth` message replaced the token: the expiry moves.
    renewed: bool,
    ip: IpAddr,
}

/// One connection's moving parts, owned by the session loop. Fields drop
/// in this order: the feed (or the hub's online count), then the viewer's
/// direct slot (which shuts the socket), then the WebSocket.
struct Link {
    source: Source,
    direct: Option<DirectSlot>,
    socket: TimedSocket,
}

/// Whether the session goes on after handling one thing.
type Step = ControlFlow<()>;

/// `Continue` while the connection is alive, `Break` once it is finished.
fn alive(ok: bool) -> Step {
    if ok {
        ControlFlow::Continue(())
    } else {
        ControlFlow::Break(())
    }
}

impl Session {
    async fn run(
        mut self,
        socket: WebSocket,
        raw: Option<Arc<SharedSocket>>,
        deflate: Option<WsDeflate>,
        feed: ViewerFeed,
        hello: String,
    ) {
        let _conn = ConnGuard::new(&self.s.metrics.connections, "ws");
        let send_timeout = Duration::from_millis(self.s.config.fanout.send_timeout_ms.max(1));
        let mut socket = TimedSocket {
            socket,
            timeout: send_timeout,
            metrics: self.s.metrics.clone(),
        };
        // Pushes are enabled before anything is written on the upgraded
        // socket, so every stack write from here on is taken whole. What the
        // viewer has been sent so far: nothing after the hello.
        let may_attach = self.s.config.fanout.direct_writes;
        let direct = raw.map(|raw| DirectSlot::open(raw, &feed, deflate, may_attach));
        if !socket.send(Message::Text(hello.into())).await {
            return;
        }
        let mut link = Link {
            source: Source::Feed(feed),
            direct,
            socket,
        };
        if let Some(slot) = &mut link.direct {
            request_direct(slot, &link.source);
        }
        self.serve(&mut link).await;
    }

    /// The session loop: server shutdown first, then the next frame (or the
    /// hub's attach or detach), a backlog to flush, a client message, the
    /// idle cut and pings.
    async fn serve(&mut self, link: &mut Link) {
        let cfg = &self.s.config.fanout;
        let ping_every = Duration::from_secs(cfg.ping_s.max(1));
        let idle = Duration::from_secs(cfg.idle_timeout_s.max(1));
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let idle_deadline = tokio::time::sleep(idle);
        tokio::pin!(idle_deadline);
        let closing = self.s.closing.clone();
        let mut kicks = self.s.kicks.subscribe();
        let mut expiry = self.expiry();
        loop {
            if std::mem::take(&mut self.renewed) {
                expiry = self.expiry();
            }
            let viewer = link.direct.as_ref().map(|d| d.viewer.clone());
            let viewer = viewer.as_deref();
            let step = tokio::select! {
                biased;
                _ = closing.cancelled() => {
                    self.shut_down(link, viewer).await;
                    ControlFlow::Break(())
                }
                event = next_event(&mut link.source, viewer) => self.on_event(link, viewer, event).await,
                _ = backlog_waiting(viewer) => {
                    let v = viewer.expect("only with a direct viewer");
                    alive(flush(&v.socket, link.socket.timeout, &self.s.metrics).await)
                }
                incoming = link.socket.recv() => match incoming {
                    Some(Ok(message)) => {
                        idle_deadline.as_mut().reset(tokio::time::Instant::now() + idle);
                        self.on_message(link, message).await
                    }
                    Some(Err(e)) => {
                        link.refuse(&e).await;
                        ControlFlow::Break(())
                    }
                    None => ControlFlow::Break(()),
                },
                _ = &mut idle_deadline => {
                    link.close(CLOSE_GOING_AWAY, "idle timeout").await;
                    ControlFlow::Break(())
                }
                _ = next_kick(&mut kicks, &self.room, || self.viewer.as_ref().map(|v| v.sub.clone())) => {
                    tracing::debug!(room = %self.room, "closing a banned user's WebSocket");
                    link.close(CLOSE_POLICY, "banned").await;
                    ControlFlow::Break(())
                }
                _ = super::token_expiry(&mut expiry) => {
                    link.close(CLOSE_POLICY, "token expired").await;
                    ControlFlow::Break(())
                }
                _ = ping.tick() => match super::recheck(&self.s.rooms, &self.room, self.viewer.as_ref()) {
                    super::Recheck::Leave => {
                        link.close(CLOSE_POLICY, "room is private").await;
                        ControlFlow::Break(())
                    }
                    now => {
                        // Turned private (or public) while watched: the token's expiry follows.
                        let private = now == super::Recheck::Private;
                        if private != self.private {
                            self.private = private;
                            self.renewed = true;
                        }
                        alive(link.socket.send(Message::Ping(Default::default())).await)
                    }
                },
            };
            if step.is_break() {
                return;
            }
        }
    }

    /// When a private room's token runs out (`exp` + leeway).
    fn expiry(&self) -> super::Expiry {
        let leeway = self.s.config.auth.jwt_leeway_s;
        let until = self.viewer.as_ref().filter(|_| self.private)?.exp;
        let at = super::until_instant(until.saturating_add(leeway));
        Some(Box::pin(tokio::time::sleep_until(at)))
    }

    /// Server shutdown: the frames the hubs' last tick sent go out (unless
    /// the hub was writing them itself), the backlog is flushed, then a
    /// close frame says why.
    async fn shut_down(&self, link: &mut Link, viewer: Option<&DirectViewer>) {
        let hub_was_writing = viewer.is_some_and(|v| v.take_back(false));
        if let (Source::Feed(feed), false) = (&mut link.source, hub_was_writing) {
            for ready in feed.drain_ready() {
                let out = Outgoing::Frame {
                    frame: &ready.frame,
                    lite: false,
                    from_ring: ready.from_ring,
                };
                if !send_frame(&mut link.socket, viewer, feed, out).await {
                    return;
                }
            }
        }
        if let Some(v) = viewer {
            if !flush(&v.socket, link.socket.timeout, &self.s.metrics).await {
                return;
            }
        }
        let (reason, _) = super::shutdown_reason(self.s.config.server.reconnect_spread_ms);
        link.close(CLOSE_GOING_AWAY, reason).await;
    }

    /// Sends what the feed produced, or follows the hub's attach or detach.
    async fn on_event(&self, link: &mut Link, viewer: Option<&DirectViewer>, event: Event) -> Step {
        let sent = match event {
            Event::Changed => {
                let Some(slot) = &link.direct else {
                    return ControlFlow::Continue(());
                };
                let timeout = link.socket.timeout;
                let (hubs, metrics) = (&self.s.hubs, &self.s.metrics);
                let switched =
                    switch(&mut link.source, slot, hubs, &self.room, timeout, metrics).await;
                if let Err(reason) = switched {
                    link.close(CLOSE_GOING_AWAY, reason).await;
                    return ControlFlow::Break(());
                }
                true
            }
            Event::Feed(FeedEvent::Frame {
                frame,
                lite,
                from_ring,
            }) => {
                let Source::Feed(feed) = &mut link.source else {
                    return ControlFlow::Continue(());
                };
                let out = Outgoing::Frame {
                    frame: &frame,
                    lite,
                    from_ring,
                };
                let sent = send_frame(&mut link.socket, viewer, feed, out).await;
                if let (true, false, Some(slot)) = (sent, lite, &mut link.direct) {
                    request_direct(slot, &link.source);
                }
                sent
            }
            Event::Feed(FeedEvent::Hello(hello)) => {
                let Source::Feed(feed) = &mut link.source else {
                    return ControlFlow::Continue(());
                };
                let out = Outgoing::Hello(&hello);
                send_frame(&mut link.socket, viewer, feed, out).await
            }
            Event::Feed(FeedEvent::SlowConsumer) => {
                let reason = "slow consumer: reconnect with your cursor";
                link.close(CLOSE_POLICY, reason).await;
                return ControlFlow::Break(());
            }
        };
        if sent {
            // The hub took over with this frame: stop reading the ring now.
            if let Some(v) = viewer {
                follow_attach(&mut link.source, v);
            }
        }
        alive(sent)
    }

    /// Answers one message from the viewer.
    async fn on_message(&mut self, link: &mut Link, message: Message) -> Step {
        match message {
            Message::Text(text) if text.len() > MAX_CLIENT_MESSAGE => {
                let reason = "message too big: at most 4096 bytes";
                link.close(CLOSE_TOO_BIG, reason).await;
                ControlFlow::Break(())
            }
            Message::Text(text) => {
                let reply = self.on_text(&text).await;
                alive(link.socket.send(Message::Text(reply.into())).await)
            }
            Message::Binary(_) => {
                let e = ApiError::bad_request("binary_not_accepted", "send JSON text messages");
                let reply = error_json(&e, None);
                alive(link.socket.send(Message::Text(reply.into())).await)
            }
            Message::Close(_) => {
                link.answer_close().await;
                ControlFlow::Break(())
            }
            Message::Ping(_) | Message::Pong(_) => ControlFlow::Continue(()),
        }
    }

    /// Handles one client message; returns the reply to send.
    async fn on_text(&mut self, text: &str) -> String {
        let message: ClientMessage = match crate::json::parse_json(text.as_bytes()) {
            Ok(m) => m,
            Err(e) => return error_json(&e, None),
        };
        match message {
            ClientMessage::Ping => r#"{"type":"pong"}"#.to_string(),
            ClientMessage::Auth { token } => match self.s.auth.viewer_token(&token) {
                // A private room's watcher must keep a token naming it.
                Ok(v) if self.private && !crate::auth::access::names_room(&v, &self.room) => {
                    let e = crate::auth::access::WatchRefusal::RoomForbidden;
                    error_json(&ApiError::from(e), None)
                }
                Ok(v) => {
                    self.renewed = true;
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
                // Checked at connect (or `auth`) with the HTTP path's leeway;
                // nbf, once passed, stays passed: only exp needs a look.
                let leeway = self.s.config.auth.jwt_leeway_s;
                if crate::auth::unix_now() > viewer.exp.saturating_add(leeway) {
                    let e = ApiError::from(crate::auth::AuthFailure::ExpiredToken);
                    self.s.metrics.reject(e.code);
                    return error_json(&e, Some(&client_msg_id));
                }
                if let Err(e) = ApiError::refuse_if_stopping(&self.s.stopping) {
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

/// Sends a frame from the viewer's own task. With a direct viewer the frame
/// goes out in order with the hub's writes, and what was sent is recorded
/// under the viewer's lock; without one, through tungstenite. `false`: the
/// connection is finished.
async fn send_frame(
    socket: &mut TimedSocket,
    viewer: Option<&DirectViewer>,
    feed: &ViewerFeed,
    out: Outgoing<'_>,
) -> bool {
    let sent = match viewer {
        None => {
            if let Outgoing::Frame { frame, lite, .. } = &out {
                let len = frame.encoded(*lite).ws_frame.len();
                WsEncoding::Plain.count(&socket.metrics, len);
            }
            if socket.send(Message::Text(out.text())).await {
                Sent::Yes
            } else {
                Sent::Failed
            }
        }
        Some(viewer) => send_in_order(viewer, feed, &out, socket.timeout, &socket.metrics).await,
    };
    if let (
        Sent::Yes,
        Outgoing::Frame {
            frame,
            lite,
            from_ring,
        },
    ) = (&sent, &out)
    {
        feed.count_sent(frame, *lite, *from_ring);
    }
    !matches!(sent, Sent::Failed)
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

impl Link {
    /// Sends a close frame; the hub stops writing to the viewer first, so
    /// nothing follows the close on the wire.
    async fn close(&mut self, code: u16, reason: impl Into<Utf8Bytes>) {
        if let Some(slot) = &self.direct {
            slot.release();
        }
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        self.socket.send(Message::Close(Some(frame))).await;
    }

    /// Answers the viewer's close. tungstenite queued the echo (its code, or
    /// none) when it read the close; the hub stops writing first, then the
    /// echo goes out behind whatever the hub wrote before.
    async fn answer_close(&mut self) {
        if let Some(slot) = &self.direct {
            slot.release();
        }
        let timeout = self.socket.timeout;
        let _ = tokio::time::timeout(timeout, SinkExt::close(&mut self.socket.socket)).await;
        // tungstenite does not flush the stack after the echo: what the
        // shared socket queued is written here, before the slot shuts it.
        if let Some(slot) = &self.direct {
            flush(&slot.viewer.socket, timeout, &self.socket.metrics).await;
        }
    }

    /// Ends the connection after a read error, with a close that says why
    /// when the connection can still take one.
    async fn refuse(&mut self, e: &axum::Error) {
        use tungstenite::error::{Error as WsError, ProtocolError};
        let Some(e) = std::error::Error::source(e).and_then(|e| e.downcast_ref::<WsError>()) else {
            return;
        };
        let (code, reason) = match e {
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => return,
            WsError::Protocol(_) => (CLOSE_PROTOCOL, "protocol error"),
            WsError::Utf8(_) => (CLOSE_BAD_DATA, "text message is not valid UTF-8"),
            WsError::Capacity(_) => (CLOSE_TOO_BIG, "message too big: at most 4096 bytes"),
            _ => return,
        };
        tracing::debug!(error = %e, code, "closing a WebSocket after a read error");
        self.close(code, reason).await;
    }
}
