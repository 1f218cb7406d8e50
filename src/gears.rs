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
//! The gear is shared through the live store: claim key `gear:{room}:<kind>`,
//! value the gear's digit, with a short TTL (a missing or unreadable value
//! is gear 1).

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

/// Processor side: tells fronts a (room, kind)'s gear, kept `ttl` (the
/// processor refreshes raised gears; an expired one reads as gear 1).
pub async fn share(
    store: &dyn LiveStore,
    room: &str,
    kind: Kind,
    gear: Gear,
    ttl: Duration,
) -> Result<(), StoreError> {
    store
        .set_claim(&share_key(room, kind), &gear.to_string(), ttl)
        .await
}

/// Front side: picks the partition of a new message from its (room, kind)'s
/// shared gear, read from the store at most once a second per (room, kind).
pub struct GearReader {
    store: Arc<dyn LiveStore>,
    cache: moka::sync::Cache<String, Gear>,
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

    pub async fn gear(&self, room: &str, kind: Kind) -> Gear {
        let key = share_key(room, kind);
        if let Some(g) = self.cache.get(&key) {
            return g;
        }
        // A store hiccup means gear 1: strict order, never a failed post.
        let g = match self.store.get_value(&key).await {
            Ok(Some(v)) => v.parse().ok().filter(|g| (1..=4).contains(g)).unwrap_or(1),
            _ => 1,
        };
        self.cache.insert(key, g);
        g
    }

    /// The bus record for `message`: keyed by (room, kind), spread over
    /// partitions in gears 2 and 4.
    pub async fn record(&self, message: Message, partitions: u32) -> BusRecord {
        let gear = self.gear(&message.room, message.kind).await;
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
