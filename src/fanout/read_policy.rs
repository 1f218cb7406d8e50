//! When a hub reads the store (docs/architecture.md, "Fan-out"): a pure
//! decision over what the tick knows, so its table of cases is the spec.
//!
//! A hub reads on "room updated" notices only — a room where nothing is
//! posted costs no store command — at most once per `min_gap`, deferring
//! while the previous frame is still being written. Only while notices do
//! not reach the node (a lost subscription) does it read on a timer.

use std::time::Duration;

/// What a hub tick knows when it decides whether to read new messages.
pub(super) struct ReadCheck {
    /// Since the last read, measured on the tick grid.
    pub since: Duration,
    /// Notices reach this node: a hub reads on them only, so a quiet room
    /// costs no reads at all.
    pub notices_live: bool,
    /// While notices do not reach this node, read at least this often.
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
    if !c.notices_live && c.since >= c.read_interval {
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
        check_with(since_ms, dirty, fanout_behind, true)
    }

    fn check_with(since_ms: u64, dirty: bool, behind: bool, notices_live: bool) -> ReadDecision {
        should_read(ReadCheck {
            since: Duration::from_millis(since_ms),
            notices_live,
            read_interval: Duration::from_millis(1000),
            min_gap: Duration::from_millis(100),
            tick: Duration::from_millis(100),
            dirty,
            fanout_behind: behind,
        })
    }

    #[test]
    fn reads_on_a_notice_once_the_gap_has_passed() {
        assert_eq!(check(100, true, false), ReadDecision::Read);
        assert_eq!(check(99, true, false), ReadDecision::Wait);
        assert_eq!(check(500, false, false), ReadDecision::Wait);
    }

    #[test]
    fn a_quiet_room_is_never_read_while_notices_arrive() {
        for since_ms in [1000, 10_000, 3_600_000] {
            assert_eq!(check(since_ms, false, false), ReadDecision::Wait);
        }
    }

    #[test]
    fn without_notices_a_hub_reads_on_its_own_timer() {
        assert_eq!(check_with(999, false, false, false), ReadDecision::Wait);
        assert_eq!(
            check_with(1000, false, false, false),
            ReadDecision::Read,
            "fallback interval"
        );
        assert_eq!(
            check_with(1000, false, true, false),
            ReadDecision::Read,
            "the fallback is not deferred"
        );
        assert_eq!(check_with(100, true, false, false), ReadDecision::Read);
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
