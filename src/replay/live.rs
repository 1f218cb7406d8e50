//! Starting and ending a room's live: the archive records it, and an ended
//! live is what the archiver copies and replay serves.

use tokio::sync::Notify;

use super::{archive_error, Replay};
use crate::archive::{ArchiveError, Live};
use crate::error::ApiError;
use crate::message::now_ms;

/// What `start_live` found.
pub enum LiveStart {
    Started(Live),
    /// The room already has a live: end it first.
    AlreadyLive(Live),
}

impl Replay {
    /// Starts a live in `room` (a new time-ordered id, offsets from now).
    pub async fn start_live(&self, room: &str) -> Result<LiveStart, ApiError> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        match self.archive().start_live(room, &id, now_ms()).await {
            Ok(live) => {
                tracing::info!(room, live = %live.id, "live started");
                Ok(LiveStart::Started(live))
            }
            Err(ArchiveError::AlreadyLive(live)) => Ok(LiveStart::AlreadyLive(live)),
            Err(e) => Err(archive_error(e)),
        }
    }

    /// Ends the room's live and wakes this node's archiver to copy it;
    /// `None` if the room has no live.
    pub async fn end_live(&self, room: &str, archiver: &Notify) -> Result<Option<Live>, ApiError> {
        let live = self
            .archive()
            .end_live(room, now_ms())
            .await
            .map_err(archive_error)?;
        if let Some(live) = &live {
            tracing::info!(room, live = %live.id, "live ended; archiving");
            archiver.notify_one();
        }
        Ok(live)
    }
}
