//! The replay Redis tier: a separate instance from the live store, filled
//! from the archive window by window.

use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use bytes::Bytes;

use crate::archive::ArchivedMessage;
use crate::store::redis::sentinel::{self, Primary, SentinelUrl};

/// The replay Redis tier (a separate instance from the live store).
///
/// Keys per live: `rp:{<live>}:m` — sorted set, score = offset_ms, member =
/// `<seq, 20 digits>:<message JSON>` (so equal offsets keep seq order);
/// `rp:{<live>}:w` — set of the window starts already filled. Both are
/// written in one `MULTI` with the same TTL, so a window marked filled always
/// has its members.
pub(super) struct ReplayRedis {
    target: Target,
    conn: tokio::sync::Mutex<(Option<Connected>, Option<Instant>)>,
    ttl_s: u64,
}

/// Where the tier is: one Redis, or the primary the sentinels name
/// (`redis+sentinel://…`, followed across failovers: `store/redis/sentinel.rs`).
enum Target {
    Plain(::redis::Client),
    Sentinel(SentinelUrl),
}

enum Connected {
    Plain(ConnectionManager),
    Sentinel(std::sync::Arc<Primary>),
}

impl ReplayRedis {
    pub(super) fn new(url: &str, ttl_s: u64) -> anyhow::Result<ReplayRedis> {
        let target = match sentinel::parse(url) {
            Some(parsed) => Target::Sentinel(parsed.map_err(|e| {
                ::redis::RedisError::from((
                    ::redis::ErrorKind::InvalidClientConfig,
                    "bad redis url",
                    e,
                ))
            })?),
            None => Target::Plain(::redis::Client::open(url)?),
        };
        Ok(ReplayRedis {
            target,
            conn: tokio::sync::Mutex::new((None, None)),
            ttl_s,
        })
    }

    /// The connection, connecting lazily (at most one attempt a second while
    /// Redis is away, so replay keeps answering from the archive fast).
    pub(super) async fn conn(&self) -> Result<ConnectionManager, ::redis::RedisError> {
        let mut g = self.conn.lock().await;
        match &g.0 {
            Some(Connected::Plain(c)) => return Ok(c.clone()),
            Some(Connected::Sentinel(p)) => return Ok(p.conn()),
            None => {}
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
        let (connected, c) = match &self.target {
            Target::Plain(client) => {
                let c = ConnectionManager::new_with_config(client.clone(), config).await?;
                (Connected::Plain(c.clone()), c)
            }
            Target::Sentinel(url) => {
                let p = Primary::connect(url.clone(), config).await.map_err(|e| {
                    ::redis::RedisError::from((
                        ::redis::ErrorKind::Io,
                        "replay redis via sentinel",
                        e.to_string(),
                    ))
                })?;
                (Connected::Sentinel(p.clone()), p.conn())
            }
        };
        g.0 = Some(connected);
        Ok(c)
    }

    fn keys(live: &str) -> (String, String) {
        (format!("rp:{{{live}}}:m"), format!("rp:{{{live}}}:w"))
    }

    pub(super) async fn read(
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
        // A window is in seq order, as the archive reads it.
        out.sort_by_key(|m| m.seq);
        Ok(Some(out))
    }

    /// Deletes the cached windows of `lives` (one `DEL` per live: each
    /// live's keys have their own hash tag).
    pub(super) async fn forget(&self, lives: &[String]) -> Result<(), ::redis::RedisError> {
        if lives.is_empty() {
            return Ok(());
        }
        let mut c = self.conn().await?;
        let mut pipe = ::redis::pipe();
        for live in lives {
            let (m, w) = Self::keys(live);
            pipe.del(&[m, w]).ignore();
        }
        pipe.query_async::<()>(&mut c).await
    }

    pub(super) async fn fill(
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
