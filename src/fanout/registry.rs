//! The hubs of this node (docs/architecture.md, "Fan-out"): a hub starts on a
//! room's first viewer, ticks on its own task, and stops once idle. The
//! registry also routes "room updated" notices to hubs (each room's carried
//! batch to its hub's buffer) and runs presence.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::carried::hole_wait;
use super::direct::shards::ShardPlan;
use super::ration::Rationer;
use super::read_policy::{should_read, Pending, ReadCheck, ReadDecision};
use super::retractions::Retractions;
use super::tick::HubContext;
use super::Hub;
use crate::config::FanoutConfig;
use crate::error::ApiError;
use crate::message::now_ms;
use crate::metrics::Metrics;
use crate::presence::Exchange;
use crate::rooms::RoomDirectory;
use crate::store::{LiveStore, RoomNotice};

/// One room's figures on this node, for the admin API (per-room figures are
/// kept out of metric labels: see `crate::metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RoomStats {
    /// Viewers on this node (streams and held polls).
    pub online: usize,
    /// Viewers over all fronts, as last exchanged (at least `online`).
    pub cluster_online: usize,
    /// Served from each node's cache of recent frames, not the store.
    pub big: bool,
    /// Per-viewer budget (messages/s) the hub's last tick rationed with
    /// (`u32::MAX`: unlimited; 0: not ticked yet).
    pub budget_per_s: u32,
}

/// The hubs of this node, created on first use and stopped when idle.
pub struct HubRegistry {
    hubs: DashMap<String, Arc<Hub>>,
    store: Arc<dyn LiveStore>,
    metrics: Arc<Metrics>,
    rooms: Arc<RoomDirectory>,
    config: FanoutConfig,
    /// `fanout.viewer_shards` resolved on the node's runtime.
    shards: ShardPlan,
    lite_after: Duration,
    presence: Exchange,
    retractions: Retractions,
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
        let presence = Exchange::new(store.clone(), metrics.clone(), node_id, &config);
        let shards = ShardPlan::from_config(&config);
        metrics.direct_viewer_shards.set(shards.max_shards as i64);
        Arc::new(HubRegistry {
            shards,
            hubs: DashMap::new(),
            store,
            metrics,
            rooms,
            config,
            lite_after,
            presence,
            retractions: Retractions::default(),
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
            retractions: &self.retractions,
            tick_ms: self.config.tick_ms,
            max_batch: self.config.max_batch_messages,
            cache_messages: self.config.cache_messages,
            combo_window_ms: self.config.combo_window_ms,
            online_every_ms: self.config.presence_interval_ms,
            final_tick: false,
            shards: self.shards,
        }
    }

    pub fn len(&self) -> usize {
        self.hubs.len()
    }

    /// Viewers of `room` on this node (0 if it has no hub).
    pub fn online(&self, room: &str) -> usize {
        self.hubs.get(room).map_or(0, |h| h.online())
    }

    /// `room`'s figures, if it has a hub on this node.
    pub fn room_stats(&self, room: &str) -> Option<RoomStats> {
        let hub = self.hubs.get(room)?;
        Some(RoomStats {
            online: hub.online(),
            cluster_online: hub.cluster_online(),
            big: hub.is_big(),
            budget_per_s: hub.budget_per_s(),
        })
    }

    /// Retracts messages `ids` of `room` on this node — node-side work only,
    /// the same for a retraction made here and one announced by another
    /// node: the room's hub (if it runs here) drops them from its cache of
    /// recent frames at once and sends its viewers a retract frame on its
    /// next tick; long-polls carry them for a minute (see `retractions`);
    /// the room's snapshot mark changes.
    pub fn retract(&self, room: &str, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        // Recorded first: from now on the hub hands none of them out.
        self.retractions.record(room, &ids, now_ms());
        if let Some(hub) = self.hubs.get(room) {
            hub.retract(&ids);
            // The cache omits them now: a snapshot taking this mark reads that.
            self.retractions.advance_mark(room);
        }
    }

    /// Changes whenever a message of `room` is retracted on this node (0:
    /// none lately); a part of the room's state the snapshot's ETag names.
    pub fn retraction_mark(&self, room: &str) -> u64 {
        self.retractions.mark(room)
    }

    /// Ids a long-poll answer of `room` carries as `"retracted"`: retracted
    /// on this node within the last minute (see `retractions`).
    pub fn recent_retractions(&self, room: &str) -> Vec<String> {
        self.retractions.recent(room, now_ms())
    }

    pub fn is_empty(&self) -> bool {
        self.hubs.is_empty()
    }

    /// The room's hub, started at the store's head if it is not running.
    /// At `max_rooms`, a hub no one watches (opened by a snapshot or an
    /// unanswered poll, or whose viewers left) is stopped to make room: a
    /// flood of requests on random room names cannot lock real viewers out.
    pub async fn hub(self: &Arc<Self>, room: &str) -> Result<Arc<Hub>, ApiError> {
        if let Some(h) = self.hubs.get(room) {
            return Ok(h.clone());
        }
        if self.hubs.len() >= self.config.max_rooms && !self.evict_unwatched() {
            return Err(ApiError::unavailable(
                "too_many_rooms",
                "this node has reached its open-room limit",
            ));
        }
        let head = self.store.head(room).await.map_err(|e| {
            self.metrics.store_errors.with_label_values(&["head"]).inc();
            ApiError::store_failed("stream head", Some(room), &e)
        })?;
        let hub = match self.hubs.entry(room.to_string()) {
            Entry::Occupied(e) => return Ok(e.get().clone()),
            Entry::Vacant(v) => {
                let hub = Arc::new(Hub::new(
                    room,
                    &head.epoch,
                    head.seq,
                    self.config.max_lag_frames,
                    // A hole waits a few ticks at most: room for many batches.
                    self.config.max_batch_messages.saturating_mul(4),
                ));
                v.insert(hub.clone());
                hub
            }
        };
        self.metrics.hubs.set(self.hubs.len() as i64);
        self.tasks.spawn(self.clone().run_hub(hub.clone()));
        Ok(hub)
    }

    /// Stops one hub without viewers on this node, if there is one.
    fn evict_unwatched(&self) -> bool {
        let idle = self
            .hubs
            .iter()
            .find(|h| h.online() == 0)
            .map(|h| h.value().clone());
        let Some(hub) = idle.filter(|hub| hub.try_stop()) else {
            return false;
        };
        self.hubs.remove_if(&hub.room, |_, h| Arc::ptr_eq(h, &hub));
        self.metrics.hubs.set(self.hubs.len() as i64);
        self.presence.forget(&hub.room);
        self.metrics.hubs_evicted.inc();
        tracing::debug!(room = %hub.room, "hub stopped (unwatched, at max_rooms)");
        true
    }

    /// The hub's task: a tick every `tick_ms` until the hub has been idle for
    /// `hub_idle_s`, or a last tick at shutdown.
    async fn run_hub(self: Arc<Self>, hub: Arc<Hub>) {
        let mut interval = tokio::time::interval(Duration::from_millis(self.config.tick_ms));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut idle_since: Option<Instant> = None;
        let mut rationer = Rationer::default();
        // Gaps are measured between the ticks' slots on the interval grid, not
        // between when they ran: a tick processed late must not make the next
        // one look early and skip its read (BENCHMARKS.md F2).
        let mut last_read: Option<tokio::time::Instant> = None;
        loop {
            let slot = tokio::select! {
                slot = interval.tick() => slot,
                _ = self.flushing.cancelled() => {
                    let last = HubContext { final_tick: true, ..self.context() };
                    hub.tick(&last, &mut rationer, ReadDecision::Read).await;
                    return;
                }
            };
            let since = last_read.map_or(Duration::MAX, |last| slot - last);
            let (decision, fills_hole) = self.read_decision(&hub, since);
            match decision {
                ReadDecision::Read => {
                    last_read = Some(slot);
                    if fills_hole {
                        self.metrics.notice_gap_fills.inc();
                    }
                }
                ReadDecision::Defer => self.metrics.hub_reads_deferred.inc(),
                ReadDecision::Take | ReadDecision::Wait => {}
            }
            hub.tick(&self.context(), &mut rationer, decision).await;
            if hub.online() > 0 {
                idle_since = None;
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if self.stop_if_idle(&hub, since) {
                return;
            }
        }
    }

    /// Take what notices carried; read when they cannot serve (no more
    /// often than the room's size allows); on a timer only while notices do
    /// not reach this node. Also answers whether a read would fill a hole
    /// (for `danmaku_notice_gap_fills_total`).
    fn read_decision(&self, hub: &Hub, since: Duration) -> (ReadDecision, bool) {
        let min_gap = Duration::from_millis(if hub.is_big() {
            self.config.big_min_read_gap_ms
        } else {
            self.config.small_min_read_gap_ms
        });
        let tick = Duration::from_millis(self.config.tick_ms);
        let cursor = hub.read_position().1;
        let now = tokio::time::Instant::now();
        let (pending, unverified) = {
            let carried = hub.carried.lock();
            (carried.pending(cursor, now), carried.unverified(now))
        };
        let dirty = hub.dirty.load(Ordering::Acquire);
        let decision = should_read(ReadCheck {
            since,
            notices_live: self.store.notices_live(),
            read_interval: Duration::from_millis(self.config.read_interval_ms),
            min_gap,
            tick,
            dirty,
            pending,
            hole_wait: hole_wait(tick),
            unverified,
            fanout_behind: hub.fanout_behind(),
        });
        let fills_hole =
            !dirty && matches!(pending, Pending::Hole { waited } if waited >= hole_wait(tick));
        (decision, fills_hole)
    }

    /// Stops `hub` if it has had no viewer since `idle_since` for `hub_idle_s`.
    fn stop_if_idle(&self, hub: &Arc<Hub>, idle_since: Instant) -> bool {
        if !self
            .hubs
            .get(&hub.room)
            .is_some_and(|h| Arc::ptr_eq(&h, hub))
        {
            return true; // evicted (`evict_unwatched`)
        }
        let idle_for = Duration::from_secs(self.config.hub_idle_s);
        if idle_since.elapsed() < idle_for || !hub.try_stop() {
            return false;
        }
        self.hubs.remove_if(&hub.room, |_, h| Arc::ptr_eq(h, hub));
        self.metrics.hubs.set(self.hubs.len() as i64);
        self.presence.forget(&hub.room);
        tracing::debug!(room = %hub.room, "hub stopped (idle)");
        true
    }

    /// Starts the node-wide tasks: routing "room updated" notices to hubs,
    /// and exchanging presence (which also flips rooms between big and small).
    pub fn start_background(self: &Arc<Self>) {
        let me = self.clone();
        self.tasks.spawn(async move { me.route_notices().await });
        let me = self.clone();
        self.tasks.spawn(async move {
            let hubs = || me.hubs.iter().map(|e| e.value().clone()).collect();
            me.presence.run(&me.flushing, hubs).await;
        });
    }

    /// Hands each room's carried batch to its hub; marks the hub dirty (it
    /// reads the store) for a notice without one, or one it cannot take,
    /// and every hub if notices were lost: [`crate::store::ALL_ROOMS`] or a
    /// lagging receiver.
    async fn route_notices(&self) {
        let mut updates = self.store.updates();
        loop {
            tokio::select! {
                _ = self.flushing.cancelled() => return,
                notice = updates.recv() => match notice {
                    Ok(notice) if notice.is_all_rooms() => {
                        for hub in self.hubs.iter() {
                            hub.dirty.store(true, Ordering::Release);
                        }
                    }
                    Ok(notice) => {
                        if let Some(hub) = self.hubs.get(&*notice.room) {
                            route_to(&hub, &notice);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        for hub in self.hubs.iter() {
                            hub.dirty.store(true, Ordering::Release);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        updates = self.store.updates();
                    }
                },
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

/// One room's part of a notice into its hub.
fn route_to(hub: &Hub, notice: &RoomNotice) {
    let taken = notice
        .stored
        .as_ref()
        .is_some_and(|batch| hub.carried.lock().offer(batch, tokio::time::Instant::now()));
    if !taken {
        hub.dirty.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn room_stats_serve_the_per_room_figures_metrics_leave_out() {
        let config = Config::embedded();
        let registry = HubRegistry::new(
            Arc::new(MemoryStore::new(config.store.clone())),
            Arc::new(Metrics::new()),
            Arc::new(RoomDirectory::new(config.ration.clone())),
            config.fanout.clone(),
            Duration::from_millis(config.ration.lite_after_ms),
            "n1".into(),
        );
        assert_eq!(registry.room_stats("r"), None, "no hub, no figures");
        let hub = registry.hub("r").await.unwrap();
        let _sub = hub.subscribe().unwrap();
        let _waiter = hub.poll_waiter().unwrap();
        let stats = registry.room_stats("r").unwrap();
        assert_eq!((stats.online, stats.cluster_online), (2, 2));
        assert!(!stats.big);
        let budget = registry.rooms().rules("r", 2).budget_per_s;
        // A read that selects nothing still rations with the room's rules.
        tokio::time::timeout(Duration::from_secs(5), async {
            while registry.room_stats("r").unwrap().budget_per_s != budget {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the hub's first tick records its budget");
        let text = registry.metrics().render();
        assert!(!text.contains("room=\"r\""), "no room label: {text}");
        registry.flush_and_stop().await;
    }
}
