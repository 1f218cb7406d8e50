//! Redis live store (see `docs/architecture.md`, "Live store"): same
//! semantics as the embedded [`MemoryStore`](super::memory::MemoryStore):
//! sequences, idempotent inserts by message id within `dedup_window`, trim by
//! count and age (on append), the `gap` flag, the epoch, and the cursor rules
//! of `read_range`. The key layout is documented in `docs/redis-keys.md`.
//!
//! One file per capability: [`stream`] (append / head / read, `append.lua`),
//! [`retract`] (`retract.lua`), [`claims`] (idempotency keys, `claim.lua`), [`presence`] (`presence.lua`)
//! and [`notices`] ("room updated" pub/sub). This file holds the connection
//! and dispatches the [`LiveStore`] calls.
//!
//! Every call goes through a `RedisConn` (`conn.rs`: a single Redis or a
//! Redis Cluster, chosen by the URL; or the primary Sentinel names now),
//! which reconnects by itself, behind the store health gate (`health.rs`):
//! while Redis is unreachable calls fail at once with
//! [`StoreError::Unavailable`], and they succeed again once a fresh
//! connection answers, without rebuilding the store.

mod claims;
mod conn;
mod control;
mod health;
mod notices;
mod presence;
mod retract;
pub(crate) mod sentinel;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use ::redis::{RedisError, Script};
use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{
    Appended, Claim, LiveStore, Retraction, RoomNotice, StoreError, StoreHealth, StreamHead,
    StreamRead,
};
use crate::config::StoreConfig;
use crate::message::Message;
use conn::Topology;
pub use control::CONTROL_CHANNEL;
pub use notices::UPDATED_CHANNEL;
use notices::{NoticeSource, Notices};

/// Redis engine of [`LiveStore`].
#[derive(Clone)]
pub struct RedisStore {
    /// The connection (of a single Redis or a cluster, or the Sentinel
    /// primary now) behind the store health gate (`health.rs`): calls fail
    /// at once while Redis is unreachable.
    gate: Arc<health::Gate>,
    scripts: Arc<Scripts>,
    notices: Arc<Notices>,
    /// Fingerprint of the presence counts this node last published (0:
    /// none): the next exchange sends "unchanged" if they are the same.
    presence_sent: Arc<std::sync::atomic::AtomicU64>,
    /// Test fault `store.fault_drop_notice_every` (shared by clones).
    notice_fault: Arc<crate::store::notice::NoticeFault>,
    config: StoreConfig,
}

/// The Lua scripts (loaded on first use and after a `NOSCRIPT`).
struct Scripts {
    append: Script,
    claim: Script,
    presence: Script,
    retract: Script,
}

impl RedisStore {
    /// Connects to `url`: `redis://127.0.0.1:6379/0`; several
    /// comma-separated `redis://host:port` nodes of a Redis Cluster; or
    /// `redis+sentinel://h1:p1,h2:p2,h3:p3/mymaster` to find the primary
    /// through Sentinel and follow it across failovers ([`sentinel`]). Fails
    /// if Redis cannot be reached now; later outages are survived by
    /// reconnecting.
    pub async fn connect(url: &str, config: StoreConfig) -> Result<RedisStore, StoreError> {
        // The error names what is wrong, never the URL (it may hold a password).
        let (source, notice_source) = match sentinel::parse(url) {
            Some(parsed) => {
                let parsed =
                    parsed.map_err(|e| StoreError::Unavailable(format!("bad redis url: {e}")))?;
                let primary = sentinel::Primary::connect(parsed, conn::manager_config()).await?;
                (
                    health::Source::Sentinel(primary.clone()),
                    NoticeSource::Primary(primary),
                )
            }
            None => {
                let topology = Topology::parse(url)?;
                if matches!(topology, Topology::Cluster { .. }) && config.redis_wait_replicas > 0 {
                    return Err(StoreError::Unavailable(
                        "store.redis_wait_replicas is for a single Redis or a Sentinel primary, \
                         not a Redis Cluster (its WAIT would reach no particular master)"
                            .into(),
                    ));
                }
                let conn = topology.connect().await.map_err(unavailable)?;
                let notice_source = NoticeSource::Nodes(topology.pubsub_nodes());
                let conn = parking_lot::RwLock::new(conn);
                (health::Source::Fixed { topology, conn }, notice_source)
            }
        };
        let scripts = Scripts {
            append: Script::new(stream::APPEND_LUA),
            claim: Script::new(claims::CLAIM_LUA),
            presence: Script::new(presence::PRESENCE_LUA),
            retract: Script::new(retract::RETRACT_LUA),
        };
        Ok(RedisStore {
            gate: health::Gate::start(source),
            scripts: Arc::new(scripts),
            notices: Arc::new(Notices::new(notice_source)),
            presence_sent: Arc::default(),
            notice_fault: Arc::new(crate::store::notice::NoticeFault::new(
                config.fault_drop_notice_every,
            )),
            config,
        })
    }

    fn conn(&self) -> health::GatedConn {
        self.gate.conn()
    }

    /// Counts the switches of a Sentinel primary in `counter` (the node's
    /// `danmaku_redis_primary_switches_total`); nothing to count otherwise.
    pub fn count_primary_switches_in(&self, counter: prometheus::IntCounter) {
        if let Some(primary) = self.gate.sentinel_primary() {
            primary.count_switches_in(counter);
        }
    }
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl LiveStore for RedisStore {
    async fn append_in_epoch(
        &self,
        room: &str,
        batch: Vec<Message>,
    ) -> Result<Appended, StoreError> {
        self.stream_append(room, batch).await
    }

    async fn head(&self, room: &str) -> Result<StreamHead, StoreError> {
        self.stream_head(room).await
    }

    async fn read_range(
        &self,
        room: &str,
        after: u64,
        until: u64,
        limit: usize,
    ) -> Result<StreamRead, StoreError> {
        self.stream_read(room, after, until, limit).await
    }

    async fn retract(&self, room: &str, id: &str) -> Result<Option<Retraction>, StoreError> {
        self.stream_retract(room, id).await
    }

    async fn claim(&self, key: &str, value: &str, ttl: Duration) -> Result<Claim, StoreError> {
        self.claim_nx(key, value, ttl).await
    }

    async fn get_value(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.claim_get(key).await
    }

    async fn set_claim(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError> {
        self.claim_set(key, value, ttl).await
    }

    async fn release(&self, key: &str) -> Result<(), StoreError> {
        self.claim_release(key).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let pong = self.conn().ping().await.map_err(unavailable)?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!(
                "redis: PING answered {pong:?}"
            )))
        }
    }

    async fn clock_ms(&self) -> Result<Option<u64>, StoreError> {
        // TIME answers [unix seconds, microseconds within the second].
        let (secs, micros): (u64, u64) = ::redis::cmd("TIME")
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(Some(secs * 1000 + micros / 1000))
    }

    async fn exchange_presence(
        &self,
        node: &str,
        local: &[(String, u64)],
        ttl: Duration,
    ) -> Result<Vec<u64>, StoreError> {
        self.presence_exchange(node, local, ttl).await
    }

    async fn notify(&self, rooms: Vec<RoomNotice>) -> Result<(), StoreError> {
        self.notices_publish(rooms).await
    }

    fn updates(&self) -> broadcast::Receiver<Arc<RoomNotice>> {
        self.notices.subscribe()
    }

    fn notices_live(&self) -> bool {
        self.notices.live()
    }

    fn health(&self) -> StoreHealth {
        self.gate.health()
    }
}
