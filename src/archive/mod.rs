//! Archive port (docs/architecture.md, "Ports"): lives (cluster state: any
//! node starts or ends one here) and their messages, for replay. Engines:
//! SQLite (embedded default) and MySQL/MariaDB, both behind
//! [`sql::SqlArchive`] (sqlx `Any` driver, runtime queries, migrations under
//! `migrations/<engine>` embedded at build time and applied at start).
//!
//! The archiver role (`crate::archiver`) writes a live's messages while it
//! is on, idempotently: rows are keyed by (live, seq) and inserted with
//! "insert or ignore". A retracted message keeps its row, marked
//! (`mark_retracted`); replay reads omit it.

pub mod metrics;
pub mod sql;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;

use crate::config::ArchiveConfig;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive unavailable: {0}")]
    Unavailable(String),
    /// The room already has a live that has not ended.
    #[error("room already has an open live")]
    AlreadyLive(Live),
}

/// One live of a room: `[started_at, ended_at]` (unix ms) of the room's stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Live {
    pub id: String,
    pub room: String,
    pub started_at: u64,
    pub ended_at: Option<u64>,
    /// Highest live-store seq archived so far.
    pub archived_through_seq: u64,
    /// When everything acknowledged before the end was archived (unix ms);
    /// `None` while on or ending.
    pub archived_at: Option<u64>,
}

impl Live {
    pub fn duration_ms(&self) -> Option<u64> {
        self.ended_at.map(|e| e.saturating_sub(self.started_at))
    }

    /// The API view (`GET /v1/rooms/{room}/lives`, live start/end answers).
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "room": self.room,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_ms": self.duration_ms(),
            "archived": self.archived_at.is_some(),
        })
    }
}

/// One archived message: its seq in the live store, its offset from the
/// live's start, and its JSON (which carries `offset_ms`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedMessage {
    pub seq: u64,
    pub offset_ms: u64,
    pub ts: u64,
    pub json: Bytes,
}

#[async_trait]
pub trait Archive: Send + Sync + 'static {
    /// Opens a live for `room`; fails with `AlreadyLive` if one is open.
    async fn start_live(&self, room: &str, id: &str, started_at: u64)
        -> Result<Live, ArchiveError>;

    /// Ends the room's open live, if any.
    async fn end_live(&self, room: &str, ended_at: u64) -> Result<Option<Live>, ArchiveError>;

    async fn live(&self, id: &str) -> Result<Option<Live>, ArchiveError>;

    /// The room's lives, newest first.
    async fn lives(&self, room: &str, limit: usize) -> Result<Vec<Live>, ArchiveError>;

    /// The room's latest live whose copy is complete.
    async fn latest_archived(&self, room: &str) -> Result<Option<Live>, ArchiveError>;

    /// Ended lives whose copy is not complete, oldest end first.
    async fn pending(&self, limit: usize) -> Result<Vec<Live>, ArchiveError>;

    /// The lives of `rooms` that are open or ended at or after `since` (unix
    /// ms): those a batch of messages with `ts >= since` may belong to.
    async fn lives_since(&self, rooms: &[String], since: u64) -> Result<Vec<Live>, ArchiveError>;

    /// Notes copy `part` of a live's end marker (of `parts` copies); once
    /// every copy is noted and the live has ended, marks it archived at
    /// `at`. Answers whether it is archived. Noting a copy again changes
    /// nothing.
    async fn note_end_marker(
        &self,
        live_id: &str,
        part: u32,
        parts: u32,
        at: u64,
    ) -> Result<bool, ArchiveError>;

    /// Stores a batch (rows already present are left alone) and moves the
    /// live's `archived_through_seq` up to `through_seq`, in one transaction.
    async fn append(
        &self,
        live_id: &str,
        rows: &[ArchivedMessage],
        through_seq: u64,
    ) -> Result<(), ArchiveError>;

    /// Marks the copy complete.
    async fn finish(&self, live_id: &str, archived_at: u64) -> Result<(), ArchiveError>;

    /// Messages with `from_ms <= offset_ms < to_ms`, by seq (the order
    /// viewers saw live); retracted ones left out.
    async fn read_window(
        &self,
        live_id: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<ArchivedMessage>, ArchiveError>;

    /// Marks message `id` of `room` retracted (it stays, for audit; replay
    /// reads omit it from then on). `false`: no live of the room holds it.
    /// Marking again answers `true` and changes nothing.
    async fn mark_retracted(&self, room: &str, id: &str) -> Result<bool, ArchiveError>;

    /// Rows stored for a live (retracted ones included).
    async fn count(&self, live_id: &str) -> Result<u64, ArchiveError>;

    async fn ping(&self) -> Result<(), ArchiveError>;

    /// Ended lives with `ended_at < before` (unix ms), oldest end first:
    /// what retention (`archive.retain_days`) deletes.
    async fn ended_before(&self, before: u64, limit: usize) -> Result<Vec<Live>, ArchiveError>;

    /// Deletes a live and its messages (retracted ones too), messages first
    /// and in bounded chunks, the live's row last: an interrupted delete
    /// leaves the live listed, and deleting again finishes it. Answers the
    /// number of messages deleted.
    async fn delete_live(&self, live_id: &str) -> Result<u64, ArchiveError>;
}

/// Connects the configured engine and applies its migrations.
pub async fn connect(config: &ArchiveConfig) -> anyhow::Result<Arc<dyn Archive>> {
    Ok(Arc::new(sql::SqlArchive::connect(config).await?))
}
