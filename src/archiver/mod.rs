//! The archiver role: follows the stored log (every message the processors
//! stored, with its seq; see `crate::bus`) as its own consumer group and
//! writes the messages of rooms with a live into the archive while the live
//! is on, so a live longer than the live store's retention is kept whole and
//! an archiver outage costs only delay (the log is durable on Kafka).
//!
//! - **Which live.** A message belongs to the live of its room with
//!   `started_at <= ts <= ended_at` (open lives: no end yet). The archiver
//!   knows a batch's lives from one archive query for the batch's rooms, and
//!   keeps the answer per room with the time it was asked (`checked_at`).
//!   A live started or ended at `t` on any node has its row written a moment
//!   after `t`; so a message is decided only once `ts + settle_ms <=
//!   checked_at`, and a fresher one waits (with everything after it on its
//!   partition). Rooms without traffic cost nothing: no timers, no queries.
//! - **Exactly once in the archive.** Rows are keyed by (live, seq) and
//!   inserted "or ignore"; offsets are committed only after the rows are,
//!   so a crash redelivers and the redelivery inserts nothing twice.
//!   `offset_ms = ts − started_at` is computed here.
//! - **When a live is whole.** A live's end travels as markers through every
//!   ingest partition ([`LiveEnd`]); the processor forwards each after the
//!   messages before it. The archiver notes each copy after the rows before
//!   it are written; with every copy noted, the live is archived
//!   (`Archive::note_end_marker`), which is what `live/end` waits for.
//! - **Lag** (`danmaku_archiver_lag_seconds`, `_messages`; also in
//!   `/readyz`): the age of the oldest message not archived, less the
//!   `settle_ms` every message waits anyway — the oldest held one, or, while
//!   the log holds more than was taken (catching up), the newest archived
//!   one (what follows it is about as old); and the group's lag on the
//!   stored log less the messages only waiting to settle. Both 0 when caught up.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::archive::metrics::ArchiveMetrics;
use crate::archive::{Archive, ArchiveError, ArchivedMessage, Live};
use crate::bus::{Bus, BusConsumer, Delivery, LiveEnd, Payload};
use crate::config::ArchiveConfig;
use crate::message::{now_ms, Message};

pub struct Archiver {
    pub archive: Arc<dyn Archive>,
    /// The stored log (its consumer group is the archivers').
    pub stored: Arc<dyn Bus>,
    pub metrics: Arc<ArchiveMetrics>,
    pub config: ArchiveConfig,
}

/// What the archiver knows of a room's lives.
struct RoomLives {
    /// When the archive was asked (unix ms): lives started or ended before
    /// `checked_at − settle_ms` are all in `lives`.
    checked_at: u64,
    /// `lives` holds every live open or ended at or after this.
    since: u64,
    lives: Vec<Live>,
}

impl RoomLives {
    /// Whether this knowledge decides a message of `ts`.
    fn decides(&self, ts: u64, settle_ms: u64) -> bool {
        ts >= self.since && ts.saturating_add(settle_ms) <= self.checked_at
    }

    fn live_of(&self, ts: u64) -> Option<&Live> {
        self.lives
            .iter()
            .find(|l| l.started_at <= ts && l.ended_at.is_none_or(|e| ts <= e))
    }
}

/// Records held at most, in batches: the messages of `settle_ms` at full
/// rate wait here, so it must hold more than one batch.
const HELD_BATCHES: usize = 50;
/// Rooms whose knowledge is older than this are forgotten (bounded memory).
const FORGET_AFTER_MS: u64 = 60_000;
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// On stop, the archiver drains the log until it is empty this long after
/// the stop, and never longer than `settle_ms` + `DRAIN_MAX` (within the
/// default `server.shutdown_grace_ms`).
const DRAIN_QUIET: Duration = Duration::from_millis(300);
const DRAIN_MAX: Duration = Duration::from_millis(1500);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct StepError(#[from] ArchiveError);

impl Archiver {
    pub async fn run(self, stop: CancellationToken) {
        self.metrics.archiver_running.store(true, Ordering::Release);
        let Some(mut consumer) = self.join(&stop).await else {
            return;
        };
        let batch = self.config.batch_size.max(1);
        let settle = self.config.settle_ms;
        let poll_wait = Duration::from_millis(self.config.poll_interval_ms.clamp(10, 5_000));
        let mut held: Vec<Delivery> = Vec::new();
        let mut known: HashMap<String, RoomLives> = HashMap::new();
        let mut backoff = Duration::from_millis(100);
        // `ts` of the newest message archived.
        let mut last_archived: Option<u64> = None;
        let mut stopped_at: Option<Instant> = None;
        loop {
            if stop.is_cancelled() {
                // Drain first: the processor forwards what it drains on its
                // way out, and the embedded log is gone at exit (Kafka keeps
                // what is left, uncommitted, for the next archiver).
                let since = *stopped_at.get_or_insert_with(Instant::now);
                let empty = held.is_empty() && self.stored.pending() == 0;
                if (empty && since.elapsed() > DRAIN_QUIET)
                    || since.elapsed() > Duration::from_millis(settle) + DRAIN_MAX
                {
                    return;
                }
            }
            let room_left = (batch * HELD_BATCHES).saturating_sub(held.len());
            // Wait no longer than until the oldest held message settles.
            let wait = oldest_ts(&held).map_or(poll_wait, |ts| {
                let ripe = ts.saturating_add(settle);
                poll_wait.min(Duration::from_millis(ripe.saturating_sub(now_ms()).max(1)))
            });
            let mut polled = 0;
            if room_left > 0 {
                match consumer.poll(batch.min(room_left), wait).await {
                    Ok(records) => {
                        polled = records.len();
                        held.extend(records);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "archiver: stored log poll failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            } else {
                tokio::time::sleep(wait).await;
            }
            match self.step(&mut held, &mut known, &mut *consumer).await {
                Ok(newest) => {
                    last_archived = newest.or(last_archived);
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "archiver: archive write failed; will retry");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            self.export_lag(&held, last_archived);
            let now = now_ms();
            if known.len() > 1000 {
                known.retain(|_, k| k.checked_at + FORGET_AFTER_MS > now);
            }
            if polled >= batch && self.config.batch_pause_ms > 0 {
                tokio::time::sleep(Duration::from_millis(self.config.batch_pause_ms)).await;
            }
        }
    }

    async fn join(&self, stop: &CancellationToken) -> Option<Box<dyn BusConsumer>> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.stored.consumer().await {
                Ok(c) => return Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "archiver: joining the stored log failed; retrying")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => return None,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Archives what of `held` is ripe (a settled message, or a marker, with
    /// nothing unripe before it on its partition), then commits it; returns
    /// the newest `ts` taken. On an archive error nothing is committed or
    /// dropped: the next step redoes it.
    async fn step(
        &self,
        held: &mut Vec<Delivery>,
        known: &mut HashMap<String, RoomLives>,
        consumer: &mut dyn BusConsumer,
    ) -> Result<Option<u64>, StepError> {
        let settle = self.config.settle_ms;
        let now = now_ms();
        let ripe = ripe_mask(held, settle, now);
        if !ripe.iter().any(|r| *r) {
            return Ok(None);
        }
        // What the archive must be asked: rooms whose knowledge does not
        // decide one of their ripe messages.
        let mut stale: HashSet<&str> = HashSet::new();
        let mut since = u64::MAX;
        for (d, _) in held.iter().zip(&ripe).filter(|(_, r)| **r) {
            if let Payload::Message(m) = &d.payload {
                if !known.get(&m.room).is_some_and(|k| k.decides(m.ts, settle)) {
                    stale.insert(m.room.as_str());
                    since = since.min(m.ts);
                }
            }
        }
        if !stale.is_empty() {
            let rooms: Vec<String> = stale.iter().map(|r| r.to_string()).collect();
            let checked_at = now_ms();
            let lives = self
                .archive
                .lives_since(&rooms, since)
                .await
                .inspect_err(|_| self.count_error("list"))?;
            for room in rooms {
                let lives = lives.iter().filter(|l| l.room == room).cloned().collect();
                known.insert(
                    room,
                    RoomLives {
                        checked_at,
                        since,
                        lives,
                    },
                );
            }
        }
        // Rows by live, in the order taken.
        let mut rows: Vec<(String, Vec<ArchivedMessage>)> = Vec::new();
        let mut markers: Vec<&LiveEnd> = Vec::new();
        for (d, _) in held.iter().zip(&ripe).filter(|(_, r)| **r) {
            match &d.payload {
                Payload::Message(m) => {
                    let Some(live) = known.get(&m.room).and_then(|k| k.live_of(m.ts)) else {
                        continue; // not posted during a live
                    };
                    let row = archived_message(m, live.started_at);
                    match rows.iter_mut().find(|(id, _)| *id == live.id) {
                        Some((_, r)) => r.push(row),
                        None => rows.push((live.id.clone(), vec![row])),
                    }
                }
                Payload::LiveEnd(marker) => markers.push(marker),
            }
        }
        for (live, rows) in &rows {
            for chunk in rows.chunks(self.config.batch_size.max(1)) {
                let through = chunk.iter().map(|r| r.seq).max().unwrap_or(0);
                self.archive
                    .append(live, chunk, through)
                    .await
                    .inspect_err(|_| self.count_error("write"))?;
                self.metrics
                    .archive_batch_messages
                    .observe(chunk.len() as f64);
                self.metrics.archive_rows.inc_by(chunk.len() as u64);
            }
        }
        for marker in markers {
            let done = self
                .archive
                .note_end_marker(&marker.live, marker.partition, marker.partitions, now_ms())
                .await
                .inspect_err(|_| self.count_error("finish"))?;
            if done {
                self.metrics.archive_lives_done.inc();
                tracing::debug!(live = %marker.live, room = %marker.room, "archiver: live archived");
            }
        }
        // Done: commit (a failed commit only means they come again) and let go.
        let mut taken = Vec::new();
        let mut kept = Vec::new();
        for (d, r) in std::mem::take(held).into_iter().zip(ripe) {
            if r {
                taken.push(d);
            } else {
                kept.push(d);
            }
        }
        *held = kept;
        if let Err(e) = consumer.commit(&taken).await {
            tracing::warn!(error = %e, "archiver: committing the stored log failed (records come again)");
        }
        Ok(taken.iter().filter_map(|d| d.message().map(|m| m.ts)).max())
    }

    fn count_error(&self, op: &str) {
        self.metrics.archive_errors.with_label_values(&[op]).inc();
    }

    fn export_lag(&self, held: &[Delivery], last_archived: Option<u64>) {
        let settle = self.config.settle_ms;
        let now = now_ms();
        let pending = self.stored.pending();
        let not_taken = pending.saturating_sub(held.len() as u64);
        let oldest = match (oldest_ts(held), last_archived.filter(|_| not_taken > 0)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let behind_ms = oldest.map_or(0, |ts| now.saturating_sub(ts.saturating_add(settle)));
        self.metrics
            .archiver_lag_seconds
            .set(behind_ms as f64 / 1000.0);
        // Messages only waiting to settle are not lag.
        let settling = held
            .iter()
            .filter(|d| record_ts(d).saturating_add(settle) > now)
            .count() as u64;
        self.metrics
            .archiver_lag_messages
            .set(pending.saturating_sub(settling) as i64);
    }
}

/// The time of the oldest held record.
fn oldest_ts(held: &[Delivery]) -> Option<u64> {
    held.iter().map(record_ts).min()
}

/// A record's time: a message's `ts`, a marker's `ended_at`. A marker
/// settles like a message of its end time would: where each node has its own
/// embedded pipeline, the messages another node took before the end are
/// archived by then too (its archiver holds them no longer than that).
fn record_ts(d: &Delivery) -> u64 {
    match &d.payload {
        Payload::Message(m) => m.ts,
        Payload::LiveEnd(e) => e.ended_at,
    }
}

/// Which held records are ripe: in each partition, the records before its
/// first record that has not settled (`ts + settle > now`).
fn ripe_mask(held: &[Delivery], settle: u64, now: u64) -> Vec<bool> {
    let mut blocked: HashSet<u32> = HashSet::new();
    held.iter()
        .map(|d| {
            if blocked.contains(&d.partition) {
                return false;
            }
            let unsettled = record_ts(d).saturating_add(settle) > now;
            if unsettled {
                blocked.insert(d.partition);
            }
            !unsettled
        })
        .collect()
}

/// A message of the stored log as archived (its stored JSON with
/// `offset_ms`).
fn archived_message(m: &Message, started_at: u64) -> ArchivedMessage {
    archived(&m.clone().into_stored(m.seq), started_at)
}

/// The archived form: the stored JSON with `offset_ms` added.
pub fn archived(m: &crate::message::StoredMessage, started_at: u64) -> ArchivedMessage {
    let offset_ms = m.ts.saturating_sub(started_at);
    let json = match serde_json::from_slice::<serde_json::Value>(&m.json) {
        Ok(serde_json::Value::Object(mut obj)) => {
            obj.insert("offset_ms".into(), offset_ms.into());
            Bytes::from(serde_json::to_vec(&obj).expect("a JSON object serialises"))
        }
        _ => m.json.clone(),
    };
    ArchivedMessage {
        seq: m.seq,
        offset_ms,
        ts: m.ts,
        json,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Payload;
    use crate::message::{Kind, Priority, UserRef};

    fn msg(partition: u32, ts: u64) -> Delivery {
        Delivery {
            partition,
            offset: 0,
            payload: Payload::Message(Message {
                id: format!("m{ts}"),
                seq: ts,
                room: "r".into(),
                kind: Kind::Danmaku,
                priority: Priority::Low,
                user: UserRef {
                    id: "u".into(),
                    name: "u".into(),
                },
                text: String::new(),
                ts,
                offset_ms: None,
                gift: None,
                style: None,
            }),
        }
    }

    fn marker(partition: u32, ended_at: u64) -> Delivery {
        Delivery {
            partition,
            offset: 0,
            payload: Payload::LiveEnd(LiveEnd {
                live: "l".into(),
                room: "r".into(),
                ended_at,
                partition: 0,
                partitions: 1,
            }),
        }
    }

    #[test]
    fn an_unsettled_message_holds_back_its_partition_only() {
        // settle 100, now 1000: ts 950 has not settled, nor an end at 960.
        let held = [
            msg(0, 800),
            msg(0, 950),
            marker(0, 10),
            msg(1, 990),
            msg(2, 10),
            marker(2, 20),
            marker(3, 960),
            msg(3, 20),
        ];
        assert_eq!(
            ripe_mask(&held, 100, 1000),
            vec![true, false, false, false, true, true, false, false]
        );
    }

    #[test]
    fn knowledge_decides_only_settled_messages_it_covers() {
        let k = RoomLives {
            checked_at: 10_000,
            since: 5_000,
            lives: vec![Live {
                id: "l".into(),
                room: "r".into(),
                started_at: 6_000,
                ended_at: Some(7_000),
                archived_through_seq: 0,
                archived_at: None,
            }],
        };
        assert!(k.decides(5_000, 1_000));
        assert!(k.decides(9_000, 1_000));
        assert!(!k.decides(9_001, 1_000), "a live may start then");
        assert!(!k.decides(4_999, 1_000), "older lives were not asked for");
        assert_eq!(k.live_of(5_999), None);
        assert_eq!(k.live_of(6_000).map(|l| l.id.as_str()), Some("l"));
        assert_eq!(k.live_of(7_000).map(|l| l.id.as_str()), Some("l"));
        assert_eq!(k.live_of(7_001), None);
    }
}
