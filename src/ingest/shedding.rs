//! Shedding (see `docs/architecture.md`, "Ingest"): which messages a front
//! refuses because the pipeline is behind. Pure: the caller brings the delay
//! the processor measured for the message's own (room, kind) (shared with
//! the gear, `crate::gears`) and what waits on the bus.
//!
//! - Per (room, kind): low is refused while that (room, kind) is more than
//!   `shed_low_delay_ms` behind, high past `shed_high_delay_ms`; whitelist
//!   never. Another room's flood does not count: its delay is its own.
//! - Over all rooms, the last guard on memory: at `bus_full_pending`
//!   messages waiting, low and high are refused. Whitelist is exempt here
//!   (system notices must arrive); the bus's own bound (`bus.capacity`,
//!   Kafka's producer queue) still refuses it when truly full, so memory
//!   stays bounded.

use crate::config::IngestConfig;
use crate::message::Priority;

/// The figures shedding decides by (from `ingest` config).
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    pub low_delay_ms: u64,
    pub high_delay_ms: u64,
    pub bus_full_pending: u64,
}

impl Thresholds {
    pub fn from_config(c: &IngestConfig) -> Self {
        Thresholds {
            low_delay_ms: c.shed_low_delay_ms,
            high_delay_ms: c.shed_high_delay_ms,
            bus_full_pending: c.bus_full_pending,
        }
    }
}

/// Why a message is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its (room, kind) is this far behind: `429 overloaded`.
    Overloaded { delay_ms: u64, retry_after_s: u64 },
    /// This many messages wait on the bus: `503 bus_full`.
    BusFull { pending: u64, retry_after_s: u64 },
}

/// A behind room is asked to retry about when it may have caught up, within
/// 1..=10 s.
fn retry_after_for(delay_ms: u64) -> u64 {
    delay_ms.div_ceil(1000).clamp(1, 10)
}

/// The bus guard drains at the processors' pace, which no front knows.
const BUS_FULL_RETRY_S: u64 = 2;

/// Whether to refuse a message of `priority` whose (room, kind) is
/// `room_kind_delay_ms` behind while `bus_pending` messages wait on the bus.
pub fn shed(
    priority: Priority,
    room_kind_delay_ms: u64,
    bus_pending: u64,
    t: &Thresholds,
) -> Option<Refusal> {
    let limit = match priority {
        Priority::Whitelist => return None,
        Priority::High => t.high_delay_ms,
        Priority::Low => t.low_delay_ms,
    };
    if bus_pending >= t.bus_full_pending {
        return Some(Refusal::BusFull {
            pending: bus_pending,
            retry_after_s: BUS_FULL_RETRY_S,
        });
    }
    (room_kind_delay_ms > limit).then(|| Refusal::Overloaded {
        delay_ms: room_kind_delay_ms,
        retry_after_s: retry_after_for(room_kind_delay_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Priority::{High, Low, Whitelist};

    const T: Thresholds = Thresholds {
        low_delay_ms: 2000,
        high_delay_ms: 8000,
        bus_full_pending: 1000,
    };

    fn overloaded(delay_ms: u64, retry_after_s: u64) -> Option<Refusal> {
        Some(Refusal::Overloaded {
            delay_ms,
            retry_after_s,
        })
    }

    fn bus_full(pending: u64) -> Option<Refusal> {
        Some(Refusal::BusFull {
            pending,
            retry_after_s: 2,
        })
    }

    #[test]
    fn table() {
        #[rustfmt::skip]
        let cases = [
            // priority, its (room, kind)'s delay, bus pending → decision
            (Low, 0, 0, None),
            (Low, 2000, 0, None),                       // at the threshold: still on time
            (Low, 2001, 0, overloaded(2001, 3)),
            (Low, 30_000, 0, overloaded(30_000, 10)),   // Retry-After capped
            (High, 2001, 0, None),                      // high rides out what sheds low
            (High, 8000, 0, None),
            (High, 8001, 0, overloaded(8001, 9)),
            (Whitelist, 1_000_000, 0, None),            // never by delay
            (Low, 0, 999, None),                        // a backlog elsewhere is not ours
            (Low, 0, 1000, bus_full(1000)),             // the last guard
            (High, 0, 5000, bus_full(5000)),
            (Low, 9000, 1000, bus_full(1000)),          // the guard speaks first
            (Whitelist, 0, 1_000_000, None),            // exempt (bus.capacity bounds it)
        ];
        for (priority, delay, pending, want) in cases {
            assert_eq!(
                shed(priority, delay, pending, &T),
                want,
                "{priority:?}, delay {delay} ms, {pending} pending"
            );
        }
    }

    /// A hot room cannot shed a quiet one: each decision sees only its own
    /// (room, kind)'s delay.
    #[test]
    fn a_hot_room_does_not_shed_a_quiet_one() {
        let hot = shed(Low, 5000, 200, &T);
        let quiet = shed(Low, 20, 200, &T);
        assert!(matches!(hot, Some(Refusal::Overloaded { .. })));
        assert_eq!(quiet, None);
    }
}
