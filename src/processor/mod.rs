//! Processor role: consumes the bus, writes the live store, commits only after
//! the write succeeded (so a crash redelivers; the store's id dedup makes the
//! redelivery harmless).
//!
//! With a stored log (`crate::bus`, for the archiver), each batch's stored
//! messages (with their seqs; a redelivered duplicate with the seq it was
//! stored under) are published there before the commit, then the batch's
//! live-end markers, so each marker follows the messages before it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

pub mod gear;

use crate::bus::{Bus, BusConsumer, BusRecord, Delivery, LiveEnd, Payload};
use crate::config::GearConfig;
use crate::gears;
use crate::message::{now_ms, Kind, Message};
use crate::metrics::Metrics;
use crate::store::{AppendOutcome, Appended, LiveStore, RoomNotice, StoredBatch};
pub use gear::{Gear, Gearbox};

pub struct Processor {
    pub bus: Arc<dyn Bus>,
    pub store: Arc<dyn LiveStore>,
    /// Where stored messages and live-end markers go for the archiver;
    /// `None` when no archiver follows (embedded, without one in-process).
    pub stored: Option<Arc<dyn Bus>>,
    pub metrics: Arc<Metrics>,
    pub batch_max: usize,
    pub gears: GearConfig,
    /// While asked, nothing is consumed (maintenance; tests of back-pressure).
    pub pause: Arc<PauseGate>,
}

/// Asks the processor to stop consuming, and tells when it has.
#[derive(Default)]
pub struct PauseGate {
    wanted: AtomicBool,
    holding: AtomicBool,
}

impl PauseGate {
    /// Sets the wish and waits (bounded) until the processor follows it, so
    /// no poll in flight slips through after `pause(true)` returns.
    pub async fn set(&self, paused: bool) {
        self.wanted.store(paused, Ordering::Release);
        for _ in 0..400 {
            if self.holding.load(Ordering::Acquire) == paused {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::warn!(paused, "processor did not follow the pause request in 2 s");
    }
}

const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A polled message and the bus partition it came from.
type Placed<'a> = (u32, &'a Message);

/// One writer's part of a batch, as stored.
struct Written<'a> {
    room: &'a str,
    /// The epoch of the stream it went into.
    epoch: String,
    /// With the seqs they are stored under.
    messages: Vec<Message>,
    /// Some were stored before (a redelivery): their seqs are old news.
    redelivered: bool,
}

/// `room`'s part of the batch's notice: its stored messages in seq order,
/// so fronts take them without a read; its name only (fronts read) when a
/// redelivery is part of it (a crash may have lost the first notice, and a
/// duplicate's seq is not the next one) or the writers saw two epochs.
fn notice_of(room: &str, written: &[Written]) -> RoomNotice {
    let mut parts = written.iter().filter(|w| w.room == room).peekable();
    let Some(epoch) = parts.peek().map(|w| w.epoch.clone()) else {
        return RoomNotice::name_only(room);
    };
    let mut messages = Vec::new();
    for part in parts {
        if part.redelivered || part.epoch != epoch {
            return RoomNotice::name_only(room);
        }
        messages.extend(part.messages.iter().map(|m| m.clone().into_stored(m.seq)));
    }
    messages.sort_by_key(|m| m.seq);
    RoomNotice {
        room: Arc::from(room),
        stored: Some(StoredBatch {
            epoch: Arc::from(epoch),
            messages,
        }),
    }
}

impl Processor {
    /// Runs until `shutdown`, then drains what the bus still holds.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut consumer = match self.join(&shutdown).await {
            Some(c) => c,
            None => return,
        };
        let mut gearbox = Gearbox::new(self.gears.clone());
        let mut last_share = Instant::now();
        loop {
            if last_share.elapsed() >= Duration::from_secs(1) {
                // Quiet rooms shift down; raised gears stay alive for fronts.
                for (room, kind, shift) in gearbox.idle_tick(Instant::now()) {
                    self.on_shift(&room, kind, &shift);
                }
                for (room, kind, shared) in gearbox.tell_each_second() {
                    self.share_gear(&room, kind, shared).await;
                }
                gearbox.forget_idle(Duration::from_secs(60), Instant::now());
                last_share = Instant::now();
            }
            let hold = self.pause.wanted.load(Ordering::Acquire) && !shutdown.is_cancelled();
            self.pause.holding.store(hold, Ordering::Release);
            if hold {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            let polled = consumer
                .poll(self.batch_max, Duration::from_millis(100))
                .await;
            let batch = match polled {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "bus poll failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if batch.is_empty() {
                // Drained = nothing waits on the bus any more (a Kafka poll can
                // come back empty while a fetch is still on its way).
                if shutdown.is_cancelled() && self.bus.pending() == 0 {
                    tracing::info!("processor drained; stopping");
                    return;
                }
                continue;
            }
            let stored = self.store_batch(&batch, &mut gearbox).await;
            if let Some(log) = &self.stored {
                self.forward(log, stored, &batch).await;
            }
            if let Err(e) = consumer.commit(&batch).await {
                // Uncommitted deliveries come again; the store dedups them.
                tracing::warn!(error = %e, "bus commit failed");
            }
            self.metrics.bus_pending.set(self.bus.pending() as i64);
        }
    }

    async fn join(&self, shutdown: &CancellationToken) -> Option<Box<dyn BusConsumer>> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.bus.consumer().await {
                Ok(c) => return Some(c),
                Err(e) => tracing::warn!(error = %e, "joining the bus failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return None,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Writes a polled batch. Per (room, kind) the gear decides how: gears
    /// 1–2 one serial writer (per partition in gear 2), gears 3–4 parallel
    /// chunks. Different (room, kind)s are written concurrently. Returns once
    /// every message is stored (each writer retries until the store takes
    /// it), with the messages as stored (seq set).
    async fn store_batch(&self, batch: &[Delivery], gearbox: &mut Gearbox) -> Vec<Message> {
        let now = now_ms();
        let at = Instant::now();
        // (room, kind) → its deliveries, in bus order (markers aside).
        let mut groups: Vec<((&str, Kind), Vec<Placed>)> = Vec::new();
        let mut index: HashMap<(&str, Kind), usize> = HashMap::new();
        for d in batch {
            let Payload::Message(m) = &d.payload else {
                continue;
            };
            let key = (m.room.as_str(), m.kind);
            let i = *index.entry(key).or_insert_with(|| {
                groups.push((key, Vec::new()));
                groups.len() - 1
            });
            groups[i].1.push((d.partition, m));
        }
        let mut writers: Vec<(&str, Vec<Message>)> = Vec::new();
        for ((room, kind), deliveries) in &groups {
            let oldest = deliveries.iter().map(|(_, m)| m.ts).min().unwrap_or(now);
            let shift = gearbox.observe(room, *kind, now.saturating_sub(oldest), at);
            if let Some(shift) = &shift {
                self.on_shift(room, *kind, shift);
            }
            if let Some(shared) = gearbox.tell_now(room, *kind, shift.is_some()) {
                self.share_gear(room, *kind, shared).await;
            }
            let gear = gearbox.gear(room, *kind);
            // Serial lanes: the whole group, or one per partition in gear 2/4.
            let mut lanes: Vec<Vec<Message>> = Vec::new();
            if gears::spreads_partitions(gear) {
                let mut by_partition: HashMap<u32, usize> = HashMap::new();
                for (partition, m) in deliveries {
                    let i = *by_partition.entry(*partition).or_insert_with(|| {
                        lanes.push(Vec::new());
                        lanes.len() - 1
                    });
                    lanes[i].push((*m).clone());
                }
            } else {
                lanes.push(deliveries.iter().map(|(_, m)| (*m).clone()).collect());
            }
            for lane in lanes {
                if gears::writes_in_parallel(gear) && lane.len() > 1 {
                    let chunk = lane.len().div_ceil(self.gears.workers.max(1));
                    for part in lane.chunks(chunk) {
                        writers.push((room, part.to_vec()));
                    }
                } else {
                    writers.push((room, lane));
                }
            }
        }
        let written: Vec<Written> = futures_util::future::join_all(
            writers
                .into_iter()
                .map(|(room, messages)| self.append_with_retry(room, messages)),
        )
        .await;
        let mut rooms: Vec<&str> = groups.iter().map(|((r, _), _)| *r).collect();
        rooms.sort_unstable();
        rooms.dedup();
        // Best effort: a lost notice costs fronts a store read, not messages.
        let notices = rooms.iter().map(|room| notice_of(room, &written)).collect();
        if let Err(e) = self.store.notify(notices).await {
            tracing::debug!(error = %e, "room-updated notice failed");
        }
        written.into_iter().flat_map(|w| w.messages).collect()
    }

    /// Publishes a batch's stored messages to the stored log (keyed by room,
    /// so a room's messages share a partition), then its live-end markers,
    /// each on its room's partition: after the messages before it. Retries
    /// until the log takes them, even while shutting down (the batch is not
    /// committed before, and the archiver needs every acknowledged message).
    async fn forward(&self, log: &Arc<dyn Bus>, stored: Vec<Message>, batch: &[Delivery]) {
        let markers: Vec<(u32, LiveEnd)> = batch
            .iter()
            .filter_map(|d| match &d.payload {
                Payload::LiveEnd(m) => Some((
                    crate::bus::partition_for(&m.room, log.partitions()),
                    m.clone(),
                )),
                Payload::Message(_) => None,
            })
            .collect();
        let records: Vec<BusRecord> = stored
            .into_iter()
            .map(|message| BusRecord {
                key: message.room.clone(),
                partition: None,
                message,
            })
            .collect();
        let mut backoff = Duration::from_millis(50);
        let mut records = Some(records).filter(|r| !r.is_empty());
        let mut markers = Some(markers).filter(|m| !m.is_empty());
        while records.is_some() || markers.is_some() {
            let result = match (&records, &markers) {
                (Some(r), _) => log.publish(r.clone()).await.map(|()| records = None),
                (None, Some(m)) => log
                    .publish_markers(m.clone())
                    .await
                    .map(|()| markers = None),
                (None, None) => Ok(()),
            };
            if let Err(e) = result {
                self.metrics
                    .store_errors
                    .with_label_values(&["stored_log"])
                    .inc();
                tracing::warn!(error = %e, "publishing to the stored log failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// Logs and counts a shift (the caller tells fronts).
    fn on_shift(&self, room: &str, kind: Kind, shift: &gear::Shift) {
        let direction = if shift.to > shift.from { "up" } else { "down" };
        tracing::info!(
            room,
            kind = kind.as_str(),
            from = shift.from,
            to = shift.to,
            "gear shift"
        );
        self.metrics
            .gear_shifts
            .with_label_values(&[direction])
            .inc();
        self.metrics
            .set_gear(room, kind.as_str(), i64::from(shift.to));
    }

    /// Tells fronts the gear (they choose partitions by it) and the delay
    /// (they shed by it).
    async fn share_gear(&self, room: &str, kind: Kind, shared: gears::Shared) {
        let ttl = Duration::from_secs(self.gears.share_ttl_s.max(1));
        if let Err(e) = gears::share(&*self.store, room, kind, shared, ttl).await {
            tracing::warn!(room, error = %e, "sharing the gear failed");
        }
    }

    /// Retries until the store takes the batch, even while shutting down:
    /// these messages were acknowledged to their senders. Returns them with
    /// the seqs they are stored under.
    async fn append_with_retry<'a>(&self, room: &'a str, messages: Vec<Message>) -> Written<'a> {
        let mut backoff = Duration::from_millis(50);
        loop {
            let timer = self.metrics.store_append_seconds.start_timer();
            let result = self.store.append_in_epoch(room, messages.clone()).await;
            timer.observe_duration();
            match result {
                Ok(Appended { epoch, outcomes }) => {
                    let now = now_ms();
                    let mut stored = messages;
                    let mut redelivered = false;
                    for (outcome, m) in outcomes.iter().zip(stored.iter_mut()) {
                        match outcome {
                            AppendOutcome::Stored { seq } => {
                                m.seq = *seq;
                                self.metrics.stored.inc();
                                if m.ts > now {
                                    // Skew the clock correction left over:
                                    // the delay counts as 0, never negative.
                                    self.metrics.clock_ts_ahead.inc();
                                }
                                self.metrics
                                    .process_delay_seconds
                                    .with_label_values(&[m.kind.as_str()])
                                    .observe(now.saturating_sub(m.ts) as f64 / 1000.0);
                            }
                            AppendOutcome::Duplicate { seq } => {
                                m.seq = *seq;
                                redelivered = true;
                                self.metrics.store_duplicates.inc();
                            }
                        }
                    }
                    return Written {
                        room,
                        epoch,
                        messages: stored,
                        redelivered,
                    };
                }
                Err(e) => {
                    self.metrics
                        .store_errors
                        .with_label_values(&["append"])
                        .inc();
                    tracing::warn!(room, error = %e, "store append failed; retrying");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
