//! The archiver role: copies each ended live from the live store to the
//! archive, in batches, idempotently and resumably.
//!
//! A live's messages are the room's messages with `started_at <= ts <=
//! ended_at`, read with `LiveStore::read_range` from the live's
//! `archived_through_seq` (0 at first) up to the stream head, `batch_size` at
//! a time. Every batch is one archive transaction: its rows (keyed by live +
//! seq, "insert or ignore") and the new `archived_through_seq`. A copy that is
//! killed and restarted resumes from the last committed batch; a batch redone
//! after a lost commit answer inserts nothing twice. `offset_ms = ts −
//! started_at` is computed here, so the hot path never changes.
//!
//! Lives are found by polling the archive for ended, unarchived lives (every
//! `poll_interval_ms`, or at once when this process ended one), so lives that
//! ended while no archiver ran are copied at the next start. A live is copied
//! `settle_ms` after its end, so messages still on the bus at the end are in
//! the store by then.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::archive::metrics::ArchiveMetrics;
use crate::archive::{Archive, ArchiveError, ArchivedMessage, Live};
use crate::config::ArchiveConfig;
use crate::message::now_ms;
use crate::store::LiveStore;

pub struct Copier {
    pub archive: Arc<dyn Archive>,
    pub store: Arc<dyn LiveStore>,
    pub metrics: Arc<ArchiveMetrics>,
    pub config: ArchiveConfig,
    /// Poked when a live ends on this node.
    pub wake: Arc<Notify>,
}

#[derive(Debug, thiserror::Error)]
enum CopyError {
    #[error("{0}")]
    Archive(#[from] ArchiveError),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

impl Copier {
    pub async fn run(self, stop: CancellationToken) {
        let every = Duration::from_millis(self.config.poll_interval_ms.max(10));
        loop {
            let next = self.pass(&stop).await;
            let wait = next.map_or(every, |d| d.min(every));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One look at the pending lives; copies those that have settled. Returns
    /// how long until the next one settles, if one is waiting.
    async fn pass(&self, stop: &CancellationToken) -> Option<Duration> {
        let pending = match self.archive.pending(100).await {
            Ok(p) => p,
            Err(e) => {
                self.metrics
                    .archive_errors
                    .with_label_values(&["list"])
                    .inc();
                tracing::warn!(error = %e, "archiver: cannot list pending lives");
                return None;
            }
        };
        let now = now_ms();
        self.metrics.archive_pending_lives.set(pending.len() as i64);
        let oldest = pending.iter().filter_map(|l| l.ended_at).min();
        self.metrics
            .archive_lag_seconds
            .set(oldest.map_or(0, |e| now.saturating_sub(e) / 1000) as i64);
        let mut next: Option<Duration> = None;
        for live in pending {
            if stop.is_cancelled() {
                return None;
            }
            let ready_at = live.ended_at.unwrap_or(now) + self.config.settle_ms;
            if ready_at > now_ms() {
                let d = Duration::from_millis(ready_at - now_ms());
                next = Some(next.map_or(d, |n| n.min(d)));
                continue;
            }
            match self.copy(&live, stop).await {
                Ok(true) => {}
                Ok(false) => return None, // stopping
                Err(e) => {
                    tracing::warn!(live = %live.id, room = %live.room, error = %e, "archiver: copy failed; will retry");
                    next = Some(Duration::from_millis(500));
                }
            }
        }
        next
    }

    /// Copies one live to the end; `Ok(false)` if stopped first.
    async fn copy(&self, live: &Live, stop: &CancellationToken) -> Result<bool, CopyError> {
        let ended_at = live.ended_at.unwrap_or(u64::MAX);
        let head = self.store.head(&live.room).await.inspect_err(|_| {
            self.metrics
                .archive_errors
                .with_label_values(&["read"])
                .inc();
        })?;
        let mut cursor = live.archived_through_seq;
        let batch = self.config.batch_size.max(1);
        tracing::info!(live = %live.id, room = %live.room, from = cursor, head = head.seq, "archiver: copying live");
        while cursor < head.seq {
            if stop.is_cancelled() {
                return Ok(false);
            }
            let read = self
                .store
                .read_range(&live.room, cursor, head.seq, batch)
                .await
                .inspect_err(|_| {
                    self.metrics
                        .archive_errors
                        .with_label_values(&["read"])
                        .inc();
                })?;
            if read.gap {
                self.metrics
                    .archive_errors
                    .with_label_values(&["gap"])
                    .inc();
                tracing::warn!(live = %live.id, room = %live.room, after = cursor, "archiver: messages were trimmed from the live store before the copy (raise store retention)");
            }
            let rows: Vec<ArchivedMessage> = read
                .messages
                .iter()
                .filter(|m| m.ts >= live.started_at && m.ts <= ended_at)
                .map(|m| archived(m, live.started_at))
                .collect();
            let through = read.cursor.max(cursor);
            self.archive
                .append(&live.id, &rows, through)
                .await
                .inspect_err(|_| {
                    self.metrics
                        .archive_errors
                        .with_label_values(&["write"])
                        .inc();
                })?;
            self.metrics
                .archive_batch_messages
                .observe(rows.len() as f64);
            self.metrics.archive_rows.inc_by(rows.len() as u64);
            if through == cursor || read.messages.is_empty() {
                break; // nothing further below the head (or a lost stream)
            }
            cursor = through;
            if self.config.batch_pause_ms > 0 {
                tokio::time::sleep(Duration::from_millis(self.config.batch_pause_ms)).await;
            }
        }
        self.archive
            .finish(&live.id, now_ms())
            .await
            .inspect_err(|_| {
                self.metrics
                    .archive_errors
                    .with_label_values(&["finish"])
                    .inc();
            })?;
        self.metrics.archive_lives_done.inc();
        tracing::info!(live = %live.id, room = %live.room, through = cursor, "archiver: live archived");
        Ok(true)
    }
}

/// The archived form: the stored JSON with `offset_ms` added.
pub fn archived(m: &crate::message::StoredMessage, started_at: u64) -> ArchivedMessage {
    let offset_ms = m.ts.saturating_sub(started_at);
    let json = match serde_json::from_slice::<serde_json::Value>(&m.json) {
        Ok(serde_json::Value::Object(mut obj)) => {
            obj.insert("offset_ms".into(), offset_ms.into());
            Bytes::from(serde_json::to_vec(&obj).expect("a JSON object serialises"))
        }
        _ => m.json.clone(),
    };
    ArchivedMessage {
        seq: m.seq,
        offset_ms,
        ts: m.ts,
        json,
    }
}
