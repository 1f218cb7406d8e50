//! Retracting a message (DESIGN §3.9, §4 `DELETE /v1/admin/rooms/{room}/
//! messages/{id}`): it disappears everywhere. On the node that takes the
//! request, [`Retractor::retract`]:
//!
//! 1. takes it out of the live store (`LiveStore::retract`): every later read
//!    by cursor, catch-up and small-room snapshot omits it;
//! 2. keeps it in the archive, marked (audit): a message retracted while the
//!    live is on is archived now, marked (the archiver's later insert of
//!    the same row from the stored log is ignored), and replay reads omit
//!    marked rows;
//! 3. publishes the cluster's `retract` notice.
//!
//! Every node — this one included, through the same notice, so each applies
//! it once — then does [`Retractor::apply`]: tells its viewers
//! (`HubRegistry::retract`: a retract frame on WebSocket and SSE,
//! `"retracted"` in long-poll answers, the big-room cache and the snapshot's
//! ETag) and forgets the room's cached replay windows (`Replay::forget_room`).
//! Retracting again is answered like the first time and redoes every step (a
//! retry after a failure completes the work); clients apply retract frames
//! idempotently.

use std::sync::Arc;

use axum::http::StatusCode;
use serde::Serialize;

use crate::archive::{ArchiveError, Live};
use crate::archiver::archived;
use crate::control::Control;
use crate::error::ApiError;
use crate::fanout::HubRegistry;
use crate::ingest::validate::check_id;
use crate::message::StoredMessage;
use crate::metrics::Metrics;
use crate::replay::Replay;
use crate::store::control::Notice;
use crate::store::{LiveStore, Retraction, StoreError};

/// Lives of a room looked at for the one a retracted message belongs to.
const LIVES_LOOKED_AT: usize = 10;

/// Retracts messages on this node (see the module doc).
pub struct Retractor {
    store: Arc<dyn LiveStore>,
    /// Publishes the notice every node applies.
    control: Arc<Control>,
    hubs: Arc<HubRegistry>,
    replay: Arc<Replay>,
    metrics: Arc<Metrics>,
}

/// A retraction done: the answer of the `DELETE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Retracted {
    pub room: String,
    pub id: String,
    /// Its seq in the room's stream; `None` when only the archive still
    /// knew the message (the live store had forgotten it).
    pub seq: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RetractError {
    #[error("not a message id")]
    InvalidId,
    /// Neither the live store nor the archive knows the message in this room.
    #[error("no such message in this room")]
    UnknownMessage,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

impl From<RetractError> for ApiError {
    fn from(e: RetractError) -> ApiError {
        match e {
            RetractError::InvalidId => ApiError::bad_request(
                "invalid_id",
                "a message id is 1-64 visible ASCII characters",
            ),
            RetractError::UnknownMessage => ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_message",
                "no such message in this room",
            ),
            RetractError::Store(e) => ApiError::store_failed("retract", None, &e),
            RetractError::Archive(e) => crate::replay::archive_error(e),
        }
    }
}

impl Retractor {
    pub fn new(
        store: Arc<dyn LiveStore>,
        control: Arc<Control>,
        hubs: Arc<HubRegistry>,
        replay: Arc<Replay>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Retractor {
            store,
            control,
            hubs,
            replay,
            metrics,
        }
    }

    /// Retracts message `id` of `room` (a valid room name) for `actor` (who
    /// did it, for the log). Nothing changes on `InvalidId` and
    /// `UnknownMessage`; on a store or archive error the steps done stay done
    /// and a retry completes the rest.
    pub async fn retract(
        &self,
        room: &str,
        id: &str,
        actor: &str,
    ) -> Result<Retracted, RetractError> {
        if check_id("id", id).is_err() {
            return Err(RetractError::InvalidId);
        }
        let taken = self.store.retract(room, id).await?;
        let archived = self.keep_in_archive(room, id, taken.as_ref()).await?;
        if taken.is_none() && !archived {
            return Err(RetractError::UnknownMessage);
        }
        self.control
            .publish(Notice::Retract {
                room: room.to_string(),
                ids: vec![id.to_string()],
            })
            .await?;
        // Replay reads here right after the answer must not see it: the
        // writer drops its caches now too (the notice does it again; cheap).
        self.replay.forget_room(room).await?;
        let seq = taken.map(|t| t.seq);
        self.metrics
            .moderation_actions
            .with_label_values(&["retract"])
            .inc();
        tracing::info!(room, id, seq, actor, "message retracted");
        Ok(Retracted {
            room: room.to_string(),
            id: id.to_string(),
            seq,
        })
    }

    /// A retraction's notice, on every node: viewers and replay caches only
    /// (the store and the archive are shared and done already).
    pub async fn apply(&self, room: &str, ids: Vec<String>) -> Result<(), ArchiveError> {
        self.hubs.retract(room, ids);
        self.replay.forget_room(room).await
    }

    /// Keeps message `id` in the archive, marked; `false` if no live of the
    /// room holds it (it was posted outside any live).
    async fn keep_in_archive(
        &self,
        room: &str,
        id: &str,
        taken: Option<&Retraction>,
    ) -> Result<bool, ArchiveError> {
        let archive = self.replay.archive();
        if let Some(message) = taken.and_then(|t| t.message.as_ref()) {
            let lives = archive.lives(room, LIVES_LOOKED_AT).await?;
            if let Some(live) = live_of(&lives, message) {
                // Through seq 0: the copy's progress stays where it is.
                archive
                    .append(&live.id, &[archived(message, live.started_at)], 0)
                    .await?;
            }
        }
        archive.mark_retracted(room, id).await
    }
}

/// The live `message` was posted in (the archiver's rule: `started_at <=
/// ts <= ended_at`), among `lives` (newest first).
fn live_of<'a>(lives: &'a [Live], message: &StoredMessage) -> Option<&'a Live> {
    lives
        .iter()
        .find(|l| l.started_at <= message.ts && l.ended_at.is_none_or(|e| message.ts <= e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Priority;

    fn live(id: &str, started_at: u64, ended_at: Option<u64>) -> Live {
        Live {
            id: id.into(),
            room: "r".into(),
            started_at,
            ended_at,
            archived_through_seq: 0,
            archived_at: None,
        }
    }

    #[test]
    fn a_message_belongs_to_the_live_it_was_posted_in() {
        let lives = [
            live("open", 500, None),
            live("old", 100, Some(300)),
            live("older", 10, Some(100)),
        ];
        let at = |ts: u64| StoredMessage {
            seq: 1,
            priority: Priority::Low,
            ts,
            id: "m".into(),
            json: bytes::Bytes::from_static(b"{}"),
        };
        let table = [
            (5, None),
            (10, Some("older")),
            (100, Some("old")), // both ends are in: the newer live wins
            (300, Some("old")),
            (301, None),
            (500, Some("open")),
            (9_999, Some("open")),
        ];
        for (ts, want) in table {
            let got = live_of(&lives, &at(ts)).map(|l| l.id.as_str());
            assert_eq!(got, want, "ts {ts}");
        }
    }

    #[test]
    fn errors_answer_as_the_api_says() {
        let e = ApiError::from(RetractError::InvalidId);
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "invalid_id"));
        let e = ApiError::from(RetractError::UnknownMessage);
        assert_eq!(
            (e.status, e.code),
            (StatusCode::NOT_FOUND, "unknown_message")
        );
        let e = ApiError::from(RetractError::Store(StoreError::Unavailable("x".into())));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
