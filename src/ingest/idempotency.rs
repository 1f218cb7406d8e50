//! Idempotency: a retry with the same key gets the first answer, and a
//! message is published at most once per key (see `docs/architecture.md`,
//! "Ingest"). This type owns the whole key protocol in the live store:
//!
//! - keys: `dm:{room}:<n>:<user>:<client_msg_id>` (danmaku; `<n>` is the
//!   byte length of `<user>`: both the user id and the `client_msg_id` may
//!   hold `:`, and without the length `alice:x` + `m1` and `alice` + `x:m1`
//!   would be one key), `ev:{room}:<Idempotency-Key>` (gift backend events);
//! - values: `<fingerprint>|pending` while the first request publishes,
//!   `<fingerprint>|retry:<message id>` after a failed publish (a retry
//!   publishes the same id), `<fingerprint>|<answer>` once acknowledged.
//!
//! The fingerprint (a hash of the request) tells a retry from a different
//! request reusing the key (`idempotency_key_reused`).

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use sha2::{Digest, Sha256};

use super::Accepted;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::store::{Claim, LiveStore};

/// Claim state while the first request is publishing.
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

/// The claims of idempotency keys in the live store.
pub struct Idempotency {
    store: Arc<dyn LiveStore>,
    metrics: Arc<Metrics>,
}

impl Idempotency {
    pub fn new(store: Arc<dyn LiveStore>, metrics: Arc<Metrics>) -> Self {
        Idempotency { store, metrics }
    }

    /// `SET key "<fingerprint>|pending" NX EX ttl`: go on (reusing the
    /// message id of an earlier attempt whose publish failed), or an earlier
    /// request's answer (a retry).
    pub async fn claim(&self, key: &IdemKey) -> Result<Claimed, ApiError> {
        let pending = key.value(PENDING);
        match self.store.claim(&key.key, &pending, key.ttl).await {
            Ok(Claim::Won) => Ok(Claimed::Go(None)),
            Ok(Claim::Held(value)) => {
                if let Some(id) = retry_id(&value, &key.fingerprint) {
                    // Ours again (a concurrent retry would reuse the same id,
                    // which the store dedups).
                    let _ = self.store.set_claim(&key.key, &pending, key.ttl).await;
                    return Ok(Claimed::Go(Some(id.to_string())));
                }
                replay(&value, &key.fingerprint).map(Claimed::Answer)
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
    ///
    /// When the store does not take the mark (it is unreachable too), the
    /// key stays "pending" (retries answer 409 `in_progress`) and the mark is
    /// tried again in the background. The key is never released here: a
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
            // The message is on the bus; a retry will see "pending" (409) until the TTL.
            tracing::warn!(error = %e, "recording the idempotent answer failed");
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

fn retry_id<'a>(value: &'a str, fingerprint: &str) -> Option<&'a str> {
    let (held_fp, state) = value.split_once('|')?;
    (held_fp == fingerprint)
        .then(|| state.strip_prefix(RETRY))
        .flatten()
}

/// What a held key answers a request with `fingerprint`.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_values_decode() {
        let k = IdemKey::event("r", "k", b"body", 60);
        let fp = k.fingerprint.clone();
        assert_eq!(k.key, "ev:{r}:k");
        assert_eq!(retry_id(&k.value("retry:m1"), &fp), Some("m1"));
        assert_eq!(retry_id(&k.value(PENDING), &fp), None);
        assert_eq!(
            replay(&k.value(PENDING), &fp).unwrap_err().code,
            "in_progress"
        );
        assert_eq!(
            replay("other|x", &fp).unwrap_err().code,
            "idempotency_key_reused"
        );
        let a = replay(&k.value(r#"{"id":"m1"}"#), &fp).unwrap();
        assert_eq!(a.body, r#"{"id":"m1"}"#);
        assert!(a.replayed);
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
