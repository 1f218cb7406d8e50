//! The viewer task's half of direct writes: where its frames come from
//! ([`Source`]), asking the hub to take over ([`request_direct`]), following
//! the hub's attach or detach ([`follow_attach`], [`switch`]), and sending in
//! order with the hub's writes ([`send_in_order`], [`flush`]). See the
//! module invariant in `super`.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;

use super::socket::{Push, SharedSocket};
use super::viewer::{Detach, DirectViewer};
use crate::fanout::deflate::{WsDeflate, WsEncoding};
use crate::fanout::feed::{FeedEvent, Hello, ViewerFeed};
use crate::fanout::frame::ws_text_frame;
use crate::fanout::{Frame, Hub, HubRegistry, StreamGuard};
use crate::metrics::Metrics;

/// Where a viewer's frames come from.
pub enum Source {
    /// Its own task takes them from the ring (or the store) and sends them.
    Feed(ViewerFeed),
    /// The hub writes them itself; the task flushes what the socket queued.
    Direct { _online: StreamGuard },
}

/// What the viewer's task waits for next.
pub enum Event {
    Feed(FeedEvent),
    /// The hub attached or detached the viewer.
    Changed,
}

/// What became of a frame the task sent in order with the hub's writes.
pub enum Sent {
    Yes,
    /// The hub wrote it (or writes to this viewer now, this frame included).
    HubHasIt,
    Failed,
}

/// The viewer's place in the hub's direct writes, taken back for good when
/// the session ends however it ends.
pub struct DirectSlot {
    pub viewer: Arc<DirectViewer>,
    hub: Option<Arc<Hub>>,
    /// The hub may take the viewer over (`fanout.direct_writes`); without,
    /// the slot only keeps the task's own writes in order on the socket (a
    /// compressing viewer's frames are pre-encoded bytes, which tungstenite
    /// cannot send).
    may_attach: bool,
}

impl DirectSlot {
    /// A slot for a viewer that has been sent nothing after its hello yet.
    /// Enables pushes on `raw`: call it before anything is written on the
    /// upgraded socket, so every stack write from then on is taken whole.
    pub fn open(
        raw: Arc<SharedSocket>,
        feed: &ViewerFeed,
        deflate: Option<WsDeflate>,
        may_attach: bool,
    ) -> Self {
        raw.enable_pushes();
        DirectSlot {
            may_attach,
            viewer: Arc::new(DirectViewer::new(
                raw,
                deflate,
                feed.epoch().clone(),
                feed.cursor_before_pending(),
                feed.frame_no(),
            )),
            hub: None,
        }
    }

    /// Takes the viewer back from the hub for good.
    pub fn release(&self) {
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

/// A frame or a hello for the viewer, in whichever form its path needs.
pub enum Outgoing<'a> {
    Frame {
        frame: &'a Frame,
        /// Its lite variant (without low) is meant.
        lite: bool,
        /// It came from the ring (only those can have been written by the hub).
        from_ring: bool,
    },
    Hello(&'a Hello),
}

impl Outgoing<'_> {
    /// As a WebSocket text message (the path through tungstenite).
    pub fn text(&self) -> Utf8Bytes {
        match self {
            Outgoing::Frame { frame, lite, .. } => frame.encoded(*lite).ws_text.clone(),
            Outgoing::Hello(h) => serde_json::to_string(h).expect("hello serialises").into(),
        }
    }

    /// Where the viewer stands once it has this: a hello tells the cursor
    /// before the feed's first catch-up frame, which is not sent yet.
    fn cursor_after(&self, feed: &ViewerFeed) -> u64 {
        match self {
            Outgoing::Frame { .. } => feed.cursor(),
            Outgoing::Hello(h) => h.cursor,
        }
    }

    /// The frame's `Frame::no` if it was broadcast, else 0.
    fn frame_no(&self) -> u64 {
        match self {
            Outgoing::Frame {
                frame,
                from_ring: true,
                ..
            } => frame.no,
            Outgoing::Frame {
                from_ring: false, ..
            } => 0,
            Outgoing::Hello(_) => 0,
        }
    }

    /// As the bytes of a whole WebSocket frame (the path the hub shares),
    /// compressed if the viewer negotiated it (a hello never is: it is
    /// small, and RSV1 is per message).
    fn ws_frame(&self, deflate: Option<WsDeflate>) -> (Cow<'_, [u8]>, WsEncoding) {
        match self {
            Outgoing::Frame { frame, lite, .. } => {
                let (bytes, encoding) = frame.encoded(*lite).ws_frame_for(deflate);
                (Cow::Borrowed(&bytes[..]), encoding)
            }
            Outgoing::Hello(h) => {
                let text = serde_json::to_vec(h).expect("hello serialises");
                (Cow::Owned(ws_text_frame(&text)), WsEncoding::Plain)
            }
        }
    }
}

/// The hub writes to the viewer now: drop the ring (keep counting it online).
pub fn follow_attach(source: &mut Source, viewer: &DirectViewer) {
    if let Source::Feed(feed) = source {
        if viewer.is_attached() {
            *source = Source::Direct {
                _online: feed.hub().stream_guard(),
            };
        }
    }
}

/// Asks the hub to write to the viewer itself, once it is in step.
pub fn request_direct(slot: &mut DirectSlot, source: &Source) {
    let Source::Feed(feed) = source else { return };
    if !slot.may_attach || !feed.in_step() || slot.viewer.socket.backlog_len() > 0 {
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

/// Follows an attach or a detach by the hub. After a detach the task opens
/// a feed from the cursor the hub left the viewer at (telling the viewer
/// first if that feed starts with a reset or a gap); `Err`: the close reason.
pub async fn switch(
    source: &mut Source,
    slot: &DirectSlot,
    hubs: &Arc<HubRegistry>,
    room: &str,
    timeout: Duration,
    metrics: &Metrics,
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
            let (feed, hello) = ViewerFeed::open(hubs, room, Some(&epoch), Some(cursor))
                .await
                .map_err(|_| "stream interrupted: reconnect with your cursor")?;
            if hello.reset || hello.gap {
                let out = Outgoing::Hello(&hello);
                let sent = send_in_order(&slot.viewer, &feed, &out, timeout, metrics).await;
                if matches!(sent, Sent::Failed) {
                    return Err("stream interrupted: reconnect with your cursor");
                }
            }
            *source = Source::Feed(feed);
        }
        _ => {}
    }
    Ok(())
}

/// The next frame from the feed, or the hub's attach or detach.
pub async fn next_event(source: &mut Source, viewer: Option<&DirectViewer>) -> Event {
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

/// Resolves when a push left bytes in the viewer's socket backlog (never
/// without a direct viewer).
pub async fn backlog_waiting(viewer: Option<&DirectViewer>) {
    match viewer {
        Some(v) => v.socket.backlog_waiting.notified().await,
        None => std::future::pending().await,
    }
}

/// Writes what the socket queued; `false` (and counted) if the viewer
/// takes nothing at all for `timeout`, cannot empty it within twice that
/// (a trickle reader would hold the session for ever), or the socket broke.
pub async fn flush(socket: &SharedSocket, timeout: Duration, metrics: &Metrics) -> bool {
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

/// Pushes `out` under the viewer's lock (so the hub's writes cannot pass
/// it) and records the feed's position; waits while the backlog is full.
pub async fn send_in_order(
    viewer: &DirectViewer,
    feed: &ViewerFeed,
    out: &Outgoing<'_>,
    timeout: Duration,
    metrics: &Metrics,
) -> Sent {
    // The frame's `Frame::no` (0 if not a broadcast frame), and the
    // viewer's cursor once it has these bytes.
    let frame_no = out.frame_no();
    let cursor_after = out.cursor_after(feed);
    let (bytes, encoding) = out.ws_frame(viewer.deflate);
    loop {
        {
            let mut st = viewer.lock();
            // A ring frame broadcast after the hub took the viewer over, or
            // written by the hub before it handed the viewer back: sent.
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
            match viewer.socket.push(&bytes) {
                Push::Written | Push::Queued => {
                    if matches!(out, Outgoing::Frame { .. }) {
                        encoding.count(metrics, bytes.len());
                    }
                    st.cursor = cursor_after;
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
