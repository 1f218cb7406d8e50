//! Replay reads (DESIGN §3.8, docs/replay.md): windows of an archived live,
//! read front cache → replay Redis → archive, filling the tiers above on the
//! way back. Never the live store.
//!
//! A request `[from_ms, to_ms)` is served from the aligned windows
//! (`replay_window_ms`) that cover it; each window is cached whole (the
//! archived window never changes) and filtered to the request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::api::{require_admin, ApiQuery, RoomPath};
use crate::app::AppState;
use crate::archive::metrics::ArchiveMetrics;
use crate::archive::{Archive, ArchiveError, ArchivedMessage, Live};
use crate::config::ArchiveConfig;
use crate::error::ApiError;
use crate::message::now_ms;

/// One cached window: messages by (offset_ms, seq).
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

    /// One aligned window of an archived live: cache → Redis → archive.
    pub async fn window(&self, live: &str, start: u64) -> Result<Window, ArchiveError> {
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
                    if let Some(c) = &self.cache {
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
        if let Some(redis) = &self.redis {
            if let Err(e) = redis.fill(live, start, &rows).await {
                self.metrics.replay_redis_errors.inc();
                tracing::debug!(error = %e, "replay redis fill failed");
            }
        }
        let w = Arc::new(rows);
        if let Some(c) = &self.cache {
            c.insert(key, w.clone());
        }
        Ok(w)
    }
}

/// The replay Redis tier (a separate instance from the live store).
///
/// Keys per live: `rp:{<live>}:m` — sorted set, score = offset_ms, member =
/// `<seq, 20 digits>:<message JSON>` (so equal offsets keep seq order);
/// `rp:{<live>}:w` — set of the window starts already filled. Both are
/// written in one `MULTI` with the same TTL, so a window marked filled always
/// has its members.
struct ReplayRedis {
    client: ::redis::Client,
    conn: tokio::sync::Mutex<(Option<ConnectionManager>, Option<Instant>)>,
    ttl_s: u64,
}

impl ReplayRedis {
    fn new(url: &str, ttl_s: u64) -> anyhow::Result<ReplayRedis> {
        Ok(ReplayRedis {
            client: ::redis::Client::open(url)?,
            conn: tokio::sync::Mutex::new((None, None)),
            ttl_s,
        })
    }

    /// The connection, connecting lazily (at most one attempt a second while
    /// Redis is away, so replay keeps answering from the archive fast).
    async fn conn(&self) -> Result<ConnectionManager, ::redis::RedisError> {
        let mut g = self.conn.lock().await;
        if let Some(c) = &g.0 {
            return Ok(c.clone());
        }
        if let Some(at) = g.1 {
            if at.elapsed() < Duration::from_secs(1) {
                return Err(::redis::RedisError::from((
                    ::redis::ErrorKind::Io,
                    "replay redis unavailable (retrying shortly)",
                )));
            }
        }
        g.1 = Some(Instant::now());
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(1000)))
            .set_number_of_retries(0)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let c = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        g.0 = Some(c.clone());
        Ok(c)
    }

    fn keys(live: &str) -> (String, String) {
        (format!("rp:{{{live}}}:m"), format!("rp:{{{live}}}:w"))
    }

    async fn read(
        &self,
        live: &str,
        start: u64,
        end: u64,
    ) -> Result<Option<Vec<ArchivedMessage>>, ::redis::RedisError> {
        let mut c = self.conn().await?;
        let (m, w) = Self::keys(live);
        let (filled, members): (bool, Vec<(Vec<u8>, f64)>) = ::redis::pipe()
            .atomic()
            .sismember(&w, start)
            .cmd("ZRANGEBYSCORE")
            .arg(&m)
            .arg(start)
            .arg(format!("({end}"))
            .arg("WITHSCORES")
            .query_async(&mut c)
            .await?;
        if !filled {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(members.len());
        for (member, score) in members {
            let Some(colon) = member.iter().position(|&b| b == b':') else {
                continue;
            };
            let seq = std::str::from_utf8(&member[..colon])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let json = Bytes::copy_from_slice(&member[colon + 1..]);
            let ts = 0; // not needed by readers
            out.push(ArchivedMessage {
                seq,
                offset_ms: score as u64,
                ts,
                json,
            });
        }
        out.sort_by_key(|m| (m.offset_ms, m.seq));
        Ok(Some(out))
    }

    async fn fill(
        &self,
        live: &str,
        start: u64,
        rows: &[ArchivedMessage],
    ) -> Result<(), ::redis::RedisError> {
        let mut c = self.conn().await?;
        let (m, w) = Self::keys(live);
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        for chunk in rows.chunks(1000) {
            let items: Vec<(u64, Vec<u8>)> = chunk
                .iter()
                .map(|r| {
                    let mut member = format!("{:020}:", r.seq).into_bytes();
                    member.extend_from_slice(&r.json);
                    (r.offset_ms, member)
                })
                .collect();
            pipe.zadd_multiple(&m, &items).ignore();
        }
        pipe.sadd(&w, start).ignore();
        let ttl = i64::try_from(self.ttl_s.max(1)).unwrap_or(i64::MAX);
        pipe.expire(&m, ttl).ignore();
        pipe.expire(&w, ttl).ignore();
        pipe.query_async::<()>(&mut c).await
    }
}

fn archive_error(e: ArchiveError) -> ApiError {
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

/// `POST /v1/admin/rooms/{room}/live/start`.
pub async fn live_start(
    State(s): State<AppState>,
    RoomPath(room): RoomPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&s, &headers)?;
    let id = uuid::Uuid::now_v7().simple().to_string();
    match s.replay.archive().start_live(&room, &id, now_ms()).await {
        Ok(live) => {
            tracing::info!(room, live = %live.id, "live started");
            Ok((
                StatusCode::CREATED,
                Json(serde_json::json!({"live": live.view()})),
            )
                .into_response())
        }
        Err(ArchiveError::AlreadyLive(live)) => {
            let mut body = ApiError::new(
                StatusCode::CONFLICT,
                "live_already_started",
                "the room already has a live; end it first",
            )
            .body();
            body["live"] = live.view();
            Ok((StatusCode::CONFLICT, Json(body)).into_response())
        }
        Err(e) => Err(archive_error(e)),
    }
}

/// `POST /v1/admin/rooms/{room}/live/end`: ends the live; the archiver copies it.
pub async fn live_end(
    State(s): State<AppState>,
    RoomPath(room): RoomPath,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&s, &headers)?;
    match s.replay.archive().end_live(&room, now_ms()).await {
        Ok(Some(live)) => {
            tracing::info!(room, live = %live.id, "live ended; archiving");
            s.archive_wake.notify_one();
            Ok(Json(serde_json::json!({"live": live.view()})))
        }
        Ok(None) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_live",
            "the room has no live to end",
        )),
        Err(e) => Err(archive_error(e)),
    }
}

/// `GET /v1/rooms/{room}/lives`: newest first (at most 100).
pub async fn lives(
    State(s): State<AppState>,
    RoomPath(room): RoomPath,
) -> Result<Response, ApiError> {
    let lives = s
        .replay
        .archive()
        .lives(&room, 100)
        .await
        .map_err(archive_error)?;
    let lives: Vec<_> = lives.iter().map(Live::view).collect();
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(serde_json::json!({"room": room, "lives": lives})),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayQuery {
    #[serde(default)]
    live: Option<String>,
    #[serde(default)]
    from_ms: Option<u64>,
    #[serde(default)]
    to_ms: Option<u64>,
}

/// `GET /v1/rooms/{room}/replay?live=ID&from_ms=A&to_ms=B`: the archived
/// messages with `A <= offset_ms < B`, by (offset_ms, seq). Default live: the
/// room's latest archived one; default window: `[0, replay_window_ms)` from A.
pub async fn replay(
    State(s): State<AppState>,
    RoomPath(room): RoomPath,
    ApiQuery(q): ApiQuery<ReplayQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let cfg = &s.config.archive;
    let from = q.from_ms.unwrap_or(0);
    let to = q
        .to_ms
        .unwrap_or_else(|| from.saturating_add(cfg.replay_window_ms));
    if to <= from || to - from > cfg.replay_max_span_ms {
        return Err(ApiError::bad_request(
            "bad_window",
            format!(
                "need from_ms < to_ms and to_ms - from_ms <= {}",
                cfg.replay_max_span_ms
            ),
        ));
    }
    let r = &s.replay;
    let live = match q.live.as_deref() {
        Some(id) => {
            if id.is_empty() || id.len() > 64 {
                return Err(ApiError::bad_request("bad_live", "live must be a live id"));
            }
            match r.live(id).await.map_err(archive_error)? {
                Some(l) if l.room == room => l,
                _ => return Err(ApiError::not_found("no such live in this room")),
            }
        }
        None => r
            .latest_archived(&room)
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
        let window = r.window(&live.id, start).await.map_err(archive_error)?;
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
    let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&body))[..32]);
    let cache_control = HeaderValue::from_str(&cfg.replay_cache_control)
        .unwrap_or(HeaderValue::from_static("public, max-age=3600"));
    let etag_value = HeaderValue::from_str(&etag).expect("hex etag");
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, etag_value),
                (header::CACHE_CONTROL, cache_control),
            ],
        )
            .into_response());
    }
    Ok((
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, etag_value),
            (header::CACHE_CONTROL, cache_control),
        ],
        body,
    )
        .into_response())
}
