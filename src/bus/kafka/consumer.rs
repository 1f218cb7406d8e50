//! The processors' side of the Kafka bus: deliveries with partition and
//! offset, commits only of what the caller confirmed.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use super::setup::unavailable;
use super::{MarkerRecord, Shared, COMMIT_TIMEOUT};
use crate::bus::{BusConsumer, BusError, Delivery, Payload};
use crate::message::Message;

/// A record's payload: a message, or a marker (`{"live_end": …}`).
fn decode(bytes: &[u8]) -> Result<Payload, String> {
    match serde_json::from_slice::<Message>(bytes) {
        Ok(m) => Ok(Payload::Message(m)),
        Err(e) => match serde_json::from_slice::<MarkerRecord>(bytes) {
            Ok(r) => Ok(Payload::LiveEnd(r.live_end)),
            Err(_) => Err(e.to_string()),
        },
    }
}

pub(super) struct KafkaConsumer {
    pub(super) consumer: Arc<StreamConsumer>,
    pub(super) topic: String,
    pub(super) parts: HashMap<i32, PartState>,
    pub(super) shared: Arc<Shared>,
}

/// What this consumer has seen of one partition, to commit safely.
#[derive(Default)]
pub(super) struct PartState {
    /// Handed to the caller, not yet committed.
    in_flight: BTreeSet<i64>,
    /// Offset of the last record read (delivered or skipped).
    last_seen: i64,
}

impl PartState {
    /// The offset to commit: everything before it is processed or skipped.
    fn frontier(&self) -> i64 {
        self.in_flight
            .first()
            .copied()
            .unwrap_or(self.last_seen + 1)
    }
}

impl KafkaConsumer {
    /// Synchronous commit on a blocking thread: it returns once the group
    /// coordinator stored the offsets, so a commit reported `Ok` survives a
    /// crash of this process, errors reach the processor (which logs them),
    /// and `pending()` drops for real. Its cost is one round trip per polled
    /// batch (up to `processor.batch_max` records), which is cheap next to the
    /// store write it follows; an async commit would save that round trip but
    /// could lose the last commits on shutdown and hide failures.
    async fn commit_offsets(&self, offsets: Vec<(i32, i64)>) -> Result<(), BusError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::with_capacity(offsets.len());
            for (p, o) in offsets {
                tpl.add_partition_offset(&topic, p, Offset::Offset(o))
                    .map_err(unavailable("building the commit"))?;
            }
            consumer
                .commit(&tpl, CommitMode::Sync)
                .map_err(unavailable("committing offsets"))
        });
        match tokio::time::timeout(COMMIT_TIMEOUT, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(BusError::Unavailable(format!("commit task failed: {e}"))),
            Err(_) => Err(BusError::Unavailable("offset commit timed out".into())),
        }
    }
}

#[async_trait]
impl BusConsumer for KafkaConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let max = max.max(1);
        let deadline = tokio::time::Instant::now() + wait;
        let consumer = self.consumer.clone();
        let mut stream = consumer.stream();
        let mut out: Vec<Delivery> = Vec::new();
        let mut skipped: BTreeSet<i32> = BTreeSet::new();
        while out.len() < max {
            // Wait (up to `wait`) only for the first delivery; then take what
            // is already fetched.
            let next = if out.is_empty() {
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                }
            } else {
                match stream.next().now_or_never() {
                    Some(next) => next,
                    None => break,
                }
            };
            let message = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    if out.is_empty() && skipped.is_empty() {
                        return Err(BusError::Unavailable(format!("kafka consume: {e}")));
                    }
                    tracing::warn!(error = %e, "kafka consume error after a partial batch");
                    break;
                }
                None => break,
            };
            let (partition, offset) = (message.partition(), message.offset());
            let decoded = message
                .payload()
                .ok_or_else(|| "empty payload".to_string())
                .and_then(decode);
            let part = self.parts.entry(partition).or_default();
            part.last_seen = offset;
            match decoded {
                Ok(payload) => {
                    part.in_flight.insert(offset);
                    out.push(Delivery {
                        partition: partition as u32,
                        offset: offset as u64,
                        payload,
                    });
                }
                Err(e) => {
                    self.shared.undecodable.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        topic = %self.topic, partition, offset, error = %e,
                        "skipping a kafka record that is not a message"
                    );
                    skipped.insert(partition);
                }
            }
        }
        drop(stream);
        // A partition whose newest records were all skipped has nothing for
        // the caller to commit: commit past them here (only when nothing of
        // that partition is still being processed).
        let past_skipped: Vec<(i32, i64)> = skipped
            .into_iter()
            .filter_map(|p| {
                let part = &self.parts[&p];
                part.in_flight.is_empty().then(|| (p, part.frontier()))
            })
            .collect();
        if let Err(e) = self.commit_offsets(past_skipped).await {
            tracing::warn!(error = %e, "committing past skipped kafka records failed");
        }
        Ok(out)
    }

    /// Commits, for each partition touched, the offset after which nothing
    /// handed out is still unprocessed: with the processor's poll → write →
    /// commit cycle that is the highest committed offset + 1 (or past records
    /// skipped after it).
    async fn commit(&mut self, deliveries: &[Delivery]) -> Result<(), BusError> {
        let mut touched: BTreeSet<i32> = BTreeSet::new();
        let mut unknown: HashMap<i32, i64> = HashMap::new();
        for d in deliveries {
            let p = d.partition as i32;
            match self.parts.get_mut(&p) {
                Some(part) => {
                    part.in_flight.remove(&(d.offset as i64));
                    touched.insert(p);
                }
                None => {
                    let o = unknown.entry(p).or_insert(0);
                    *o = (*o).max(d.offset as i64 + 1);
                }
            }
        }
        let mut offsets: Vec<(i32, i64)> = touched
            .into_iter()
            .map(|p| (p, self.parts[&p].frontier()))
            .collect();
        offsets.extend(unknown);
        self.commit_offsets(offsets).await?;
        let n = deliveries.len() as u64;
        let _ = self
            .shared
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(n))
            });
        Ok(())
    }
}
