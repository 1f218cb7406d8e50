//! Replay reads (docs/replay.md; docs/architecture.md, "Roles"): windows of an archived live,
//! read front cache → replay Redis → archive, filling the tiers above on the
//! way back. Never the live store.
//!
//! A request `[from_ms, to_ms)` is served from the aligned windows
//! (`replay_window_ms`) that cover it; each window is cached whole (an
//! archived window changes only by a retraction, which forgets the room's
//! cached windows: `Replay::forget_room`, or a deletion: `forget_live`) and
//! filtered to the request. The front cache holds a window rationed for the
//! room's per-viewer budget (`density`); the replay Redis the whole window.
//! Concurrent misses of one window share one load (`flight`); windows of a
//! replay many viewers watch are loaded ahead of them (`prefetch`).

mod density;
mod live;
mod prefetch;
mod redis;
mod retention;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;

use crate::archive::metrics::ArchiveMetrics;
use crate::archive::{Archive, ArchiveError, ArchivedMessage, Live};
use crate::config::ArchiveConfig;
use crate::error::ApiError;
use crate::flight::Flights;
use crate::rooms::RationRules;
use density::Density;
use redis::ReplayRedis;

pub use live::{LiveEnding, LiveStart};
pub use retention::{announce, LiveDeletion};

/// One cached window: messages by seq.
pub type Window = Arc<Vec<ArchivedMessage>>;

/// A front cache key: live, window start, and the rules it is rationed by.
type WindowKey = (String, u64, Density);

/// A front cache entry.
#[derive(Clone)]
struct Cached {
    messages: Window,
    /// Loaded ahead of the viewers: its hits count as prefetch hits.
    prefetched: bool,
}

pub struct Replay {
    archive: Arc<dyn Archive>,
    /// `None` when `archive.replay_cache_messages` is 0 (no front cache).
    cache: Option<moka::sync::Cache<WindowKey, Cached>>,
    /// Archived lives by id (immutable once archived).
    lives: moka::sync::Cache<String, Live>,
    /// A room's latest archived live, briefly.
    latest: moka::sync::Cache<String, Live>,
    redis: Option<ReplayRedis>,
    config: ArchiveConfig,
    pub metrics: Arc<ArchiveMetrics>,
    /// Bumped by every `forget_room` / `forget_live`: a window read before
    /// one is not cached after it (it may hold a message retracted or a live
    /// deleted meanwhile), and reads after it do not join loads begun before.
    forgets: AtomicU64,
    /// Window loads in progress, by key and `forgets` generation.
    loading: Flights<(WindowKey, u64), Result<Window, String>>,
    /// Live look-ups in progress ("id <live>" / "room <room>").
    looking_up: Flights<String, Result<Option<Live>, String>>,
    /// Reads per (live, window start) within one window's length: what
    /// makes a replay hot enough to prefetch (`prefetch`).
    readers: moka::sync::Cache<(String, u64), Arc<AtomicU32>>,
}

impl Replay {
    pub fn new(
        archive: Arc<dyn Archive>,
        replay_redis_url: &str,
        config: ArchiveConfig,
        metrics: Arc<ArchiveMetrics>,
    ) -> anyhow::Result<Replay> {
        let redis = if replay_redis_url.trim().is_empty() {
            None
        } else {
            Some(ReplayRedis::new(
                replay_redis_url.trim(),
                config.replay_redis_ttl_s,
            )?)
        };
        Ok(Replay {
            archive,
            cache: (config.replay_cache_messages > 0).then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(config.replay_cache_messages)
                    .weigher(|_, w: &Cached| {
                        u32::try_from(w.messages.len() + 1).unwrap_or(u32::MAX)
                    })
                    .build()
            }),
            lives: moka::sync::Cache::builder().max_capacity(10_000).build(),
            latest: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(2))
                .build(),
            redis,
            forgets: AtomicU64::new(0),
            loading: Flights::new(),
            looking_up: Flights::new(),
            readers: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_millis(config.replay_window_ms.max(1)))
                .build(),
            config,
            metrics,
        })
    }

    pub fn archive(&self) -> &Arc<dyn Archive> {
        &self.archive
    }

    /// Whether the isolated replay Redis answers a PING; `None` if none is
    /// configured (replay then reads the archive directly).
    pub async fn ping_redis(&self) -> Option<bool> {
        let redis = self.redis.as_ref()?;
        let ping = async {
            let mut c = redis.conn().await?;
            ::redis::cmd("PING").query_async::<String>(&mut c).await
        };
        Some(matches!(
            tokio::time::timeout(Duration::from_secs(1), ping).await,
            Ok(Ok(_))
        ))
    }

    /// An archived-or-not live by id (archived ones are cached; concurrent
    /// look-ups of one id share one query).
    async fn live(&self, id: &str) -> Result<Option<Live>, ArchiveError> {
        if let Some(l) = self.lives.get(id) {
            return Ok(Some(l));
        }
        let generation = self.forgets.load(Ordering::Acquire);
        let (live, _) = self
            .looking_up
            .run(format!("id {id}"), || async {
                self.metrics.replay_archive_queries.inc();
                let live = self.archive.live(id).await.map_err(message)?;
                if let Some(l) = live.as_ref().filter(|l| l.archived_at.is_some()) {
                    if self.forgets.load(Ordering::Acquire) == generation {
                        self.lives.insert(id.to_string(), l.clone());
                    }
                }
                Ok(live)
            })
            .await;
        live.map_err(ArchiveError::Unavailable)
    }

    async fn latest_archived(&self, room: &str) -> Result<Option<Live>, ArchiveError> {
        if let Some(l) = self.latest.get(room) {
            return Ok(Some(l));
        }
        let generation = self.forgets.load(Ordering::Acquire);
        let (live, _) = self
            .looking_up
            .run(format!("room {room}"), || async {
                self.metrics.replay_archive_queries.inc();
                let live = self.archive.latest_archived(room).await.map_err(message)?;
                if let Some(l) = &live {
                    if self.forgets.load(Ordering::Acquire) == generation {
                        self.latest.insert(room.to_string(), l.clone());
                    }
                }
                Ok(live)
            })
            .await;
        live.map_err(ArchiveError::Unavailable)
    }

    /// Forgets the cached replay windows of `room`'s lives, here and in the
    /// replay Redis, after a retraction: the next read of such a window goes
    /// to the archive, which omits the retracted message. Every node calls
    /// it (the node that retracted, and the others on the cluster's notice).
    ///
    /// Deleting, rather than a retraction generation in the cache keys: the
    /// keys would need a per-room generation shared by every node (another
    /// read per window on the hot replay path), while retractions are rare
    /// and deleting costs one archive query and one `DEL` per live. A window
    /// being read while this runs is not cached (`forgets`), and since each
    /// node deletes the Redis windows again when it forgets, a node's fill
    /// that raced the first delete is gone after its own.
    pub async fn forget_room(&self, room: &str) -> Result<(), ArchiveError> {
        self.forgets.fetch_add(1, Ordering::AcqRel);
        self.metrics.replay_archive_queries.inc();
        let lives: Vec<String> = self
            .archive
            .lives(room, 100)
            .await?
            .into_iter()
            .map(|l| l.id)
            .collect();
        self.forget_windows(&lives).await;
        Ok(())
    }

    /// Forgets a deleted live: its metadata, the room's latest live, and its
    /// windows here and in the replay Redis (every node, on the notice).
    pub async fn forget_live(&self, room: &str, live: &str) {
        self.forgets.fetch_add(1, Ordering::AcqRel);
        self.lives.invalidate(live);
        self.latest.invalidate(room);
        self.forget_windows(&[live.to_string()]).await;
    }

    /// Drops the windows of `lives` from the front cache and the replay Redis.
    async fn forget_windows(&self, lives: &[String]) {
        if let Some(cache) = &self.cache {
            let stale: Vec<WindowKey> = cache
                .iter()
                .filter(|(key, _)| lives.contains(&key.0))
                .map(|(key, _)| (*key).clone())
                .collect();
            for key in stale {
                cache.invalidate(&key);
            }
        }
        if let Some(redis) = &self.redis {
            if let Err(e) = redis.forget(lives).await {
                self.metrics.replay_redis_errors.inc();
                // Its windows expire within `replay_redis_ttl_s` at worst.
                tracing::warn!(?lives, error = %e, "replay redis: forgetting windows failed");
            }
        }
    }

    /// A window from the front cache, counted as a read of it (`count`).
    fn cached(&self, key: &WindowKey, count: bool) -> Option<Window> {
        let hit = self.cache.as_ref()?.get(key)?;
        if count {
            self.metrics
                .replay_reads
                .with_label_values(&["cache"])
                .inc();
            if hit.prefetched {
                self.metrics.replay_prefetch_hits.inc();
            }
        }
        Some(hit.messages)
    }

    /// One aligned window of an archived live, rationed by `rules`: cache →
    /// Redis → archive; concurrent misses share one load. `ahead`: a
    /// prefetch (a window already cached is left as it is, uncounted).
    async fn window(
        &self,
        live: &str,
        start: u64,
        rules: &RationRules,
        ahead: bool,
    ) -> Result<Window, ArchiveError> {
        let key: WindowKey = (live.to_string(), start, Density::of(rules));
        if let Some(w) = self.cached(&key, !ahead) {
            return Ok(w);
        }
        let generation = self.forgets.load(Ordering::Acquire);
        let (window, waited) = self
            .loading
            .run((key.clone(), generation), || {
                self.load(&key, rules, generation, ahead)
            })
            .await;
        if waited {
            self.metrics.replay_coalesced.inc();
        }
        window.map_err(ArchiveError::Unavailable)
    }

    /// Loads a window (Redis, else the archive, filling Redis), rations it
    /// and caches it unless a forget happened meanwhile.
    async fn load(
        &self,
        key: &WindowKey,
        rules: &RationRules,
        generation: u64,
        ahead: bool,
    ) -> Result<Window, String> {
        let unchanged = || self.forgets.load(Ordering::Acquire) == generation;
        let (live, start) = (key.0.as_str(), key.1);
        let end = start.saturating_add(self.config.replay_window_ms);
        let rows = match self.read_redis(live, start, end).await {
            Some(rows) => rows,
            None => {
                self.metrics.replay_archive_queries.inc();
                let rows = self
                    .archive
                    .read_window(live, start, end)
                    .await
                    .map_err(message)?;
                self.metrics
                    .replay_reads
                    .with_label_values(&["archive"])
                    .inc();
                if let Some(redis) = self.redis.as_ref().filter(|_| unchanged()) {
                    if let Err(e) = redis.fill(live, start, &rows).await {
                        self.metrics.replay_redis_errors.inc();
                        tracing::debug!(error = %e, "replay redis fill failed");
                    }
                }
                rows
            }
        };
        let (kept, shed) = density::ration(rules, rows);
        self.metrics.replay_rationed.inc_by(shed);
        let w = Arc::new(kept);
        if let Some(c) = self.cache.as_ref().filter(|_| unchanged()) {
            c.insert(
                key.clone(),
                Cached {
                    messages: w.clone(),
                    prefetched: ahead,
                },
            );
        }
        if ahead {
            self.metrics.replay_prefetched.inc();
        }
        Ok(w)
    }

    /// The whole window from the replay Redis; `None` when it does not hold
    /// it (or fails: the archive answers then).
    async fn read_redis(&self, live: &str, start: u64, end: u64) -> Option<Vec<ArchivedMessage>> {
        match self.redis.as_ref()?.read(live, start, end).await {
            Ok(Some(rows)) => {
                self.metrics
                    .replay_reads
                    .with_label_values(&["redis"])
                    .inc();
                Some(rows)
            }
            Ok(None) => None,
            Err(e) => {
                self.metrics.replay_redis_errors.inc();
                tracing::debug!(error = %e, "replay redis read failed; reading the archive");
                None
            }
        }
    }

    /// The body of `GET /v1/rooms/{room}/replay`: `{"room","live","from_ms",
    /// "to_ms","messages":[...]}` with the archived messages of `live` (by
    /// default the room's latest archived one) with `from_ms <= offset_ms <
    /// to_ms`, by window and by seq within each; the window defaults to
    /// `[from_ms, from_ms + replay_window_ms)`.
    ///
    /// Each window is rationed by `rules` (the room's per-viewer budget,
    /// `density`), and the read counts towards prefetching (`prefetch`).
    pub async fn read(
        self: &Arc<Self>,
        room: &str,
        live: Option<&str>,
        from_ms: Option<u64>,
        to_ms: Option<u64>,
        rules: &RationRules,
    ) -> Result<Vec<u8>, ApiError> {
        let cfg = &self.config;
        let from = from_ms.unwrap_or(0);
        let to = to_ms.unwrap_or_else(|| from.saturating_add(cfg.replay_window_ms));
        if to <= from || to - from > cfg.replay_max_span_ms {
            return Err(ApiError::bad_request(
                "bad_window",
                format!(
                    "need from_ms < to_ms and to_ms - from_ms <= {}",
                    cfg.replay_max_span_ms
                ),
            ));
        }
        let live = match live {
            Some(id) => {
                if id.is_empty() || id.len() > 64 {
                    return Err(ApiError::bad_request("bad_live", "live must be a live id"));
                }
                match self.live(id).await.map_err(archive_error)? {
                    Some(l) if l.room == room => l,
                    _ => return Err(ApiError::not_found("no such live in this room")),
                }
            }
            None => self
                .latest_archived(room)
                .await
                .map_err(archive_error)?
                .ok_or_else(|| ApiError::not_found("this room has no archived live"))?,
        };
        if live.archived_at.is_none() {
            let code = if live.ended_at.is_none() {
                "live_not_ended"
            } else {
                "live_not_archived"
            };
            let mut e = ApiError::new(
                StatusCode::CONFLICT,
                code,
                "this live is not archived yet; try again shortly",
            );
            e.retry_after_s = Some(1);
            return Err(e);
        }
        let w = cfg.replay_window_ms;
        let mut body = Vec::with_capacity(4096);
        body.extend_from_slice(
            serde_json::json!({"room": room, "live": live.id, "from_ms": from, "to_ms": to})
                .to_string()
                .trim_end_matches('}')
                .as_bytes(),
        );
        body.extend_from_slice(b",\"messages\":[");
        let mut first = true;
        let mut start = from / w * w;
        self.note_reader(&live, start, rules);
        while start < to {
            let window = self
                .window(&live.id, start, rules, false)
                .await
                .map_err(archive_error)?;
            for m in window.iter() {
                if m.offset_ms >= from && m.offset_ms < to {
                    if !first {
                        body.push(b',');
                    }
                    first = false;
                    body.extend_from_slice(&m.json);
                }
            }
            // The last window of a range ending near u64::MAX has no successor.
            let Some(next) = start.checked_add(w) else {
                break;
            };
            start = next;
        }
        body.extend_from_slice(b"]}");
        Ok(body)
    }
}

/// An archive failure as shared by the callers of one load.
fn message(e: ArchiveError) -> String {
    match e {
        ArchiveError::Unavailable(m) => m,
        other => other.to_string(),
    }
}

/// An archive failure as the API answers it.
pub fn archive_error(e: ArchiveError) -> ApiError {
    match e {
        ArchiveError::Unavailable(m) => {
            tracing::warn!(error = %m, "archive unavailable");
            ApiError::unavailable("archive_unavailable", "the archive is unavailable")
        }
        ArchiveError::AlreadyLive(_) => ApiError::new(
            StatusCode::CONFLICT,
            "live_already_started",
            "the room already has a live",
        ),
    }
}
