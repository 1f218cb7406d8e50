//! Server-Sent Events viewers: `hello`, then the hub's shared SSE frames;
//! the event id is the cursor, so `Last-Event-ID` resumes without loss.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream;
use tokio_util::sync::CancellationToken;

use super::{ConnGuard, IpSlot, Viewers};
use crate::auth::ViewerClaims;
use crate::error::ApiError;
use crate::fanout::feed::{FeedEvent, Hello, ViewerFeed};

/// Opens the event stream of `room` from `cursor` (the query's, or
/// `Last-Event-ID`); `slot` is held for the life of the stream. On a
/// `private` room the stream ends with a `close` event when the viewer's
/// token does (`exp` + leeway: reconnect with a fresh one); a room turned
/// private under a viewer whose token does not name it ends within a ping.
pub async fn open(
    s: &Viewers,
    room: &str,
    epoch: Option<&str>,
    cursor: Option<u64>,
    viewer: Option<ViewerClaims>,
    private: bool,
    slot: IpSlot,
) -> Result<Response, ApiError> {
    let leeway_s = s.config.auth.jwt_leeway_s;
    let expiry = if private {
        expiry_of(viewer.as_ref(), leeway_s)
    } else {
        None
    };
    let (feed, hello) = ViewerFeed::open(&s.hubs, room, epoch, cursor).await?;
    let state = SseState {
        feed,
        hello: Some(hello),
        closing: s.closing.clone(),
        reconnect_spread_ms: s.config.server.reconnect_spread_ms,
        ping: tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(s.config.fanout.ping_s.max(1)),
            Duration::from_secs(s.config.fanout.ping_s.max(1)),
        ),
        done: false,
        room: room.to_string(),
        rooms: s.rooms.clone(),
        viewer,
        expiry,
        leeway_s,
        draining: Default::default(),
        _conn: ConnGuard::new(&s.metrics.connections, "sse"),
        _slot: slot,
    };
    let body = Body::from_stream(stream::unfold(state, |mut st| async move {
        let chunk = st.next_chunk().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(chunk), st))
    }));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache, no-store")
        .header("x-accel-buffering", "no")
        .body(body)
        .expect("static headers are valid"))
}

struct SseState {
    feed: ViewerFeed,
    hello: Option<Hello>,
    closing: CancellationToken,
    reconnect_spread_ms: u64,
    ping: tokio::time::Interval,
    done: bool,
    room: String,
    rooms: std::sync::Arc<crate::rooms::RoomDirectory>,
    viewer: Option<ViewerClaims>,
    leeway_s: u64,
    /// When the private room's token runs out.
    expiry: super::Expiry,
    /// At shutdown: queued frames, then the close event.
    draining: std::collections::VecDeque<Bytes>,
    _conn: ConnGuard,
    _slot: IpSlot,
}

impl SseState {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(chunk) = self.draining.pop_front() {
            return Some(chunk);
        }
        if self.done {
            return None;
        }
        if let Some(hello) = self.hello.take() {
            return Some(hello_event(&hello));
        }
        tokio::select! {
            biased;
            _ = self.closing.cancelled() => {
                let frames = self.feed.drain_ready();
                for f in &frames {
                    self.feed.count_sent(&f.frame, false, f.from_ring);
                }
                self.draining.extend(frames.iter().map(|f| f.frame.full.sse.clone()));
                let (reason, after) = super::shutdown_reason(self.reconnect_spread_ms);
                let close = self.close_event(&reason, Some(after));
                self.draining.push_back(close);
                self.draining.pop_front()
            }
            event = self.feed.next() => Some(match event {
                FeedEvent::Frame { frame, lite, from_ring } => {
                    self.feed.count_sent(&frame, lite, from_ring);
                    frame.encoded(lite).sse.clone()
                }
                FeedEvent::Hello(hello) => hello_event(&hello),
                FeedEvent::SlowConsumer => self.close_event("slow consumer: reconnect with Last-Event-ID", None),
            }),
            _ = super::token_expiry(&mut self.expiry) => {
                Some(self.close_event("token expired: reconnect with a renewed token", None))
            }
            _ = self.ping.tick() => Some(self.on_ping()),
        }
    }

    /// A ping, or the end if the room turned private under a viewer whose
    /// token does not name it; the token's expiry follows the room's setting.
    fn on_ping(&mut self) -> Bytes {
        match super::recheck(&self.rooms, &self.room, self.viewer.as_ref()) {
            super::Recheck::Leave => return self.close_event("room is private", None),
            super::Recheck::Public => self.expiry = None,
            super::Recheck::Private if self.expiry.is_none() => {
                self.expiry = expiry_of(self.viewer.as_ref(), self.leeway_s);
            }
            super::Recheck::Private => {}
        }
        Bytes::from_static(b": ping\n\n")
    }

    /// The `close` event; with `retry_after_ms`, also in the SSE `retry`
    /// field, so an `EventSource` waits that long before it reconnects.
    fn close_event(&mut self, reason: &str, retry_after_ms: Option<u64>) -> Bytes {
        self.done = true;
        let mut data = serde_json::json!({"type": "close", "reason": reason});
        match retry_after_ms {
            Some(ms) => {
                data["retry_after_ms"] = ms.into();
                Bytes::from(format!("retry: {ms}\nevent: close\ndata: {data}\n\n"))
            }
            None => Bytes::from(format!("event: close\ndata: {data}\n\n")),
        }
    }
}

/// When a private room's viewer's token runs out (`exp` + leeway).
fn expiry_of(viewer: Option<&ViewerClaims>, leeway_s: u64) -> super::Expiry {
    let until = viewer?.exp.saturating_add(leeway_s);
    Some(Box::pin(tokio::time::sleep_until(super::until_instant(
        until,
    ))))
}

fn hello_event(hello: &Hello) -> Bytes {
    let data = serde_json::to_string(hello).expect("hello serialises");
    Bytes::from(format!(
        "id: {}\nevent: hello\ndata: {data}\n\n",
        hello.cursor
    ))
}
