//! Starting and ending a room's live. A live is cluster state in the archive
//! (shared by every node when distributed), so any front may start or end
//! it. Ending one sends its end marker through every ingest partition and
//! waits (up to `archive.end_wait_ms`) until the archiver has archived
//! everything acknowledged before the end (`crate::archiver`).

use std::time::{Duration, Instant};

use super::{archive_error, Replay};
use crate::archive::{ArchiveError, Live};
use crate::bus::{Bus, LiveEnd};
use crate::error::ApiError;
use crate::message::now_ms;

/// What `start_live` found.
pub enum LiveStart {
    Started(Live),
    /// The room already has a live: end it first.
    AlreadyLive(Live),
}

/// What `end_live` got to.
pub enum LiveEnding {
    /// Everything acknowledged before the end is archived.
    Archived(Live),
    /// Ended; the archiver has not caught up within `end_wait_ms`.
    Ending(Live),
}

/// How often an end looks whether its live is archived.
const END_POLL: Duration = Duration::from_millis(25);

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

    /// Ends the room's live, sends its end marker through every partition of
    /// `bus`, and waits for the archiver. `None` if the room has no live.
    ///
    /// A room whose latest live has ended but is not archived yet (an end
    /// answered 202, or one that failed after ending) is ended again: the
    /// markers are sent again (the archiver notes each copy once) and the
    /// wait starts over, so an end can always be retried.
    pub async fn end_live(
        &self,
        room: &str,
        bus: &dyn Bus,
    ) -> Result<Option<LiveEnding>, ApiError> {
        let archive = self.archive();
        let live = match archive
            .end_live(room, now_ms())
            .await
            .map_err(archive_error)?
        {
            Some(live) => live,
            None => match archive.lives(room, 1).await.map_err(archive_error)?.pop() {
                Some(l) if l.ended_at.is_some() && l.archived_at.is_none() => l,
                _ => return Ok(None),
            },
        };
        let partitions = bus.partitions();
        let markers = (0..partitions)
            .map(|partition| {
                let marker = LiveEnd {
                    live: live.id.clone(),
                    room: room.to_string(),
                    ended_at: live.ended_at.unwrap_or_default(),
                    partition,
                    partitions,
                };
                (partition, marker)
            })
            .collect();
        bus.publish_markers(markers).await.map_err(|e| {
            tracing::warn!(room, live = %live.id, error = %e, "live ended; its end markers were not sent");
            ApiError::unavailable(
                "bus_unavailable",
                "the live ended but the pipeline is unavailable; retry the end",
            )
        })?;
        tracing::info!(room, live = %live.id, "live ended; archiving its tail");
        let deadline = Instant::now() + Duration::from_millis(self.config.end_wait_ms);
        loop {
            if let Some(l) = archive.live(&live.id).await.map_err(archive_error)? {
                if l.archived_at.is_some() {
                    return Ok(Some(LiveEnding::Archived(l)));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Some(LiveEnding::Ending(live)));
            }
            tokio::time::sleep(END_POLL.min(deadline - now)).await;
        }
    }
}
