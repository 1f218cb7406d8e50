//! The wall clock every role stamps and reads (`ts`, delays, expiries): the
//! system clock, corrected towards the shared store's clock (Redis `TIME`),
//! so that fronts and processors on hosts whose clocks drift apart agree on
//! what `now − ts` means (docs/architecture.md, "Gears": clock skew).
//!
//! Two process-wide offsets are added to the system clock:
//! - a test offset (`server.clock_offset_ms`), set once at start, which
//!   simulates a host whose clock is off (tests of clock skew only);
//! - the correction, re-estimated every few seconds from the store's clock
//!   ([`estimate_correction`]); 0 without a store clock (embedded engines).

use std::sync::atomic::{AtomicI64, Ordering};

static TEST_OFFSET_MS: AtomicI64 = AtomicI64::new(0);
static CORRECTION_MS: AtomicI64 = AtomicI64::new(0);

/// Unix milliseconds by this process's (corrected) clock.
pub fn now_ms() -> u64 {
    let raw = raw_ms() as i64;
    let offsets = TEST_OFFSET_MS.load(Ordering::Relaxed) + CORRECTION_MS.load(Ordering::Relaxed);
    raw.saturating_add(offsets).max(0) as u64
}

/// The host's clock, plus the test offset: what this process would stamp
/// without a correction (the clock whose distance to the store is measured).
pub fn host_ms() -> u64 {
    (raw_ms() as i64)
        .saturating_add(TEST_OFFSET_MS.load(Ordering::Relaxed))
        .max(0) as u64
}

fn raw_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Simulates a host clock `offset_ms` off (tests only; `server.clock_offset_ms`).
pub fn set_test_offset_ms(offset_ms: i64) {
    TEST_OFFSET_MS.store(offset_ms, Ordering::Relaxed);
}

/// The correction now added to the host clock (store clock − host clock).
pub fn correction_ms() -> i64 {
    CORRECTION_MS.load(Ordering::Relaxed)
}

pub fn set_correction_ms(correction_ms: i64) {
    CORRECTION_MS.store(correction_ms, Ordering::Relaxed);
}

/// One reading of the store's clock: the host clock just before asking, the
/// store's answer, and the host clock once the answer arrived (all ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockSample {
    pub sent_ms: u64,
    pub store_ms: u64,
    pub received_ms: u64,
}

/// Store clock − host clock, from the sample with the shortest round trip
/// (the one whose answer is least delayed by queueing), taking the store's
/// reading to be from the middle of the round trip; its error is at most
/// half that round trip. `None` without a usable sample (no samples, or a
/// round trip past `max_rtt_ms`, when the estimate would be worse than none).
pub fn estimate_correction(samples: &[ClockSample], max_rtt_ms: u64) -> Option<i64> {
    let best = samples
        .iter()
        .filter(|s| s.received_ms >= s.sent_ms)
        .min_by_key(|s| s.received_ms - s.sent_ms)?;
    let rtt = best.received_ms - best.sent_ms;
    if rtt > max_rtt_ms {
        return None;
    }
    let middle = best.sent_ms as i64 + (rtt / 2) as i64;
    Some(best.store_ms as i64 - middle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(sent_ms: u64, store_ms: u64, received_ms: u64) -> ClockSample {
        ClockSample {
            sent_ms,
            store_ms,
            received_ms,
        }
    }

    #[test]
    fn correction_from_the_shortest_round_trip() {
        // (samples, max rtt, expected correction)
        let table: &[(&[ClockSample], u64, Option<i64>)] = &[
            (&[], 100, None),
            // Store 2 s ahead, 2 ms round trip: read at the middle.
            (&[s(1_000, 3_001, 1_002)], 100, Some(2_000)),
            // Store 2 s behind.
            (&[s(5_000, 3_001, 5_002)], 100, Some(-2_000)),
            // The queued sample (40 ms) loses to the quick one (2 ms).
            (
                &[s(1_000, 3_030, 1_040), s(2_000, 4_001, 2_002)],
                100,
                Some(2_000),
            ),
            // Every round trip too slow to trust.
            (&[s(1_000, 1_500, 1_900)], 100, None),
            // A host clock that stepped back mid-sample is ignored.
            (&[s(1_000, 900, 990), s(2_000, 2_001, 2_002)], 100, Some(0)),
        ];
        for (samples, max_rtt, want) in table {
            assert_eq!(estimate_correction(samples, *max_rtt), *want, "{samples:?}");
        }
    }
}
