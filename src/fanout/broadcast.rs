//! One broadcast (docs/architecture.md, "Fan-out"), in three steps:
//!
//! 1. **select**: rationing and gift combos choose what viewers get from a
//!    read, and which seqs stay held (`undecided`);
//! 2. **encode**: the selection becomes one [`Frame`], encoded once in every
//!    transport's framing, outside any lock;
//! 3. **publish**: under the position lock the frame joins the local cache and
//!    the broadcast ring, and in-step viewers join the direct writes.
//!
//! Then the hub writes the frame to its direct viewers itself, split over
//! the worker threads in a big room (`direct::shards`). Every viewer gets
//! the same shared bytes: nothing is allocated or encoded per viewer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::combo::ComboStats;
use super::direct::shards::{fan_out_sharded, Members};
use super::direct::{Detach, DirectStats};
use super::ration::{Rationer, Selection};
use super::tick::HubContext;
use super::{Frame, Hub};
use crate::message::{now_ms, StoredMessage};
use crate::metrics::Metrics;

/// What rationing and combos chose from one read.
struct Selected {
    messages: Vec<StoredMessage>,
    /// Seqs read but still held (delayed high, low awaiting rollover, gifts
    /// waiting for their combo): a catching-up viewer leaves them to the hub.
    undecided: Arc<[u64]>,
}

/// A frame just published, and the viewers the hub writes it to itself.
struct Broadcast {
    frame: Arc<Frame>,
    direct: Option<Members>,
}

impl Hub {
    /// Rations and broadcasts `input` (read up to `to`), then writes the
    /// frame to the viewers the hub writes to itself.
    pub(super) async fn broadcast(
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
        let stats = self.write_direct(ctx, &frame, &members).await;
        account_direct(ctx.metrics, &stats);
    }

    /// Select → encode → publish. Returns the frame and the direct viewers
    /// still to be written to; `None` if nothing was selected.
    fn ration_and_send(
        &self,
        ctx: &HubContext<'_>,
        rationer: &mut Rationer,
        epoch: Arc<str>,
        to: u64,
        input: Vec<StoredMessage>,
    ) -> Option<Broadcast> {
        let selected = self.select(ctx, rationer, input);
        if selected.messages.is_empty() {
            self.advance_read(to, selected.undecided);
            return None;
        }
        // Only this hub's task moves `sent_cursor`: it is still `from` when
        // the frame is published.
        let from = self.position.lock().sent_cursor;
        let frame = Frame::encode(&self.room, epoch, from, to, &selected.messages);
        Some(self.publish(ctx, frame, selected.undecided))
    }

    /// Rations `input` by the room's rules and folds gift combos.
    fn select(
        &self,
        ctx: &HubContext<'_>,
        rationer: &mut Rationer,
        input: Vec<StoredMessage>,
    ) -> Selected {
        let rules = ctx.rooms.rules(&self.room, self.cluster_online());
        self.budget_per_s
            .store(rules.budget_per_s, Ordering::Relaxed);
        let now = now_ms();
        let selection = rationer.tick(now, ctx.tick_ms, &rules, input);
        account_selection(ctx.metrics, &selection);
        let mut combos = self.combos.lock();
        let (messages, combo_stats) =
            combos.apply(now, ctx.combo_window_ms, ctx.final_tick, selection.messages);
        account_combos(ctx.metrics, combo_stats);
        // Held back (late high, combos) or read just before a retraction:
        // a message retracted meanwhile is not handed out.
        let mut messages = messages;
        let retracted = ctx.retractions.recent(&self.room, now);
        if !retracted.is_empty() {
            messages.retain(|m| !retracted.contains(&m.id));
        }
        let undecided: Arc<[u64]> = if rationer.has_undecided() || combos.is_holding() {
            let mut seqs = rationer.undecided();
            seqs.extend(combos.held_seqs());
            seqs.into()
        } else {
            Arc::from([])
        };
        Selected {
            messages,
            undecided,
        }
    }

    /// Nothing to send from a read up to `to`: the next read starts there.
    fn advance_read(&self, to: u64, undecided: Arc<[u64]>) {
        let mut pos = self.position.lock();
        pos.read_cursor = to;
        pos.undecided = undecided;
    }

    /// Makes `frame` the room's newest, all at once for a concurrent
    /// subscriber: cursor, held seqs, cache, ring and direct viewers.
    fn publish(&self, ctx: &HubContext<'_>, frame: Frame, undecided: Arc<[u64]>) -> Broadcast {
        let mut pos = self.position.lock();
        debug_assert_eq!(pos.sent_cursor, frame.from, "only the hub task moves it");
        pos.read_cursor = frame.to;
        pos.undecided = undecided;
        self.publish_locked(ctx, pos, frame)
    }

    /// Announces the ids retracted since the last tick in one retract frame,
    /// published like a batch (numbered, through the ring and the direct
    /// writes) so that every viewer gets it once, after the batches before
    /// it. Cached frames published since the retraction lose the messages
    /// too (a read that was under way when it happened).
    pub(super) async fn send_retractions(&self, ctx: &HubContext<'_>) {
        if !self.retract_waiting.swap(false, Ordering::AcqRel) {
            return;
        }
        let ids = std::mem::take(&mut *self.retract_pending.lock());
        if ids.is_empty() {
            return;
        }
        let Broadcast { frame, direct } = {
            let mut pos = self.position.lock();
            pos.retract_cached(&self.room, &ids);
            let frame = Frame::retract(&self.room, pos.epoch.clone(), pos.sent_cursor, &ids);
            self.publish_locked(ctx, pos, frame)
        };
        // A batch read before the retraction may have refilled the cache.
        ctx.retractions.advance_mark(&self.room);
        if let Some(members) = direct {
            let stats = self.write_direct(ctx, &frame, &members).await;
            account_direct(ctx.metrics, &stats);
        }
    }

    /// Publishes the announcement (see `Frame::is_announcement`) that `make`
    /// builds at the hub's position, then writes it to the direct viewers.
    pub(super) async fn announce(
        &self,
        ctx: &HubContext<'_>,
        make: impl FnOnce(&super::hub::Position) -> Frame,
    ) {
        let Broadcast { frame, direct } = {
            let pos = self.position.lock();
            let frame = make(&pos);
            self.publish_locked(ctx, pos, frame)
        };
        if let Some(members) = direct {
            let stats = self.write_direct(ctx, &frame, &members).await;
            account_direct(ctx.metrics, &stats);
        }
    }

    /// Publishes `frame` at `pos` (the position lock held until the ring has
    /// it). An announcement moves no cursor and stays out of the cache.
    fn publish_locked(
        &self,
        ctx: &HubContext<'_>,
        mut pos: parking_lot::MutexGuard<'_, super::hub::Position>,
        mut frame: Frame,
    ) -> Broadcast {
        // Viewers that took every frame so far join the direct writes now,
        // before this broadcast: from this frame on, the hub writes to them.
        let (direct, joined) =
            self.direct
                .lock()
                .prepare(&frame.epoch, pos.sent_cursor, pos.last_frame_no);
        frame.no = next_frame_no();
        pos.last_frame_no = frame.no;
        let frame = Arc::new(frame);
        pos.sent_cursor = frame.to;
        if !frame.is_announcement() {
            pos.keep_recent(frame.clone(), ctx.cache_messages);
        }
        let ring = self.tx.receiver_count().saturating_sub(joined);
        frame.receivers.store(
            ring + direct.as_ref().map_or(0, |d| d.viewers.len()),
            Ordering::Relaxed,
        );
        // Ring receivers count what they send themselves (`ViewerFeed::
        // count_sent`): some that just joined the direct writes drop it.
        let _ = self.tx.send(frame.clone());
        drop(pos);
        self.cursor_tx.send_replace(frame.to);
        ctx.metrics.frames_encoded.inc();
        Broadcast { frame, direct }
    }

    /// Writes `frame` to the viewers the hub writes to itself, in as many
    /// shards as the room's size calls for; done when every shard is.
    async fn write_direct(
        &self,
        ctx: &HubContext<'_>,
        frame: &Arc<Frame>,
        members: &Members,
    ) -> DirectStats {
        let gone = self.direct.lock().gone_counter();
        let shards = ctx.shards.shards_for(members.viewers.len());
        ctx.metrics.direct_frame_shards.observe(shards as f64);
        let stats = fan_out_sharded(
            frame,
            members,
            &gone,
            shards,
            &ctx.metrics.direct_shard_write_seconds,
        )
        .await;
        // Every shard is done: the next read decision (`fanout_behind`)
        // sees all of their writes.
        frame
            .taken
            .fetch_add((stats.written + stats.queued) as usize, Ordering::Relaxed);
        stats
    }
}

fn account_selection(m: &Metrics, s: &Selection) {
    for p in crate::message::Priority::ALL {
        let n = s.delivered[p.index()];
        if n > 0 {
            m.ration_delivered
                .with_label_values(&[p.as_str()])
                .inc_by(n);
        }
    }
    if s.rationed_low > 0 {
        m.ration_dropped
            .with_label_values(&["low", "rationed"])
            .inc_by(s.rationed_low);
    }
    if s.expired_high > 0 {
        m.ration_dropped
            .with_label_values(&["high", "lag_expired"])
            .inc_by(s.expired_high);
    }
}

fn account_combos(m: &Metrics, s: ComboStats) {
    if s.combos > 0 {
        m.gift_combos.inc_by(s.combos);
        m.gift_combo_merged.inc_by(s.merged);
    }
}

fn account_direct(m: &Metrics, stats: &DirectStats) {
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
    for (counter, n) in m.ws_bytes.iter().zip(stats.bytes) {
        counter.inc_by(n);
    }
    m.delivered
        .with_label_values(&["stream"])
        .inc_by(stats.messages);
}

/// Numbers broadcast frames across all hubs of the process, so a viewer
/// whose room's hub is replaced never mistakes a new hub's frame for one
/// it has already taken (`Frame::no` only grows).
fn next_frame_no() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    LAST.fetch_add(1, Ordering::Relaxed) + 1
}
