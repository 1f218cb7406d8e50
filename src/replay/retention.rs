//! Deleting archived lives: one by an operator (`DELETE /v1/admin/lives/{id}`)
//! or every live past `archive.retain_days` (a sweep every
//! `archive.retain_sweep_ms` on each node: a few cheap queries, idempotent,
//! so nodes sweeping the same lives is harmless). A deleted live's replay
//! caches go with it on every node: this one at once, the others on the
//! cluster's `live_deleted` notice ([`Replay::follow`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::Replay;
use crate::archive::{ArchiveError, Live};
use crate::control::Control;
use crate::message::now_ms;
use crate::store::control::Notice;

/// Lives deleted per sweep query (a sweep runs until none is left).
const SWEEP_BATCH: usize = 100;

/// What deleting one live found.
#[derive(Debug)]
pub enum LiveDeletion {
    Deleted {
        live: Live,
        messages: u64,
    },
    /// No such live.
    Unknown,
    /// The live is still on: end it first.
    Open(Live),
    /// Ended, but its archive is still being written: later.
    NotArchived(Live),
}

impl Replay {
    /// Deletes live `id`'s archive (rows, then the live) and its replay
    /// caches here; the caller tells the other nodes (`live_deleted`).
    pub async fn delete_live(&self, id: &str) -> Result<LiveDeletion, ArchiveError> {
        let Some(live) = self.archive.live(id).await? else {
            return Ok(LiveDeletion::Unknown);
        };
        if live.ended_at.is_none() {
            return Ok(LiveDeletion::Open(live));
        }
        if live.archived_at.is_none() {
            return Ok(LiveDeletion::NotArchived(live));
        }
        let messages = self.delete(&live).await?;
        Ok(LiveDeletion::Deleted { live, messages })
    }

    async fn delete(&self, live: &Live) -> Result<u64, ArchiveError> {
        let messages = self.archive.delete_live(&live.id).await?;
        self.forget_live(&live.room, &live.id).await;
        self.metrics.archive_deleted_lives.inc();
        self.metrics.archive_deleted_messages.inc_by(messages);
        tracing::info!(room = %live.room, live = %live.id, messages, "live deleted from the archive");
        Ok(messages)
    }

    /// Deletes every live ended more than `retain_days` ago (whether its
    /// copy completed or not: it is past retention either way) and tells
    /// every node; the number deleted.
    pub async fn sweep(&self, control: &Control) -> Result<usize, ArchiveError> {
        let days = self.config.retain_days;
        if days == 0 {
            return Ok(0);
        }
        let before = now_ms().saturating_sub(days.saturating_mul(86_400_000));
        let mut deleted = 0;
        loop {
            let expired = self.archive.ended_before(before, SWEEP_BATCH).await?;
            if expired.is_empty() {
                return Ok(deleted);
            }
            for live in expired {
                self.delete(&live).await?;
                deleted += 1;
                announce(control, &live).await;
            }
        }
    }

    /// This node's share of deletions until `stopping`: applies other
    /// nodes' `live_deleted` notices (when `notices` is given: the roles
    /// that cache replay) and sweeps every `retain_sweep_ms` when
    /// `retain_days` is set.
    pub async fn follow(
        self: Arc<Self>,
        control: Arc<Control>,
        mut notices: Option<broadcast::Receiver<Arc<Notice>>>,
        stopping: CancellationToken,
    ) {
        let sweeping = self.config.retain_days > 0;
        let mut sweep =
            tokio::time::interval(Duration::from_millis(self.config.retain_sweep_ms.max(1)));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopping.cancelled() => return,
                _ = sweep.tick(), if sweeping => {
                    if let Err(e) = self.sweep(&control).await {
                        tracing::warn!(error = %e, "archive retention sweep failed; retrying at the next");
                    }
                }
                notice = next(&mut notices), if notices.is_some() => match notice {
                    Ok(notice) => {
                        if let Notice::LiveDeleted { room, live } = &*notice {
                            self.forget_live(room, live).await;
                        }
                    }
                    // The control plane forwards notices caught up from its
                    // change log too; a lagging receiver only skips.
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "replay: control notices lagged");
                    }
                    Err(broadcast::error::RecvError::Closed) => notices = None,
                },
            }
        }
    }
}

async fn next(
    notices: &mut Option<broadcast::Receiver<Arc<Notice>>>,
) -> Result<Arc<Notice>, broadcast::error::RecvError> {
    match notices {
        Some(n) => n.recv().await,
        None => std::future::pending().await,
    }
}

/// Tells every node a live was deleted (best effort: a node that misses it
/// serves cached windows of the live until they are evicted).
pub async fn announce(control: &Control, live: &Live) {
    let notice = Notice::LiveDeleted {
        room: live.room.clone(),
        live: live.id.clone(),
    };
    if let Err(e) = control.publish(notice).await {
        tracing::warn!(live = %live.id, error = %e, "live deletion not announced to other nodes");
    }
}
