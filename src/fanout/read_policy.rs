//! When a hub reads the store (docs/architecture.md, "Fan-out"): a pure
//! decision over what the tick knows, so its table of cases is the spec.

use std::time::Duration;

/// What a hub tick knows when it decides whether to read new messages.
pub(super) struct ReadCheck {
    /// Since the last read, measured on the tick grid.
    pub since: Duration,
    /// Read at least this often, notice or not.
    pub read_interval: Duration,
    /// Read on a notice at most this often.
    pub min_gap: Duration,
    pub tick: Duration,
    /// A "room updated" notice arrived since the last read.
    pub dirty: bool,
    /// Fewer than half of the viewers have taken the previous frame.
    pub fanout_behind: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadDecision {
    Read,
    /// Nothing new, or too soon after the last read.
    Wait,
    /// New messages, but the previous frame is still being written to the
    /// viewers: they join the next frame instead, so a node that cannot write
    /// a frame per tick to every viewer writes fewer, bigger frames rather
    /// than falling behind (at most 3 ticks are merged).
    Defer,
}

pub(super) fn should_read(c: ReadCheck) -> ReadDecision {
    if c.since >= c.read_interval {
        return ReadDecision::Read;
    }
    if !c.dirty || c.since < c.min_gap {
        return ReadDecision::Wait;
    }
    if c.fanout_behind && c.since < c.tick * 3 {
        return ReadDecision::Defer;
    }
    ReadDecision::Read
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(since_ms: u64, dirty: bool, fanout_behind: bool) -> ReadDecision {
        should_read(ReadCheck {
            since: Duration::from_millis(since_ms),
            read_interval: Duration::from_millis(1000),
            min_gap: Duration::from_millis(100),
            tick: Duration::from_millis(100),
            dirty,
            fanout_behind,
        })
    }

    #[test]
    fn reads_on_a_notice_once_the_gap_has_passed() {
        assert_eq!(check(100, true, false), ReadDecision::Read);
        assert_eq!(check(99, true, false), ReadDecision::Wait);
        assert_eq!(check(500, false, false), ReadDecision::Wait);
        assert_eq!(
            check(1000, false, false),
            ReadDecision::Read,
            "fallback interval"
        );
    }

    #[test]
    fn a_fanout_still_running_defers_the_read_for_at_most_three_ticks() {
        assert_eq!(check(100, true, true), ReadDecision::Defer);
        assert_eq!(check(200, true, true), ReadDecision::Defer);
        assert_eq!(check(300, true, true), ReadDecision::Read);
        assert_eq!(check(99, true, true), ReadDecision::Wait, "too soon anyway");
        assert_eq!(check(150, false, true), ReadDecision::Wait, "nothing new");
    }
}
