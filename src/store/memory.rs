//! Embedded live store: per-room streams in memory.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use parking_lot::Mutex;

use super::notice::{self, NoticeFault};
use super::{
    AppendOutcome, Appended, Claim, LiveStore, Retraction, RoomNotice, StoreError, StreamHead,
    StreamRead, RETRACTIONS_KEPT,
};
use crate::config::StoreConfig;
use crate::message::{now_ms, Message, Priority, StoredMessage};

pub struct MemoryStore {
    rooms: DashMap<String, Arc<Mutex<RoomStream>>>,
    updates: tokio::sync::broadcast::Sender<Arc<RoomNotice>>,
    fault: NoticeFault,
    claims: moka::sync::Cache<String, (String, Instant)>,
    config: StoreConfig,
}

struct RoomStream {
    epoch: String,
    seq: u64,
    buckets: [VecDeque<StoredMessage>; 3],
    /// Highest seq trimmed from each bucket: a reader behind it has a gap.
    trimmed_through: [u64; 3],
    /// Recently stored ids → seq, bounded by `dedup_window` (FIFO).
    ids: HashMap<String, u64>,
    id_order: VecDeque<String>,
    /// Retractions (seq, id), oldest first, the newest `RETRACTIONS_KEPT`.
    retracted: VecDeque<(u64, String)>,
    last_write_ms: u64,
}

impl RoomStream {
    fn new() -> Self {
        RoomStream {
            epoch: new_epoch(),
            seq: 0,
            buckets: Default::default(),
            trimmed_through: [0; 3],
            ids: HashMap::new(),
            id_order: VecDeque::new(),
            retracted: VecDeque::new(),
            last_write_ms: now_ms(),
        }
    }

    fn trim(&mut self, max_per_bucket: usize, min_ts: u64) {
        for (i, bucket) in self.buckets.iter_mut().enumerate() {
            while let Some(front) = bucket.front() {
                if bucket.len() > max_per_bucket || front.ts < min_ts {
                    self.trimmed_through[i] = front.seq;
                    bucket.pop_front();
                } else {
                    break;
                }
            }
        }
    }

    /// Removes message `id` from its bucket (see `LiveStore::retract`).
    /// `trimmed_through` is left alone: only trimming makes a gap.
    fn retract(&mut self, id: &str) -> Option<Retraction> {
        let seq = *self.ids.get(id)?;
        let mut message = None;
        for bucket in &mut self.buckets {
            let at = bucket.partition_point(|m| m.seq < seq);
            if bucket.get(at).is_some_and(|m| m.seq == seq) {
                message = bucket.remove(at);
                break;
            }
        }
        if !self.retracted.iter().any(|(s, _)| *s == seq) {
            self.retracted.push_back((seq, id.to_string()));
            if self.retracted.len() > RETRACTIONS_KEPT {
                self.retracted.pop_front();
            }
        }
        Some(Retraction { seq, message })
    }
}

fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl MemoryStore {
    pub fn new(config: StoreConfig) -> Self {
        MemoryStore {
            rooms: DashMap::new(),
            updates: tokio::sync::broadcast::channel(4096).0,
            fault: NoticeFault::new(config.fault_drop_notice_every),
            claims: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .expire_after(ClaimExpiry)
                .build(),
            config,
        }
    }

    fn room(&self, room: &str) -> Arc<Mutex<RoomStream>> {
        if let Some(r) = self.rooms.get(room) {
            return r.clone();
        }
        self.rooms
            .entry(room.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(RoomStream::new())))
            .clone()
    }

    fn min_ts(&self, now: u64) -> u64 {
        now.saturating_sub(self.config.max_age_s * 1000)
    }

    /// Trims by age and forgets rooms idle past `room_ttl_s`. Run periodically.
    pub fn sweep(&self) {
        let now = now_ms();
        let min_ts = self.min_ts(now);
        let ttl_ms = self.config.room_ttl_s * 1000;
        self.rooms.retain(|_, stream| {
            let mut s = stream.lock();
            s.trim(self.config.max_per_bucket, min_ts);
            now.saturating_sub(s.last_write_ms) < ttl_ms
        });
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Drops a room's stream as a store failover would (tests of epochs).
    pub fn forget_room(&self, room: &str) {
        self.rooms.remove(room);
    }
}

struct ClaimExpiry;

impl moka::Expiry<String, (String, Instant)> for ClaimExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &(String, Instant),
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.1.saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &(String, Instant),
        updated_at: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.1.saturating_duration_since(updated_at))
    }
}

#[async_trait]
impl LiveStore for MemoryStore {
    async fn append_in_epoch(
        &self,
        room: &str,
        batch: Vec<Message>,
    ) -> Result<Appended, StoreError> {
        let stream = self.room(room);
        let now = now_ms();
        let min_ts = self.min_ts(now);
        let mut s = stream.lock();
        let mut outcomes = Vec::with_capacity(batch.len());
        for message in batch {
            if let Some(&seq) = s.ids.get(&message.id) {
                outcomes.push(AppendOutcome::Duplicate { seq });
                continue;
            }
            s.seq += 1;
            let seq = s.seq;
            let id = message.id.clone();
            let bucket = message.priority.index();
            s.buckets[bucket].push_back(message.into_stored(seq));
            s.ids.insert(id.clone(), seq);
            s.id_order.push_back(id);
            while s.id_order.len() > self.config.dedup_window {
                if let Some(old) = s.id_order.pop_front() {
                    s.ids.remove(&old);
                }
            }
            outcomes.push(AppendOutcome::Stored { seq });
        }
        s.last_write_ms = now;
        s.trim(self.config.max_per_bucket, min_ts);
        Ok(Appended {
            epoch: s.epoch.clone(),
            outcomes,
        })
    }

    async fn head(&self, room: &str) -> Result<StreamHead, StoreError> {
        let stream = self.room(room);
        let s = stream.lock();
        Ok(StreamHead {
            epoch: s.epoch.clone(),
            seq: s.seq,
        })
    }

    async fn read_range(
        &self,
        room: &str,
        after: u64,
        until: u64,
        limit: usize,
    ) -> Result<StreamRead, StoreError> {
        let stream = self.room(room);
        let s = stream.lock();
        let until = until.min(s.seq);
        let mut parts: Vec<&[StoredMessage]> = Vec::with_capacity(6);
        for bucket in &s.buckets {
            let start = bucket.partition_point(|m| m.seq <= after);
            let end = bucket.partition_point(|m| m.seq <= until);
            if start < end {
                let (a, b) = bucket.as_slices();
                // VecDeque halves: take the in-range part of each.
                for (half, offset) in [(a, 0), (b, a.len())] {
                    let lo = start.saturating_sub(offset).min(half.len());
                    let hi = end.saturating_sub(offset).min(half.len());
                    if lo < hi {
                        parts.push(&half[lo..hi]);
                    }
                }
            }
        }
        let messages = merge_by_seq(&parts, limit);
        let cut = messages.len() == limit && limit > 0 && {
            let last = messages.last().map(|m| m.seq).unwrap_or(after);
            parts.iter().map(|p| p.len()).sum::<usize>() > messages.len() && last < until
        };
        let cursor = if cut {
            messages.last().map(|m| m.seq).unwrap_or(after)
        } else {
            until.max(after.min(s.seq))
        };
        let gap = Priority::ALL
            .iter()
            .any(|p| s.trimmed_through[p.index()] > after);
        Ok(StreamRead {
            epoch: s.epoch.clone(),
            head: s.seq,
            messages,
            cursor,
            gap,
        })
    }

    async fn retract(&self, room: &str, id: &str) -> Result<Option<Retraction>, StoreError> {
        // A room this store does not hold knows no id: nothing is created.
        let Some(stream) = self.rooms.get(room).map(|r| r.clone()) else {
            return Ok(None);
        };
        let retraction = stream.lock().retract(id);
        Ok(retraction)
    }

    async fn claim(&self, key: &str, value: &str, ttl: Duration) -> Result<Claim, StoreError> {
        let entry = self
            .claims
            .entry(key.to_string())
            .or_insert_with(|| (value.to_string(), Instant::now() + ttl));
        if entry.is_fresh() {
            Ok(Claim::Won)
        } else {
            Ok(Claim::Held(entry.into_value().0))
        }
    }

    async fn get_value(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.claims.get(key).map(|(v, _)| v))
    }

    async fn set_claim(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError> {
        self.claims
            .insert(key.to_string(), (value.to_string(), Instant::now() + ttl));
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<(), StoreError> {
        self.claims.invalidate(key);
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// One process, one node: the cluster-wide count is the local one.
    async fn exchange_presence(
        &self,
        _node: &str,
        local: &[(String, u64)],
        _ttl: Duration,
    ) -> Result<Vec<u64>, StoreError> {
        Ok(local.iter().map(|(_, n)| *n).collect())
    }

    async fn notify(&self, mut rooms: Vec<RoomNotice>) -> Result<(), StoreError> {
        if rooms.is_empty() || self.fault.drops_next() {
            return Ok(());
        }
        // Bounded as over Redis, so both engines take the same paths.
        notice::bound(&mut rooms, self.config.notice_max_bytes);
        for room in rooms.into_iter().filter(|r| !r.is_all_rooms()) {
            // No receiver (no hub running) is fine.
            let _ = self.updates.send(Arc::new(room));
        }
        Ok(())
    }

    fn updates(&self) -> tokio::sync::broadcast::Receiver<Arc<RoomNotice>> {
        self.updates.subscribe()
    }
}

/// k-way merge of seq-sorted slices, first `limit` items.
fn merge_by_seq(parts: &[&[StoredMessage]], limit: usize) -> Vec<StoredMessage> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(total.min(limit));
    let mut idx = vec![0usize; parts.len()];
    while out.len() < limit {
        let mut best: Option<usize> = None;
        for (i, part) in parts.iter().enumerate() {
            if let Some(m) = part.get(idx[i]) {
                if best.is_none_or(|b| m.seq < parts[b][idx[b]].seq) {
                    best = Some(i);
                }
            }
        }
        let Some(b) = best else { break };
        out.push(parts[b][idx[b]].clone());
        idx[b] += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Kind, UserRef};

    fn cfg(max_per_bucket: usize) -> StoreConfig {
        StoreConfig {
            engine: crate::config::StoreEngine::Memory,
            redis_url: String::new(),
            replay_redis_url: String::new(),
            max_per_bucket,
            max_age_s: 600,
            dedup_window: 1000,
            room_ttl_s: 3600,
            control_catch_up_ms: 1000,
            notice_max_bytes: 65536,
            redis_wait_replicas: 0,
            redis_wait_timeout_ms: 500,
            fault_drop_notice_every: 0,
        }
    }

    fn msg(id: &str, priority: Priority) -> Message {
        Message {
            id: id.into(),
            seq: 0,
            room: "r".into(),
            kind: Kind::Danmaku,
            priority,
            user: UserRef {
                id: "u".into(),
                name: "u".into(),
            },
            text: id.into(),
            ts: now_ms(),
            offset_ms: None,
            gift: None,
            style: None,
        }
    }

    #[tokio::test]
    async fn sequences_merge_across_buckets_and_dedup() {
        let s = MemoryStore::new(cfg(100));
        let out = s
            .append(
                "r",
                vec![
                    msg("a", Priority::Low),
                    msg("b", Priority::High),
                    msg("c", Priority::Whitelist),
                    msg("a", Priority::Low),
                ],
            )
            .await
            .unwrap();
        assert_eq!(out[3], AppendOutcome::Duplicate { seq: 1 });
        let r = s.read_range("r", 0, u64::MAX, 100).await.unwrap();
        let seqs: Vec<u64> = r.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(r.cursor, 3);
        assert!(!r.gap);
        let r = s.read_range("r", 1, 2, 100).await.unwrap();
        assert_eq!(r.messages.len(), 1);
        assert_eq!(r.cursor, 2);
    }

    #[tokio::test]
    async fn limit_cuts_cursor_and_trim_reports_gap() {
        let s = MemoryStore::new(cfg(3));
        let batch = (0..5)
            .map(|i| msg(&format!("m{i}"), Priority::Low))
            .collect();
        s.append("r", batch).await.unwrap();
        let r = s.read_range("r", 0, u64::MAX, 2).await.unwrap();
        assert!(r.gap, "m0, m1 were trimmed");
        assert_eq!(
            r.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![3, 4]
        );
        assert_eq!(r.cursor, 4);
        let r = s.read_range("r", 4, u64::MAX, 2).await.unwrap();
        assert_eq!(r.cursor, 5);
        assert!(!r.gap);
    }

    #[tokio::test]
    async fn a_retracted_message_is_omitted_but_not_a_gap() {
        let s = MemoryStore::new(cfg(100));
        let batch = ["a", "b", "c", "d"]
            .iter()
            .map(|id| msg(id, Priority::Low))
            .collect();
        s.append("r", batch).await.unwrap();
        let r = s.retract("r", "b").await.unwrap().unwrap();
        assert_eq!(r.seq, 2);
        assert_eq!(r.message.map(|m| m.id), Some("b".to_string()));
        let read = s.read_range("r", 0, u64::MAX, 100).await.unwrap();
        let ids: Vec<&str> = read.messages.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, vec!["a", "c", "d"]);
        assert_eq!((read.cursor, read.gap), (4, false));
        // A reader standing just before the removed seq passes it, no gap.
        let read = s.read_range("r", 1, 2, 100).await.unwrap();
        assert!(read.messages.is_empty());
        assert_eq!((read.cursor, read.gap), (2, false));
        // A limited read is cut after what it returned, never at the hole.
        let read = s.read_range("r", 0, u64::MAX, 2).await.unwrap();
        let seqs: Vec<u64> = read.messages.iter().map(|m| m.seq).collect();
        assert_eq!((seqs, read.cursor), (vec![1, 3], 3));
        // Again: the same seq, nothing left to remove; a redelivery stays out.
        let again = s.retract("r", "b").await.unwrap().unwrap();
        assert_eq!((again.seq, again.message), (2, None));
        let out = s.append("r", vec![msg("b", Priority::Low)]).await.unwrap();
        assert_eq!(out, vec![AppendOutcome::Duplicate { seq: 2 }]);
        assert_eq!(
            s.read_range("r", 0, u64::MAX, 100)
                .await
                .unwrap()
                .messages
                .len(),
            3
        );
        assert_eq!(s.rooms.get("r").unwrap().lock().retracted.len(), 1);
        // Unknown ids and rooms change nothing.
        assert_eq!(s.retract("r", "zz").await.unwrap(), None);
        assert_eq!(s.retract("elsewhere", "a").await.unwrap(), None);
        assert_eq!(s.room_count(), 1, "no room created");
    }

    #[tokio::test]
    async fn claims_hold_until_released() {
        let s = MemoryStore::new(cfg(3));
        let ttl = Duration::from_secs(60);
        assert_eq!(s.claim("k", "v1", ttl).await.unwrap(), Claim::Won);
        assert_eq!(
            s.claim("k", "v2", ttl).await.unwrap(),
            Claim::Held("v1".into())
        );
        s.release("k").await.unwrap();
        assert_eq!(s.claim("k", "v3", ttl).await.unwrap(), Claim::Won);
    }
}
