//! Gears (see `docs/architecture.md`, "Gears"): the shared gear table. Per
//! (room, kind), processors pick a gear from the delay they measure
//! (`processor::gear`) and publish it in the live store; fronts read it here
//! to choose partitions.
//!
//! | gear | partitions (fronts) | processor writes            |
//! |------|---------------------|-----------------------------|
//! | 1    | one                 | serial                      |
//! | 2    | many                | serial per partition        |
//! | 3    | one                 | parallel chunks             |
//! | 4    | many                | parallel chunks per partition |
//!
//! The gear is shared through the live store together with the delay the
//! processor measured (ingest sheds by it, `ingest::shedding`): claim key
//! `gear:{room}:<kind>`, value `<gear>:<delay ms>`, with a short TTL. A
//! missing or unreadable value is gear 1 with no delay; a bare `<gear>` (an
//! older processor) has no delay.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::bus::BusRecord;
use crate::message::{Kind, Message};
use crate::store::{LiveStore, StoreError};

pub type Gear = u8;

pub fn spreads_partitions(gear: Gear) -> bool {
    gear == 2 || gear == 4
}

pub fn writes_in_parallel(gear: Gear) -> bool {
    gear >= 3
}

fn share_key(room: &str, kind: Kind) -> String {
    format!("gear:{{{room}}}:{}", kind.as_str())
}

/// What a processor tells fronts about one (room, kind).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shared {
    pub gear: Gear,
    /// The smoothed delay `now - ts` the processor measured (ms).
    pub delay_ms: u64,
}

impl Shared {
    /// Nothing shared: gear 1, on time.
    pub const QUIET: Shared = Shared {
        gear: 1,
        delay_ms: 0,
    };

    fn encode(&self) -> String {
        format!("{}:{}", self.gear, self.delay_ms)
    }

    /// Reads a shared value; anything unreadable is [`Shared::QUIET`] (a
    /// store hiccup means gear 1 and no shedding, never a failed post).
    fn decode(value: &str) -> Shared {
        let (gear, delay) = value.split_once(':').unwrap_or((value, "0"));
        match (gear.parse::<Gear>(), delay.parse::<u64>()) {
            (Ok(gear), Ok(delay_ms)) if (1..=4).contains(&gear) => Shared { gear, delay_ms },
            _ => Shared::QUIET,
        }
    }
}

/// Processor side: tells fronts a (room, kind)'s gear and delay, kept `ttl`
/// (the processor refreshes raised gears and high delays; an expired value
/// reads as [`Shared::QUIET`]).
pub async fn share(
    store: &dyn LiveStore,
    room: &str,
    kind: Kind,
    shared: Shared,
    ttl: Duration,
) -> Result<(), StoreError> {
    store
        .set_claim(&share_key(room, kind), &shared.encode(), ttl)
        .await
}

/// Front side: reads a (room, kind)'s shared gear and delay from the store
/// at most once a second per (room, kind) (one `GET` then, none between),
/// picks the partition of a new message by the gear, and gives ingest the
/// delay to shed by.
pub struct GearReader {
    store: Arc<dyn LiveStore>,
    cache: moka::sync::Cache<String, Shared>,
    next: AtomicU32,
    spread: u32,
}

impl GearReader {
    pub fn new(store: Arc<dyn LiveStore>, spread_partitions: u32) -> Self {
        GearReader {
            store,
            cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(1))
                .build(),
            next: AtomicU32::new(0),
            spread: spread_partitions,
        }
    }

    /// What the processor last shared for (room, kind), at most a second old.
    pub async fn shared(&self, room: &str, kind: Kind) -> Shared {
        let key = share_key(room, kind);
        if let Some(s) = self.cache.get(&key) {
            return s;
        }
        // A store hiccup means gear 1 and no delay: strict order, never a
        // failed post.
        let s = match self.store.get_value(&key).await {
            Ok(Some(v)) => Shared::decode(&v),
            _ => Shared::QUIET,
        };
        self.cache.insert(key, s);
        s
    }

    /// The bus record for `message`: keyed by (room, kind), spread over
    /// partitions in gears 2 and 4.
    pub async fn record(&self, message: Message, partitions: u32) -> BusRecord {
        let gear = self.shared(&message.room, message.kind).await.gear;
        let mut record = BusRecord::keyed_by_room_kind(message);
        if spreads_partitions(gear) && partitions > 1 {
            let spread = if self.spread == 0 {
                partitions
            } else {
                self.spread.min(partitions)
            };
            let base = crate::bus::partition_for(&record.key, partitions);
            let step = self.next.fetch_add(1, Ordering::Relaxed) % spread;
            record.partition = Some((base + step) % partitions);
        }
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_values_round_trip_and_bad_ones_read_as_quiet() {
        let s = Shared {
            gear: 3,
            delay_ms: 1534,
        };
        assert_eq!(Shared::decode(&s.encode()), s);
        for (value, want) in [
            (
                "2",
                Shared {
                    gear: 2,
                    delay_ms: 0,
                },
            ),
            (
                "4:0",
                Shared {
                    gear: 4,
                    delay_ms: 0,
                },
            ),
            (
                "1:9000",
                Shared {
                    gear: 1,
                    delay_ms: 9000,
                },
            ),
            ("5:10", Shared::QUIET),
            ("0", Shared::QUIET),
            ("2:-1", Shared::QUIET),
            ("2:x", Shared::QUIET),
            ("", Shared::QUIET),
        ] {
            assert_eq!(Shared::decode(value), want, "{value:?}");
        }
    }
}
