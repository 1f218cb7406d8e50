//! When a hub reads the store (docs/architecture.md, "Fan-out"): a pure
//! decision over what the tick knows, so its table of cases is the spec.
//!
//! Notices carry the stored batch: a hub takes those messages as they come
//! (`Take`, no store command) once they follow its cursor. It reads the store
//! only when a notice cannot be taken — one without the batch, of a new
//! epoch, an overflowing buffer, a resubscription (`dirty`), or once after a
//! burst (the burst's last notice may have been lost: no hole shows it) —
//! and then at most once per `min_gap`; and for a seq hole that waited past
//! `hole_wait` (a lost notice; at most once per `hole_wait`). Without lost
//! notices a room fed by notices is not read at all while it is busy. A
//! room where nothing is posted costs nothing. Either is deferred while the
//! previous frame is still being written. Only while notices do not reach
//! the node (a lost subscription) does it read on a timer.

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
    /// A notice arrived since the last read that the hub cannot take from
    /// (no batch, another epoch, overflow, resubscription): read the store.
    pub dirty: bool,
    /// What notices brought that is not broadcast yet.
    pub pending: Pending,
    /// A hole waits this long for its notice before a read fills it.
    pub hole_wait: Duration,
    /// The room's last news (a notice, a read that found messages) was this
    /// long ago and no read has found the tail quiet since. The notice after
    /// it may have been lost (no hole shows it): once the room has been
    /// quiet for `read_interval`, one read makes sure. `None`: verified.
    pub unverified: Option<Duration>,
    /// Fewer than half of the viewers have taken the previous frame.
    pub fanout_behind: bool,
}

/// Messages from notices waiting in the hub (see `carried`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pending {
    Nothing,
    /// The first follows the read cursor; it arrived `waited` ago.
    Next {
        waited: Duration,
    },
    /// A seq before the first is missing; the first arrived `waited` ago.
    Hole {
        waited: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadDecision {
    Read,
    /// Broadcast what notices brought that follows the cursor; no read.
    Take,
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
    // A hole is filled once it waited `hole_wait`, however recent the last
    // read (but at most one read per `hole_wait`): a lost notice costs a
    // read, not `min_gap` of latency and then a burst the rationer may cut.
    let hole_due = matches!(c.pending, Pending::Hole { waited } if waited >= c.hole_wait)
        && c.since >= c.hole_wait;
    let tail_due = c.unverified.is_some_and(|quiet| quiet >= c.read_interval);
    if hole_due || ((c.dirty || tail_due) && c.since >= c.min_gap) {
        if c.fanout_behind && c.since < c.tick * 3 {
            return ReadDecision::Defer;
        }
        return ReadDecision::Read;
    }
    match c.pending {
        Pending::Next { waited } if c.fanout_behind && waited < c.tick * 3 => ReadDecision::Defer,
        Pending::Next { .. } => ReadDecision::Take,
        Pending::Nothing | Pending::Hole { .. } => ReadDecision::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(since_ms: u64, dirty: bool, fanout_behind: bool) -> ReadDecision {
        check_with(since_ms, dirty, fanout_behind, true)
    }

    fn check_with(since_ms: u64, dirty: bool, behind: bool, notices_live: bool) -> ReadDecision {
        carrying(since_ms, dirty, Pending::Nothing, behind, notices_live)
    }

    fn after_burst(since_ms: u64, quiet_ms: Option<u64>) -> ReadDecision {
        should_read(ReadCheck {
            unverified: quiet_ms.map(ms),
            ..big_room(since_ms, false, Pending::Nothing, false, true)
        })
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// A big room's figures: tick 100 ms, reads ≥ 1 s apart, holes wait 200 ms.
    fn carrying(
        since_ms: u64,
        dirty: bool,
        pending: Pending,
        behind: bool,
        notices_live: bool,
    ) -> ReadDecision {
        should_read(big_room(since_ms, dirty, pending, behind, notices_live))
    }

    fn big_room(
        since_ms: u64,
        dirty: bool,
        pending: Pending,
        behind: bool,
        notices_live: bool,
    ) -> ReadCheck {
        ReadCheck {
            since: ms(since_ms),
            notices_live,
            read_interval: ms(1000),
            min_gap: ms(if pending == Pending::Nothing {
                100
            } else {
                1000
            }),
            tick: ms(100),
            dirty,
            pending,
            hole_wait: ms(200),
            unverified: None,
            fanout_behind: behind,
        }
    }

    #[test]
    fn a_burst_is_checked_by_one_read_once_the_room_is_quiet() {
        assert_eq!(
            after_burst(5000, Some(999)),
            ReadDecision::Wait,
            "still going"
        );
        assert_eq!(
            after_burst(5000, Some(1000)),
            ReadDecision::Read,
            "quiet: check"
        );
        assert_eq!(
            after_burst(50, Some(5000)),
            ReadDecision::Wait,
            "read lately"
        );
        assert_eq!(after_burst(5000, None), ReadDecision::Wait, "nothing taken");
    }

    #[test]
    fn carried_messages_are_taken_without_a_read() {
        use ReadDecision::*;
        let next = |w| Pending::Next { waited: ms(w) };
        let hole = |w| Pending::Hole { waited: ms(w) };
        // (since last read, dirty, pending, fanout behind) → decision
        let table = [
            (
                50,
                false,
                next(0),
                false,
                Take,
                "at once, however recent the read",
            ),
            (
                5000,
                false,
                next(80),
                false,
                Take,
                "steady state: no read at all",
            ),
            (
                5000,
                false,
                next(0),
                true,
                Defer,
                "the previous frame is being written",
            ),
            (
                5000,
                false,
                next(300),
                true,
                Take,
                "for at most three ticks",
            ),
            (
                5000,
                false,
                hole(100),
                false,
                Wait,
                "a hole waits for its notice",
            ),
            (
                5000,
                false,
                hole(200),
                false,
                Read,
                "then one read fills it",
            ),
            (
                400,
                false,
                hole(900),
                false,
                Read,
                "a hole does not wait for the gap",
            ),
            (
                150,
                false,
                hole(900),
                false,
                Wait,
                "but for one hole_wait after a read",
            ),
            (
                5000,
                false,
                hole(200),
                true,
                Read,
                "deferring only within 3 ticks of a read",
            ),
            (
                400,
                true,
                next(0),
                false,
                Take,
                "a read due later does not hold notices back",
            ),
            (
                1000,
                true,
                next(0),
                false,
                Read,
                "a due read takes them along",
            ),
            (
                1000,
                true,
                hole(0),
                false,
                Read,
                "dirty (e.g. a new epoch): read",
            ),
            (5000, false, Pending::Nothing, false, Wait, "quiet room"),
        ];
        for (since, dirty, pending, behind, want, why) in table {
            assert_eq!(
                carrying(since, dirty, pending, behind, true),
                want,
                "{why}: since {since} dirty {dirty} {pending:?} behind {behind}"
            );
        }
    }

    #[test]
    fn without_notices_live_the_timer_still_reads() {
        let next = Pending::Next { waited: ms(0) };
        assert_eq!(
            carrying(1000, false, next, false, false),
            ReadDecision::Read
        );
        assert_eq!(carrying(500, false, next, false, false), ReadDecision::Take);
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
