//! The hub task's tick (docs/architecture.md, "Fan-out"): take what notices
//! carried, or read what the store has new (several reads if the backlog is
//! larger than a frame may hold), follow an epoch change, and hand each batch
//! to `broadcast`.

use std::sync::Arc;

use super::direct::shards::ShardPlan;
use super::ration::Rationer;
use super::read_policy::ReadDecision;
use super::retractions::Retractions;
use super::Hub;
use crate::metrics::Metrics;
use crate::rooms::RoomDirectory;
use crate::store::LiveStore;

/// What a hub tick needs from its registry.
pub(super) struct HubContext<'a> {
    pub store: &'a dyn LiveStore,
    pub metrics: &'a Metrics,
    pub rooms: &'a RoomDirectory,
    /// Recent retractions: held or in-flight messages they name are dropped.
    pub retractions: &'a Retractions,
    pub tick_ms: u64,
    pub max_batch: usize,
    pub cache_messages: usize,
    pub combo_window_ms: u64,
    /// At most one online-count announcement per this (`presence_interval_ms`).
    pub online_every_ms: u64,
    /// The hub's last tick (shutdown): nothing may stay held.
    pub final_tick: bool,
    /// How the hub splits its direct writes over worker threads.
    pub shards: ShardPlan,
}

impl Hub {
    /// One tick: on `Read`, takes new messages from the store and broadcasts
    /// one frame per read; on `Take`, the same from what notices carried;
    /// otherwise only hands out what the rationer or the combos held back
    /// and now release.
    pub(super) async fn tick(
        &self,
        ctx: &HubContext<'_>,
        rationer: &mut Rationer,
        decision: ReadDecision,
    ) {
        let timer = ctx.metrics.hub_tick_seconds.start_timer();
        // Let go of viewers that left (their sockets close with them).
        self.direct.lock().prune();
        // Retractions first: the store already omits those messages, so no
        // batch of this tick can bring one back after the retract frame.
        self.send_retractions(ctx).await;
        self.send_online(ctx).await;
        if decision == ReadDecision::Read {
            self.read_and_send(ctx, rationer).await;
        } else if decision == ReadDecision::Take {
            self.take_and_send(ctx, rationer).await;
        } else if rationer.has_undecided() || self.combos.lock().is_holding() {
            self.send_held(ctx, rationer).await;
        }
        timer.observe_duration();
    }

    /// Reads until caught up with the store's head, one broadcast per read.
    async fn read_and_send(&self, ctx: &HubContext<'_>, rationer: &mut Rationer) {
        self.dirty
            .store(false, std::sync::atomic::Ordering::Release);
        // Whether the reads found messages (or failed): see `Carried::unverified`.
        let mut news = false;
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
                    crate::error::log_store_failure("hub read", Some(&self.room), &e);
                    news = true;
                    break;
                }
            };
            news |= !read.messages.is_empty();
            if *read.epoch != *epoch {
                self.follow_new_epoch(rationer, &epoch, &read.epoch);
                continue;
            }
            let caught_up = read.cursor >= read.head;
            // Notices of what this read delivers are old news now.
            self.carried.lock().forget_through(read.cursor);
            self.broadcast(ctx, rationer, epoch, read.cursor, read.messages)
                .await;
            if caught_up {
                break;
            }
        }
        self.carried
            .lock()
            .read_done(news, tokio::time::Instant::now());
        if ctx.final_tick && self.combos.lock().is_holding() {
            // The read failed: still hand out the held gifts before stopping.
            self.send_held(ctx, rationer).await;
        }
    }

    /// Broadcasts what notices carried that follows the cursor (no store
    /// read), one frame per `max_batch`, exactly as a read would have
    /// returned it (stored bytes, seq order, rationed and combined alike).
    ///
    /// Only a full frame is followed by another in the same tick: what
    /// notices bring while this tick writes waits for the next tick, or a
    /// room whose writes take a good part of the tick would send one small
    /// extra frame per tick, and every frame costs a write per viewer.
    async fn take_and_send(&self, ctx: &HubContext<'_>, rationer: &mut Rationer) {
        loop {
            let (epoch, cursor) = self.read_position();
            let messages = self.carried.lock().take(cursor, ctx.max_batch);
            let Some(to) = messages.last().map(|m| m.seq) else {
                break;
            };
            let full = messages.len() >= ctx.max_batch;
            ctx.metrics.notice_messages.inc_by(messages.len() as u64);
            self.broadcast(ctx, rationer, epoch, to, messages).await;
            if !full {
                break;
            }
        }
    }

    /// Broadcasts nothing new: only what the rationer and combos release now.
    async fn send_held(&self, ctx: &HubContext<'_>, rationer: &mut Rationer) {
        let (epoch, cursor) = self.read_position();
        self.broadcast(ctx, rationer, epoch, cursor, Vec::new())
            .await;
    }

    /// The store lost the stream: follow the new one from its start.
    fn follow_new_epoch(&self, rationer: &mut Rationer, old: &Arc<str>, new: &str) {
        tracing::warn!(room = %self.room, old = %old, new = %new, "stream epoch changed");
        *rationer = Rationer::default();
        self.combos.lock().clear();
        self.carried.lock().reset(new);
        self.position.lock().reset(new);
    }
}
