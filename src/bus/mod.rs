//! Bus port (docs/architecture.md, "Gears"): partitioned, keyed like Kafka. Fronts publish,
//! processors consume and commit only after the store write succeeded.
//!
//! The same port carries the *stored* log (docs/replay.md, "Archiver"): the
//! processor publishes every message it stored (with its seq) to a second bus
//! (Kafka: the stored topic; embedded: a second in-process bus), which the
//! archiver consumes as its own group. Besides messages, both carry live-end
//! markers ([`LiveEnd`]), which travel the path of the messages so that the
//! archiver knows when everything acknowledged before a live's end is archived.

pub mod kafka;
pub mod memory;

use std::time::Duration;

use async_trait::async_trait;

use serde::{Deserialize, Serialize};

use crate::message::Message;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus full ({0} messages waiting)")]
    Full(u64),
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("bus closed")]
    Closed,
}

/// One message to publish. `key` picks the partition (room + kind, gears 1
/// and 3) unless `partition` names one (gears 2 and 4 spread a hot room).
#[derive(Clone, Debug)]
pub struct BusRecord {
    pub key: String,
    pub partition: Option<u32>,
    pub message: Message,
}

impl BusRecord {
    pub fn keyed_by_room_kind(message: Message) -> Self {
        BusRecord {
            key: format!("{}/{}", message.room, message.kind.as_str()),
            partition: None,
            message,
        }
    }

    /// The partition this record goes to on a bus of `partitions`.
    pub fn partition_of(&self, partitions: u32) -> u32 {
        match self.partition {
            Some(p) => p % partitions.max(1),
            None => partition_for(&self.key, partitions),
        }
    }
}

/// The end of a live, as a marker on every partition of the ingest bus: a
/// front publishes one copy per partition after the live ended, so each copy
/// comes after every message acknowledged (published) before the end on its
/// partition. The processor forwards each copy to the stored log after the
/// messages before it; the archiver marks the live archived once it has seen
/// all `partitions` copies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveEnd {
    pub live: String,
    pub room: String,
    pub ended_at: u64,
    /// The ingest partition this copy travelled.
    pub partition: u32,
    /// How many copies there are (the ingest bus's partitions at the end).
    pub partitions: u32,
}

/// What a record on the bus holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    Message(Message),
    LiveEnd(LiveEnd),
}

/// A consumed record and where it came from (for commits).
#[derive(Clone, Debug)]
pub struct Delivery {
    pub partition: u32,
    pub offset: u64,
    pub payload: Payload,
}

impl Delivery {
    /// The message, unless this is a marker.
    pub fn message(&self) -> Option<&Message> {
        match &self.payload {
            Payload::Message(m) => Some(m),
            Payload::LiveEnd(_) => None,
        }
    }
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Resolves once the bus has durably accepted every record (or fails; then
    /// none may be acknowledged to clients).
    async fn publish(&self, records: Vec<BusRecord>) -> Result<(), BusError>;

    /// Resolves once the bus durably accepted each marker on its partition
    /// (`(partition, marker)`; the partition is taken modulo the bus's).
    async fn publish_markers(&self, markers: Vec<(u32, LiveEnd)>) -> Result<(), BusError>;

    /// Joins the consumer group of this bus (the processors' for the
    /// ingest bus, the archivers' for the stored log).
    async fn consumer(&self) -> Result<Box<dyn BusConsumer>, BusError>;

    /// Records accepted but not yet committed by the group (lag).
    fn pending(&self) -> u64;

    /// Number of partitions of the topic.
    fn partitions(&self) -> u32;

    async fn ping(&self) -> Result<(), BusError>;
}

#[async_trait]
pub trait BusConsumer: Send {
    /// Waits up to `wait` for at least one delivery; returns at most `max`.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError>;

    /// Marks deliveries as processed (after the store write succeeded).
    async fn commit(&mut self, deliveries: &[Delivery]) -> Result<(), BusError>;
}

/// Kafka's default partitioner idea: stable hash of the key.
pub fn partition_for(key: &str, partitions: u32) -> u32 {
    // FNV-1a: stable across processes and versions (std's hasher is not).
    let mut h: u32 = 0x811c9dc5;
    for b in key.as_bytes() {
        h ^= *b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    h % partitions.max(1)
}
