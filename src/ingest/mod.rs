//! Ingest (DESIGN §3.1): stamp, validate, rate-limit, dedup, classify, then
//! hand to the bus. A request is acknowledged only after the bus accepted it.

pub mod rate_limit;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::auth::ViewerClaims;
use crate::bus::{Bus, BusError};
use crate::config::IngestConfig;
use crate::error::ApiError;
use crate::message::{new_message_id, now_ms, Gift, Kind, Message, Priority, Style, UserRef};
use crate::metrics::Metrics;
use crate::processor::GearReader;
use crate::rooms::RoomDirectory;
use crate::store::{Claim, LiveStore};
use rate_limit::RateLimiter;

/// `POST /v1/rooms/{room}/danmaku` body (and the WebSocket `send` message).
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct DanmakuRequest {
    pub client_msg_id: String,
    pub text: String,
    #[serde(default)]
    pub style: Option<Style>,
}

/// `POST /v1/rooms/{room}/events` body from the gift backend.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    pub kind: Kind,
    pub user: UserRef,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub gift: Option<Gift>,
    #[serde(default)]
    pub priority: Option<Priority>,
}

/// One event of `POST /v1/rooms/{room}/events:batch`: the single-event body
/// plus the event's own idempotency key.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct BatchEvent {
    pub idempotency_key: String,
    pub kind: Kind,
    pub user: UserRef,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub gift: Option<Gift>,
    #[serde(default)]
    pub priority: Option<Priority>,
}

/// A parsed batch event, ready for [`Ingest::events`].
#[derive(Debug, Clone)]
pub struct BatchItem {
    pub idempotency_key: String,
    /// What the idempotency fingerprint is taken over (the event's canonical JSON).
    pub fingerprint_source: Vec<u8>,
    pub req: EventRequest,
}

impl BatchEvent {
    /// The event's key and its single-event body.
    pub fn into_parts(self) -> (String, EventRequest) {
        (
            self.idempotency_key,
            EventRequest {
                kind: self.kind,
                user: self.user,
                text: self.text,
                gift: self.gift,
                priority: self.priority,
            },
        )
    }
}

/// An acknowledged request: the JSON answer (the same on every retry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub body: String,
    /// This answer was recorded by an earlier request with the same key.
    pub replayed: bool,
}

pub struct Ingest {
    config: IngestConfig,
    bus: Arc<dyn Bus>,
    store: Arc<dyn LiveStore>,
    metrics: Arc<Metrics>,
    users: RateLimiter<String>,
    ips: RateLimiter<IpAddr>,
    blocked_lower: Vec<String>,
    whitelist_users: HashSet<String>,
    rooms: Arc<RoomDirectory>,
    /// Picks partitions by the (room, kind)'s gear.
    gears: GearReader,
}

const PENDING: &str = "pending";

impl Ingest {
    pub fn new(
        config: IngestConfig,
        bus: Arc<dyn Bus>,
        store: Arc<dyn LiveStore>,
        metrics: Arc<Metrics>,
        rooms: Arc<RoomDirectory>,
    ) -> Self {
        Ingest {
            rooms,
            gears: GearReader::new(store.clone(), 0),
            users: RateLimiter::new(config.user_rate_per_s, config.user_burst),
            ips: RateLimiter::new(config.ip_rate_per_s, config.ip_burst),
            blocked_lower: config
                .blocked_words
                .iter()
                .map(|w| w.to_lowercase())
                .filter(|w| !w.is_empty())
                .collect(),
            whitelist_users: config.whitelist_users.iter().cloned().collect(),
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

    /// Drops idle rate-limit state; run periodically.
    pub fn sweep(&self) {
        self.users.sweep();
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
        let result = self.danmaku_inner(room, viewer, ip, req).await;
        self.account(Kind::Danmaku, &result);
        result
    }

    async fn danmaku_inner(
        &self,
        room: &str,
        viewer: &ViewerClaims,
        ip: IpAddr,
        req: DanmakuRequest,
    ) -> Result<Accepted, ApiError> {
        self.ips.check(&ip).map_err(|s| {
            ApiError::too_many("rate_limited", "too many messages from this address", s)
        })?;
        self.users
            .check(&viewer.sub)
            .map_err(|s| ApiError::too_many("rate_limited", "you are sending too fast", s))?;
        check_id("client_msg_id", &req.client_msg_id)?;
        let settings = self.rooms.get(room);
        self.check_text(&req.text)?;
        check_blocked(&req.text, &settings.blocked_words)?;
        if let Some(style) = &req.style {
            check_style(style)?;
        }
        let priority = if self.whitelist_users.contains(&viewer.sub)
            || settings.whitelist_users.contains(&viewer.sub)
        {
            Priority::Whitelist
        } else {
            Priority::Low
        };
        self.check_shedding(priority)?;
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
        let key = format!("dm:{{{room}}}:{}:{}", viewer.sub, req.client_msg_id);
        let fingerprint = fingerprint(message.text.as_bytes());
        self.publish_once(&key, &fingerprint, self.config.dedup_ttl_s, message)
            .await
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
                self.publish_once(
                    &event_key(room, idempotency_key),
                    &fingerprint(fingerprint_source),
                    self.config.idempotency_ttl_s,
                    message,
                )
                .await
            }
            Err(e) => Err(e),
        };
        self.account(kind, &result);
        result
    }

    /// A signed batch of events (signature already verified by the caller):
    /// one result per item, in order. Items are validated and their keys
    /// claimed one by one; the accepted ones go to the bus in one publish.
    /// A key seen twice in one batch is one event: the second gets the
    /// first's answer (or `idempotency_key_reused` if its body differs).
    pub async fn events(
        &self,
        room: &str,
        items: Vec<Result<BatchItem, ApiError>>,
    ) -> Vec<Result<Accepted, ApiError>> {
        let n = items.len();
        let mut results: Vec<Option<Result<Accepted, ApiError>>> = vec![None; n];
        let mut kinds: Vec<Option<Kind>> = vec![None; n];
        let mut first_of_key: HashMap<String, (usize, String)> = HashMap::new();
        let mut copies: Vec<(usize, usize)> = Vec::new();
        let mut todo: Vec<(usize, String, String, Message)> = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let item = match item {
                Ok(item) => item,
                Err(e) => {
                    results[i] = Some(Err(e));
                    continue;
                }
            };
            kinds[i] = Some(item.req.kind);
            let fp = fingerprint(&item.fingerprint_source);
            if let Some((first, first_fp)) = first_of_key.get(&item.idempotency_key) {
                results[i] = if *first_fp == fp {
                    copies.push((i, *first));
                    None
                } else {
                    Some(Err(key_reused()))
                };
                continue;
            }
            first_of_key.insert(item.idempotency_key.clone(), (i, fp.clone()));
            match self.event_message(room, &item.idempotency_key, item.req) {
                Ok(message) => todo.push((i, event_key(room, &item.idempotency_key), fp, message)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }

        let ttl = Duration::from_secs(self.config.idempotency_ttl_s.max(1));
        let claims = futures_util::future::join_all(
            todo.iter().map(|(_, key, fp, _)| self.claim(key, fp, ttl)),
        )
        .await;
        let mut won = Vec::new();
        for ((i, key, fp, mut message), claim) in todo.into_iter().zip(claims) {
            match claim {
                Ok(Claimed::Go(earlier_id)) => {
                    if let Some(id) = earlier_id {
                        message.id = id;
                    }
                    won.push((i, key, fp, message));
                }
                Ok(Claimed::Answer(answer)) => results[i] = Some(Ok(answer)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        if !won.is_empty() {
            let partitions = self.bus.partitions();
            let mut records = Vec::with_capacity(won.len());
            let mut bodies = Vec::with_capacity(won.len());
            for (_, _, _, message) in &won {
                bodies.push(answer_body(message));
                records.push(self.gears.record(message.clone(), partitions).await);
            }
            match self.bus.publish(records).await {
                Ok(()) => {
                    futures_util::future::join_all(
                        won.iter()
                            .zip(&bodies)
                            .map(|((_, key, fp, _), body)| self.record_answer(key, fp, body, ttl)),
                    )
                    .await;
                    for ((i, ..), body) in won.iter().zip(bodies) {
                        results[*i] = Some(Ok(Accepted {
                            body,
                            replayed: false,
                        }));
                    }
                }
                Err(e) => {
                    // Not acknowledged: a retry goes through, with the same ids.
                    futures_util::future::join_all(won.iter().map(|(_, key, fp, message)| {
                        self.mark_for_retry(key, fp, &message.id, ttl)
                    }))
                    .await;
                    let e = publish_error(e);
                    for (i, ..) in &won {
                        results[*i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        for (i, first) in copies {
            results[i] = Some(
                match results[first].clone().expect("first of key decided") {
                    Ok(a) => Ok(Accepted {
                        replayed: true,
                        ..a
                    }),
                    Err(e) => Err(e),
                },
            );
        }
        results
            .into_iter()
            .zip(kinds)
            .map(|(result, kind)| {
                let result = result.expect("every item decided");
                match kind {
                    Some(kind) => self.account(kind, &result),
                    None => {
                        if let Err(e) = &result {
                            self.metrics.reject(e.code);
                        }
                    }
                }
                result
            })
            .collect()
    }

    /// Validates an event and classifies its priority (DESIGN §3.1).
    fn event_message(
        &self,
        room: &str,
        idempotency_key: &str,
        req: EventRequest,
    ) -> Result<Message, ApiError> {
        check_id("Idempotency-Key", idempotency_key)?;
        check_id("user.id", &req.user.id)?;
        check_name(&req.user.name)?;
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
                check_id("gift.gift_id", &gift.gift_id)?;
                if gift.count == 0 || gift.count > MAX_GIFT_COUNT {
                    return Err(ApiError::bad_request(
                        "bad_gift_count",
                        format!("gift.count must be within 1..={MAX_GIFT_COUNT}"),
                    ));
                }
                if gift.value > MAX_GIFT_VALUE {
                    return Err(ApiError::bad_request(
                        "bad_gift_value",
                        format!("gift.value must be within 0..={MAX_GIFT_VALUE}"),
                    ));
                }
                if !text.is_empty() {
                    self.check_text(&text)?;
                }
                match req.priority {
                    Some(Priority::Whitelist) if !self.config.events_may_request_whitelist => {
                        Priority::High
                    }
                    asked => asked.unwrap_or(Priority::High),
                }
            }
            (Kind::System, _) => {
                self.check_text(&text)?;
                req.priority.unwrap_or(Priority::Whitelist)
            }
        };
        self.check_shedding(priority)?;
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

    fn check_text(&self, text: &str) -> Result<(), ApiError> {
        if text.trim().is_empty() {
            return Err(ApiError::bad_request(
                "empty_text",
                "text must not be empty",
            ));
        }
        if text.chars().count() > self.config.max_text_chars {
            return Err(ApiError::bad_request(
                "text_too_long",
                format!(
                    "text is longer than {} characters",
                    self.config.max_text_chars
                ),
            ));
        }
        if text.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "control_characters",
                "text must not contain control characters",
            ));
        }
        if !self.blocked_lower.is_empty() {
            let lower = text.to_lowercase();
            if self
                .blocked_lower
                .iter()
                .any(|w| lower.contains(w.as_str()))
            {
                return Err(ApiError::bad_request(
                    "blocked_content",
                    "text contains a blocked word",
                ));
            }
        }
        Ok(())
    }

    /// Under overload low is refused first, then high; whitelist never.
    fn check_shedding(&self, priority: Priority) -> Result<(), ApiError> {
        let pending = self.bus.pending();
        let limit = match priority {
            Priority::Whitelist => return Ok(()),
            Priority::High => self.config.shed_high_pending,
            Priority::Low => self.config.shed_low_pending,
        };
        if pending >= limit {
            return Err(ApiError::too_many(
                "overloaded",
                format!(
                    "the room pipeline is behind; {} messages are shed",
                    priority.as_str()
                ),
                1,
            ));
        }
        Ok(())
    }

    /// Claims `key`, publishes, and records the answer so that a retry with
    /// the same key gets the first answer and nothing is published twice.
    async fn publish_once(
        &self,
        key: &str,
        fingerprint: &str,
        ttl_s: u64,
        message: Message,
    ) -> Result<Accepted, ApiError> {
        let ttl = Duration::from_secs(ttl_s.max(1));
        let mut message = message;
        match self.claim(key, fingerprint, ttl).await? {
            Claimed::Answer(answer) => return Ok(answer),
            Claimed::Go(Some(earlier_id)) => message.id = earlier_id,
            Claimed::Go(None) => {}
        }
        let body = answer_body(&message);
        let id = message.id.clone();
        let record = self.gears.record(message, self.bus.partitions()).await;
        if let Err(e) = self.bus.publish(vec![record]).await {
            self.mark_for_retry(key, fingerprint, &id, ttl).await;
            return Err(publish_error(e));
        }
        self.record_answer(key, fingerprint, &body, ttl).await;
        Ok(Accepted {
            body,
            replayed: false,
        })
    }

    /// `SET key "<fingerprint>|pending" NX EX ttl`: go on (reusing the
    /// message id of an earlier attempt whose publish failed), or an earlier
    /// request's answer (a retry).
    async fn claim(
        &self,
        key: &str,
        fingerprint: &str,
        ttl: Duration,
    ) -> Result<Claimed, ApiError> {
        let pending = format!("{fingerprint}|{PENDING}");
        match self.store.claim(key, &pending, ttl).await {
            Ok(Claim::Won) => Ok(Claimed::Go(None)),
            Ok(Claim::Held(value)) => {
                if let Some(id) = retry_id(&value, fingerprint) {
                    // Ours again (a concurrent retry would reuse the same id,
                    // which the store dedups).
                    let _ = self.store.set_claim(key, &pending, ttl).await;
                    return Ok(Claimed::Go(Some(id.to_string())));
                }
                replay(&value, fingerprint).map(Claimed::Answer)
            }
            Err(e) => {
                self.metrics
                    .store_errors
                    .with_label_values(&["claim"])
                    .inc();
                tracing::warn!(error = %e, "dedup claim failed");
                Err(ApiError::store_unavailable())
            }
        }
    }

    /// A failed publish may still have reached the bus (a Kafka timeout can
    /// land later): keep the key with the message id, so a retry publishes
    /// the same id and the store keeps at most one copy.
    async fn mark_for_retry(&self, key: &str, fingerprint: &str, id: &str, ttl: Duration) {
        let value = format!("{fingerprint}|{RETRY}{id}");
        if self.store.set_claim(key, &value, ttl).await.is_err() {
            let _ = self.store.release(key).await;
        }
    }

    /// Replaces a won claim's "pending" by the answer retries get.
    async fn record_answer(&self, key: &str, fingerprint: &str, body: &str, ttl: Duration) {
        let done = format!("{fingerprint}|{body}");
        if let Err(e) = self.store.set_claim(key, &done, ttl).await {
            // The message is on the bus; a retry will see "pending" (409) until the TTL.
            tracing::warn!(error = %e, "recording the idempotent answer failed");
        }
    }
}

/// Largest `gift.count` of one event.
const MAX_GIFT_COUNT: u32 = 1_000_000;
/// Largest `gift.value` (per gift): count × value stays exact for JSON
/// readers that use doubles (2^53).
const MAX_GIFT_VALUE: u64 = (1 << 53) / MAX_GIFT_COUNT as u64;

/// Live-store key of a gift backend Idempotency-Key (room-scoped).
fn event_key(room: &str, idempotency_key: &str) -> String {
    format!("ev:{{{room}}}:{idempotency_key}")
}

/// The acknowledgement body (also what a retry gets back).
fn answer_body(message: &Message) -> String {
    serde_json::json!({"id": message.id}).to_string()
}

fn publish_error(e: BusError) -> ApiError {
    match e {
        BusError::Full(_) => ApiError::unavailable("bus_full", "the pipeline is full; retry"),
        other => {
            tracing::warn!(error = %other, "bus publish failed");
            ApiError::unavailable("bus_unavailable", "the pipeline is unavailable; retry")
        }
    }
}

fn key_reused() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "this key was used for a different request",
    )
}

/// `blocked_lower` holds lowercase words; matching is case-insensitive.
fn check_blocked(text: &str, blocked_lower: &[String]) -> Result<(), ApiError> {
    if blocked_lower.is_empty() {
        return Ok(());
    }
    let lower = text.to_lowercase();
    if blocked_lower.iter().any(|w| lower.contains(w.as_str())) {
        return Err(ApiError::bad_request(
            "blocked_content",
            "text contains a blocked word",
        ));
    }
    Ok(())
}

/// Outcome of claiming an idempotency key.
enum Claimed {
    /// Publish; `Some(id)`: reuse the message id of an earlier failed attempt.
    Go(Option<String>),
    /// An earlier request's answer.
    Answer(Accepted),
}

/// Claim state after a failed publish: `retry:<message id>`.
const RETRY: &str = "retry:";

fn retry_id<'a>(value: &'a str, fingerprint: &str) -> Option<&'a str> {
    let (held_fp, state) = value.split_once('|')?;
    (held_fp == fingerprint)
        .then(|| state.strip_prefix(RETRY))
        .flatten()
}

fn replay(value: &str, fingerprint: &str) -> Result<Accepted, ApiError> {
    let (held_fp, state) = value.split_once('|').unwrap_or(("", value));
    if held_fp != fingerprint {
        return Err(key_reused());
    }
    if state == PENDING {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "in_progress",
            "a request with this key is still in progress; retry shortly",
        ));
    }
    Ok(Accepted {
        body: state.to_string(),
        replayed: true,
    })
}

fn fingerprint(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..12])
}

/// Ids and keys: 1–64 visible ASCII characters without separators we use.
fn check_id(field: &'static str, value: &str) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'|' && b != b'{' && b != b'}');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "bad_id",
            format!("{field} must be 1-64 visible ASCII characters"),
        ))
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > 32 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "bad_name",
            "user.name must be 1-32 characters without control characters",
        ));
    }
    Ok(())
}

fn check_style(style: &Style) -> Result<(), ApiError> {
    if let Some(color) = &style.color {
        let hex = color.strip_prefix('#').unwrap_or("");
        if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::bad_request(
                "bad_style",
                "style.color must look like #rrggbb",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::memory::MemoryBus;
    use crate::config::Config;
    use crate::store::memory::MemoryStore;

    fn ingest(mutate: impl FnOnce(&mut IngestConfig)) -> (Ingest, Arc<MemoryBus>) {
        let mut c = Config::embedded();
        mutate(&mut c.ingest);
        let bus = Arc::new(MemoryBus::new(2, 1000));
        let store = Arc::new(MemoryStore::new(c.store.clone()));
        let rooms = Arc::new(RoomDirectory::new(c.ration));
        (
            Ingest::new(
                c.ingest,
                bus.clone(),
                store,
                Arc::new(Metrics::new()),
                rooms,
            ),
            bus,
        )
    }

    fn viewer(sub: &str) -> ViewerClaims {
        ViewerClaims {
            sub: sub.into(),
            name: "N".into(),
            exp: 0,
            nbf: None,
        }
    }

    fn req(id: &str, text: &str) -> DanmakuRequest {
        DanmakuRequest {
            client_msg_id: id.into(),
            text: text.into(),
            style: None,
        }
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// A bus whose first publish fails after possibly writing (a Kafka
    /// delivery timeout), then works.
    struct FlakyBus {
        inner: MemoryBus,
        failed: std::sync::atomic::AtomicBool,
        ids: parking_lot::Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl Bus for FlakyBus {
        async fn publish(&self, records: Vec<crate::bus::BusRecord>) -> Result<(), BusError> {
            self.ids
                .lock()
                .extend(records.iter().map(|r| r.message.id.clone()));
            self.inner.publish(records).await?;
            if !self.failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return Err(BusError::Unavailable("delivery timed out".into()));
            }
            Ok(())
        }
        async fn consumer(&self) -> Result<Box<dyn crate::bus::BusConsumer>, BusError> {
            self.inner.consumer().await
        }
        fn pending(&self) -> u64 {
            self.inner.pending()
        }
        fn partitions(&self) -> u32 {
            self.inner.partitions()
        }
        async fn ping(&self) -> Result<(), BusError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_retry_after_a_failed_publish_reuses_the_message_id() {
        let c = Config::embedded();
        let bus = Arc::new(FlakyBus {
            inner: MemoryBus::new(2, 1000),
            failed: Default::default(),
            ids: Default::default(),
        });
        let store = Arc::new(MemoryStore::new(c.store.clone()));
        let ing = Ingest::new(
            c.ingest,
            bus.clone(),
            store,
            Arc::new(Metrics::new()),
            Arc::new(RoomDirectory::new(c.ration)),
        );
        let v = viewer("u1");
        let e = ing.danmaku("r", &v, IP, req("m1", "hi")).await.unwrap_err();
        assert_eq!(e.code, "bus_unavailable");
        let ok = ing.danmaku("r", &v, IP, req("m1", "hi")).await.unwrap();
        let ids = bus.ids.lock().clone();
        assert_eq!(ids.len(), 2, "published twice");
        assert_eq!(
            ids[0], ids[1],
            "with the same message id: the store keeps one"
        );
        assert!(ok.body.contains(&ids[0]));
        // A third try is a plain replay.
        let again = ing.danmaku("r", &v, IP, req("m1", "hi")).await.unwrap();
        assert!(again.replayed);
    }

    #[tokio::test]
    async fn validation_codes() {
        let (ing, bus) = ingest(|c| {
            c.blocked_words = vec!["Spam".into()];
            c.user_burst = 100.0;
        });
        let v = viewer("u1");
        let cases = [
            (req("a", ""), "empty_text"),
            (req("a", "   "), "empty_text"),
            (req("a", &"x".repeat(201)), "text_too_long"),
            (req("a", "line\nbreak"), "control_characters"),
            (req("a", "buy SPAM now"), "blocked_content"),
            (req("", "hi"), "bad_id"),
        ];
        for (r, code) in cases {
            let e = ing.danmaku("r", &v, IP, r).await.unwrap_err();
            assert_eq!(e.code, code);
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
        }
        assert_eq!(bus.pending(), 0, "nothing published");
        // 200 multi-byte characters are fine.
        ing.danmaku("r", &v, IP, req("b", &"弹".repeat(200)))
            .await
            .unwrap();
        assert_eq!(bus.pending(), 1);
    }

    #[tokio::test]
    async fn retried_client_msg_id_is_published_once() {
        let (ing, bus) = ingest(|_| {});
        let v = viewer("u1");
        let a = ing.danmaku("r", &v, IP, req("m1", "hi")).await.unwrap();
        let b = ing.danmaku("r", &v, IP, req("m1", "hi")).await.unwrap();
        assert_eq!(a.body, b.body);
        assert!(b.replayed);
        assert_eq!(bus.pending(), 1);
        // Another user may reuse the same client id.
        ing.danmaku("r", &viewer("u2"), IP, req("m1", "hi"))
            .await
            .unwrap();
        assert_eq!(bus.pending(), 2);
    }

    #[tokio::test]
    async fn user_rate_limit_gives_retry_after() {
        let (ing, _) = ingest(|c| {
            c.user_burst = 2.0;
            c.user_rate_per_s = 0.5;
        });
        let v = viewer("u1");
        ing.danmaku("r", &v, IP, req("1", "a")).await.unwrap();
        ing.danmaku("r", &v, IP, req("2", "a")).await.unwrap();
        let e = ing.danmaku("r", &v, IP, req("3", "a")).await.unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.code, "rate_limited");
        assert_eq!(e.retry_after_s, Some(2));
    }

    #[tokio::test]
    async fn low_is_shed_before_high_and_whitelist_never() {
        let (ing, bus) = ingest(|c| {
            c.shed_low_pending = 1;
            c.shed_high_pending = 2;
            c.user_burst = 100.0;
            c.whitelist_users = vec!["vip".into()];
        });
        ing.danmaku("r", &viewer("u"), IP, req("1", "a"))
            .await
            .unwrap();
        let e = ing
            .danmaku("r", &viewer("u"), IP, req("2", "a"))
            .await
            .unwrap_err();
        assert_eq!(e.code, "overloaded");
        let gift = || EventRequest {
            kind: Kind::Gift,
            user: UserRef {
                id: "g".into(),
                name: "G".into(),
            },
            text: None,
            gift: Some(Gift {
                gift_id: "rose".into(),
                count: 1,
                value: 1,
            }),
            priority: None,
        };
        ing.event("r", "k1", b"1", gift()).await.unwrap();
        assert_eq!(
            ing.event("r", "k2", b"2", gift()).await.unwrap_err().code,
            "overloaded"
        );
        ing.danmaku("r", &viewer("vip"), IP, req("3", "a"))
            .await
            .unwrap();
        assert_eq!(bus.pending(), 3);
    }

    #[tokio::test]
    async fn idempotency_key_reuse_with_other_body_is_refused() {
        let (ing, bus) = ingest(|_| {});
        let ev = EventRequest {
            kind: Kind::System,
            user: UserRef {
                id: "sys".into(),
                name: "System".into(),
            },
            text: Some("hello".into()),
            gift: None,
            priority: None,
        };
        let a = ing.event("r", "k", b"body-1", ev.clone()).await.unwrap();
        let b = ing.event("r", "k", b"body-1", ev.clone()).await.unwrap();
        assert_eq!(a.body, b.body);
        let e = ing.event("r", "k", b"body-2", ev).await.unwrap_err();
        assert_eq!(e.code, "idempotency_key_reused");
        assert_eq!(bus.pending(), 1);
    }
}
