//! WebSocket viewers: hello, shared batch frames, sends with acks, pings,
//! idle and slow-consumer cuts, and a close reason on shutdown.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use serde::Deserialize;

use super::{ConnGuard, StreamQuery};
use crate::api::{ApiQuery, RoomPath};
use crate::app::AppState;
use crate::auth::ViewerClaims;
use crate::error::ApiError;
use crate::fanout::direct::{Detach, DirectViewer};
use crate::fanout::feed::{FeedEvent, Hello, ViewerFeed};
use crate::fanout::frame::ws_text_frame;
use crate::fanout::Frame;
use crate::fanout::{Hub, StreamGuard};
use crate::front::socket::{Push, SharedSocket};
use crate::http_listener::ClientSocket;
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
    client: Option<Extension<ClientSocket>>,
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
    let raw = client
        .map(|Extension(ClientSocket(raw))| raw)
        .filter(|_| s.config.fanout.direct_writes);
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
            .run(socket, raw, feed, hello)
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

/// Where a viewer's frames come from.
enum Source {
    /// Its own task takes them from the ring (or the store) and sends them.
    Feed(ViewerFeed),
    /// The hub writes them itself; the task flushes what the socket queued.
    Direct { _online: StreamGuard },
}

enum Event {
    Feed(FeedEvent),
    /// The hub attached or detached the viewer.
    Changed,
}

/// What became of a frame the task sent in order with the hub's writes.
enum Sent {
    Yes,
    /// The hub wrote it (or writes to this viewer now, this frame included).
    HubHasIt,
    Failed,
}

/// The viewer's place in the hub's direct writes, taken back for good when
/// the session ends however it ends.
struct DirectSlot {
    viewer: Arc<DirectViewer>,
    hub: Option<Arc<Hub>>,
}

impl DirectSlot {
    /// Takes the viewer back from the hub for good.
    fn release(&self) {
        self.viewer.take_back(true);
        if let Some(hub) = &self.hub {
            hub.direct_left();
        }
    }
}

impl Drop for DirectSlot {
    fn drop(&mut self) {
        self.release();
        // The hub may hold the socket until its next tick: the client sees
        // the end now, not then.
        self.viewer.socket.shutdown();
    }
}

impl Session {
    async fn run(
        mut self,
        socket: WebSocket,
        raw: Option<Arc<SharedSocket>>,
        feed: ViewerFeed,
        hello: String,
    ) {
        let _conn = ConnGuard::new(&self.s.metrics.connections, "ws");
        let cfg = &self.s.config.fanout;
        let send_timeout = Duration::from_millis(cfg.send_timeout_ms.max(1));
        let mut socket = TimedSocket {
            socket,
            timeout: send_timeout,
            metrics: self.s.metrics.clone(),
        };
        // Pushes are enabled before anything is written on the upgraded
        // socket, so every stack write from here on is taken whole.
        let mut direct = raw.map(|raw| {
            raw.enable_pushes();
            DirectSlot {
                // What the viewer has been sent so far: nothing after the hello.
                viewer: Arc::new(DirectViewer::new(
                    raw,
                    feed.epoch().clone(),
                    feed.cursor_before_pending(),
                    feed.frame_no(),
                )),
                hub: None,
            }
        });
        if !socket.send(Message::Text(hello.into())).await {
            return;
        }
        let mut source = Source::Feed(feed);
        if let Some(slot) = &mut direct {
            request_direct(slot, &source);
        }
        let ping_every = Duration::from_secs(cfg.ping_s.max(1));
        let idle = Duration::from_secs(cfg.idle_timeout_s.max(1));
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let idle_deadline = tokio::time::sleep(idle);
        tokio::pin!(idle_deadline);
        let closing = self.s.closing.clone();
        loop {
            let viewer = direct.as_ref().map(|d| d.viewer.clone());
            tokio::select! {
                biased;
                _ = closing.cancelled() => {
                    let hub_was_writing = viewer.as_ref().is_some_and(|v| v.take_back(false));
                    if let (Source::Feed(feed), false) = (&mut source, hub_was_writing) {
                        for ready in feed.drain_ready() {
                            let out = Outgoing::Frame(&ready.frame, false, ready.from_ring);
                            if !self.send_frame(&mut socket, viewer.as_deref(), feed, out).await {
                                return;
                            }
                        }
                    }
                    if let Some(v) = &viewer {
                        if !flush(&v.socket, send_timeout, &self.s.metrics).await {
                            return;
                        }
                    }
                    close(&mut socket, &direct, CLOSE_GOING_AWAY, "server shutting down").await;
                    return;
                }
                event = next_event(&mut source, viewer.as_deref()) => {
                    let sent = match event {
                        Event::Changed => {
                            let Some(slot) = &mut direct else { continue };
                            match self.switch(&mut source, slot, &mut socket).await {
                                Ok(()) => true,
                                Err(reason) => {
                                    close(&mut socket, &direct, CLOSE_GOING_AWAY, reason).await;
                                    return;
                                }
                            }
                        }
                        Event::Feed(FeedEvent::Frame { frame, lite, from_ring }) => {
                            let Source::Feed(feed) = &mut source else { continue };
                            let out = Outgoing::Frame(&frame, lite, from_ring);
                            let sent = self.send_frame(&mut socket, viewer.as_deref(), feed, out).await;
                            if let (true, false, Some(slot)) = (sent, lite, &mut direct) {
                                request_direct(slot, &source);
                            }
                            sent
                        }
                        Event::Feed(FeedEvent::Hello(hello)) => {
                            let Source::Feed(feed) = &mut source else { continue };
                            self.send_frame(&mut socket, viewer.as_deref(), feed, Outgoing::Hello(&hello)).await
                        }
                        Event::Feed(FeedEvent::SlowConsumer) => {
                            close(&mut socket, &direct, CLOSE_POLICY, "slow consumer: reconnect with your cursor").await;
                            return;
                        }
                    };
                    if !sent {
                        return;
                    }
                    // The hub took over with this frame: stop reading the ring now.
                    if let Some(v) = &viewer {
                        follow_attach(&mut source, v);
                    }
                }
                _ = backlog_waiting(viewer.as_deref()) => {
                    let v = viewer.as_ref().expect("only with a direct viewer");
                    if !flush(&v.socket, send_timeout, &self.s.metrics).await {
                        return;
                    }
                }
                incoming = socket.recv() => {
                    let Some(Ok(message)) = incoming else { return };
                    idle_deadline.as_mut().reset(tokio::time::Instant::now() + idle);
                    match message {
                        Message::Text(text) if text.len() > MAX_CLIENT_MESSAGE => {
                            close(&mut socket, &direct, CLOSE_TOO_BIG, "message too big: at most 4096 bytes").await;
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
                    close(&mut socket, &direct, CLOSE_GOING_AWAY, "idle timeout").await;
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

    /// Sends a frame from the viewer's own task. With a direct viewer the
    /// frame goes out in order with the hub's writes, and what was sent is
    /// recorded under the viewer's lock; without one, through tungstenite.
    async fn send_frame(
        &self,
        socket: &mut TimedSocket,
        viewer: Option<&DirectViewer>,
        feed: &ViewerFeed,
        out: Outgoing<'_>,
    ) -> bool {
        let sent = match viewer {
            None => {
                if socket.send(Message::Text(out.text())).await {
                    Sent::Yes
                } else {
                    Sent::Failed
                }
            }
            Some(viewer) => {
                let sending = Sending {
                    frame_no: out.frame_no(),
                    cursor_after: out.cursor_after(feed),
                };
                let bytes = out.ws_frame();
                send_in_order(
                    viewer,
                    feed,
                    sending,
                    &bytes,
                    socket.timeout,
                    &self.s.metrics,
                )
                .await
            }
        };
        if let (Sent::Yes, Outgoing::Frame(frame, lite, from_ring)) = (&sent, &out) {
            feed.count_sent(frame, *lite, *from_ring);
        }
        !matches!(sent, Sent::Failed)
    }

    /// Follows an attach or a detach by the hub.
    async fn switch(
        &self,
        source: &mut Source,
        slot: &mut DirectSlot,
        socket: &mut TimedSocket,
    ) -> Result<(), &'static str> {
        let attached = slot.viewer.is_attached();
        match source {
            Source::Feed(_) if attached => follow_attach(source, &slot.viewer),
            Source::Direct { .. } if !attached => {
                let (epoch, cursor, why) = {
                    let st = slot.viewer.lock();
                    (st.epoch.clone(), st.cursor, st.detached())
                };
                if why == Some(Detach::Closed) {
                    return Err("connection closed");
                }
                let (feed, hello) =
                    ViewerFeed::open(&self.s.hubs, &self.room, Some(&epoch), Some(cursor))
                        .await
                        .map_err(|_| "stream interrupted: reconnect with your cursor")?;
                let told = !(hello.reset || hello.gap)
                    || self
                        .send_frame(socket, Some(&slot.viewer), &feed, Outgoing::Hello(&hello))
                        .await;
                if !told {
                    return Err("stream interrupted: reconnect with your cursor");
                }
                *source = Source::Feed(feed);
            }
            _ => {}
        }
        Ok(())
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

/// The hub writes to the viewer now: drop the ring (keep counting it online).
fn follow_attach(source: &mut Source, viewer: &DirectViewer) {
    if let Source::Feed(feed) = source {
        if viewer.is_attached() {
            *source = Source::Direct {
                _online: feed.hub().stream_guard(),
            };
        }
    }
}

/// Asks the hub to write to the viewer itself, once it is in step.
fn request_direct(slot: &mut DirectSlot, source: &Source) {
    let Source::Feed(feed) = source else { return };
    if !feed.in_step() || slot.viewer.socket.backlog_len() > 0 {
        return;
    }
    if slot
        .hub
        .as_ref()
        .is_some_and(|h| !Arc::ptr_eq(h, feed.hub()))
    {
        // The room's hub was replaced: a request left with the old one is void.
        slot.viewer.withdraw();
    }
    slot.hub = Some(feed.hub().clone());
    feed.hub().request_direct(slot.viewer.clone());
}

async fn next_event(source: &mut Source, viewer: Option<&DirectViewer>) -> Event {
    match (source, viewer) {
        (Source::Feed(feed), None) => Event::Feed(feed.next().await),
        (Source::Feed(feed), Some(v)) => tokio::select! {
            event = feed.next() => Event::Feed(event),
            _ = v.changed.notified() => Event::Changed,
        },
        (Source::Direct { .. }, Some(v)) => {
            v.changed.notified().await;
            Event::Changed
        }
        (Source::Direct { .. }, None) => std::future::pending().await,
    }
}

async fn backlog_waiting(viewer: Option<&DirectViewer>) {
    match viewer {
        Some(v) => v.socket.backlog_waiting.notified().await,
        None => std::future::pending().await,
    }
}

/// Writes what the socket queued; `false` (and counted) if the viewer
/// takes nothing at all for `timeout`, cannot empty it within twice that
/// (a trickle reader would hold the session for ever), or the socket broke.
async fn flush(
    socket: &SharedSocket,
    timeout: Duration,
    metrics: &crate::metrics::Metrics,
) -> bool {
    let give_up = tokio::time::Instant::now() + timeout * 2;
    loop {
        let moved = socket.backlog_written();
        let wait = timeout.min(give_up.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, socket.flush_backlog()).await {
            Ok(Ok(())) => return true,
            Ok(Err(_)) => return false,
            Err(_)
                if socket.backlog_written() != moved && tokio::time::Instant::now() < give_up =>
            {
                continue
            }
            Err(_) => {
                metrics.slow_consumer_disconnects.inc();
                return false;
            }
        }
    }
}

/// What a send moves the viewer's recorded position to.
struct Sending {
    /// The frame's `Frame::no` (0 if not a broadcast frame).
    frame_no: u64,
    /// The viewer's cursor once it has these bytes.
    cursor_after: u64,
}

/// Pushes `bytes` under the viewer's lock (so the hub's writes cannot pass
/// it) and records the feed's position; waits while the backlog is full.
async fn send_in_order(
    viewer: &DirectViewer,
    feed: &ViewerFeed,
    sending: Sending,
    bytes: &[u8],
    timeout: Duration,
    metrics: &crate::metrics::Metrics,
) -> Sent {
    loop {
        {
            let mut st = viewer.lock();
            // A ring frame broadcast after the hub took the viewer over, or
            // written by the hub before it handed the viewer back: sent.
            let frame_no = sending.frame_no;
            if frame_no > 0 && (st.attached() || frame_no <= st.frame_no) {
                return Sent::HubHasIt;
            }
            if st.attached() {
                // A hello or a catch-up: the stream left the hub's (an epoch
                // change the hub has not reached yet). The task takes over.
                drop(st);
                viewer.take_back(false);
                feed.hub().direct_left();
                continue;
            }
            match viewer.socket.push(bytes) {
                Push::Written | Push::Queued => {
                    st.cursor = sending.cursor_after;
                    st.epoch = feed.epoch().clone();
                    st.frame_no = feed.frame_no();
                    return Sent::Yes;
                }
                Push::Closed => return Sent::Failed,
                Push::Full => {}
            }
        }
        if !flush(&viewer.socket, timeout, metrics).await {
            return Sent::Failed;
        }
    }
}

/// A frame or a hello for the viewer, in whichever form its path needs.
enum Outgoing<'a> {
    /// A frame, whether its lite variant is meant, and whether it came from
    /// the ring (only those can have been written by the hub).
    Frame(&'a Frame, bool, bool),
    Hello(&'a Hello),
}

impl Outgoing<'_> {
    fn text(&self) -> Utf8Bytes {
        match self {
            Outgoing::Frame(f, lite, _) => f.encoded(*lite).ws_text.clone(),
            Outgoing::Hello(h) => serde_json::to_string(h).expect("hello serialises").into(),
        }
    }

    /// Where the viewer stands once it has this: a hello tells the cursor
    /// before the feed's first catch-up frame, which is not sent yet.
    fn cursor_after(&self, feed: &ViewerFeed) -> u64 {
        match self {
            Outgoing::Frame(..) => feed.cursor(),
            Outgoing::Hello(h) => h.cursor,
        }
    }

    fn frame_no(&self) -> u64 {
        match self {
            Outgoing::Frame(f, _, true) => f.no,
            Outgoing::Frame(_, _, false) => 0,
            Outgoing::Hello(_) => 0,
        }
    }

    fn ws_frame(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            Outgoing::Frame(f, lite, _) => {
                std::borrow::Cow::Borrowed(&f.encoded(*lite).ws_frame[..])
            }
            Outgoing::Hello(h) => {
                let text = serde_json::to_vec(h).expect("hello serialises");
                std::borrow::Cow::Owned(ws_text_frame(&text))
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

/// Sends a close frame; the hub stops writing to the viewer first, so
/// nothing follows the close on the wire.
async fn close(
    socket: &mut TimedSocket,
    direct: &Option<DirectSlot>,
    code: u16,
    reason: &'static str,
) {
    if let Some(slot) = direct {
        slot.release();
    }
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    socket.send(Message::Close(Some(frame))).await;
}
