//! Redis live store (DESIGN §3.3): one sorted set per (room, bucket), scored by
//! a per-room sequence assigned atomically with the insert by one Lua script.
//!
//! Same semantics as the embedded [`MemoryStore`](super::memory::MemoryStore):
//! sequences, idempotent inserts by message id within `dedup_window`, trim by
//! count and age (on append), the `gap` flag, the epoch, and the cursor rules
//! of `read_range`. The key layout is documented in `docs/redis-keys.md`.
//!
//! Every call goes through a [`ConnectionManager`], which reconnects by itself:
//! while Redis is away calls fail with [`StoreError::Unavailable`], and they
//! succeed again once it is back, without rebuilding the store.
//!
//! Presence (DESIGN §3.7) is one Lua script per exchange over the
//! `{presence}`-tagged keys; "room updated" notices are Redis pub/sub on
//! [`UPDATED_CHANNEL`], received by one background task per store that keeps a
//! dedicated subscriber connection and reconnects with backoff.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use ::redis::{Client, RedisError, Script};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{AppendOutcome, Claim, LiveStore, StoreError, StreamHead, StreamRead};
use crate::config::StoreConfig;
use crate::message::{now_ms, Message, Priority, StoredMessage};

/// Bucket names in key order (= `Priority::index()` order).
const BUCKETS: [&str; 3] = ["whitelist", "high", "low"];

/// Claims live in their own namespace so that a caller's key can never be
/// mistaken for (or clobber) a room key.
const CLAIM_PREFIX: &str = "claim:";

/// Scores are doubles: above this a score is written as `+inf`.
const MAX_EXACT_SCORE: u64 = 1 << 53;

/// Appends a batch to one room. See docs/redis-keys.md.
///
/// KEYS: 1 seq, 2 epoch, 3 b:whitelist, 4 b:high, 5 b:low, 6 ids, 7 trimmed.
/// ARGV: 1 epoch (used only if the room has none), 2 max_per_bucket,
///       3 min_ts (ms; older messages are trimmed), 4 dedup_window, 5 ttl_s
///       (0 = no expiry), then 4 per message: id, bucket (1..3), json head,
///       json tail (the member is head .. seq .. tail).
/// Returns one integer per message: seq if stored, -seq if a duplicate.
const APPEND_LUA: &str = r#"
local names = {'whitelist', 'high', 'low'}
redis.call('SET', KEYS[2], ARGV[1], 'NX')
local max = tonumber(ARGV[2])
local min_ts = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local out = {}
for i = 6, #ARGV, 4 do
  local id = ARGV[i]
  local old = redis.call('ZSCORE', KEYS[6], id)
  if old then
    out[#out + 1] = -tonumber(old)
  else
    local seq = redis.call('INCR', KEYS[1])
    local b = tonumber(ARGV[i + 1])
    redis.call('ZADD', KEYS[2 + b], seq, ARGV[i + 2] .. string.format('%d', seq) .. ARGV[i + 3])
    redis.call('ZADD', KEYS[6], seq, id)
    redis.call('ZREMRANGEBYRANK', KEYS[6], 0, -(window + 1))
    out[#out + 1] = seq
  end
end
for b = 1, 3 do
  local key = KEYS[2 + b]
  local last = false
  local card = redis.call('ZCARD', key)
  if card > max then
    local cut = redis.call('ZRANGE', key, card - max - 1, card - max - 1, 'WITHSCORES')
    last = cut[2]
    redis.call('ZREMRANGEBYRANK', key, 0, card - max - 1)
  end
  while true do
    local front = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if #front == 0 then break end
    local ok, m = pcall(cjson.decode, front[1])
    if not ok or type(m) ~= 'table' or type(m.ts) ~= 'number' or m.ts >= min_ts then break end
    redis.call('ZREMRANGEBYRANK', key, 0, 0)
    last = front[2]
  end
  if last then redis.call('HSET', KEYS[7], names[b], last) end
end
if ttl > 0 then
  for k = 1, 7 do redis.call('EXPIRE', KEYS[k], ttl) end
end
return out
"#;

/// `SET key value NX PX ttl`, returning the held value when the key is taken.
/// Returns `{1, nil}` when claimed, `{0, value}` when held.
const CLAIM_LUA: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, false}
end
return {0, redis.call('GET', KEYS[1])}
"#;

/// The sorted set of live nodes: member = node name, score = the time (ms,
/// Redis clock) its registration runs out.
const PRESENCE_NODES_KEY: &str = "{presence}:nodes";

/// Prefix of a node's presence hash (`{presence}:node:<node>`): field = room,
/// value = that node's viewer count.
const PRESENCE_NODE_PREFIX: &str = "{presence}:node:";

/// Publishes one node's counts and sums every live node's counts of the same
/// rooms. See docs/redis-keys.md.
///
/// KEYS: 1 the nodes sorted set, 2 this node's hash.
/// ARGV: 1 node, 2 ttl (ms), 3 node hash prefix, then room, count pairs.
/// Returns one integer per pair: the room's count summed over live nodes.
const PRESENCE_LUA: &str = r#"
-- Redis < 5 must be told to replicate effects before TIME; a no-op since 7.
pcall(redis.replicate_commands)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local prefix = ARGV[3]
-- unpack() is bounded by the Lua stack: commands take at most CHUNK args.
local CHUNK = 1000
local fields = {}
local counts = {}
for i = 4, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]
  if tonumber(ARGV[i + 1]) > 0 then
    counts[#counts + 1] = ARGV[i]
    counts[#counts + 1] = ARGV[i + 1]
  end
end
redis.call('DEL', KEYS[2])
for i = 1, #counts, CHUNK do
  redis.call('HSET', KEYS[2], unpack(counts, i, math.min(i + CHUNK - 1, #counts)))
end
if #counts > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
local sums = {}
for i = 1, #fields do sums[i] = 0 end
if #fields > 0 then
  for _, node in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    local key = prefix .. node
    for i = 1, #fields, CHUNK do
      local vals = redis.call('HMGET', key, unpack(fields, i, math.min(i + CHUNK - 1, #fields)))
      for j = 1, #vals do
        local v = tonumber(vals[j])
        if v then sums[i + j - 1] = sums[i + j - 1] + v end
      end
    end
  end
end
return sums
"#;

/// Pub/sub channel of "room updated" notices. A message is the updated rooms'
/// names joined by `'\n'` (one PUBLISH per `notify_updated` call).
pub const UPDATED_CHANNEL: &str = "dm:updated";

/// Capacity of the in-process broadcast of received notices (as the memory
/// engine's): a receiver that falls further behind gets `Lagged`.
const UPDATES_CAPACITY: usize = 4096;

/// Reconnect backoff of the notice subscriber.
const NOTICE_MIN_BACKOFF: Duration = Duration::from_millis(100);
const NOTICE_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Bound on connecting + subscribing, and on a health-check PING's answer.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle subscriber PINGs, so a half-open connection is noticed.
const NOTICE_PING_EVERY: Duration = Duration::from_secs(15);

/// Redis engine of [`LiveStore`].
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    append: Script,
    claim: Script,
    presence: Script,
    notices: Arc<Notices>,
    config: StoreConfig,
}

/// The receiving side of notices, shared by the clones of one store. The
/// subscriber task is spawned on the first `updates()` call and aborted when
/// the last clone of the store is dropped.
struct Notices {
    tx: broadcast::Sender<Arc<str>>,
    client: Client,
    /// Where to spawn the task when `updates()` is called outside a runtime.
    runtime: Option<tokio::runtime::Handle>,
    task: OnceLock<tokio::task::AbortHandle>,
}

impl Notices {
    fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        let rx = self.tx.subscribe();
        if self.task.get().is_none() {
            let runtime = tokio::runtime::Handle::try_current()
                .ok()
                .or_else(|| self.runtime.clone());
            match runtime {
                Some(runtime) => {
                    self.task.get_or_init(|| {
                        runtime
                            .spawn(listen(self.client.clone(), self.tx.clone()))
                            .abort_handle()
                    });
                }
                None => tracing::error!("no tokio runtime: redis notices are not received"),
            }
        }
        rx
    }
}

impl Drop for Notices {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

/// Keeps one pub/sub connection subscribed to [`UPDATED_CHANNEL`] and
/// forwards each notified room to `tx`, reconnecting with backoff (100 ms
/// doubling to 5 s) whenever the connection is lost or cannot be made.
/// Runs until aborted.
async fn listen(client: Client, tx: broadcast::Sender<Arc<str>>) {
    let mut delay = NOTICE_MIN_BACKOFF;
    let mut failures: u32 = 0;
    let mut ever_subscribed = false;
    loop {
        match subscribe_updates(&client).await {
            Ok((sink, stream)) => {
                if ever_subscribed {
                    tracing::info!(
                        channel = UPDATED_CHANNEL,
                        failed_attempts = failures,
                        "redis notice subscription restored"
                    );
                } else {
                    tracing::debug!(channel = UPDATED_CHANNEL, "subscribed to redis notices");
                }
                ever_subscribed = true;
                failures = 0;
                let since = Instant::now();
                let reason = pump_updates(sink, stream, &tx).await;
                tracing::warn!(
                    channel = UPDATED_CHANNEL,
                    %reason,
                    "redis notice subscription lost; reconnecting"
                );
                // A connection that held for a while starts the backoff over;
                // one that drops right after subscribing keeps backing off.
                if since.elapsed() >= NOTICE_MAX_BACKOFF {
                    delay = NOTICE_MIN_BACKOFF;
                }
            }
            Err(reason) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(
                        channel = UPDATED_CHANNEL,
                        %reason,
                        "cannot subscribe to redis notices; retrying with backoff"
                    );
                } else {
                    tracing::debug!(
                        channel = UPDATED_CHANNEL,
                        %reason,
                        attempt = failures,
                        "redis notice subscription still failing"
                    );
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(NOTICE_MAX_BACKOFF);
    }
}

async fn subscribe_updates(client: &Client) -> Result<(PubSubSink, PubSubStream), String> {
    let attempt = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(UPDATED_CHANNEL).await?;
        Ok::<_, RedisError>(pubsub.split())
    };
    match tokio::time::timeout(NOTICE_TIMEOUT, attempt).await {
        Ok(Ok(split)) => Ok(split),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {NOTICE_TIMEOUT:?}")),
    }
}

/// Forwards notices until the connection is lost; returns why it was.
async fn pump_updates(
    mut sink: PubSubSink,
    mut stream: PubSubStream,
    tx: &broadcast::Sender<Arc<str>>,
) -> String {
    let mut health =
        tokio::time::interval_at(Instant::now() + NOTICE_PING_EVERY, NOTICE_PING_EVERY);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return "connection closed".to_string();
                };
                match std::str::from_utf8(msg.get_payload_bytes()) {
                    Ok(payload) => {
                        for room in payload.split('\n').filter(|r| !r.is_empty()) {
                            // No receiver left is fine: notices are best effort.
                            let _ = tx.send(Arc::from(room));
                        }
                    }
                    Err(_) => tracing::warn!("skipping a non-UTF-8 redis notice"),
                }
            }
            _ = health.tick() => {
                match tokio::time::timeout(NOTICE_TIMEOUT, sink.ping::<::redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return format!("ping failed: {e}"),
                    Err(_) => return format!("no ping answer within {NOTICE_TIMEOUT:?}"),
                }
            }
        }
    }
}

/// The keys of one room; `{room}` is a hash tag so they share a cluster slot.
struct RoomKeys {
    seq: String,
    epoch: String,
    buckets: [String; 3],
    ids: String,
    trimmed: String,
}

impl RoomKeys {
    fn new(room: &str) -> Self {
        RoomKeys {
            seq: format!("dm:{{{room}}}:seq"),
            epoch: format!("dm:{{{room}}}:epoch"),
            buckets: BUCKETS.map(|b| format!("dm:{{{room}}}:b:{b}")),
            ids: format!("dm:{{{room}}}:ids"),
            trimmed: format!("dm:{{{room}}}:trimmed"),
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

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
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

fn decode_member(json: Bytes) -> Option<StoredMessage> {
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
    /// Connects to `url` (e.g. `redis://127.0.0.1:6379/0`). Fails if Redis
    /// cannot be reached now; later outages are survived by reconnecting.
    pub async fn connect(url: &str, config: StoreConfig) -> Result<RedisStore, StoreError> {
        // The error names what is wrong, never the URL (it may hold a password).
        let client = Client::open(url)
            .map_err(|e| StoreError::Unavailable(format!("bad redis url: {e}")))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_with_config(client.clone(), manager_config)
            .await
            .map_err(unavailable)?;
        let notices = Notices {
            tx: broadcast::channel(UPDATES_CAPACITY).0,
            client,
            runtime: tokio::runtime::Handle::try_current().ok(),
            task: OnceLock::new(),
        };
        Ok(RedisStore {
            conn,
            append: Script::new(APPEND_LUA),
            claim: Script::new(CLAIM_LUA),
            presence: Script::new(PRESENCE_LUA),
            notices: Arc::new(notices),
            config,
        })
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    fn claim_key(key: &str) -> String {
        format!("{CLAIM_PREFIX}{key}")
    }
}

#[async_trait]
impl LiveStore for RedisStore {
    async fn append(
        &self,
        room: &str,
        batch: Vec<Message>,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        let keys = RoomKeys::new(room);
        let n = batch.len();
        let min_ts = now_ms().saturating_sub(self.config.max_age_s.saturating_mul(1000));
        let mut invocation = self.append.prepare_invoke();
        invocation
            .key(&keys.seq)
            .key(&keys.epoch)
            .key(&keys.buckets[0])
            .key(&keys.buckets[1])
            .key(&keys.buckets[2])
            .key(&keys.ids)
            .key(&keys.trimmed)
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
        let out: Vec<i64> = invocation
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if out.len() != n {
            return Err(StoreError::Unavailable(format!(
                "redis append returned {} outcomes for {n} messages",
                out.len()
            )));
        }
        Ok(out
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
            .collect())
    }

    async fn head(&self, room: &str) -> Result<StreamHead, StoreError> {
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

    async fn read_range(
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
            None => self.head(room).await?.epoch,
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

    async fn claim(&self, key: &str, value: &str, ttl: Duration) -> Result<Claim, StoreError> {
        let (won, held): (i64, Option<String>) = self
            .claim
            .key(Self::claim_key(key))
            .arg(value)
            .arg(ttl_ms(ttl))
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if won == 1 {
            Ok(Claim::Won)
        } else {
            // Held, or expired between SET and GET (impossible inside one script).
            Ok(Claim::Held(held.unwrap_or_default()))
        }
    }

    async fn get_value(&self, key: &str) -> Result<Option<String>, StoreError> {
        ::redis::cmd("GET")
            .arg(Self::claim_key(key))
            .query_async::<Option<String>>(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    async fn set_claim(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError> {
        ::redis::cmd("SET")
            .arg(Self::claim_key(key))
            .arg(value)
            .arg("PX")
            .arg(ttl_ms(ttl))
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    async fn release(&self, key: &str) -> Result<(), StoreError> {
        ::redis::cmd("DEL")
            .arg(Self::claim_key(key))
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let pong: String = ::redis::cmd("PING")
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!(
                "redis: PING answered {pong:?}"
            )))
        }
    }

    async fn exchange_presence(
        &self,
        node: &str,
        local: &[(String, u64)],
        ttl: Duration,
    ) -> Result<Vec<u64>, StoreError> {
        let mut invocation = self.presence.prepare_invoke();
        invocation
            .key(PRESENCE_NODES_KEY)
            .key(format!("{PRESENCE_NODE_PREFIX}{node}"))
            .arg(node)
            .arg(ttl_ms(ttl))
            .arg(PRESENCE_NODE_PREFIX);
        for (room, count) in local {
            invocation.arg(room).arg(*count);
        }
        let sums: Vec<u64> = invocation
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if sums.len() != local.len() {
            return Err(StoreError::Unavailable(format!(
                "redis presence returned {} counts for {} rooms",
                sums.len(),
                local.len()
            )));
        }
        Ok(sums)
    }

    async fn notify_updated(&self, rooms: &[String]) -> Result<(), StoreError> {
        // Room names never hold '\n' (see `valid_room`); one that did would
        // be split apart by receivers, so it is left out.
        let mut payload = String::new();
        for room in rooms {
            if room.is_empty() || room.contains('\n') {
                tracing::warn!(room = %room.escape_debug(), "not notifying an unsendable room name");
                continue;
            }
            if !payload.is_empty() {
                payload.push('\n');
            }
            payload.push_str(room);
        }
        if payload.is_empty() {
            return Ok(());
        }
        ::redis::cmd("PUBLISH")
            .arg(UPDATED_CHANNEL)
            .arg(payload)
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    fn updates(&self) -> broadcast::Receiver<Arc<str>> {
        self.notices.subscribe()
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
