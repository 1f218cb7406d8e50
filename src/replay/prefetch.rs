//! Prefetch: a front loads the next windows of a replay many viewers watch
//! into its cache ahead of them, so the viewers' reads of those windows are
//! cache hits rather than a wave of misses when they get there.
//!
//! Hotness is counted from the reads themselves: reads per (live, window)
//! within one window's length (`Replay::readers`, entries expire). Each
//! `archive.prefetch_viewers` readers of a window load one more window ahead
//! (at most `archive.prefetch_max_windows`), in a task that ends when they
//! are loaded. Nothing runs for a replay nobody reads: no timers.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Replay;
use crate::archive::Live;
use crate::rooms::RationRules;

impl Replay {
    /// Counts a read starting in window `start` of `live`; at each multiple
    /// of `prefetch_viewers` readers, loads the windows ahead (rationed by
    /// the same `rules`) in the background.
    pub(super) fn note_reader(self: &Arc<Self>, live: &Live, start: u64, rules: &RationRules) {
        let threshold = self.config.prefetch_viewers;
        if threshold == 0 || self.cache.is_none() {
            return;
        }
        let readers = self
            .readers
            .get_with((live.id.clone(), start), Default::default)
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if !readers.is_multiple_of(threshold) {
            return;
        }
        let starts = windows_ahead(
            start,
            self.config.replay_window_ms,
            (readers / threshold).min(self.config.prefetch_max_windows),
            live.duration_ms().unwrap_or(0),
        );
        if starts.is_empty() {
            return;
        }
        let (me, live, rules) = (self.clone(), live.id.clone(), *rules);
        tokio::spawn(async move {
            for start in starts {
                if let Err(e) = me.window(&live, start, &rules, true).await {
                    tracing::debug!(live, start, error = %e, "replay prefetch failed");
                    return;
                }
            }
        });
    }
}

/// The starts of the `ahead` windows after the one at `start`, within a live
/// of `duration_ms` (its last message is at offset `duration_ms` at most).
fn windows_ahead(start: u64, window_ms: u64, ahead: u32, duration_ms: u64) -> Vec<u64> {
    (1..=u64::from(ahead))
        .map_while(|k| start.checked_add(k.checked_mul(window_ms)?))
        .take_while(|s| *s <= duration_ms)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::windows_ahead;

    #[test]
    fn windows_ahead_stop_at_the_end_of_the_live() {
        assert_eq!(windows_ahead(0, 1000, 3, 10_000), [1000, 2000, 3000]);
        assert_eq!(windows_ahead(8000, 1000, 4, 10_000), [9000, 10_000]);
        assert_eq!(windows_ahead(10_000, 1000, 2, 10_000), Vec::<u64>::new());
        assert_eq!(windows_ahead(0, 1000, 0, 10_000), Vec::<u64>::new());
        assert_eq!(
            windows_ahead(u64::MAX - 5, 1000, 2, u64::MAX),
            Vec::<u64>::new()
        );
    }
}
