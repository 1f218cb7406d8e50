//! Retractions this node has applied, per room: what long-poll answers carry
//! as `"retracted"`, and a mark that changes with every retraction (the
//! snapshot's ETag includes it).
//!
//! The rule for `"retracted"` ([`recent_ids`]): the ids retracted in the
//! room on this node within the last [`RECENT_MS`], at most [`RECENT_MAX`]
//! (the newest). A long-poll client that polls at least that often sees
//! every retraction at least once; it may see one several times, and ids it
//! never had: clients apply them idempotently (remove if present).
//!
//! Kept per room in a bounded cache, not in the room's hub: a retraction
//! that arrives while the room has no hub on this node still changes the
//! mark and reaches the polls of the minute after.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

/// How long a retraction stays in long-poll answers.
pub const RECENT_MS: u64 = 60_000;
/// Most ids a long-poll answer carries.
pub const RECENT_MAX: usize = 64;

/// Rooms' recent retractions on this node.
pub struct Retractions {
    rooms: moka::sync::Cache<String, Arc<Mutex<RoomRetractions>>>,
    /// Hands out marks: every retraction gets a new one, never reused in
    /// this process, so a room's mark never returns to an earlier value
    /// (even after its entry was evicted: it restarts at 0, then jumps).
    clock: AtomicU64,
}

#[derive(Default)]
struct RoomRetractions {
    mark: u64,
    /// (id, when in ms), oldest first.
    recent: VecDeque<(String, u64)>,
}

impl Default for Retractions {
    fn default() -> Self {
        Retractions {
            // An entry idle for an hour goes: by then no snapshot of the
            // room is cached (they idle out in two minutes) and no poll
            // would carry its ids.
            rooms: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
            clock: AtomicU64::new(0),
        }
    }
}

impl Retractions {
    /// Records `ids` as retracted in `room` at `now_ms` (and gives the room
    /// a new mark: see [`Retractions::advance_mark`] for later ones).
    pub fn record(&self, room: &str, ids: &[String], now_ms: u64) {
        let entry = self.rooms.get_with_by_ref(room, Default::default);
        let mut r = entry.lock();
        r.mark = self.next_mark();
        for id in ids {
            r.recent.retain(|(known, _)| known != id);
            r.recent.push_back((id.clone(), now_ms));
        }
        prune(&mut r.recent, now_ms);
    }

    /// A new mark for `room`, once what its readers see has changed again
    /// (the hub's cache lost the retracted messages): a reader that takes
    /// the mark before reading never pairs a new mark with old content.
    pub fn advance_mark(&self, room: &str) {
        if let Some(entry) = self.rooms.get(room) {
            entry.lock().mark = self.next_mark();
        }
    }

    fn next_mark(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Changes with every retraction in `room` (0: none known).
    pub fn mark(&self, room: &str) -> u64 {
        if self.clock.load(Ordering::Relaxed) == 0 {
            return 0; // none on this node yet: no lookup
        }
        self.rooms.get(room).map_or(0, |r| r.lock().mark)
    }

    /// The ids a long-poll answer carries (see the module doc).
    pub fn recent(&self, room: &str, now_ms: u64) -> Vec<String> {
        if self.clock.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        let Some(entry) = self.rooms.get(room) else {
            return Vec::new();
        };
        let mut r = entry.lock();
        prune(&mut r.recent, now_ms);
        recent_ids(&r.recent)
    }
}

/// Drops what is older than [`RECENT_MS`] and beyond [`RECENT_MAX`].
fn prune(recent: &mut VecDeque<(String, u64)>, now_ms: u64) {
    while recent
        .front()
        .is_some_and(|(_, at)| now_ms.saturating_sub(*at) >= RECENT_MS)
    {
        recent.pop_front();
    }
    while recent.len() > RECENT_MAX {
        recent.pop_front();
    }
}

/// The ids of a pruned list, oldest first.
fn recent_ids(recent: &VecDeque<(String, u64)>) -> Vec<String> {
    recent.iter().map(|(id, _)| id.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn polls_carry_the_last_minute_of_retractions() {
        let r = Retractions::default();
        assert_eq!((r.mark("room"), r.recent("room", 0)), (0, vec![]));
        // (at, retracted, then at `look` the answer is)
        let table: &[(u64, &[&str], u64, &[&str])] = &[
            (1_000, &["a"], 1_000, &["a"]),
            (2_000, &["b", "c"], 2_000, &["a", "b", "c"]),
            (3_000, &["a"], 3_000, &["b", "c", "a"]), // again: moves to the end
            (4_000, &[], 61_999, &["b", "c", "a"]),
            (4_000, &[], 62_000, &["a"]), // b, c are a minute old
            (4_000, &[], 63_000, &[]),
        ];
        let mut last_mark = 0;
        for (at, retracted, look, want) in table {
            if !retracted.is_empty() {
                r.record("room", &ids(retracted), *at);
                assert!(r.mark("room") > last_mark, "a new mark");
                last_mark = r.mark("room");
            }
            assert_eq!(r.recent("room", *look), ids(want), "at {look}");
        }
        assert_eq!(r.mark("other"), 0);
        assert!(r.recent("other", 0).is_empty());
    }

    #[test]
    fn at_most_the_newest_recent_max() {
        let r = Retractions::default();
        let many: Vec<String> = (0..RECENT_MAX + 5).map(|i| format!("m{i}")).collect();
        r.record("room", &many, 10);
        let got = r.recent("room", 10);
        assert_eq!(got.len(), RECENT_MAX);
        assert_eq!(got.first().map(String::as_str), Some("m5"));
    }
}
