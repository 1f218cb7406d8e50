//! Fan-out (DESIGN §3.6): one hub per room per node. Every tick the hub takes
//! the room's new messages from its source, encodes one frame and hands the
//! same bytes to every subscriber through a bounded broadcast ring.

pub mod cache;
pub mod combo;
pub mod direct;
pub mod feed;
pub mod frame;
pub mod ration;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
use crate::message::{now_ms, StoredMessage};
use crate::metrics::Metrics;
use crate::rooms::RoomDirectory;
use crate::store::LiveStore;
use cache::CachedFrames;
use combo::Combiner;
use direct::{Detach, DirectList, DirectViewer};
pub use frame::Frame;
use ration::Rationer;

pub struct Hub {
    pub room: String,
    tx: broadcast::Sender<Arc<Frame>>,
    /// `to` of the last broadcast frame, for long-poll waiters.
    cursor_tx: watch::Sender<u64>,
    position: Mutex<Position>,
    streams: AtomicUsize,
    pollers: AtomicUsize,
    /// Viewers over all fronts (presence); this node's count until known.
    cluster_online: AtomicUsize,
    /// Big room (DESIGN §3.4): viewers read this node's cache, not the store.
    big: AtomicBool,
    /// A "room updated" notice arrived since the last read.
    dirty: AtomicBool,
    /// Gifts held for a combo (only the hub task uses it).
    combos: Mutex<Combiner>,
    /// WebSocket viewers the hub writes to itself (see `direct`).
    direct: Mutex<DirectList>,
}

struct Position {
    epoch: Arc<str>,
    /// Highest seq taken from the store.
    read_cursor: u64,
    /// `to` of the last broadcast frame: where a new subscriber joins.
    sent_cursor: u64,
    /// Seqs the rationer still holds (delayed high, low awaiting rollover).
    undecided: Arc<[u64]>,
    /// Recent frames, oldest first: the local cache big rooms are served from.
    recent: VecDeque<Arc<Frame>>,
    recent_messages: usize,
    /// `Frame::no` of the last frame broadcast (0: none yet).
    last_frame_no: u64,
    stopped: bool,
}

/// A stream subscription: frames after `cursor` arrive on `frames`.
pub struct Subscription {
    pub frames: broadcast::Receiver<Arc<Frame>>,
    pub epoch: Arc<str>,
    pub cursor: u64,
    /// Seqs at or below `cursor` that the hub will still deliver itself.
    pub undecided: Arc<[u64]>,
    /// `Frame::no` of the last frame broadcast before this subscription.
    pub frame_no: u64,
    _guard: CountGuard,
}

/// Counts a stream viewer in the room's online figure while alive.
pub struct StreamGuard(#[allow(dead_code)] CountGuard);

/// A long-poll waiter: wakes when the hub broadcasts past `cursor`.
pub struct PollWaiter {
    pub changed: watch::Receiver<u64>,
    pub epoch: Arc<str>,
    pub cursor: u64,
    _guard: CountGuard,
}

impl PollWaiter {
    pub fn hub(&self) -> &Arc<Hub> {
        &self._guard.0
    }
}

/// What the local cache holds after a cursor.
pub struct CacheRead {
    pub epoch: Arc<str>,
    /// Where the reader stands after taking `messages`.
    pub cursor: u64,
    pub messages: Vec<StoredMessage>,
    /// The reader's cursor is older than the cache: something in between is not here.
    pub gap: bool,
    /// When the answer is exactly one broadcast frame, its pre-encoded bytes.
    pub single: Option<Arc<Frame>>,
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
                recent: VecDeque::new(),
                recent_messages: 0,
                last_frame_no: 0,
                stopped: false,
            }),
            streams: AtomicUsize::new(0),
            pollers: AtomicUsize::new(0),
            cluster_online: AtomicUsize::new(0),
            big: AtomicBool::new(false),
            dirty: AtomicBool::new(true),
            combos: Mutex::new(Combiner::default()),
            direct: Mutex::new(DirectList::default()),
        }
    }

    /// Asks the hub to write to `viewer` itself from the next frame on that
    /// the viewer is in step with (see `direct`).
    pub fn request_direct(&self, viewer: Arc<DirectViewer>) {
        if viewer.mark_wanting() {
            self.direct.lock().request(viewer);
        }
    }

    /// A viewer's task took it back from the hub.
    pub fn direct_left(&self) {
        self.direct.lock().note_gone();
    }

    /// Counts one more stream viewer (a directly written one holds this
    /// instead of a subscription).
    pub fn stream_guard(self: &Arc<Self>) -> StreamGuard {
        self.streams.fetch_add(1, Ordering::AcqRel);
        StreamGuard(CountGuard(self.clone(), |h| &h.streams))
    }

    /// Viewers of this room on this node (streams and held polls).
    pub fn online(&self) -> usize {
        self.streams.load(Ordering::Acquire) + self.pollers.load(Ordering::Acquire)
    }

    /// Viewers over all fronts, as last exchanged (at least this node's).
    pub fn cluster_online(&self) -> usize {
        self.cluster_online
            .load(Ordering::Acquire)
            .max(self.online())
    }

    pub fn is_big(&self) -> bool {
        self.big.load(Ordering::Acquire)
    }

    /// The newest frame's fan-out is less than half done.
    fn fanout_behind(&self) -> bool {
        self.position
            .lock()
            .recent
            .back()
            .is_some_and(|f| f.fanout_behind())
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
            frame_no: pos.last_frame_no,
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
            cursor: pos.sent_cursor,
            _guard: CountGuard(self.clone(), |h| &h.pollers),
        })
    }

    /// The cached frames after `after` (whole frames, at most `limit`
    /// messages unless one frame alone is bigger), shared: nothing is copied.
    pub fn cached_frames_after(&self, after: u64, limit: usize) -> CachedFrames {
        let pos = self.position.lock();
        CachedFrames::after(
            &pos.recent,
            pos.epoch.clone(),
            pos.sent_cursor,
            after,
            limit,
        )
    }

    /// `cached_frames_after` with the messages copied out, for callers that
    /// need them owned (none when one whole frame answers: `single`).
    pub fn cached_after(&self, after: u64, limit: usize) -> CacheRead {
        let frames = self.cached_frames_after(after, limit);
        let single = frames.single().cloned();
        let messages = match single {
            Some(_) => Vec::new(),
            None => frames.messages().cloned().collect(),
        };
        CacheRead {
            cursor: frames.cursor,
            gap: frames.gap,
            epoch: frames.epoch,
            messages,
            single,
        }
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

    /// One tick: if `read`, takes new messages from the store (several reads
    /// if the backlog is larger than a frame may hold); rations what there is
    /// and broadcasts one frame per read.
    async fn tick(&self, ctx: &HubContext<'_>, rationer: &mut Rationer, read: bool) {
        let timer = ctx.metrics.hub_tick_seconds.start_timer();
        // Let go of viewers that left (their sockets close with them).
        self.direct.lock().prune();
        if !read {
            if rationer.has_undecided() || self.combos.lock().is_holding() {
                let (epoch, cursor) = self.read_position();
                self.broadcast(ctx, rationer, epoch, cursor, Vec::new())
                    .await;
            }
            timer.observe_duration();
            return;
        }
        self.dirty.store(false, Ordering::Release);
        loop {
            let (epoch, cursor) = self.read_position();
            ctx.metrics.store_reads.with_label_values(&["hub"]).inc();
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
                self.combos.lock().clear();
                let mut pos = self.position.lock();
                pos.epoch = Arc::from(read.epoch.as_str());
                pos.read_cursor = 0;
                pos.sent_cursor = 0;
                pos.undecided = Arc::from([]);
                pos.recent.clear();
                pos.recent_messages = 0;
                continue;
            }
            let caught_up = read.cursor >= read.head;
            self.broadcast(ctx, rationer, epoch, read.cursor, read.messages)
                .await;
            if caught_up {
                break;
            }
        }
        if ctx.final_tick && self.combos.lock().is_holding() {
            // The read failed: still hand out the held gifts before stopping.
            let (epoch, cursor) = self.read_position();
            self.broadcast(ctx, rationer, epoch, cursor, Vec::new())
                .await;
        }
        timer.observe_duration();
    }

    /// Rations and broadcasts (`ration_and_send`), then writes the frame to
    /// the viewers the hub writes to itself.
    async fn broadcast(
        &self,
        ctx: &HubContext<'_>,
        rationer: &mut Rationer,
        epoch: Arc<str>,
        to: u64,
        input: Vec<StoredMessage>,
    ) {
        let Some(Broadcast {
            frame,
            direct: Some(members),
        }) = self.ration_and_send(ctx, rationer, epoch, to, input)
        else {
            return;
        };
        let gone = self.direct.lock().gone_counter();
        let stats = direct::fan_out(&frame, &members, &gone).await;
        frame
            .taken
            .fetch_add((stats.written + stats.queued) as usize, Ordering::Relaxed);
        let m = ctx.metrics;
        m.direct_writes
            .with_label_values(&["written"])
            .inc_by(stats.written);
        if stats.queued > 0 {
            m.direct_writes
                .with_label_values(&["queued"])
                .inc_by(stats.queued);
        }
        for (why, n) in Detach::ALL.iter().zip(stats.detached) {
            if n > 0 {
                m.direct_detached
                    .with_label_values(&[why.label()])
                    .inc_by(n);
            }
        }
        m.frames_sent.inc_by(stats.written + stats.queued);
        m.delivered
            .with_label_values(&["stream"])
            .inc_by(stats.messages);
    }

    fn read_position(&self) -> (Arc<str>, u64) {
        let pos = self.position.lock();
        (pos.epoch.clone(), pos.read_cursor)
    }

    /// Rations `input` (read up to `to`), and broadcasts the selection as
    /// one frame shared by every subscriber; keeps it in the local cache.
    /// Returns the frame and the direct viewers still to be written to.
    fn ration_and_send(
        &self,
        ctx: &HubContext<'_>,
        rationer: &mut Rationer,
        epoch: Arc<str>,
        to: u64,
        input: Vec<StoredMessage>,
    ) -> Option<Broadcast> {
        let rules = ctx.rooms.rules(&self.room, self.cluster_online());
        let now = now_ms();
        let mut selection = rationer.tick(now, ctx.tick_ms, &rules, input);
        ctx.metrics.account_selection(&selection);
        let mut combos = self.combos.lock();
        let (messages, combo_stats) = combos.apply(
            now,
            ctx.combo_window_ms,
            ctx.final_tick,
            std::mem::take(&mut selection.messages),
        );
        selection.messages = messages;
        ctx.metrics.account_combos(combo_stats);
        ctx.metrics
            .room_budget
            .with_label_values(&[self.room.as_str()])
            .set(rules.budget_per_s.min(i64::MAX as u32) as i64);
        let undecided: Arc<[u64]> = if rationer.has_undecided() || combos.is_holding() {
            let mut seqs = rationer.undecided();
            seqs.extend(combos.held_seqs());
            seqs.into()
        } else {
            Arc::from([])
        };
        drop(combos);
        let mut pos = self.position.lock();
        pos.read_cursor = to;
        pos.undecided = undecided;
        if selection.messages.is_empty() {
            return None;
        }
        let mut frame = Frame::encode(&self.room, epoch, pos.sent_cursor, to, &selection.messages);
        // Viewers that took every frame so far join the direct writes now,
        // before this broadcast: from this frame on, the hub writes to them.
        let (direct, joined) =
            self.direct
                .lock()
                .prepare(&frame.epoch, pos.sent_cursor, pos.last_frame_no);
        frame.no = next_frame_no();
        pos.last_frame_no = frame.no;
        let frame = Arc::new(frame);
        pos.sent_cursor = to;
        pos.recent_messages += frame.messages.len();
        pos.recent.push_back(frame.clone());
        while pos.recent.len() > 1 && pos.recent_messages > ctx.cache_messages {
            if let Some(old) = pos.recent.pop_front() {
                pos.recent_messages -= old.messages.len();
            }
        }
        let ring = self.tx.receiver_count().saturating_sub(joined);
        frame.receivers.store(
            ring + direct.as_ref().map_or(0, |d| d.len()),
            Ordering::Relaxed,
        );
        // Ring receivers count what they send themselves (`ViewerFeed::
        // count_sent`): some that just joined the direct writes drop it.
        let _ = self.tx.send(frame.clone());
        drop(pos);
        self.cursor_tx.send_replace(to);
        ctx.metrics.frames_encoded.inc();
        Some(Broadcast { frame, direct })
    }
}

/// Numbers broadcast frames across all hubs of the process, so a viewer
/// whose room's hub is replaced never mistakes a new hub's frame for one
/// it has already taken (`Frame::no` only grows).
fn next_frame_no() -> u64 {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    LAST.fetch_add(1, Ordering::Relaxed) + 1
}

/// A frame just broadcast, and the viewers the hub writes it to itself.
struct Broadcast {
    frame: Arc<Frame>,
    direct: Option<Arc<[Arc<DirectViewer>]>>,
}

/// What a hub tick knows when it decides whether to read new messages.
struct ReadCheck {
    /// Since the last read, measured on the tick grid.
    since: Duration,
    /// Read at least this often, notice or not.
    read_interval: Duration,
    /// Read on a notice at most this often.
    min_gap: Duration,
    tick: Duration,
    /// A "room updated" notice arrived since the last read.
    dirty: bool,
    /// Fewer than half of the viewers have taken the previous frame.
    fanout_behind: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum ReadDecision {
    Read,
    /// Nothing new, or too soon after the last read.
    Wait,
    /// New messages, but the previous frame is still being written to the
    /// viewers: they join the next frame instead, so a node that cannot write
    /// a frame per tick to every viewer writes fewer, bigger frames rather
    /// than falling behind (at most 3 ticks are merged).
    Defer,
}

fn should_read(c: ReadCheck) -> ReadDecision {
    if c.since >= c.read_interval {
        return ReadDecision::Read;
    }
    if !c.dirty || c.since < c.min_gap {
        return ReadDecision::Wait;
    }
    if c.fanout_behind && c.since < c.tick * 3 {
        return ReadDecision::Defer;
    }
    ReadDecision::Read
}

/// What a hub tick needs from its registry.
struct HubContext<'a> {
    store: &'a dyn LiveStore,
    metrics: &'a Metrics,
    rooms: &'a RoomDirectory,
    tick_ms: u64,
    max_batch: usize,
    cache_messages: usize,
    combo_window_ms: u64,
    /// The hub's last tick (shutdown): nothing may stay held.
    final_tick: bool,
}

/// The hubs of this node, created on first use and stopped when idle.
pub struct HubRegistry {
    hubs: DashMap<String, Arc<Hub>>,
    store: Arc<dyn LiveStore>,
    metrics: Arc<Metrics>,
    rooms: Arc<RoomDirectory>,
    config: FanoutConfig,
    lite_after: Duration,
    node_id: String,
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
        lite_after: Duration,
        node_id: String,
    ) -> Arc<Self> {
        Arc::new(HubRegistry {
            hubs: DashMap::new(),
            store,
            metrics,
            rooms,
            config,
            lite_after,
            node_id,
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

    /// A connection handing out frames this late is behind: it sheds low.
    pub fn lite_after(&self) -> Duration {
        self.lite_after
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
            cache_messages: self.config.cache_messages,
            combo_window_ms: self.config.combo_window_ms,
            final_tick: false,
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
            ApiError::store_unavailable()
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
        let read_interval = Duration::from_millis(self.config.read_interval_ms);
        // Gaps are measured between the ticks' slots on the interval grid, not
        // between when they ran: a tick processed late must not make the next
        // one look early and skip its read (BENCHMARKS.md F2).
        let mut last_read: Option<tokio::time::Instant> = None;
        loop {
            let slot = tokio::select! {
                slot = interval.tick() => slot,
                _ = self.flushing.cancelled() => {
                    let last = HubContext { final_tick: true, ..self.context() };
                    hub.tick(&last, &mut rationer, true).await;
                    return;
                }
            };
            // Read on a notice (no more often than the room's rate allows) or
            // when the fallback interval has passed without one.
            let min_gap = Duration::from_millis(if hub.is_big() {
                self.config.big_min_read_gap_ms
            } else {
                self.config.small_min_read_gap_ms
            });
            let since = last_read.map_or(Duration::MAX, |last| slot - last);
            let read = should_read(ReadCheck {
                since,
                read_interval,
                min_gap,
                tick: Duration::from_millis(self.config.tick_ms),
                dirty: hub.dirty.load(Ordering::Acquire),
                fanout_behind: hub.fanout_behind(),
            });
            if read == ReadDecision::Defer {
                self.metrics.hub_reads_deferred.inc();
            }
            if read == ReadDecision::Read {
                last_read = Some(slot);
            }
            let read = read == ReadDecision::Read;
            hub.tick(&self.context(), &mut rationer, read).await;
            if hub.online() > 0 {
                idle_since = None;
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= idle_for && hub.try_stop() {
                self.hubs.remove_if(&hub.room, |_, h| Arc::ptr_eq(h, &hub));
                self.metrics.hubs.set(self.hubs.len() as i64);
                let _ = self
                    .metrics
                    .room_online
                    .remove_label_values(&[hub.room.as_str()]);
                let _ = self
                    .metrics
                    .room_budget
                    .remove_label_values(&[hub.room.as_str()]);
                tracing::debug!(room = %hub.room, "hub stopped (idle)");
                return;
            }
        }
    }

    /// Starts the node-wide tasks: routing "room updated" notices to hubs,
    /// and exchanging presence (which also flips rooms between big and small).
    pub fn start_background(self: &Arc<Self>) {
        let me = self.clone();
        self.tasks.spawn(async move {
            let mut updates = me.store.updates();
            loop {
                tokio::select! {
                    _ = me.flushing.cancelled() => return,
                    notice = updates.recv() => match notice {
                        Ok(room) => {
                            if let Some(hub) = me.hubs.get(&*room) {
                                hub.dirty.store(true, Ordering::Release);
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            for hub in me.hubs.iter() {
                                hub.dirty.store(true, Ordering::Release);
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            updates = me.store.updates();
                        }
                    },
                }
            }
        });
        let me = self.clone();
        self.tasks.spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(
                me.config.presence_interval_ms.max(100),
            ));
            loop {
                tokio::select! {
                    _ = me.flushing.cancelled() => return,
                    _ = every.tick() => me.exchange_presence().await,
                }
            }
        });
    }

    async fn exchange_presence(&self) {
        let hubs: Vec<Arc<Hub>> = self.hubs.iter().map(|e| e.value().clone()).collect();
        let local: Vec<(String, u64)> = hubs
            .iter()
            .map(|h| (h.room.clone(), h.online() as u64))
            .collect();
        let ttl = Duration::from_secs(self.config.presence_ttl_s.max(1));
        let totals = match self
            .store
            .exchange_presence(&self.node_id, &local, ttl)
            .await
        {
            Ok(t) => t,
            Err(e) => {
                self.metrics
                    .store_errors
                    .with_label_values(&["presence"])
                    .inc();
                tracing::warn!(error = %e, "presence exchange failed; keeping last counts");
                return;
            }
        };
        let threshold = self.config.big_room_threshold;
        for (hub, total) in hubs.iter().zip(totals) {
            let total = total as usize;
            hub.cluster_online.store(total, Ordering::Release);
            // Hysteresis: big at the threshold, small again below half of it.
            let was_big = hub.is_big();
            let big = if was_big {
                total * 2 >= threshold
            } else {
                total >= threshold
            };
            if big != was_big {
                hub.big.store(big, Ordering::Release);
                tracing::info!(room = %hub.room, online = total, big, "room size class changed");
            }
            if big {
                self.metrics
                    .room_online
                    .with_label_values(&[hub.room.as_str()])
                    .set(total as i64);
            } else if was_big {
                let _ = self
                    .metrics
                    .room_online
                    .remove_label_values(&[hub.room.as_str()]);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(since_ms: u64, dirty: bool, fanout_behind: bool) -> ReadDecision {
        should_read(ReadCheck {
            since: Duration::from_millis(since_ms),
            read_interval: Duration::from_millis(1000),
            min_gap: Duration::from_millis(100),
            tick: Duration::from_millis(100),
            dirty,
            fanout_behind,
        })
    }

    #[test]
    fn reads_on_a_notice_once_the_gap_has_passed() {
        assert_eq!(check(100, true, false), ReadDecision::Read);
        assert_eq!(check(99, true, false), ReadDecision::Wait);
        assert_eq!(check(500, false, false), ReadDecision::Wait);
        assert_eq!(
            check(1000, false, false),
            ReadDecision::Read,
            "fallback interval"
        );
    }

    #[test]
    fn a_fanout_still_running_defers_the_read_for_at_most_three_ticks() {
        assert_eq!(check(100, true, true), ReadDecision::Defer);
        assert_eq!(check(200, true, true), ReadDecision::Defer);
        assert_eq!(check(300, true, true), ReadDecision::Read);
        assert_eq!(check(99, true, true), ReadDecision::Wait, "too soon anyway");
        assert_eq!(check(150, false, true), ReadDecision::Wait, "nothing new");
    }

    #[test]
    fn a_frame_is_behind_until_half_its_receivers_took_it() {
        let f = Frame::encode("r", "e".into(), 0, 0, &[]);
        f.receivers.store(10, Ordering::Relaxed);
        f.taken.store(4, Ordering::Relaxed);
        assert!(f.fanout_behind());
        f.taken.store(5, Ordering::Relaxed);
        assert!(!f.fanout_behind());
    }
}
