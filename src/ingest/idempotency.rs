//! Idempotency: a retry with the same key gets the first answer, and a
//! message is published at most once per key (see `docs/architecture.md`,
//! "Ingest"). This type owns the whole key protocol in the live store:
//!
//! - keys: `dm:{room}:<n>:<user>:<client_msg_id>` (danmaku; `<n>` is the
//!   byte length of `<user>`: both the user id and the `client_msg_id` may
//!   hold `:`, and without the length `alice:x` + `m1` and `alice` + `x:m1`
//!   would be one key), `ev:{room}:<Idempotency-Key>` (gift backend events);
//! - values: `<fingerprint>|pending:<since ms>:<message id>` while the first
//!   request publishes, `<fingerprint>|retry:<message id>` after a failed
//!   publish (a retry publishes the same id), `<fingerprint>|<answer>` once
//!   acknowledged. (`<fingerprint>|pending`, written by older nodes, is a
//!   pending claim with no id: it is only ever waited out.)
//!
//! The fingerprint (a hash of the request) tells a retry from a different
//! request reusing the key (`idempotency_key_reused`).
//!
//! A claim pending longer than a live node can take to publish and answer
//! (the bus's publish timeout plus the store's, [`Idempotency::with_takeover_after`])
//! belongs to a node that died mid-publish (SIGKILL, a crash, a lost host):
//! a retry **takes it over** and publishes the message id the claim names.
//! The first attempt may still have landed (a broker reads a request the dead
//! node had sent); the store keeps one copy per id, so the message is stored
//! once either way — where without the takeover a gift whose front died would
//! answer `409 in_progress` to every retry until the key's TTL, and be lost.
//! What a held value means is [`decide`], a pure function with a table of
//! tests.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use sha2::{Digest, Sha256};

use super::Accepted;
use crate::error::ApiError;
use crate::message::now_ms;
use crate::metrics::Metrics;
use crate::store::{Claim, LiveStore};

/// Claim state while the first request is publishing:
/// `pending:<since ms>:<message id>`.
const PENDING: &str = "pending";
/// Claim state after a failed publish: `retry:<message id>`.
const RETRY: &str = "retry:";
/// Pauses between further tries to mark a failed publish for retry when the
/// store did not take the mark (about a minute in all).
const MARK_RETRY_PAUSES_MS: [u64; 7] = [100, 400, 1_000, 2_000, 5_000, 10_000, 30_000];

/// One request's idempotency key: where it lives, what it fingerprints, how
/// long it is kept.
#[derive(Debug, Clone)]
pub struct IdemKey {
    key: String,
    fingerprint: String,
    ttl: Duration,
}

impl IdemKey {
    /// A viewer's `client_msg_id` (per user and room); the text is the request.
    /// The user is length-prefixed, so no two (user, id) pairs share a key.
    pub fn danmaku(room: &str, user: &str, client_msg_id: &str, text: &str, ttl_s: u64) -> Self {
        IdemKey::new(
            format!("dm:{{{room}}}:{}:{user}:{client_msg_id}", user.len()),
            text.as_bytes(),
            ttl_s,
        )
    }

    /// A gift backend `Idempotency-Key` (room-scoped); `source` is the
    /// event's canonical JSON.
    pub fn event(room: &str, idempotency_key: &str, source: &[u8], ttl_s: u64) -> Self {
        IdemKey::new(format!("ev:{{{room}}}:{idempotency_key}"), source, ttl_s)
    }

    fn new(key: String, source: &[u8], ttl_s: u64) -> Self {
        IdemKey {
            key,
            fingerprint: hex::encode(&Sha256::digest(source)[..12]),
            ttl: Duration::from_secs(ttl_s.max(1)),
        }
    }

    /// Whether two keys stand for the same request (same fingerprint).
    pub fn same_request(&self, other: &IdemKey) -> bool {
        self.fingerprint == other.fingerprint
    }

    fn value(&self, state: &str) -> String {
        format!("{}|{state}", self.fingerprint)
    }
}

/// Outcome of claiming an idempotency key.
pub enum Claimed {
    /// Publish; `Some(id)`: reuse the message id of an earlier failed attempt.
    Go(Option<String>),
    /// An earlier request's answer.
    Answer(Accepted),
}

/// How long a claim may stay pending before a retry takes it over, on a bus
/// whose publishes time out after `publish_timeout`: the longest a live
/// node takes from claim to answer (a gear read, the publish, the answer's
/// write: the publish timeout and twice the store's 5 s response timeout),
/// plus 5 s. Taking over a live node's claim would only publish the same id
/// twice, which the store dedups: the bound spares that, it does not guard
/// it.
pub const fn takeover_after(publish_timeout: Duration) -> Duration {
    publish_timeout.saturating_add(Duration::from_secs(15))
}

/// [`takeover_after`] the default bus publish timeout (5 s), unless set
/// ([`Idempotency::with_takeover_after`]).
const DEFAULT_TAKEOVER_AFTER: Duration = takeover_after(Duration::from_secs(5));

/// The claims of idempotency keys in the live store.
pub struct Idempotency {
    store: Arc<dyn LiveStore>,
    metrics: Arc<Metrics>,
    /// A pending claim older than this is a dead node's (module doc).
    takeover_after: Duration,
}

/// What a request does about a key already held (see [`decide`]).
#[derive(Debug, PartialEq, Eq)]
enum Held<'a> {
    /// Publish under the id an earlier attempt chose: after its failed
    /// publish (`retry`), or taking over a dead node's pending claim.
    Publish { id: &'a str, takeover: bool },
    /// The first request's answer.
    Answer(&'a str),
}

impl Idempotency {
    pub fn new(store: Arc<dyn LiveStore>, metrics: Arc<Metrics>) -> Self {
        Idempotency {
            store,
            metrics,
            takeover_after: DEFAULT_TAKEOVER_AFTER,
        }
    }

    /// Pending claims older than `after` are taken over by a retry: set it
    /// above the longest a live node takes from claim to answer (the bus's
    /// publish timeout plus the store's response timeout).
    pub fn with_takeover_after(mut self, after: Duration) -> Self {
        self.takeover_after = after;
        self
    }

    /// `SET key "<fingerprint>|pending:<now>:<id>" NX PX ttl`, `id` the
    /// message's own: go on (under the message id of an earlier attempt
    /// whose publish failed or whose node died), or an earlier request's
    /// answer (a retry).
    pub async fn claim(&self, key: &IdemKey, id: &str) -> Result<Claimed, ApiError> {
        let pending = |id: &str| key.value(&format!("{PENDING}:{}:{id}", now_ms()));
        match self.store.claim(&key.key, &pending(id), key.ttl).await {
            Ok(Claim::Won) => Ok(Claimed::Go(None)),
            Ok(Claim::Held(value)) => {
                match decide(&value, &key.fingerprint, now_ms(), self.takeover_after)? {
                    Held::Publish { id, takeover } => {
                        if takeover {
                            self.metrics.idempotency_takeovers.inc();
                            tracing::info!(
                                key = %key.key,
                                id,
                                "pending claim taken over: its node did not answer in time"
                            );
                        }
                        // Ours now (a concurrent retry would publish the
                        // same id, which the store dedups).
                        let _ = self.store.set_claim(&key.key, &pending(id), key.ttl).await;
                        Ok(Claimed::Go(Some(id.to_string())))
                    }
                    Held::Answer(body) => Ok(Claimed::Answer(Accepted {
                        body: body.to_string(),
                        replayed: true,
                    })),
                }
            }
            Err(e) => {
                self.metrics
                    .store_errors
                    .with_label_values(&["claim"])
                    .inc();
                Err(ApiError::store_failed("dedup claim", None, &e))
            }
        }
    }

    /// A failed publish may still have reached the bus (a Kafka timeout can
    /// land later): keep the key with the message id, so a retry publishes
    /// the same id and the store keeps at most one copy.
    ///
    /// When the store does not take the mark (it is unreachable too), the
    /// key stays "pending" (retries answer 409 `in_progress` until they may
    /// take it over, under the same id) and the mark is tried again in the
    /// background. The key is never released here: a
    /// retry would then publish a second id while the first may still land,
    /// and the message would be stored twice (tests/partitions.rs, a front
    /// cut from everything, found it).
    pub async fn mark_for_retry(&self, key: &IdemKey, id: &str) {
        let value = key.value(&format!("{RETRY}{id}"));
        if self
            .store
            .set_claim(&key.key, &value, key.ttl)
            .await
            .is_ok()
        {
            return;
        }
        let (store, name, ttl) = (self.store.clone(), key.key.clone(), key.ttl);
        tokio::spawn(async move {
            for pause in MARK_RETRY_PAUSES_MS {
                tokio::time::sleep(Duration::from_millis(pause)).await;
                if store.set_claim(&name, &value, ttl).await.is_ok() {
                    return;
                }
            }
            tracing::warn!(
                "could not mark a failed publish for retry: its key stays pending until its TTL"
            );
        });
    }

    /// Replaces a won claim's "pending" by the answer retries get.
    pub async fn record_answer(&self, key: &IdemKey, body: &str) {
        let done = key.value(body);
        if let Err(e) = self.store.set_claim(&key.key, &done, key.ttl).await {
            // The message is on the bus; a retry sees "pending" (409) until
            // the claim is old enough to take over, then publishes the same
            // id again (the store keeps one copy).
            crate::error::log_store_failure("recording the idempotent answer", None, &e);
        }
    }
}

/// The key was used before for a different request.
pub fn key_reused() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "this key was used for a different request",
    )
}

/// What a request with `fingerprint` does about a key held with `value`, at
/// `now_ms`: publish under an earlier attempt's id (after its failed publish,
/// or taking over a claim pending `takeover_after` or longer), answer with
/// the first request's answer, or an error: the key reused for another
/// request (422), or the first request still in progress (409).
fn decide<'a>(
    value: &'a str,
    fingerprint: &str,
    now_ms: u64,
    takeover_after: Duration,
) -> Result<Held<'a>, ApiError> {
    let (held_fp, state) = value.split_once('|').unwrap_or(("", value));
    if held_fp != fingerprint {
        return Err(key_reused());
    }
    if let Some(id) = state.strip_prefix(RETRY) {
        return Ok(Held::Publish {
            id,
            takeover: false,
        });
    }
    let Some(pending) = state.strip_prefix(PENDING) else {
        return Ok(Held::Answer(state));
    };
    let since_and_id = pending
        .strip_prefix(':')
        .and_then(|rest| rest.split_once(':'))
        .and_then(|(since, id)| Some((since.parse::<u64>().ok()?, id)));
    match since_and_id {
        Some((since, id))
            if !id.is_empty()
                && now_ms.saturating_sub(since) >= takeover_after.as_millis() as u64 =>
        {
            Ok(Held::Publish { id, takeover: true })
        }
        // Fresh, or an older node's `pending` with no id: wait it out.
        _ => Err(ApiError::new(
            StatusCode::CONFLICT,
            "in_progress",
            "a request with this key is still in progress; retry shortly",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_values_decide_what_a_retry_does() {
        let k = IdemKey::event("r", "k", b"body", 60);
        let fp = k.fingerprint.clone();
        assert_eq!(k.key, "ev:{r}:k");
        let after = Duration::from_secs(15);
        let publish = |id, takeover| Ok(Held::Publish { id, takeover });
        // (held value, now ms, what the retry does)
        let table: Vec<(String, u64, Result<Held, &str>)> = vec![
            (k.value("retry:m1"), 0, publish("m1", false)),
            (k.value("retry:m1"), u64::MAX, publish("m1", false)),
            // A pending claim: waited on while fresh, taken over once stale.
            (k.value("pending:1000:m2"), 1000, Err("in_progress")),
            (k.value("pending:1000:m2"), 15_999, Err("in_progress")),
            (k.value("pending:1000:m2"), 16_000, publish("m2", true)),
            (k.value("pending:1000:m:2"), 99_000, publish("m:2", true)),
            // Stamped ahead of this node's clock: fresh.
            (k.value("pending:9000:m2"), 1000, Err("in_progress")),
            // Older nodes' pending (no id), or a malformed one: waited out.
            (k.value("pending"), u64::MAX, Err("in_progress")),
            (k.value("pending:x:m2"), u64::MAX, Err("in_progress")),
            (k.value("pending:1000:"), u64::MAX, Err("in_progress")),
            (k.value("pending:1000"), u64::MAX, Err("in_progress")),
            // Answered.
            (
                k.value(r#"{"id":"m1"}"#),
                0,
                Ok(Held::Answer(r#"{"id":"m1"}"#)),
            ),
            // Another request under the key.
            ("other|retry:m1".into(), 0, Err("idempotency_key_reused")),
            ("no-fingerprint".into(), 0, Err("idempotency_key_reused")),
        ];
        for (value, now, want) in &table {
            let got = decide(value, &fp, *now, after).map_err(|e| e.code);
            assert_eq!(&got, want, "{value} at {now}");
        }
        let d = IdemKey::danmaku("r", "u", "c", "hi", 0);
        assert_eq!(d.key, "dm:{r}:1:u:c");
        assert_eq!(d.ttl, Duration::from_secs(1));
    }

    #[test]
    fn danmaku_keys_do_not_collide_across_users() {
        let pairs = [
            ("alice:x", "m1"),
            ("alice", "x:m1"),
            ("alice:x:m1", ""),
            ("a", "lice:x:m1"),
            ("1:a", "b"),
            ("1", "a:b"),
        ];
        let keys: std::collections::HashSet<String> = pairs
            .iter()
            .map(|(u, c)| IdemKey::danmaku("r", u, c, "t", 60).key)
            .collect();
        assert_eq!(keys.len(), pairs.len(), "{keys:?}");
    }
}
