//! `GET /v1/rooms/{room}/snapshot` (docs/cdn.md): the room's latest
//! messages per bucket, online count and cursor, made to sit behind a CDN.
//!
//! - A front computes a room's snapshot at most once per `snapshot.max_age_ms`;
//!   concurrent requests that find it missing or expired wait for one
//!   computation (single flight per room) and share its bytes.
//! - The ETag is a strong hash of the room's state (epoch, cursor, online,
//!   retraction mark): it changes only when the room changes (a retraction
//!   changes the mark, not the cursor). A recomputation that finds the
//!   same state keeps the previous body byte for byte (its `generated_at` and
//!   `Last-Modified` included), so one ETag always names one body on a front.
//! - Small rooms: one store read of the newest `scan_messages` messages
//!   (none at all when the head did not move). Big rooms: the hub's local
//!   cache of recent frames, never the store (what viewers got, gift combos
//!   included).
//! - `If-None-Match` (lists, `W/`, `*`) matching the current ETag → 304
//!   without a body. `If-Modified-Since` is not used: a room changes many
//!   times within one HTTP-date second; the ETag is the validator.
//! - If a snapshot cannot be computed (store down, timeout), the previous one
//!   is served if there is one, else 503.
//! - Clients that accept gzip get `Content-Encoding: gzip` (`snapshot.gzip`,
//!   bodies of at least `snapshot.gzip_min_bytes`): each snapshot is gzipped
//!   once, by the first request that wants it, and every later one shares
//!   the bytes. The gzip form has its own strong ETag (`"<tag>-gz"`); every
//!   answer says `Vary: Accept-Encoding`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::extract::{if_none_match, RoomPath};
use super::routes::Routes;
use super::state::SnapshotState;
use super::watch_gate::admit;
use crate::error::ApiError;
use crate::fanout::gzip::{accepts_gzip, gzip_etag, GzipOnce};
use crate::message::{now_ms, Priority, StoredMessage};

pub(super) fn routes() -> Routes {
    Routes::new()
        .get("/v1/rooms/{room}/snapshot", handler)
        .with_last(|h| h.layer(Extension(SnapshotCache::new())))
}

/// Per-room snapshots of this front; shared by every request.
#[derive(Clone)]
pub struct SnapshotCache {
    rooms: moka::sync::Cache<String, Arc<RoomSlot>>,
}

impl SnapshotCache {
    pub fn new() -> Self {
        SnapshotCache {
            rooms: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(120))
                .build(),
        }
    }
}

impl Default for SnapshotCache {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Default)]
struct RoomSlot {
    /// The latest snapshot and when it was last confirmed current.
    current: parking_lot::Mutex<Option<(Arc<Snapshot>, Instant)>>,
    /// Held while computing: the single flight.
    computing: tokio::sync::Mutex<()>,
}

impl RoomSlot {
    fn fresh(&self, max_age: Duration) -> Option<Arc<Snapshot>> {
        let current = self.current.lock();
        current
            .as_ref()
            .filter(|(_, at)| at.elapsed() < max_age)
            .map(|(s, _)| s.clone())
    }

    fn latest(&self) -> Option<Arc<Snapshot>> {
        self.current.lock().as_ref().map(|(s, _)| s.clone())
    }
}

/// What the ETag stands for: a change of any of these is a change of the room.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RoomState {
    epoch: String,
    cursor: u64,
    online: usize,
    /// The room's retraction mark on this node (`HubRegistry::
    /// retraction_mark`): a retraction changes the body, not the cursor.
    retractions: u64,
}

struct Snapshot {
    state: RoomState,
    /// Quoted strong entity tag.
    etag: HeaderValue,
    last_modified: HeaderValue,
    body: Bytes,
    /// `body` gzipped, made by the first request that accepts gzip.
    gzip: GzipOnce,
    /// The gzip form's entity tag.
    gzip_etag: HeaderValue,
}

async fn handler(
    State(s): State<SnapshotState>,
    Extension(cache): Extension<SnapshotCache>,
    RoomPath(room): RoomPath,
    headers: HeaderMap,
) -> Response {
    // A private room's snapshot is for its token holders alone: checked on
    // every request, answered `private, no-store` (no CDN keeps it).
    let private = match admit(&s.control, &s.auth, &room, None, &headers).await {
        Ok(admitted) => admitted.private,
        Err(e) => return e.into_response(),
    };
    let cfg = &s.config.snapshot;
    let max_age = Duration::from_millis(cfg.max_age_ms);
    let slot = cache.rooms.get_with(room.clone(), Default::default);
    // A retraction on this node outdates a cached snapshot at once (it does
    // not move the cursor the cache is otherwise keyed by).
    let mark = s.hubs.retraction_mark(&room);
    let fresh = || {
        slot.fresh(max_age)
            .filter(|snap| snap.state.retractions == mark)
    };
    let (snapshot, stale) = match fresh() {
        Some(snap) => (snap, false),
        None => {
            let _flight = slot.computing.lock().await;
            match fresh() {
                // Computed by the request we waited for.
                Some(snap) => (snap, false),
                None => {
                    let previous = slot.latest();
                    let timeout = Duration::from_millis(cfg.compute_timeout_ms);
                    let computed =
                        tokio::time::timeout(timeout, compute(&s, &room, previous.as_deref()))
                            .await
                            .unwrap_or_else(|_| {
                                Err(ApiError::unavailable(
                                    "snapshot_timeout",
                                    "the snapshot could not be computed in time",
                                ))
                            });
                    match (computed, previous) {
                        (Ok(Computed::Unchanged), Some(previous)) => {
                            *slot.current.lock() = Some((previous.clone(), Instant::now()));
                            (previous, false)
                        }
                        (Ok(Computed::New(snap)), _) => {
                            let snap: Arc<Snapshot> = Arc::from(snap);
                            *slot.current.lock() = Some((snap.clone(), Instant::now()));
                            (snap, false)
                        }
                        (Err(e), Some(previous)) => {
                            tracing::warn!(
                                room,
                                code = e.code,
                                "snapshot: serving the previous one"
                            );
                            (previous, true)
                        }
                        (Err(e), None) => return e.into_response(),
                        (Ok(Computed::Unchanged), None) => {
                            // `compute` says "unchanged" only against a previous snapshot.
                            return ApiError::unavailable("snapshot_unavailable", "retry")
                                .into_response();
                        }
                    }
                }
            }
        }
    };
    respond(&s, &snapshot, stale, private, &headers)
}

fn respond(
    s: &SnapshotState,
    snap: &Snapshot,
    stale: bool,
    private: bool,
    request: &HeaderMap,
) -> Response {
    let cfg = &s.config.snapshot;
    let cache_control = if private {
        HeaderValue::from_static("private, no-store")
    } else {
        HeaderValue::from_str(&cfg.cache_control)
            .unwrap_or(HeaderValue::from_static("public, max-age=1"))
    };
    let wants_gzip = cfg.gzip && accepts_gzip(request);
    // A client that holds the gzip form revalidates it without a compression.
    let held_gzip =
        wants_gzip && if_none_match(request, snap.gzip_etag.to_str().unwrap_or_default());
    let gzipped = match wants_gzip && !held_gzip {
        true => snap.gzip.get(&snap.body, cfg.gzip_min_bytes, &s.metrics),
        false => None,
    };
    let etag = match held_gzip || gzipped.is_some() {
        true => &snap.gzip_etag,
        false => &snap.etag,
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, cache_control);
    headers.insert(header::ETAG, etag.clone());
    headers.insert(header::LAST_MODIFIED, snap.last_modified.clone());
    if cfg.gzip {
        headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    let revalidated = held_gzip || if_none_match(request, etag.to_str().unwrap_or_default());
    let result = match (revalidated, stale) {
        (true, _) => "not_modified",
        (false, true) => "stale",
        (false, false) => "ok",
    };
    s.metrics
        .snapshot_responses
        .with_label_values(&[result])
        .inc();
    if revalidated {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = match gzipped {
        Some(gz) => {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            gz.clone()
        }
        None => snap.body.clone(),
    };
    (StatusCode::OK, headers, body).into_response()
}

enum Computed {
    /// The room is as the previous snapshot saw it: keep its bytes.
    Unchanged,
    New(Box<Snapshot>),
}

async fn compute(
    s: &SnapshotState,
    room: &str,
    previous: Option<&Snapshot>,
) -> Result<Computed, ApiError> {
    let cfg = &s.config.snapshot;
    // The hub carries the cluster-wide online count (presence) and, for big
    // rooms, the local cache. A room without one on this node gets one; it
    // stops by itself once idle.
    let hub = match s.hubs.hub(room).await {
        Ok(hub) => Some(hub),
        Err(e) => {
            tracing::debug!(room, code = e.code, "snapshot without a hub");
            None
        }
    };
    let online = hub.as_ref().map_or(0, |h| h.cluster_online());
    // Taken before reading: a retraction after this read shows next time.
    let retractions = s.hubs.retraction_mark(room);
    let unchanged = |state: &RoomState| previous.is_some_and(|p| p.state == *state);
    let builds = &s.metrics.snapshot_builds;

    if let Some(hub) = hub.as_ref().filter(|h| h.is_big()) {
        let read = hub.cached_after(0, usize::MAX);
        let state = RoomState {
            epoch: read.epoch.to_string(),
            cursor: read.cursor,
            online,
            retractions,
        };
        if unchanged(&state) {
            builds.with_label_values(&["unchanged"]).inc();
            return Ok(Computed::Unchanged);
        }
        let mut messages = match read.single {
            Some(frame) => frame.messages.to_vec(),
            None => read.messages,
        };
        messages.sort_by_key(|m| m.seq);
        builds.with_label_values(&["cache"]).inc();
        let snap = build(room, state, &messages, cfg.per_bucket);
        return Ok(Computed::New(Box::new(snap)));
    }

    let head = s.store.head(room).await.map_err(store_down)?;
    let state = RoomState {
        epoch: head.epoch,
        cursor: head.seq,
        online,
        retractions,
    };
    if unchanged(&state) {
        builds.with_label_values(&["unchanged"]).inc();
        return Ok(Computed::Unchanged);
    }
    s.metrics.store_reads.with_label_values(&["snapshot"]).inc();
    let scan = cfg.scan_messages.max(1);
    let read = s
        .store
        .read_range(room, head.seq.saturating_sub(scan as u64), head.seq, scan)
        .await
        .map_err(store_down)?;
    // The stream may have been replaced between the two calls: describe what was read.
    let state = RoomState {
        epoch: read.epoch,
        cursor: read.cursor,
        online,
        retractions,
    };
    builds.with_label_values(&["store"]).inc();
    Ok(Computed::New(Box::new(build(
        room,
        state,
        &read.messages,
        cfg.per_bucket,
    ))))
}

fn store_down(e: crate::store::StoreError) -> ApiError {
    ApiError::store_failed("snapshot read", None, &e)
}

/// `{"room","epoch","cursor","online","generated_at","buckets":{"whitelist":
/// [...],"high":[...],"low":[...]}}`: the latest `per_bucket` messages of
/// each bucket (of `messages`, in seq order), oldest first, concatenated from
/// their stored JSON.
fn build(room: &str, state: RoomState, messages: &[StoredMessage], per_bucket: usize) -> Snapshot {
    let mut buckets: [Vec<&StoredMessage>; 3] = Default::default();
    for m in messages.iter().rev() {
        let b = &mut buckets[m.priority.index()];
        if b.len() < per_bucket {
            b.push(m);
        }
    }
    let generated_at = now_ms();
    let len: usize = buckets.iter().flatten().map(|m| m.json.len() + 1).sum();
    let mut out = Vec::with_capacity(len + room.len() + state.epoch.len() + 160);
    out.extend_from_slice(b"{\"room\":");
    serde_json::to_writer(&mut out, room).expect("vec write");
    out.extend_from_slice(b",\"epoch\":");
    serde_json::to_writer(&mut out, &state.epoch).expect("vec write");
    write!(
        out,
        ",\"cursor\":{},\"online\":{},\"generated_at\":{generated_at},\"buckets\":{{",
        state.cursor, state.online
    )
    .expect("vec write");
    for (i, p) in Priority::ALL.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write!(out, "\"{}\":[", p.as_str()).expect("vec write");
        for (j, m) in buckets[p.index()].iter().rev().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&m.json);
        }
        out.push(b']');
    }
    out.extend_from_slice(b"}}");

    let mut hash = Sha256::new();
    for part in [
        room,
        &state.epoch,
        &state.cursor.to_string(),
        &state.online.to_string(),
        &state.retractions.to_string(),
    ] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let mut etag = String::with_capacity(34);
    etag.push('"');
    for b in &hash.finalize()[..16] {
        write!(etag, "{b:02x}").expect("string write");
    }
    etag.push('"');
    let modified = SystemTime::UNIX_EPOCH + Duration::from_millis(generated_at);
    Snapshot {
        gzip: GzipOnce::default(),
        gzip_etag: HeaderValue::from_str(&gzip_etag(&etag)).expect("hex is a header value"),
        etag: HeaderValue::from_str(&etag).expect("hex is a header value"),
        last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(modified))
            .expect("an HTTP date is a header value"),
        body: Bytes::from(out),
        state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(seq: u64, p: Priority) -> StoredMessage {
        StoredMessage {
            seq,
            priority: p,
            ts: 0,
            id: seq.to_string(),
            json: Bytes::from(format!("{{\"seq\":{seq}}}")),
        }
    }

    #[test]
    fn latest_per_bucket_oldest_first_and_etag_follows_state() {
        let msgs: Vec<StoredMessage> = (1..=10)
            .map(|s| {
                m(
                    s,
                    if s % 2 == 0 {
                        Priority::Low
                    } else {
                        Priority::High
                    },
                )
            })
            .collect();
        let state = RoomState {
            epoch: "e".into(),
            cursor: 10,
            online: 3,
            retractions: 0,
        };
        let snap = build("r", state.clone(), &msgs, 2);
        let v: serde_json::Value = serde_json::from_slice(&snap.body).unwrap();
        let seqs = |b: &str| -> Vec<u64> {
            v["buckets"][b]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["seq"].as_u64().unwrap())
                .collect()
        };
        assert_eq!(seqs("high"), vec![7, 9]);
        assert_eq!(seqs("low"), vec![8, 10]);
        assert_eq!(seqs("whitelist"), Vec::<u64>::new());
        assert_eq!(v["cursor"], 10);
        assert_eq!(v["online"], 3);
        assert_eq!(v["room"], "r");
        assert!(v["generated_at"].as_u64().unwrap() > 0);
        let again = build("r", state.clone(), &msgs, 2);
        assert_eq!(again.etag, snap.etag);
        let moved = build(
            "r",
            RoomState {
                cursor: 11,
                ..state.clone()
            },
            &msgs,
            2,
        );
        assert_ne!(moved.etag, snap.etag);
        let retracted = RoomState {
            retractions: 1,
            ..state
        };
        assert_ne!(build("r", retracted, &msgs, 2).etag, snap.etag);
        assert!(snap.etag.to_str().unwrap().starts_with('"'));
    }
}
