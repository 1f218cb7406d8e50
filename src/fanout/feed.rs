//! One streaming viewer's view of a room: shared hub frames while the viewer
//! is in step, store reads to catch up when it is not (a resumed cursor, a
//! frame that overlaps), so its cursor advances without gaps or repeats.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

use super::ration::ration_catch_up;
use super::{Frame, Hub, HubRegistry, Subscription};
use crate::error::ApiError;

/// The viewer protocol's version (docs/protocol.md): in every hello, and in
/// the `Danmaku-Protocol` header of long-poll answers. Raised only when a
/// client written for the previous version would misread the stream.
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Serialize, Debug, Clone)]
pub struct Hello {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub protocol: u32,
    pub room: String,
    pub epoch: String,
    pub cursor: u64,
    pub online: usize,
    pub tick_ms: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
    /// Messages between the client's cursor and now were already trimmed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub gap: bool,
}

pub enum FeedEvent {
    /// A frame to send; `lite` = send its variant without low (the viewer is
    /// behind); `from_ring`: as broadcast, not read to catch up (a big room's
    /// catch-up may hand out a cached broadcast frame too).
    Frame {
        frame: Arc<Frame>,
        lite: bool,
        from_ring: bool,
    },
    /// The stream was replaced (store failover): start again from the new one.
    Hello(Hello),
    /// The viewer fell more frames behind than the ring holds.
    SlowConsumer,
}

/// A frame already queued for the viewer (see `ViewerFeed::drain_ready`).
pub struct ReadyFrame {
    pub frame: Arc<Frame>,
    /// As broadcast, not read to catch up (see `FeedEvent::Frame`).
    pub from_ring: bool,
}

/// One catch-up read, encoded as one frame.
struct CaughtUp {
    frame: Arc<Frame>,
    /// Messages between the viewer's cursor and the read were already trimmed.
    gap: bool,
}

pub struct ViewerFeed {
    registry: Arc<HubRegistry>,
    hub: Arc<Hub>,
    sub: Subscription,
    room: String,
    epoch: Arc<str>,
    cursor: u64,
    /// Catch up from the store until here before taking hub frames.
    target: u64,
    /// First catch-up frame, read while opening.
    pending: Option<Arc<Frame>>,
    /// Seqs the hub still holds back at subscribe time: not ours to catch up.
    undecided: Arc<[u64]>,
    /// `Frame::no` of the last broadcast frame taken from the ring.
    frame_no: u64,
    /// `danmaku_messages_delivered_total{transport="stream"}`, resolved once.
    delivered_stream: prometheus::IntCounter,
}

impl ViewerFeed {
    /// Joins the room. `client_epoch`/`client_cursor` resume a stream; a
    /// different epoch means the client's cursor is meaningless (reset).
    pub async fn open(
        registry: &Arc<HubRegistry>,
        room: &str,
        client_epoch: Option<&str>,
        client_cursor: Option<u64>,
    ) -> Result<(ViewerFeed, Hello), ApiError> {
        let (hub, sub) = subscribe(registry, room).await?;
        let reset = client_epoch.is_some_and(|e| !e.is_empty() && *e != *sub.epoch);
        let mut cursor = match (reset, client_cursor) {
            (true, _) => 0,
            (false, Some(c)) => c,
            (false, None) => sub.cursor,
        };
        if cursor > sub.cursor {
            // Ahead of this hub (it lags by up to a tick) or bogus: clamp to the store.
            let head = registry.store().head(room).await.map_err(store_down)?;
            cursor = cursor.min(head.seq);
        }
        let mut feed = ViewerFeed {
            registry: registry.clone(),
            room: room.to_string(),
            epoch: sub.epoch.clone(),
            cursor,
            target: sub.cursor,
            undecided: sub.undecided.clone(),
            frame_no: sub.frame_no,
            delivered_stream: registry.metrics().delivered.with_label_values(&["stream"]),
            hub,
            sub,
            pending: None,
        };
        let mut gap = false;
        if feed.cursor < feed.target {
            let caught_up = feed.catch_up().await?;
            gap = caught_up.gap;
            feed.pending = Some(caught_up.frame);
        }
        let hello = feed.hello(reset, gap);
        Ok((feed, hello))
    }

    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    pub fn epoch(&self) -> &Arc<str> {
        &self.epoch
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Counts a frame handed to the connection if it came from the ring
    /// (catch-up frames are counted when read; the hub counts its own writes).
    pub fn count_sent(&self, frame: &Frame, lite: bool, from_ring: bool) {
        if from_ring {
            self.registry.metrics().frames_sent.inc();
            self.delivered_stream
                .inc_by(frame.encoded(lite).count as u64);
        }
    }

    /// `Frame::no` of the last broadcast frame this feed has taken.
    pub fn frame_no(&self) -> u64 {
        self.frame_no
    }

    /// Nothing to catch up: the next frame from the ring continues the stream.
    pub fn in_step(&self) -> bool {
        self.pending.is_none() && self.cursor >= self.target
    }

    pub fn online(&self) -> usize {
        self.hub.cluster_online()
    }

    fn hello(&self, reset: bool, gap: bool) -> Hello {
        let online = self.hub.cluster_online();
        self.hub.told_in_hello(online);
        Hello {
            kind: "hello",
            protocol: PROTOCOL_VERSION,
            room: self.room.clone(),
            epoch: self.epoch.to_string(),
            cursor: self.cursor_before_pending(),
            online,
            tick_ms: self.registry.config().tick_ms,
            reset,
            gap,
        }
    }

    /// The cursor the hello tells: before the first catch-up frame, if any.
    pub fn cursor_before_pending(&self) -> u64 {
        self.pending.as_ref().map_or(self.cursor, |f| f.from)
    }

    /// The next thing to send. Cancel-safe: state changes only after awaits.
    pub async fn next(&mut self) -> FeedEvent {
        if let Some(frame) = self.pending.take() {
            return FeedEvent::Frame {
                frame,
                lite: false,
                from_ring: false,
            };
        }
        let lite_after = self.registry.lite_after();
        loop {
            if self.cursor < self.target {
                match self.catch_up().await {
                    Ok(CaughtUp { frame, .. }) => {
                        return FeedEvent::Frame {
                            frame,
                            lite: false,
                            from_ring: false,
                        }
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        continue;
                    }
                }
            }
            match self.sub.frames.recv().await {
                Ok(frame) => {
                    if let Some(event) = self.take_from_ring(frame, lite_after) {
                        return event;
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    self.registry.metrics().slow_consumer_disconnects.inc();
                    return FeedEvent::SlowConsumer;
                }
                Err(RecvError::Closed) => self.follow_successor().await,
            }
        }
    }

    /// A frame from the ring: what to send for it, if anything (`None`: a
    /// frame already had, fully shed, or one that needs a catch-up first).
    fn take_from_ring(&mut self, frame: Arc<Frame>, lite_after: Duration) -> Option<FeedEvent> {
        frame.taken.fetch_add(1, Ordering::Relaxed);
        self.frame_no = frame.no;
        if frame.is_announcement() {
            // Whatever the viewer's position: it may hold a retracted message
            // (a viewer still catching up had it before), ids are applied
            // idempotently, and an online count is the room's now. It moves
            // no cursor.
            return Some(FeedEvent::Frame {
                frame,
                lite: false,
                from_ring: true,
            });
        }
        if frame.epoch != self.epoch {
            self.epoch = frame.epoch.clone();
            self.cursor = 0;
            self.target = frame.to;
            return Some(FeedEvent::Hello(self.hello(true, false)));
        }
        if frame.to <= self.cursor && !late_only(&frame, self.cursor) {
            return None;
        }
        if frame.from != self.cursor {
            // Not contiguous with what this viewer has: fill from the store.
            self.target = frame.to;
            return None;
        }
        self.cursor = frame.to;
        // Behind (frames reach it late — not merely several frames of one
        // backlog at once): shed this frame's low first.
        let lite = frame.lite.is_some() && frame.encoded_at.elapsed() >= lite_after;
        if lite {
            let shed = frame.full.count - frame.encoded(true).count;
            self.registry
                .metrics()
                .queue_low_dropped
                .inc_by(shed as u64);
            if frame.encoded(true).count == 0 {
                return None; // nothing left to send; the cursor still moved
            }
        }
        Some(FeedEvent::Frame {
            frame,
            lite,
            from_ring: true,
        })
    }

    /// The hub stopped under us; join its successor.
    async fn follow_successor(&mut self) {
        if let Ok((hub, sub)) = subscribe(&self.registry, &self.room).await {
            self.target = self.target.max(sub.cursor);
            self.undecided = sub.undecided.clone();
            self.frame_no = sub.frame_no;
            self.hub = hub;
            self.sub = sub;
        } else {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Frames already queued for this viewer, without waiting: at shutdown,
    /// what the hubs' last tick sent goes out before the close.
    pub fn drain_ready(&mut self) -> Vec<ReadyFrame> {
        let mut out: Vec<ReadyFrame> = self
            .pending
            .take()
            .map(|frame| ReadyFrame {
                frame,
                from_ring: false,
            })
            .into_iter()
            .collect();
        while let Ok(frame) = self.sub.frames.try_recv() {
            if frame.is_announcement() {
                self.frame_no = frame.no;
                out.push(ReadyFrame {
                    frame,
                    from_ring: true,
                });
                continue;
            }
            if frame.epoch != self.epoch
                || (frame.to <= self.cursor && !late_only(&frame, self.cursor))
            {
                continue;
            }
            if frame.from != self.cursor {
                break; // would need a store read; the viewer resumes by cursor
            }
            self.cursor = frame.to;
            self.frame_no = frame.no;
            out.push(ReadyFrame {
                frame,
                from_ring: true,
            });
        }
        out
    }

    /// Reads (cursor, target] from the store as one individually encoded
    /// frame, rationed by the room's rules and without what the hub still holds.
    async fn catch_up(&mut self) -> Result<CaughtUp, ApiError> {
        let limit = self.registry.config().max_batch_messages;
        if self.hub.is_big() {
            return Ok(self.catch_up_from_cache(limit));
        }
        self.registry
            .metrics()
            .store_reads
            .with_label_values(&["catch_up"])
            .inc();
        let read = self
            .registry
            .store()
            .read_range(&self.room, self.cursor, self.target, limit)
            .await
            .map_err(store_down)?;
        let rules = self
            .registry
            .rooms()
            .rules(&self.room, self.hub.cluster_online());
        let read_nothing = read.messages.is_empty();
        let mut messages = ration_catch_up(&rules, read.messages);
        if !self.undecided.is_empty() {
            messages.retain(|m| !self.undecided.contains(&m.seq));
        }
        let frame = Arc::new(Frame::encode(
            &self.room,
            self.epoch.clone(),
            self.cursor,
            read.cursor,
            &messages,
        ));
        self.registry
            .metrics()
            .delivered
            .with_label_values(&["catch_up"])
            .inc_by(frame.full.count as u64);
        self.cursor = read.cursor.max(self.cursor);
        if read.cursor < self.target && read_nothing {
            // Nothing readable up to target (trimmed): jump.
            self.cursor = self.target;
        }
        Ok(CaughtUp {
            frame,
            gap: read.gap,
        })
    }

    /// Big rooms: the viewer catches up from this node's recent frames (the
    /// same, already rationed frames everyone got), never from the store.
    fn catch_up_from_cache(&mut self, limit: usize) -> CaughtUp {
        let read = self.hub.cached_after(self.cursor, limit);
        let metrics = self.registry.metrics();
        let result = if read.gap { "gap" } else { "hit" };
        metrics.cache_reads.with_label_values(&[result]).inc();
        let frame = match read.single {
            Some(frame) => frame,
            None => Arc::new(Frame::encode(
                &self.room,
                self.epoch.clone(),
                self.cursor,
                read.cursor.max(self.cursor),
                &read.messages,
            )),
        };
        metrics
            .delivered
            .with_label_values(&["catch_up"])
            .inc_by(frame.full.count as u64);
        self.cursor = if frame.full.count == 0 {
            self.target // nothing cached up to target: jump
        } else {
            frame.to.max(self.cursor)
        };
        CaughtUp {
            frame,
            gap: read.gap,
        }
    }
}

/// A frame that does not move the cursor but starts at it: only messages the
/// hub held back (late high, gift combos), sent after the viewer's cursor
/// had already passed their seqs. The viewer has not seen them.
pub(crate) fn late_only(frame: &Frame, cursor: u64) -> bool {
    frame.from == cursor && frame.to == cursor
}

async fn subscribe(
    registry: &Arc<HubRegistry>,
    room: &str,
) -> Result<(Arc<Hub>, Subscription), ApiError> {
    for _ in 0..10 {
        let hub = registry.hub(room).await?;
        if let Some(sub) = hub.subscribe() {
            return Ok((hub, sub));
        }
        tokio::task::yield_now().await;
    }
    Err(ApiError::unavailable(
        "hub_unavailable",
        "the room is restarting; retry",
    ))
}

fn store_down(e: crate::store::StoreError) -> ApiError {
    ApiError::store_failed("stream read", None, &e)
}
