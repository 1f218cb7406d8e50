//! Log lines for failures that come in floods.
//!
//! While the live store is away every request fails the same way: a line per
//! request (thousands a second on a busy front) would bury the log an
//! operator reads during the outage, and cost a write per request. So such
//! failures share a [`LogThrottle`]:
//!
//! Rules:
//! - the first failure is logged at once;
//! - after a logged line, the failures of the next `every` are counted, not
//!   logged;
//! - the first failure after that is logged, carrying how many were
//!   suppressed since the line before (`suppressed=N`), so no failure goes
//!   uncounted;
//! - concurrent callers at the same instant: exactly one logs.
//!
//! [`LogThrottle::admit`] decides at a given time (deterministic, tested with
//! a table and a property); [`LogThrottle::admit_now`] reads the monotonic
//! clock. Lock-free: two atomics, so a failing hot path does not serialize on
//! its own error reporting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// One line per `every`, the rest counted (see the module's rules).
pub struct LogThrottle {
    every_ms: u64,
    /// Monotonic ms before which failures are counted, not logged; 0 at
    /// first, so the first failure logs.
    next_ms: AtomicU64,
    /// Failures not logged since the last line.
    suppressed: AtomicU64,
}

impl LogThrottle {
    pub const fn new(every: Duration) -> LogThrottle {
        LogThrottle {
            every_ms: every.as_millis() as u64,
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// A failure at `now_ms` (monotonic): `Some(n)` when the caller logs it,
    /// `n` the failures suppressed since the last line; `None` when it is
    /// only counted.
    pub fn admit(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms.saturating_add(self.every_ms),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::AcqRel));
        }
        self.suppressed.fetch_add(1, Ordering::AcqRel);
        None
    }

    /// [`LogThrottle::admit`] now.
    pub fn admit_now(&self) -> Option<u64> {
        self.admit(monotonic_ms())
    }
}

/// Milliseconds since the first call in this process (never 0 apart from
/// that first millisecond, which `next_ms == 0` admits anyway).
fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_line_per_period_carrying_the_count_suppressed() {
        // (now_ms, expected answer) in order, `every` = 1000 ms.
        let table: &[(u64, Option<u64>)] = &[
            (5, Some(0)),      // the first failure logs at once
            (6, None),         // within the period: counted
            (900, None),       // still within
            (1004, None),      // 5 + 1000 = 1005 not reached
            (1005, Some(3)),   // the period is over: logs, 3 suppressed
            (1005, None),      // the same instant again: counted
            (9000, Some(1)),   // long quiet: logs at once, 1 suppressed
            (10_000, Some(0)), // exactly one period later
        ];
        let t = LogThrottle::new(Duration::from_secs(1));
        for (i, &(now, want)) in table.iter().enumerate() {
            assert_eq!(t.admit(now), want, "row {i}: at {now} ms");
        }
    }

    #[test]
    fn a_zero_period_logs_every_failure() {
        let t = LogThrottle::new(Duration::ZERO);
        assert!((0..5).all(|_| t.admit(7) == Some(0)));
    }

    #[test]
    fn concurrent_failures_at_one_instant_log_once() {
        let t = std::sync::Arc::new(LogThrottle::new(Duration::from_secs(1)));
        let logged: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let t = t.clone();
                    s.spawn(move || (0..1000).filter(|_| t.admit(42).is_some()).count() as u64)
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(logged, 1);
        // The 7 999 others are all in the next line's count.
        assert_eq!(t.admit(1042), Some(7999));
    }

    proptest! {
        /// No failure goes uncounted: the lines plus the counts they carry
        /// (plus what is still pending) add up to every failure, and lines
        /// are at least `every` apart.
        #[test]
        fn every_failure_is_a_line_or_counted_in_one(
            gaps in prop::collection::vec(0u64..1500, 1..200),
            every_ms in 0u64..2000,
        ) {
            let t = LogThrottle::new(Duration::from_millis(every_ms));
            let (mut now, mut lines, mut carried) = (0u64, 0u64, 0u64);
            let mut last_line: Option<u64> = None;
            for gap in &gaps {
                now += gap;
                if let Some(n) = t.admit(now) {
                    lines += 1;
                    carried += n;
                    if let Some(at) = last_line {
                        prop_assert!(now - at >= every_ms);
                    }
                    last_line = Some(now);
                }
            }
            let pending = t.suppressed.load(Ordering::Relaxed);
            prop_assert_eq!(lines + carried + pending, gaps.len() as u64);
        }
    }
}
