//! Replay reads (docs/replay.md; docs/architecture.md, "Roles"): windows of an archived live,
//! read front cache → replay Redis → archive, filling the tiers above on the
//! way back. Never the live store.
//!
//! A request `[from_ms, to_ms)` is served from the aligned windows
//! (`replay_window_ms`) that cover it; each window is cached whole (an
//! archived window changes only by a retraction, which forgets the room's
//! cached windows: `Replay::forget_room`) and filtered to the request.

mod live;
mod redis;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;

use crate::archive::metrics::ArchiveMetrics;
use crate::archive::{Archive, ArchiveError, ArchivedMessage, Live};
use crate::config::ArchiveConfig;
use crate::error::ApiError;
use redis::ReplayRedis;

pub use live::{LiveEnding, LiveStart};

/// One cached window: messages by seq.
pub type Window = Arc<Vec<ArchivedMessage>>;

pub struct Replay {
    archive: Arc<dyn Archive>,
    /// `None` when `archive.replay_cache_messages` is 0 (no front cache).
    cache: Option<moka::sync::Cache<(String, u64), Window>>,
    /// Archived lives by id (immutable once archived).
    lives: moka::sync::Cache<String, Live>,
    /// A room's latest archived live, briefly.
    latest: moka::sync::Cache<String, Live>,
    redis: Option<ReplayRedis>,
    config: ArchiveConfig,
    pub metrics: Arc<ArchiveMetrics>,
    /// Bumped by every `forget_room`: a window read before one is not
    /// cached after it (it may hold a message retracted meanwhile).
    forgets: AtomicU64,
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
                    .weigher(|_, w: &Window| u32::try_from(w.len() + 1).unwrap_or(u32::MAX))
                    .build()
            }),
            lives: moka::sync::Cache::builder().max_capacity(10_000).build(),
            latest: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(2))
                .build(),
            redis,
            config,
            metrics,
            forgets: AtomicU64::new(0),
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

    /// An archived-or-not live by id (archived ones are cached).
    async fn live(&self, id: &str) -> Result<Option<Live>, ArchiveError> {
        if let Some(l) = self.lives.get(id) {
            return Ok(Some(l));
        }
        self.metrics.replay_archive_queries.inc();
        let live = self.archive.live(id).await?;
        if let Some(l) = &live {
            if l.archived_at.is_some() {
                self.lives.insert(id.to_string(), l.clone());
            }
        }
        Ok(live)
    }

    async fn latest_archived(&self, room: &str) -> Result<Option<Live>, ArchiveError> {
        if let Some(l) = self.latest.get(room) {
            return Ok(Some(l));
        }
        self.metrics.replay_archive_queries.inc();
        let live = self.archive.latest_archived(room).await?;
        if let Some(l) = &live {
            self.latest.insert(room.to_string(), l.clone());
        }
        Ok(live)
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
        if let Some(cache) = &self.cache {
            let stale: Vec<(String, u64)> = cache
                .iter()
                .filter(|(key, _)| lives.contains(&key.0))
                .map(|(key, _)| (*key).clone())
                .collect();
            for key in stale {
                cache.invalidate(&key);
            }
        }
        if let Some(redis) = &self.redis {
            if let Err(e) = redis.forget(&lives).await {
                self.metrics.replay_redis_errors.inc();
                // Its windows expire within `replay_redis_ttl_s` at worst.
                tracing::warn!(room, error = %e, "replay redis: forgetting a room's windows failed");
            }
        }
        Ok(())
    }

    /// One aligned window of an archived live: cache → Redis → archive.
    pub async fn window(&self, live: &str, start: u64) -> Result<Window, ArchiveError> {
        let forgets = self.forgets.load(Ordering::Acquire);
        let unchanged = || self.forgets.load(Ordering::Acquire) == forgets;
        let key = (live.to_string(), start);
        if let Some(w) = self.cache.as_ref().and_then(|c| c.get(&key)) {
            self.metrics
                .replay_reads
                .with_label_values(&["cache"])
                .inc();
            return Ok(w);
        }
        let end = start.saturating_add(self.config.replay_window_ms);
        if let Some(redis) = &self.redis {
            match redis.read(live, start, end).await {
                Ok(Some(w)) => {
                    self.metrics
                        .replay_reads
                        .with_label_values(&["redis"])
                        .inc();
                    let w = Arc::new(w);
                    if let Some(c) = self.cache.as_ref().filter(|_| unchanged()) {
                        c.insert(key, w.clone());
                    }
                    return Ok(w);
                }
                Ok(None) => {}
                Err(e) => {
                    self.metrics.replay_redis_errors.inc();
                    tracing::debug!(error = %e, "replay redis read failed; reading the archive");
                }
            }
        }
        self.metrics.replay_archive_queries.inc();
        let rows = self.archive.read_window(live, start, end).await?;
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
        let w = Arc::new(rows);
        if let Some(c) = self.cache.as_ref().filter(|_| unchanged()) {
            c.insert(key, w.clone());
        }
        Ok(w)
    }

    /// The body of `GET /v1/rooms/{room}/replay`: `{"room","live","from_ms",
    /// "to_ms","messages":[...]}` with the archived messages of `live` (by
    /// default the room's latest archived one) with `from_ms <= offset_ms <
    /// to_ms`, by window and by seq within each; the window defaults to
    /// `[from_ms, from_ms + replay_window_ms)`.
    pub async fn read(
        &self,
        room: &str,
        live: Option<&str>,
        from_ms: Option<u64>,
        to_ms: Option<u64>,
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
        while start < to {
            let window = self.window(&live.id, start).await.map_err(archive_error)?;
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
