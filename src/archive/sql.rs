//! SQL archive engines: MySQL/MariaDB (`mysql://…`) and SQLite (`sqlite://…`,
//! `sqlite::memory:`), through sqlx's `Any` driver with runtime queries.

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Row};

use super::{Archive, ArchiveError, ArchivedMessage, Live};
use crate::config::ArchiveConfig;

static MYSQL_MIGRATIONS: Migrator = sqlx::migrate!("migrations/mysql");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");

const LIVE_COLUMNS: &str = "id, room, started_at, ended_at, archived_through_seq, archived_at";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    MySql,
    Sqlite,
}

pub struct SqlArchive {
    pool: AnyPool,
    engine: Engine,
}

fn unavailable(e: sqlx::Error) -> ArchiveError {
    ArchiveError::Unavailable(e.to_string())
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn live_from(row: &AnyRow) -> Result<Live, sqlx::Error> {
    Ok(Live {
        id: row.try_get(0)?,
        room: row.try_get(1)?,
        started_at: uint(row.try_get(2)?),
        ended_at: row.try_get::<Option<i64>, _>(3)?.map(uint),
        archived_through_seq: uint(row.try_get(4)?),
        archived_at: row.try_get::<Option<i64>, _>(5)?.map(uint),
    })
}

/// Name of the MySQL user lock that serialises migrations between nodes.
const MIGRATION_LOCK: &str = "danmaku_archive_migrations";
/// How long a node waits for another node's migrations (seconds).
const MIGRATION_LOCK_WAIT_S: i64 = 60;

/// Applies the migrations under a lock of our own: sqlx takes
/// `GET_LOCK(name, -1)`, which MariaDB (10.11) answers with NULL without
/// locking, so nodes started together on an empty database raced and the
/// loser exited with "migration 1 is partially applied".
async fn migrate_mysql(pool: &sqlx::AnyPool, migrator: &Migrator) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await.context("connecting to migrate")?;
    let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
        .bind(MIGRATION_LOCK)
        .bind(MIGRATION_LOCK_WAIT_S)
        .fetch_one(&mut *conn)
        .await
        .context("taking the archive migration lock")?;
    if locked != Some(1) {
        anyhow::bail!("another node held the archive migration lock for {MIGRATION_LOCK_WAIT_S} s");
    }
    let result = migrator
        .run(&mut *conn)
        .await
        .context("applying the archive migrations");
    // Also released when the connection closes.
    let _ = sqlx::query("SELECT RELEASE_LOCK(?)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await;
    result.map(|_| ())
}

impl SqlArchive {
    pub async fn connect(config: &ArchiveConfig) -> anyhow::Result<SqlArchive> {
        sqlx::any::install_default_drivers();
        let url = config.url.trim();
        let engine = if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            Engine::MySql
        } else if url.starts_with("sqlite:") {
            Engine::Sqlite
        } else {
            anyhow::bail!("archive.url must be mysql://… or sqlite://… (got {url:?})");
        };
        let url = url.replacen("mariadb:", "mysql:", 1);
        let memory = engine == Engine::Sqlite && url.contains(":memory:");
        let mut options = AnyPoolOptions::new()
            .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms.max(1)));
        options = match engine {
            Engine::MySql => options.max_connections(config.max_connections.max(1)),
            // One connection: an in-memory database lives as long as it (so it
            // is never closed), and SQLite serialises writers anyway.
            Engine::Sqlite => options
                .max_connections(1)
                .min_connections(u32::from(memory))
                .idle_timeout(None)
                .max_lifetime(None),
        };
        let pool = options
            .connect(&url)
            .await
            .with_context(|| format!("connecting to the archive ({})", redact(&url)))?;
        let migrator = match engine {
            Engine::MySql => &MYSQL_MIGRATIONS,
            Engine::Sqlite => &SQLITE_MIGRATIONS,
        };
        match engine {
            Engine::MySql => migrate_mysql(&pool, migrator).await?,
            Engine::Sqlite => migrator
                .run(&pool)
                .await
                .context("applying the archive migrations")?,
        }
        Ok(SqlArchive { pool, engine })
    }

    async fn open_live(&self, room: &str) -> Result<Option<Live>, ArchiveError> {
        let q = format!(
            "SELECT {LIVE_COLUMNS} FROM lives WHERE room = ? AND ended_at IS NULL \
             ORDER BY started_at DESC LIMIT 1"
        );
        let row = sqlx::query(&q)
            .bind(room)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(live_from).transpose().map_err(unavailable)
    }
}

/// Rows of the lives of room `?`.
const IN_ROOM: &str = "live_id IN (SELECT id FROM lives WHERE room = ?)";

/// The `id` of a message's JSON, for the `msg_id` column.
fn message_id(json: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: String,
    }
    serde_json::from_slice::<Id>(json).ok().map(|m| m.id)
}

/// `LIKE` pattern of a body holding `"id":<id>` (the archived JSON has no
/// spaces), to find candidates; `!` escapes the pattern's own characters.
fn body_pattern(id: &str) -> String {
    let literal = serde_json::to_string(id).expect("a string serialises");
    let mut out = String::from("%\"id\":");
    for c in literal.chars() {
        if matches!(c, '!' | '%' | '_') {
            out.push('!');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[async_trait]
impl Archive for SqlArchive {
    async fn start_live(
        &self,
        room: &str,
        id: &str,
        started_at: u64,
    ) -> Result<Live, ArchiveError> {
        if let Some(open) = self.open_live(room).await? {
            return Err(ArchiveError::AlreadyLive(open));
        }
        sqlx::query("INSERT INTO lives (id, room, started_at) VALUES (?, ?, ?)")
            .bind(id)
            .bind(room)
            .bind(int(started_at))
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(Live {
            id: id.to_string(),
            room: room.to_string(),
            started_at,
            ended_at: None,
            archived_through_seq: 0,
            archived_at: None,
        })
    }

    async fn end_live(&self, room: &str, ended_at: u64) -> Result<Option<Live>, ArchiveError> {
        let Some(mut live) = self.open_live(room).await? else {
            return Ok(None);
        };
        let ended_at = ended_at.max(live.started_at);
        sqlx::query("UPDATE lives SET ended_at = ? WHERE id = ? AND ended_at IS NULL")
            .bind(int(ended_at))
            .bind(&live.id)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        live.ended_at = Some(ended_at);
        Ok(Some(live))
    }

    async fn live(&self, id: &str) -> Result<Option<Live>, ArchiveError> {
        let q = format!("SELECT {LIVE_COLUMNS} FROM lives WHERE id = ?");
        let row = sqlx::query(&q)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(live_from).transpose().map_err(unavailable)
    }

    async fn lives(&self, room: &str, limit: usize) -> Result<Vec<Live>, ArchiveError> {
        let q = format!(
            "SELECT {LIVE_COLUMNS} FROM lives WHERE room = ? ORDER BY started_at DESC LIMIT ?"
        );
        let rows = sqlx::query(&q)
            .bind(room)
            .bind(int(limit as u64))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(live_from)
            .collect::<Result<_, _>>()
            .map_err(unavailable)
    }

    async fn latest_archived(&self, room: &str) -> Result<Option<Live>, ArchiveError> {
        let q = format!(
            "SELECT {LIVE_COLUMNS} FROM lives WHERE room = ? AND archived_at IS NOT NULL \
             ORDER BY started_at DESC LIMIT 1"
        );
        let row = sqlx::query(&q)
            .bind(room)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(live_from).transpose().map_err(unavailable)
    }

    async fn pending(&self, limit: usize) -> Result<Vec<Live>, ArchiveError> {
        let q = format!(
            "SELECT {LIVE_COLUMNS} FROM lives WHERE archived_at IS NULL AND ended_at IS NOT NULL \
             ORDER BY ended_at LIMIT ?"
        );
        let rows = sqlx::query(&q)
            .bind(int(limit as u64))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(live_from)
            .collect::<Result<_, _>>()
            .map_err(unavailable)
    }

    async fn lives_since(&self, rooms: &[String], since: u64) -> Result<Vec<Live>, ArchiveError> {
        let mut out = Vec::new();
        for chunk in rooms.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let q = format!(
                "SELECT {LIVE_COLUMNS} FROM lives WHERE room IN ({marks}) \
                 AND (ended_at IS NULL OR ended_at >= ?)"
            );
            let mut query = sqlx::query(&q);
            for room in chunk {
                query = query.bind(room.as_str());
            }
            let rows = query
                .bind(int(since))
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
            for row in &rows {
                out.push(live_from(row).map_err(unavailable)?);
            }
        }
        Ok(out)
    }

    async fn note_end_marker(
        &self,
        live_id: &str,
        part: u32,
        parts: u32,
        at: u64,
    ) -> Result<bool, ArchiveError> {
        let verb = match self.engine {
            Engine::MySql => "INSERT IGNORE INTO",
            Engine::Sqlite => "INSERT OR IGNORE INTO",
        };
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        sqlx::query(&format!(
            "{verb} live_end_marks (live_id, part) VALUES (?, ?)"
        ))
        .bind(live_id)
        .bind(i64::from(part))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        // Archived once every copy is here (copies of a marker from an
        // ingest bus of more partitions count only up to `parts`).
        sqlx::query(
            "UPDATE lives SET archived_at = ? WHERE id = ? AND archived_at IS NULL \
             AND ended_at IS NOT NULL \
             AND (SELECT COUNT(*) FROM live_end_marks WHERE live_id = ? AND part < ?) >= ?",
        )
        .bind(int(at))
        .bind(live_id)
        .bind(live_id)
        .bind(i64::from(parts))
        .bind(i64::from(parts))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        let row = sqlx::query("SELECT archived_at FROM lives WHERE id = ?")
            .bind(live_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(match row {
            Some(r) => r
                .try_get::<Option<i64>, _>(0)
                .map_err(unavailable)?
                .is_some(),
            None => false,
        })
    }

    async fn append(
        &self,
        live_id: &str,
        rows: &[ArchivedMessage],
        through_seq: u64,
    ) -> Result<(), ArchiveError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        // 6 binds a row: 200 rows stay far below every engine's bind limit.
        for chunk in rows.chunks(200) {
            let verb = match self.engine {
                Engine::MySql => "INSERT IGNORE INTO",
                Engine::Sqlite => "INSERT OR IGNORE INTO",
            };
            let mut q =
                format!("{verb} live_messages (live_id, seq, offset_ms, ts, body, msg_id) VALUES ");
            for i in 0..chunk.len() {
                q.push_str(if i == 0 {
                    "(?, ?, ?, ?, ?, ?)"
                } else {
                    ", (?, ?, ?, ?, ?, ?)"
                });
            }
            let mut query = sqlx::query(&q);
            for m in chunk {
                query = query
                    .bind(live_id)
                    .bind(int(m.seq))
                    .bind(int(m.offset_ms))
                    .bind(int(m.ts))
                    .bind(String::from_utf8_lossy(&m.json).into_owned())
                    .bind(message_id(&m.json));
            }
            query.execute(&mut *tx).await.map_err(unavailable)?;
        }
        sqlx::query(
            "UPDATE lives SET archived_through_seq = ? WHERE id = ? AND archived_through_seq < ?",
        )
        .bind(int(through_seq))
        .bind(live_id)
        .bind(int(through_seq))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    async fn finish(&self, live_id: &str, archived_at: u64) -> Result<(), ArchiveError> {
        sqlx::query("UPDATE lives SET archived_at = ? WHERE id = ? AND archived_at IS NULL")
            .bind(int(archived_at))
            .bind(live_id)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn read_window(
        &self,
        live_id: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<ArchivedMessage>, ArchiveError> {
        let rows = sqlx::query(
            "SELECT seq, offset_ms, ts, body FROM live_messages \
             WHERE live_id = ? AND offset_ms >= ? AND offset_ms < ? AND retracted = 0 \
             ORDER BY seq",
        )
        .bind(live_id)
        .bind(int(from_ms))
        .bind(int(to_ms))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                Ok(ArchivedMessage {
                    seq: uint(r.try_get(0)?),
                    offset_ms: uint(r.try_get(1)?),
                    ts: uint(r.try_get(2)?),
                    // MySQL reports MEDIUMTEXT as BLOB through `Any`.
                    json: match r.try_get::<String, _>(3) {
                        Ok(s) => Bytes::from(s),
                        Err(_) => Bytes::from(r.try_get::<Vec<u8>, _>(3)?),
                    },
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(unavailable)
    }

    async fn mark_retracted(&self, room: &str, id: &str) -> Result<bool, ArchiveError> {
        // Rows archived before `msg_id` existed: candidates by their body,
        // confirmed by the body's own `id` (a user's id could match the
        // pattern), then given their `msg_id`.
        let legacy = format!(
            "SELECT live_id, seq, body FROM live_messages WHERE {IN_ROOM} \
             AND msg_id IS NULL AND body LIKE ? ESCAPE '!'"
        );
        let rows = sqlx::query(&legacy)
            .bind(room)
            .bind(body_pattern(id))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        for row in rows {
            let body = match row.try_get::<String, _>(2) {
                Ok(s) => s.into_bytes(),
                Err(_) => row.try_get::<Vec<u8>, _>(2).map_err(unavailable)?,
            };
            if message_id(&body).as_deref() != Some(id) {
                continue;
            }
            let (live_id, seq): (String, i64) = (
                row.try_get(0).map_err(unavailable)?,
                row.try_get(1).map_err(unavailable)?,
            );
            sqlx::query("UPDATE live_messages SET msg_id = ? WHERE live_id = ? AND seq = ?")
                .bind(id)
                .bind(live_id)
                .bind(seq)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
        }
        let update =
            format!("UPDATE live_messages SET retracted = 1 WHERE {IN_ROOM} AND msg_id = ?");
        sqlx::query(&update)
            .bind(room)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        // Counted apart: MySQL reports only rows it changed (not one marked before).
        let count = format!("SELECT COUNT(*) FROM live_messages WHERE {IN_ROOM} AND msg_id = ?");
        let row = sqlx::query(&count)
            .bind(room)
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(row.try_get::<i64, _>(0).map_err(unavailable)? > 0)
    }

    async fn count(&self, live_id: &str) -> Result<u64, ArchiveError> {
        let row = sqlx::query("SELECT COUNT(*) FROM live_messages WHERE live_id = ?")
            .bind(live_id)
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(uint(row.try_get(0).map_err(unavailable)?))
    }

    async fn ping(&self) -> Result<(), ArchiveError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn ended_before(&self, before: u64, limit: usize) -> Result<Vec<Live>, ArchiveError> {
        let q = format!(
            "SELECT {LIVE_COLUMNS} FROM lives WHERE ended_at IS NOT NULL AND ended_at < ? \
             ORDER BY ended_at LIMIT ?"
        );
        let rows = sqlx::query(&q)
            .bind(int(before))
            .bind(int(limit as u64))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(live_from)
            .collect::<Result<_, _>>()
            .map_err(unavailable)
    }

    async fn delete_live(&self, live_id: &str) -> Result<u64, ArchiveError> {
        // Bounded chunks: a two-hour live of a big room is millions of rows,
        // too many for one transaction (lock time, undo log).
        let chunk = match self.engine {
            Engine::MySql => "DELETE FROM live_messages WHERE live_id = ? LIMIT 5000",
            Engine::Sqlite => {
                "DELETE FROM live_messages WHERE rowid IN \
                 (SELECT rowid FROM live_messages WHERE live_id = ? LIMIT 5000)"
            }
        };
        let mut deleted = 0;
        loop {
            let done = sqlx::query(chunk)
                .bind(live_id)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?
                .rows_affected();
            deleted += done;
            if done == 0 {
                break;
            }
        }
        sqlx::query("DELETE FROM lives WHERE id = ?")
            .bind(live_id)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::{body_pattern, message_id, redact};

    #[test]
    fn message_ids_and_body_patterns() {
        assert_eq!(
            message_id(br#"{"gift":null,"id":"a1","user":{"id":"u"}}"#),
            Some("a1".to_string())
        );
        assert_eq!(message_id(br#"{"seq":3}"#), None);
        assert_eq!(body_pattern("a1"), r#"%"id":"a1"%"#);
        assert_eq!(body_pattern("a_%!b"), r#"%"id":"a!_!%!!b"%"#);
        assert_eq!(body_pattern("q\""), r#"%"id":"q\""%"#);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("mysql://u:secret@h:1/db"),
            "mysql://u:***@h:1/db".to_string()
        );
        assert_eq!(redact("sqlite::memory:"), "sqlite::memory:");
    }
}
