//! Embedded bus: bounded in-process partitions with Kafka-like keying.
//! Deliveries stay pending until committed; one consumer group. Also the
//! embedded stored log (a second instance; see `crate::bus`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{Bus, BusConsumer, BusError, BusRecord, Delivery, LiveEnd, Payload};

pub struct MemoryBus {
    inner: Arc<Inner>,
}

struct Inner {
    partitions: Vec<Mutex<Partition>>,
    capacity: u64,
    /// Published and not yet committed.
    pending: AtomicU64,
    notify: Notify,
}

#[derive(Default)]
struct Partition {
    next_offset: u64,
    /// Not yet handed to the consumer.
    queue: VecDeque<(u64, Payload)>,
}

impl MemoryBus {
    pub fn new(partitions: u32, capacity: usize) -> Self {
        MemoryBus {
            inner: Arc::new(Inner {
                partitions: (0..partitions.max(1))
                    .map(|_| Mutex::new(Partition::default()))
                    .collect(),
                capacity: capacity as u64,
                pending: AtomicU64::new(0),
                notify: Notify::new(),
            }),
        }
    }
}

impl MemoryBus {
    /// Appends `(partition, payload)`s, all or none (full → none).
    fn push(&self, records: Vec<(u32, Payload)>) -> Result<(), BusError> {
        let n = records.len() as u64;
        let before = self.inner.pending.fetch_add(n, Ordering::AcqRel);
        if before + n > self.inner.capacity {
            self.inner.pending.fetch_sub(n, Ordering::AcqRel);
            return Err(BusError::Full(before));
        }
        let count = self.inner.partitions.len() as u32;
        for (p, payload) in records {
            let mut part = self.inner.partitions[(p % count) as usize].lock();
            let offset = part.next_offset;
            part.next_offset += 1;
            part.queue.push_back((offset, payload));
        }
        self.inner.notify.notify_one();
        Ok(())
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, records: Vec<BusRecord>) -> Result<(), BusError> {
        let count = self.inner.partitions.len() as u32;
        self.push(
            records
                .into_iter()
                .map(|r| (r.partition_of(count), Payload::Message(r.message)))
                .collect(),
        )
    }

    async fn publish_markers(&self, markers: Vec<(u32, LiveEnd)>) -> Result<(), BusError> {
        self.push(
            markers
                .into_iter()
                .map(|(p, m)| (p, Payload::LiveEnd(m)))
                .collect(),
        )
    }

    async fn consumer(&self) -> Result<Box<dyn BusConsumer>, BusError> {
        Ok(Box::new(MemoryConsumer {
            inner: self.inner.clone(),
            next_partition: 0,
        }))
    }

    fn pending(&self) -> u64 {
        self.inner.pending.load(Ordering::Acquire)
    }

    fn partitions(&self) -> u32 {
        self.inner.partitions.len() as u32
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }
}

struct MemoryConsumer {
    inner: Arc<Inner>,
    /// Round-robin start so no partition starves another.
    next_partition: usize,
}

impl MemoryConsumer {
    fn drain(&mut self, max: usize) -> Vec<Delivery> {
        let parts = &self.inner.partitions;
        let mut out = Vec::new();
        for i in 0..parts.len() {
            if out.len() >= max {
                break;
            }
            let p = (self.next_partition + i) % parts.len();
            let mut part = parts[p].lock();
            while out.len() < max {
                let Some((offset, payload)) = part.queue.pop_front() else {
                    break;
                };
                out.push(Delivery {
                    partition: p as u32,
                    offset,
                    payload,
                });
            }
        }
        self.next_partition = (self.next_partition + 1) % parts.len();
        out
    }
}

#[async_trait]
impl BusConsumer for MemoryConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let inner = self.inner.clone();
            let notified = inner.notify.notified();
            let out = self.drain(max);
            if !out.is_empty() {
                return Ok(out);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn commit(&mut self, deliveries: &[Delivery]) -> Result<(), BusError> {
        self.inner
            .pending
            .fetch_sub(deliveries.len() as u64, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{new_message_id, Kind, Message, Priority, UserRef};

    fn rec(room: &str, text: &str) -> BusRecord {
        BusRecord::keyed_by_room_kind(Message {
            id: new_message_id(),
            seq: 0,
            room: room.into(),
            kind: Kind::Danmaku,
            priority: Priority::Low,
            user: UserRef {
                id: "u".into(),
                name: "u".into(),
            },
            text: text.into(),
            ts: 0,
            offset_ms: None,
            gift: None,
            style: None,
        })
    }

    #[tokio::test]
    async fn keeps_order_per_key_and_counts_pending_until_commit() {
        let bus = MemoryBus::new(4, 100);
        let records = (0..10).map(|i| rec("r1", &i.to_string())).collect();
        bus.publish(records).await.unwrap();
        assert_eq!(bus.pending(), 10);
        let mut c = bus.consumer().await.unwrap();
        let got = c.poll(100, Duration::from_millis(10)).await.unwrap();
        let texts: Vec<_> = got
            .iter()
            .map(|d| d.message().unwrap().text.clone())
            .collect();
        assert_eq!(texts, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
        assert_eq!(bus.pending(), 10);
        c.commit(&got).await.unwrap();
        assert_eq!(bus.pending(), 0);
    }

    #[tokio::test]
    async fn markers_follow_what_their_partition_held() {
        let bus = MemoryBus::new(2, 100);
        let m = rec("a", "1");
        let p = m.partition_of(2);
        bus.publish(vec![m]).await.unwrap();
        let end = |partition| LiveEnd {
            live: "l".into(),
            room: "a".into(),
            ended_at: 1,
            partition,
            partitions: 2,
        };
        bus.publish_markers(vec![(0, end(0)), (1, end(1))])
            .await
            .unwrap();
        assert_eq!(bus.pending(), 3, "markers count until committed");
        let mut c = bus.consumer().await.unwrap();
        let got = c.poll(10, Duration::from_millis(10)).await.unwrap();
        let on_p: Vec<bool> = got
            .iter()
            .filter(|d| d.partition == p)
            .map(|d| d.message().is_some())
            .collect();
        assert_eq!(on_p, vec![true, false], "message, then the marker");
        assert_eq!(got.len(), 3);
    }

    #[tokio::test]
    async fn full_bus_refuses_without_accepting() {
        let bus = MemoryBus::new(2, 3);
        bus.publish(vec![rec("a", "1"), rec("a", "2")])
            .await
            .unwrap();
        let err = bus
            .publish(vec![rec("a", "3"), rec("a", "4")])
            .await
            .unwrap_err();
        assert!(matches!(err, BusError::Full(2)));
        assert_eq!(bus.pending(), 2);
    }
}
