//! The room stream: one sorted set per (room, bucket), scored by a per-room
//! sequence assigned atomically with the insert by one Lua script
//! (`append.lua`). Key layout: `docs/redis-keys.md`, "Room keys".

use bytes::Bytes;
use serde::Deserialize;

use super::{unavailable, RedisStore};
use crate::message::{now_ms, Message, Priority, StoredMessage};
use crate::store::{AppendOutcome, Appended, StoreError, StreamHead, StreamRead};

/// Bucket names in key order (= `Priority::index()` order).
const BUCKETS: [&str; 3] = ["whitelist", "high", "low"];

/// Scores are doubles: above this a score is written as `+inf`.
const MAX_EXACT_SCORE: u64 = 1 << 53;

/// The append script. KEYS and ARGV: the comment at its top.
pub(super) const APPEND_LUA: &str = include_str!("append.lua");

/// The keys of one room; `{room}` is a hash tag so they share a cluster slot.
pub(super) struct RoomKeys {
    pub seq: String,
    pub epoch: String,
    pub buckets: [String; 3],
    pub ids: String,
    pub trimmed: String,
    /// Retractions: member = id, score = seq (see `retract.rs`).
    pub retracted: String,
    /// `run_id` of the server that last appended (a new epoch when another
    /// one appends: `append.lua`).
    pub primary: String,
}

impl RoomKeys {
    pub fn new(room: &str) -> Self {
        RoomKeys {
            seq: format!("dm:{{{room}}}:seq"),
            epoch: format!("dm:{{{room}}}:epoch"),
            buckets: BUCKETS.map(|b| format!("dm:{{{room}}}:b:{b}")),
            ids: format!("dm:{{{room}}}:ids"),
            trimmed: format!("dm:{{{room}}}:trimmed"),
            retracted: format!("dm:{{{room}}}:retracted"),
            primary: format!("dm:{{{room}}}:primary"),
        }
    }
}

/// The fields readers filter on, parsed back from a member's JSON.
#[derive(Deserialize)]
struct Meta {
    id: String,
    seq: u64,
    priority: Priority,
    ts: u64,
}

fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn score_bound(v: u64) -> String {
    if v >= MAX_EXACT_SCORE {
        "+inf".to_string()
    } else {
        v.to_string()
    }
}

/// Splits a message's JSON around its `seq` value, so that the script can
/// write `head .. seq .. tail`: exactly the bytes `Message::into_stored(seq)`
/// produces.
fn split_json(mut message: Message) -> Result<(String, String), StoreError> {
    message.seq = 0;
    let bad = |e: serde_json::Error| StoreError::Unavailable(format!("encoding a message: {e}"));
    let json = serde_json::to_string(&message).map_err(bad)?;
    let id = serde_json::to_string(&message.id).map_err(bad)?;
    let head = format!("{{\"id\":{id},\"seq\":");
    if let Some(rest) = json.strip_prefix(head.as_str()) {
        if let Some(tail) = rest.strip_prefix('0') {
            if tail.starts_with(',') {
                return Ok((head, tail.to_string()));
            }
        }
    }
    // Field order changed: put seq first instead (same JSON value).
    let mut value = serde_json::to_value(&message).map_err(bad)?;
    if let Some(obj) = value.as_object_mut() {
        obj.remove("seq");
    }
    let rest = serde_json::to_string(&value).map_err(bad)?;
    let tail = format!(",{}", rest.strip_prefix('{').unwrap_or(&rest));
    Ok(("{\"seq\":".to_string(), tail))
}

pub(super) fn decode_member(json: Bytes) -> Option<StoredMessage> {
    match serde_json::from_slice::<Meta>(&json) {
        Ok(meta) => Some(StoredMessage {
            seq: meta.seq,
            priority: meta.priority,
            ts: meta.ts,
            id: meta.id,
            json,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "skipping an undecodable stored message");
            None
        }
    }
}

impl RedisStore {
    pub(super) async fn stream_append(
        &self,
        room: &str,
        batch: Vec<Message>,
    ) -> Result<Appended, StoreError> {
        let keys = RoomKeys::new(room);
        let n = batch.len();
        let min_ts = now_ms().saturating_sub(self.config.max_age_s.saturating_mul(1000));
        let mut invocation = self.scripts.append.prepare_invoke();
        invocation
            .key(&keys.seq)
            .key(&keys.epoch)
            .key(&keys.buckets[0])
            .key(&keys.buckets[1])
            .key(&keys.buckets[2])
            .key(&keys.ids)
            .key(&keys.trimmed)
            .key(&keys.primary)
            .arg(new_epoch())
            .arg(self.config.max_per_bucket)
            .arg(min_ts)
            .arg(self.config.dedup_window)
            .arg(self.config.room_ttl_s);
        for message in batch {
            let id = message.id.clone();
            let bucket = message.priority.index() + 1;
            let (head, tail) = split_json(message)?;
            invocation.arg(id).arg(bucket).arg(head).arg(tail);
        }
        // One connection for the script and its WAIT: a WAIT sent to a primary
        // the sentinels switched to in between would vouch for nothing.
        let mut conn = self.conn();
        let mut out: Vec<::redis::Value> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if self.config.redis_wait_replicas > 0 {
            self.wait_replicas(&mut conn).await?;
        }
        let epoch = out.pop().map(::redis::from_redis_value::<String>);
        let outcomes = out
            .into_iter()
            .map(::redis::from_redis_value::<i64>)
            .collect::<Result<Vec<i64>, _>>();
        let (Some(Ok(epoch)), Ok(outcomes)) = (epoch, outcomes) else {
            return Err(StoreError::Unavailable(
                "redis append answered no epoch or a non-integer outcome".into(),
            ));
        };
        if outcomes.len() != n {
            return Err(StoreError::Unavailable(format!(
                "redis append returned {} outcomes for {n} messages",
                outcomes.len()
            )));
        }
        let outcomes = outcomes
            .into_iter()
            .map(|v| {
                if v < 0 {
                    AppendOutcome::Duplicate {
                        seq: v.unsigned_abs(),
                    }
                } else {
                    AppendOutcome::Stored { seq: v as u64 }
                }
            })
            .collect();
        Ok(Appended { epoch, outcomes })
    }

    /// `WAIT`: fails unless `redis_wait_replicas` replicas hold this
    /// connection's writes within `redis_wait_timeout_ms`. A failed append
    /// is retried by the processor (the retry finds its ids: no duplicate)
    /// and nothing is committed or notified for it meanwhile.
    async fn wait_replicas(&self, conn: &mut super::health::GatedConn) -> Result<(), StoreError> {
        if conn.is_cluster() {
            // `connect` refuses the setting on a cluster: a cluster routes
            // a key-less WAIT to no particular master.
            return Err(StoreError::Unavailable(
                "redis: WAIT is not supported on a Redis Cluster".into(),
            ));
        }
        let want = self.config.redis_wait_replicas;
        let timeout_ms = self.config.redis_wait_timeout_ms.max(1);
        let got: usize = ::redis::cmd("WAIT")
            .arg(want)
            .arg(timeout_ms)
            .query_async(conn)
            .await
            .map_err(unavailable)?;
        if got < want {
            return Err(StoreError::Unavailable(format!(
                "redis: the append reached {got} of {want} replicas within {timeout_ms} ms"
            )));
        }
        Ok(())
    }

    pub(super) async fn stream_head(&self, room: &str) -> Result<StreamHead, StoreError> {
        let keys = RoomKeys::new(room);
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        let set = pipe.cmd("SET").arg(&keys.epoch).arg(new_epoch()).arg("NX");
        if self.config.room_ttl_s > 0 {
            set.arg("EX").arg(self.config.room_ttl_s);
        }
        set.ignore();
        pipe.cmd("GET").arg(&keys.epoch);
        pipe.cmd("GET").arg(&keys.seq);
        let (epoch, seq): (Option<String>, Option<u64>) = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let epoch = epoch.ok_or_else(|| {
            StoreError::Unavailable("redis: the epoch vanished while created".into())
        })?;
        Ok(StreamHead {
            epoch,
            seq: seq.unwrap_or(0),
        })
    }

    pub(super) async fn stream_read(
        &self,
        room: &str,
        after: u64,
        until: u64,
        limit: usize,
    ) -> Result<StreamRead, StoreError> {
        let keys = RoomKeys::new(room);
        // One more than `limit` per bucket tells whether the read was cut.
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
        let min = format!("({after}");
        let max = score_bound(until);
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        pipe.cmd("GET").arg(&keys.seq);
        pipe.cmd("GET").arg(&keys.epoch);
        for bucket in &keys.buckets {
            pipe.cmd("ZRANGEBYSCORE")
                .arg(bucket)
                .arg(&min)
                .arg(&max)
                .arg("LIMIT")
                .arg(0)
                .arg(fetch);
        }
        pipe.cmd("HMGET").arg(&keys.trimmed).arg(&BUCKETS[..]);
        type Reply = (
            Option<u64>,
            Option<String>,
            Vec<Bytes>,
            Vec<Bytes>,
            Vec<Bytes>,
            Vec<Option<u64>>,
        );
        let (seq, epoch, w, h, l, trimmed): Reply = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let head = seq.unwrap_or(0);
        let epoch = match epoch {
            Some(epoch) => epoch,
            // No stream yet (or it was lost): create it, as the memory engine does.
            None => self.stream_head(room).await?.epoch,
        };
        let until = until.min(head);
        let mut all: Vec<StoredMessage> = w
            .into_iter()
            .chain(h)
            .chain(l)
            .filter_map(decode_member)
            .filter(|m| m.seq > after && m.seq <= until)
            .collect();
        all.sort_by_key(|m| m.seq);
        let total = all.len();
        all.truncate(limit);
        let messages = all;
        let cut = messages.len() == limit && limit > 0 && {
            let last = messages.last().map(|m| m.seq).unwrap_or(after);
            total > messages.len() && last < until
        };
        let cursor = if cut {
            messages.last().map(|m| m.seq).unwrap_or(after)
        } else {
            until.max(after.min(head))
        };
        let gap = trimmed.iter().any(|t| t.is_some_and(|t| t > after));
        Ok(StreamRead {
            epoch,
            head,
            messages,
            cursor,
            gap,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Gift, Kind, Style, StyleMode, UserRef};

    fn msg(id: &str) -> Message {
        Message {
            id: id.into(),
            seq: 9,
            room: "r".into(),
            kind: Kind::Gift,
            priority: Priority::High,
            user: UserRef {
                id: "u\"1".into(),
                name: "名字".into(),
            },
            text: "\"seq\":0, {}".into(),
            ts: 1_700_000_000_123,
            offset_ms: None,
            gift: Some(Gift {
                gift_id: "g".into(),
                count: 2,
                value: 5,
            }),
            style: Some(Style {
                color: Some("#fff".into()),
                mode: Some(StyleMode::Top),
            }),
        }
    }

    #[test]
    fn split_json_rebuilds_the_stored_bytes() {
        for id in ["a", "we\"ird\\id", "ü"] {
            let m = msg(id);
            let (head, tail) = split_json(m.clone()).unwrap();
            let rebuilt = format!("{head}{}{tail}", 42);
            let stored = m.into_stored(42);
            assert_eq!(rebuilt.as_bytes(), &stored.json[..]);
            let back = decode_member(Bytes::from(rebuilt)).unwrap();
            assert_eq!(back, stored);
        }
    }

    #[test]
    fn score_bounds() {
        assert_eq!(score_bound(7), "7");
        assert_eq!(score_bound(u64::MAX), "+inf");
    }
}
