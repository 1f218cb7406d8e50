//! The room's online count to its viewers (docs/protocol.md, "online"): the
//! hub announces the cluster-wide figure presence keeps when it changed, at
//! most once per `presence_interval_ms`, as one `{"type":"online"}` frame
//! encoded once and shared by every viewer like a retract frame. A viewer's
//! hello tells it the count: a lone viewer's needs no announcement after it.

use std::time::Instant;

use super::tick::HubContext;
use super::{Frame, Hub};

/// What the room's viewers were last told, and when the hub last announced.
#[derive(Default)]
pub(super) struct OnlineAnnounced {
    /// The count every stream viewer holds (from its hello or the last
    /// announcement), unless `mixed`.
    count: usize,
    /// Hellos told viewers different counts since the last announcement.
    mixed: bool,
    at: Option<Instant>,
}

/// Whether to announce `now` viewers: the viewers hold `last` (or differing
/// counts: `mixed`), announced `since_ms` ago (`None`: never). Only a change,
/// and no more often than `every_ms` (a room whose count moves every round
/// gets one frame per round).
pub fn should_announce(
    last: usize,
    mixed: bool,
    since_ms: Option<u64>,
    now: usize,
    every_ms: u64,
) -> bool {
    (mixed || now != last) && since_ms.is_none_or(|ms| ms >= every_ms)
}

impl Hub {
    /// A hello told a viewer `count`: a lone viewer needs no announcement
    /// of it; one among others makes their counts differ until the next.
    pub(super) fn told_in_hello(&self, count: usize) {
        let mut told = self.online_announced.lock();
        if self.online() <= 1 {
            told.count = count;
            told.mixed = false;
        } else if told.count != count {
            told.mixed = true;
        }
    }

    /// Announces the room's online count if it changed (see `should_announce`).
    pub(super) async fn send_online(&self, ctx: &HubContext<'_>) {
        if self.online() == 0 {
            return; // nobody here to tell
        }
        let now = self.cluster_online();
        {
            let mut told = self.online_announced.lock();
            let since_ms = told.at.map(|at| at.elapsed().as_millis() as u64);
            if !should_announce(told.count, told.mixed, since_ms, now, ctx.online_every_ms) {
                return;
            }
            told.count = now;
            told.mixed = false;
            told.at = Some(Instant::now());
        }
        self.announce(ctx, |pos| {
            Frame::online(&self.room, pos.epoch.clone(), pos.sent_cursor, now)
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::should_announce;

    #[test]
    fn announces_a_change_at_most_once_per_interval() {
        // (last, mixed, since_ms, now, every_ms) -> announce
        let table = [
            (0, false, None, 1, 1000, true),
            (0, false, None, 0, 1000, false),
            (5, false, Some(2000), 5, 1000, false),
            (5, true, Some(2000), 5, 1000, true),
            (5, true, Some(10), 5, 1000, false),
            (5, false, Some(1000), 6, 1000, true),
            (5, false, Some(999), 6, 1000, false),
            (5, false, Some(10), 4, 0, true),
            (7, false, Some(5000), 0, 1000, true),
        ];
        for (last, mixed, since_ms, now, every_ms, want) in table {
            assert_eq!(
                should_announce(last, mixed, since_ms, now, every_ms),
                want,
                "{last} (mixed {mixed}) {since_ms:?} -> {now} every {every_ms}"
            );
        }
    }
}
