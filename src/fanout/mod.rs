//! Fan-out (DESIGN §3.6): one hub per room per node. Every tick the hub takes
//! the room's new messages from its source, encodes one frame and hands the
//! same bytes to every subscriber through a bounded broadcast ring.

pub mod feed;
pub mod frame;
pub mod ration;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::FanoutConfig;
use crate::error::ApiError;
use crate::message::now_ms;
use crate::metrics::Metrics;
use crate::rooms::RoomDirectory;
use crate::store::LiveStore;
pub use frame::Frame;
use ration::Rationer;

pub struct Hub {
    pub room: String,
    tx: broadcast::Sender<Arc<Frame>>,
    /// Last broadcast cursor, for long-poll waiters.
    cursor_tx: watch::Sender<u64>,
    position: Mutex<Position>,
    streams: AtomicUsize,
    pollers: AtomicUsize,
}

struct Position {
    epoch: Arc<str>,
    /// Highest seq taken from the store.
    read_cursor: u64,
    /// `to` of the last broadcast frame: where a new subscriber joins.
    sent_cursor: u64,
    /// Seqs the rationer still holds (delayed high, low awaiting rollover).
    undecided: Arc<[u64]>,
    stopped: bool,
}

/// A stream subscription: frames after `cursor` arrive on `frames`.
pub struct Subscription {
    pub frames: broadcast::Receiver<Arc<Frame>>,
    pub epoch: Arc<str>,
    pub cursor: u64,
    /// Seqs at or below `cursor` that the hub will still deliver itself.
    pub undecided: Arc<[u64]>,
    _guard: CountGuard,
}

/// A long-poll waiter: wakes when the hub broadcasts past `cursor`.
pub struct PollWaiter {
    pub changed: watch::Receiver<u64>,
    pub epoch: Arc<str>,
    pub cursor: u64,
    _guard: CountGuard,
}

struct CountGuard(Arc<Hub>, fn(&Hub) -> &AtomicUsize);

impl Drop for CountGuard {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_sub(1, Ordering::AcqRel);
    }
}

impl Hub {
    fn new(room: &str, epoch: &str, cursor: u64, ring: usize) -> Hub {
        Hub {
            room: room.to_string(),
            tx: broadcast::channel(ring.max(1)).0,
            cursor_tx: watch::channel(cursor).0,
            position: Mutex::new(Position {
                epoch: Arc::from(epoch),
                read_cursor: cursor,
                sent_cursor: cursor,
                undecided: Arc::from([]),
                stopped: false,
            }),
            streams: AtomicUsize::new(0),
            pollers: AtomicUsize::new(0),
        }
    }

    /// Viewers of this room on this node (streams and held polls).
    pub fn online(&self) -> usize {
        self.streams.load(Ordering::Acquire) + self.pollers.load(Ordering::Acquire)
    }

    /// Subscribes at the current position; `None` if the hub has stopped.
    pub fn subscribe(self: &Arc<Self>) -> Option<Subscription> {
        let pos = self.position.lock();
        if pos.stopped {
            return None;
        }
        self.streams.fetch_add(1, Ordering::AcqRel);
        Some(Subscription {
            frames: self.tx.subscribe(),
            epoch: pos.epoch.clone(),
            cursor: pos.sent_cursor,
            undecided: pos.undecided.clone(),
            _guard: CountGuard(self.clone(), |h| &h.streams),
        })
    }

    pub fn poll_waiter(self: &Arc<Self>) -> Option<PollWaiter> {
        let pos = self.position.lock();
        if pos.stopped {
            return None;
        }
        self.pollers.fetch_add(1, Ordering::AcqRel);
        Some(PollWaiter {
            changed: self.cursor_tx.subscribe(),
            epoch: pos.epoch.clone(),
            cursor: pos.read_cursor,
            _guard: CountGuard(self.clone(), |h| &h.pollers),
        })
    }

    /// Stops the hub if nobody uses it (checked under the position lock, so a
    /// concurrent subscribe either sees `stopped` or keeps the hub alive).
    fn try_stop(&self) -> bool {
        let mut pos = self.position.lock();
        if self.online() == 0 && self.tx.receiver_count() == 0 {
            pos.stopped = true;
            true
        } else {
            false
        }
    }

    /// Takes new messages from the store, rations them and broadcasts one
    /// frame (several if the backlog is larger than a frame may hold).
    async fn tick(&self, ctx: &HubContext<'_>, rationer: &mut Rationer) {
        let timer = ctx.metrics.hub_tick_seconds.start_timer();
        loop {
            let (epoch, cursor) = {
                let pos = self.position.lock();
                (pos.epoch.clone(), pos.read_cursor)
            };
            let read = match ctx
                .store
                .read_range(&self.room, cursor, u64::MAX, ctx.max_batch)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    ctx.metrics.store_errors.with_label_values(&["read"]).inc();
                    tracing::warn!(room = %self.room, error = %e, "hub read failed");
                    break;
                }
            };
            if *read.epoch != *epoch {
                // The store lost the stream: follow the new one from its start.
                tracing::warn!(room = %self.room, old = %epoch, new = %read.epoch, "stream epoch changed");
                *rationer = Rationer::default();
                let mut pos = self.position.lock();
                pos.epoch = Arc::from(read.epoch.as_str());
                pos.read_cursor = 0;
                pos.sent_cursor = 0;
                pos.undecided = Arc::from([]);
                continue;
            }
            let rules = ctx.rooms.rules(&self.room, self.online());
            let selection = rationer.tick(now_ms(), ctx.tick_ms, &rules, read.messages);
            ctx.metrics.account_selection(&selection);
            ctx.metrics
                .room_budget
                .with_label_values(&[self.room.as_str()])
                .set(rules.budget_per_s as i64);
            let undecided: Arc<[u64]> = if rationer.has_undecided() {
                rationer.undecided().into()
            } else {
                Arc::from([])
            };
            let mut pos = self.position.lock();
            pos.read_cursor = read.cursor;
            pos.undecided = undecided;
            if !selection.messages.is_empty() {
                let frame = Arc::new(Frame::encode(
                    &self.room,
                    epoch,
                    pos.sent_cursor,
                    read.cursor,
                    &selection.messages,
                ));
                pos.sent_cursor = read.cursor;
                let count = frame.full.count as u64;
                let receivers = self.tx.send(frame).unwrap_or(0) as u64;
                drop(pos);
                ctx.metrics.frames_encoded.inc();
                ctx.metrics.frames_sent.inc_by(receivers);
                ctx.metrics
                    .delivered
                    .with_label_values(&["stream"])
                    .inc_by(count * receivers);
            } else {
                drop(pos);
            }
            if read.cursor != cursor {
                self.cursor_tx.send_replace(read.cursor);
            }
            if read.cursor >= read.head {
                break;
            }
        }
        timer.observe_duration();
    }
}

/// What a hub tick needs from its registry.
struct HubContext<'a> {
    store: &'a dyn LiveStore,
    metrics: &'a Metrics,
    rooms: &'a RoomDirectory,
    tick_ms: u64,
    max_batch: usize,
}

/// The hubs of this node, created on first use and stopped when idle.
pub struct HubRegistry {
    hubs: DashMap<String, Arc<Hub>>,
    store: Arc<dyn LiveStore>,
    metrics: Arc<Metrics>,
    rooms: Arc<RoomDirectory>,
    config: FanoutConfig,
    lite_after_frames: usize,
    /// Cancelled at shutdown: each hub ticks once more, then stops.
    flushing: CancellationToken,
    tasks: TaskTracker,
}

impl HubRegistry {
    pub fn new(
        store: Arc<dyn LiveStore>,
        metrics: Arc<Metrics>,
        rooms: Arc<RoomDirectory>,
        config: FanoutConfig,
        lite_after_frames: usize,
    ) -> Arc<Self> {
        Arc::new(HubRegistry {
            hubs: DashMap::new(),
            store,
            metrics,
            rooms,
            config,
            lite_after_frames,
            flushing: CancellationToken::new(),
            tasks: TaskTracker::new(),
        })
    }

    pub fn config(&self) -> &FanoutConfig {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn LiveStore> {
        &self.store
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn lite_after_frames(&self) -> usize {
        self.lite_after_frames
    }

    pub fn rooms(&self) -> &Arc<RoomDirectory> {
        &self.rooms
    }

    fn context(&self) -> HubContext<'_> {
        HubContext {
            store: &*self.store,
            metrics: &self.metrics,
            rooms: &self.rooms,
            tick_ms: self.config.tick_ms,
            max_batch: self.config.max_batch_messages,
        }
    }

    pub fn len(&self) -> usize {
        self.hubs.len()
    }

    /// Viewers of `room` on this node (0 if it has no hub).
    pub fn online(&self, room: &str) -> usize {
        self.hubs.get(room).map_or(0, |h| h.online())
    }

    pub fn is_empty(&self) -> bool {
        self.hubs.is_empty()
    }

    /// The room's hub, started at the store's head if it is not running.
    pub async fn hub(self: &Arc<Self>, room: &str) -> Result<Arc<Hub>, ApiError> {
        if let Some(h) = self.hubs.get(room) {
            return Ok(h.clone());
        }
        if self.hubs.len() >= self.config.max_rooms {
            return Err(ApiError::unavailable(
                "too_many_rooms",
                "this node has reached its open-room limit",
            ));
        }
        let head = self.store.head(room).await.map_err(|e| {
            self.metrics.store_errors.with_label_values(&["head"]).inc();
            tracing::warn!(room, error = %e, "store head failed");
            ApiError::unavailable("store_unavailable", "the live store is unavailable")
        })?;
        let hub = match self.hubs.entry(room.to_string()) {
            Entry::Occupied(e) => return Ok(e.get().clone()),
            Entry::Vacant(v) => {
                let hub = Arc::new(Hub::new(
                    room,
                    &head.epoch,
                    head.seq,
                    self.config.max_lag_frames,
                ));
                v.insert(hub.clone());
                hub
            }
        };
        self.metrics.hubs.set(self.hubs.len() as i64);
        self.tasks.spawn(self.clone().run_hub(hub.clone()));
        Ok(hub)
    }

    async fn run_hub(self: Arc<Self>, hub: Arc<Hub>) {
        let mut interval = tokio::time::interval(Duration::from_millis(self.config.tick_ms));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let idle_for = Duration::from_secs(self.config.hub_idle_s);
        let mut idle_since: Option<Instant> = None;
        let mut rationer = Rationer::default();
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = self.flushing.cancelled() => {
                    hub.tick(&self.context(), &mut rationer).await;
                    return;
                }
            }
            hub.tick(&self.context(), &mut rationer).await;
            if hub.online() > 0 {
                idle_since = None;
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= idle_for && hub.try_stop() {
                self.hubs.remove_if(&hub.room, |_, h| Arc::ptr_eq(h, &hub));
                self.metrics.hubs.set(self.hubs.len() as i64);
                let _ = self.metrics.room_budget.remove_label_values(&[hub.room.as_str()]);
                tracing::debug!(room = %hub.room, "hub stopped (idle)");
                return;
            }
        }
    }

    /// Shutdown: every hub ticks once more (what was stored goes out), then stops.
    pub async fn flush_and_stop(&self) {
        self.tasks.close();
        self.flushing.cancel();
        self.tasks.wait().await;
    }
}
