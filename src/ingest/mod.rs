//! Ingest (see `docs/architecture.md`, "Ingest"): stamp, validate,
//! rate-limit, dedup, classify, then hand to the bus. A request is
//! acknowledged only after the bus accepted it.
//!
//! - [`request`]: the bodies ingest takes and the answer it gives;
//! - [`validate`]: the input checks;
//! - [`idempotency`]: the key protocol that makes retries safe;
//! - `batch`: `events:batch`, many events in one publish;
//! - [`rate_limit`]: per-address token buckets (this node's); the per-user
//!   rate and mutes are cluster state, checked through [`Control`];
//! - [`shedding`]: what is refused while the pipeline is behind.

mod batch;
pub mod idempotency;
pub mod rate_limit;
pub mod request;
pub mod shedding;
pub mod validate;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::ViewerClaims;
use crate::bus::{Bus, BusError};
use crate::config::IngestConfig;
use crate::control::Control;
use crate::error::ApiError;
use crate::gears::GearReader;
use crate::log_throttle::LogThrottle;
use crate::message::{new_message_id, now_ms, Kind, Message, Priority, UserRef};
use crate::metrics::Metrics;
use crate::rooms::RoomSettings;
use crate::store::control::{PostGate, PostRate};
use crate::store::LiveStore;
use crate::text::BlockedWords;
use idempotency::{Claimed, IdemKey, Idempotency};
use rate_limit::RateLimiter;
pub use request::{Accepted, BatchEvent, BatchItem, DanmakuRequest, EventRequest};
use shedding::{Refusal, Thresholds};
use validate::{check_gift, check_id, check_name, check_style, TextRules};

pub struct Ingest {
    config: IngestConfig,
    bus: Arc<dyn Bus>,
    store: Arc<dyn LiveStore>,
    metrics: Arc<Metrics>,
    /// Room settings and mutes, the cluster-wide post gate.
    control: Arc<Control>,
    ips: RateLimiter<IpAddr>,
    text: TextRules,
    whitelist_users: HashSet<String>,
    idempotency: Idempotency,
    /// Picks partitions by the (room, kind)'s gear; its delay sheds.
    gears: GearReader,
    shed: Thresholds,
}

impl Ingest {
    pub fn new(
        config: IngestConfig,
        bus: Arc<dyn Bus>,
        store: Arc<dyn LiveStore>,
        metrics: Arc<Metrics>,
        control: Arc<Control>,
    ) -> Self {
        Ingest {
            control,
            gears: GearReader::new(store.clone(), 0),
            idempotency: Idempotency::new(store.clone(), metrics.clone()),
            ips: RateLimiter::new(config.ip_rate_per_s, config.ip_burst),
            text: TextRules::new(&config),
            whitelist_users: config.whitelist_users.iter().cloned().collect(),
            shed: Thresholds::from_config(&config),
            config,
            bus,
            store,
            metrics,
        }
    }

    /// Partitions a (room, kind) spreads over in gears 2 and 4 (0 = all).
    pub fn with_gear_spread(mut self, spread_partitions: u32) -> Self {
        self.gears = GearReader::new(self.store.clone(), spread_partitions);
        self
    }

    /// Pending idempotency claims older than `after` are taken over by a
    /// retry (their node died mid-publish): above the longest a live node
    /// takes from claim to answer.
    pub fn with_claim_takeover_after(mut self, after: Duration) -> Self {
        self.idempotency = self.idempotency.with_takeover_after(after);
        self
    }

    /// Drops idle rate-limit state; run periodically.
    pub fn sweep(&self) {
        self.ips.sweep();
    }

    /// A viewer's danmaku. Records the refusal reason in metrics on failure.
    pub async fn danmaku(
        &self,
        room: &str,
        viewer: &ViewerClaims,
        ip: IpAddr,
        req: DanmakuRequest,
    ) -> Result<Accepted, ApiError> {
        let result = self.take_danmaku(room, viewer, ip, req).await;
        self.account(Kind::Danmaku, &result);
        result
    }

    /// In order of cost: the address's rate (this node's memory), the room's
    /// state (cached: no command once loaded, so its blocked words and
    /// whitelist apply from the first post), the content, shedding (a cached
    /// read), the room mute, then the user's cluster-wide gate (one store
    /// command) — a refused post spends nothing further down — then publish.
    async fn take_danmaku(
        &self,
        room: &str,
        viewer: &ViewerClaims,
        ip: IpAddr,
        req: DanmakuRequest,
    ) -> Result<Accepted, ApiError> {
        self.ips.check(&ip).map_err(|s| {
            ApiError::too_many("rate_limited", "too many messages from this address", s)
        })?;
        let state = self
            .control
            .room(room)
            .await
            .map_err(|e| ApiError::store_failed("room control state", Some(room), &e))?;
        let (key, message) = self.danmaku_message(room, viewer, &state.settings, req)?;
        self.check_shedding(&message).await?;
        if let Some(until_ms) = state.muted_until(&viewer.sub, now_ms()) {
            return Err(muted(until_ms));
        }
        self.gate(&viewer.sub).await?;
        self.publish_once(&key, message).await
    }

    /// The user's global mute and cluster-wide rate (one store command).
    async fn gate(&self, user: &str) -> Result<(), ApiError> {
        let rate = PostRate {
            rate_per_s: self.config.user_rate_per_s,
            burst: self.config.user_burst,
        };
        match self.control.plane().admit_post(user, rate).await {
            Ok(PostGate::Open) => Ok(()),
            Ok(PostGate::Muted { until_ms }) => Err(muted(until_ms)),
            Ok(PostGate::Limited { retry_after_ms }) => Err(ApiError::too_many(
                "rate_limited",
                "you are sending too fast",
                retry_after_ms.div_ceil(1000),
            )),
            Err(e) => Err(ApiError::store_failed("post gate", None, &e)),
        }
    }

    /// Validates and classifies a danmaku: its idempotency key and its message.
    fn danmaku_message(
        &self,
        room: &str,
        viewer: &ViewerClaims,
        settings: &RoomSettings,
        req: DanmakuRequest,
    ) -> Result<(IdemKey, Message), ApiError> {
        check_id("client_msg_id", &req.client_msg_id)?;
        self.text.check(&req.text, &settings.blocked)?;
        if let Some(style) = &req.style {
            check_style(style)?;
        }
        let priority = self.viewer_priority(viewer, settings);
        let key = IdemKey::danmaku(
            room,
            &viewer.sub,
            &req.client_msg_id,
            &req.text,
            self.config.dedup_ttl_s,
        );
        let message = Message {
            id: new_message_id(),
            seq: 0,
            room: room.to_string(),
            kind: Kind::Danmaku,
            priority,
            user: UserRef {
                id: viewer.sub.clone(),
                name: viewer.name.clone(),
            },
            text: req.text,
            ts: now_ms(),
            offset_ms: None,
            gift: None,
            style: req.style,
        };
        Ok((key, message))
    }

    /// A viewer's danmaku bucket: whitelist for configured users (globally
    /// or in the room), high for a `vip` claim at or above the room's
    /// `vip_high_level` (else `ingest.vip_high_level`; 0: VIPs not ranked),
    /// low otherwise.
    fn viewer_priority(&self, viewer: &ViewerClaims, settings: &RoomSettings) -> Priority {
        if self.whitelist_users.contains(&viewer.sub)
            || settings.whitelist_users.contains(&viewer.sub)
        {
            return Priority::Whitelist;
        }
        let level = settings
            .vip_high_level
            .unwrap_or(self.config.vip_high_level);
        match viewer.vip {
            Some(vip) if level > 0 && vip >= level => Priority::High,
            _ => Priority::Low,
        }
    }

    /// A signed gift/system event (signature already verified by the caller).
    /// `fingerprint_source` identifies the request for idempotency: a retry
    /// with the same key must carry the same bytes (the API passes the
    /// event's canonical JSON, so one event means the same single or batched).
    pub async fn event(
        &self,
        room: &str,
        idempotency_key: &str,
        fingerprint_source: &[u8],
        req: EventRequest,
    ) -> Result<Accepted, ApiError> {
        let kind = req.kind;
        let result = match self.event_message(room, idempotency_key, req) {
            Ok(message) => {
                let key = self.event_key(room, idempotency_key, fingerprint_source);
                self.shed_or_publish(&key, message).await
            }
            Err(e) => Err(e),
        };
        self.account(kind, &result);
        result
    }

    fn event_key(&self, room: &str, idempotency_key: &str, source: &[u8]) -> IdemKey {
        IdemKey::event(room, idempotency_key, source, self.config.idempotency_ttl_s)
    }

    /// Validates an event and classifies its priority (see
    /// `docs/architecture.md`, "Ingest").
    fn event_message(
        &self,
        room: &str,
        idempotency_key: &str,
        req: EventRequest,
    ) -> Result<Message, ApiError> {
        check_id("Idempotency-Key", idempotency_key)?;
        check_id("user.id", &req.user.id)?;
        check_name("user.name", &req.user.name)?;
        let text = req.text.unwrap_or_default();
        let priority = match (req.kind, &req.gift) {
            (Kind::Danmaku, _) => {
                return Err(ApiError::bad_request(
                    "bad_kind",
                    "events are of kind gift or system; viewers post danmaku",
                ))
            }
            (Kind::Gift, None) => {
                return Err(ApiError::bad_request(
                    "missing_gift",
                    "a gift event needs \"gift\"",
                ))
            }
            (Kind::Gift, Some(gift)) => {
                check_gift(gift)?;
                if !text.is_empty() {
                    self.text.check(&text, &BlockedWords::default())?;
                }
                match req.priority {
                    Some(Priority::Whitelist) if !self.config.events_may_request_whitelist => {
                        Priority::High
                    }
                    asked => asked.unwrap_or(Priority::High),
                }
            }
            (Kind::System, _) => {
                self.text.check(&text, &BlockedWords::default())?;
                req.priority.unwrap_or(Priority::Whitelist)
            }
        };
        Ok(Message {
            id: new_message_id(),
            seq: 0,
            room: room.to_string(),
            kind: req.kind,
            priority,
            user: req.user,
            text,
            ts: now_ms(),
            offset_ms: None,
            gift: if req.kind == Kind::Gift {
                req.gift
            } else {
                None
            },
            style: None,
        })
    }

    fn account(&self, kind: Kind, result: &Result<Accepted, ApiError>) {
        match result {
            Ok(a) if !a.replayed => self
                .metrics
                .ingested
                .with_label_values(&[kind.as_str()])
                .inc(),
            Ok(_) => self.metrics.reject("duplicate"),
            Err(e) => self.metrics.reject(e.code),
        }
    }

    /// Refuses `message` while its (room, kind) is behind, or the bus is
    /// full (`shedding`): low first, then high; whitelist never. The delay
    /// comes with the gear the publish reads anyway (one cached read).
    async fn check_shedding(&self, message: &Message) -> Result<(), ApiError> {
        if message.priority == Priority::Whitelist {
            return Ok(());
        }
        let delay_ms = self
            .gears
            .shared(&message.room, message.kind)
            .await
            .delay_ms;
        match shedding::shed(message.priority, delay_ms, self.bus.pending(), &self.shed) {
            None => Ok(()),
            Some(Refusal::Overloaded {
                delay_ms,
                retry_after_s,
            }) => Err(ApiError::too_many(
                "overloaded",
                format!(
                    "room {} is {delay_ms} ms behind on {} messages; its {} ones are shed for now",
                    message.room,
                    message.kind.as_str(),
                    message.priority.as_str()
                ),
                retry_after_s,
            )),
            Some(Refusal::BusFull {
                pending,
                retry_after_s,
            }) => {
                let mut e = ApiError::unavailable(
                    "bus_full",
                    format!("{pending} messages wait on the pipeline; retry"),
                );
                e.retry_after_s = Some(retry_after_s);
                Err(e)
            }
        }
    }

    async fn shed_or_publish(&self, key: &IdemKey, message: Message) -> Result<Accepted, ApiError> {
        self.check_shedding(&message).await?;
        self.publish_once(key, message).await
    }

    /// Claims `key`, publishes, and records the answer so that a retry with
    /// the same key gets the first answer and nothing is published twice.
    async fn publish_once(&self, key: &IdemKey, message: Message) -> Result<Accepted, ApiError> {
        let mut message = message;
        match self.idempotency.claim(key, &message.id).await? {
            Claimed::Answer(answer) => return Ok(answer),
            Claimed::Go(Some(earlier_id)) => message.id = earlier_id,
            Claimed::Go(None) => {}
        }
        let body = answer_body(&message);
        let id = message.id.clone();
        let record = self.gears.record(message, self.bus.partitions()).await;
        if let Err(e) = self.bus.publish(vec![record]).await {
            self.idempotency.mark_for_retry(key, &id).await;
            return Err(publish_error(e));
        }
        self.idempotency.record_answer(key, &body).await;
        Ok(Accepted {
            body,
            replayed: false,
        })
    }
}

/// The acknowledgement body (also what a retry gets back).
fn answer_body(message: &Message) -> String {
    serde_json::json!({"id": message.id}).to_string()
}

fn muted(until_ms: u64) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::FORBIDDEN,
        "muted",
        format!("you are muted here until {until_ms} (unix ms)"),
    )
}

/// Publish failures, throttled for the node: while the broker is away
/// every post fails alike (`log_throttle.rs`).
static PUBLISH_FAILURE_LINES: LogThrottle = LogThrottle::new(Duration::from_secs(1));

fn publish_error(e: BusError) -> ApiError {
    match e {
        BusError::Full(_) => ApiError::unavailable("bus_full", "the pipeline is full; retry"),
        other => {
            if let Some(suppressed) = PUBLISH_FAILURE_LINES.admit_now() {
                tracing::warn!(error = %other, suppressed, "bus publish failed");
            }
            ApiError::unavailable("bus_unavailable", "the pipeline is unavailable; retry")
        }
    }
}

#[cfg(test)]
mod tests;
