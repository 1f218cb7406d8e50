//! Kafka bus (docs/architecture.md: engines, gears) over `rdkafka`
//! (librdkafka bundled): one topic of `partitions` partitions, one consumer
//! group for every processor.
//!
//! Semantics mirror the embedded bus:
//! - **placement**: every record goes to `record.partition_of(partitions)`,
//!   set explicitly on the Kafka record, so a key lands on the same partition
//!   index with either engine (FNV of the key, not Kafka's murmur2) and an
//!   explicit partition (gears 2 and 4) is honoured;
//! - **publish** resolves `Ok` only once Kafka acknowledged every record
//!   (`acks=all`, idempotent producer); any record not accepted makes it `Err`,
//!   and it never waits longer than `publish_timeout_ms`;
//! - **consume**: deliveries carry partition and offset; offsets are committed
//!   only by [`BusConsumer::commit`], which the processor calls after the store
//!   write succeeded, so a crash redelivers (the store dedups by id);
//! - **pending** is the processors' lag, estimated cheaply (see [`KafkaBus::pending`]).
//!
//! Records that do not decode as a [`Message`] are logged, counted
//! ([`KafkaBus::undecodable`]) and skipped, and their offsets are committed
//! like processed ones: a poison record never wedges its partition.
//!
//! Tested against Apache Kafka (scripts/kafka.sh: one KRaft node). Beside
//! librdkafka's defaults the engine sets only what the semantics above need
//! (acks, idempotence, manual commits, explicit partitions), a short linger,
//! a session timeout that bounds how long a killed processor's partitions
//! stall, and a new producer after a fatal error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

mod consumer;
mod setup;

use super::{Bus, BusConsumer, BusError, BusRecord, LiveEnd};
use crate::config::BusConfig;
use consumer::KafkaConsumer;
use setup::*;

/// How often the background task refreshes [`KafkaBus::pending`].
pub const LAG_REFRESH: Duration = Duration::from_millis(500);
/// Bound of admin and metadata requests (topic creation, ping, lag queries).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
const LAG_QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// A synchronous offset commit that takes longer than this is reported as failed
/// (the offsets are then committed by a later commit, or redelivered).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Producer batching delay: small, since a client waits for the ack.
const LINGER_MS: &str = "2";
/// A processor that dies without leaving the group (SIGKILL, lost host) holds
/// its partitions until the group coordinator expires its session: nothing of
/// those partitions is processed until then (the chaos suite's processor
/// fault measures it). librdkafka's 45 s default would stall them that long;
/// Apache Kafka accepts 6 s and up (`group.min.session.timeout.ms`). The
/// heartbeat stays well under a third of it, as Kafka advises.
const SESSION_TIMEOUT_MS: &str = "10000";
const HEARTBEAT_INTERVAL_MS: &str = "1000";

/// Longest pause between two connection attempts to a broker that is down.
/// librdkafka doubles the pause from 100 ms up to this; with its 10 s default
/// a broker back after a restart stayed unused for up to 10 s more (posts
/// refused with 503 all that time; the chaos suite's broker fault measured
/// 5-8 s from the restart to every node ready). One attempt a second per
/// client is no load on a broker.
const RECONNECT_BACKOFF_MAX_MS: &str = "1000";

/// Settings of the Kafka engine beyond [`BusConfig`].
#[derive(Clone, Debug, Default)]
pub struct KafkaOptions {
    /// Extra librdkafka properties for every client (`debug`, tuning, …),
    /// applied last: they override the engine's own settings.
    pub extra: Vec<(String, String)>,
}

pub struct KafkaBus {
    config: BusConfig,
    options: KafkaOptions,
    /// The producer and its generation. Replaced when it is stuck: after a
    /// fatal error, or when the broker keeps refusing its producer id/epoch
    /// (see [`KafkaBus::recover_producer`]).
    producer: RwLock<(u64, FutureProducer)>,
    partitions: u32,
    shared: Arc<Shared>,
    /// Dropping it stops the lag task.
    _lag_stop: Mutex<mpsc::Sender<()>>,
}

struct Shared {
    /// Estimated lag of the group; see [`KafkaBus::pending`].
    pending: AtomicU64,
    undecodable: AtomicU64,
}

impl KafkaBus {
    /// Connects with production defaults ([`KafkaOptions::default`]).
    pub async fn connect(config: &BusConfig) -> Result<KafkaBus, BusError> {
        Self::connect_with(config, KafkaOptions::default()).await
    }

    /// Creates the topic (`partitions` partitions, `replication_factor`) if it
    /// is missing, reads its real partition count, and starts the producer and
    /// the lag task. Fails if the brokers cannot be reached within ~10 s.
    pub async fn connect_with(
        config: &BusConfig,
        options: KafkaOptions,
    ) -> Result<KafkaBus, BusError> {
        ensure_topic(config, &options).await?;
        let probe: BaseConsumer = with_extra(
            client_config(config)
                .set("group.id", &config.group_id)
                .set("enable.auto.commit", "false"),
            &options,
        )
        .create()
        .map_err(unavailable("creating a metadata client"))?;
        let topic = config.topic.clone();
        let (count, probe) = tokio::task::spawn_blocking(move || {
            // Metadata of a just-created topic can lag behind for a moment.
            let deadline = std::time::Instant::now() + ADMIN_TIMEOUT;
            loop {
                let found = probe.fetch_metadata(Some(&topic), PING_TIMEOUT).map(|md| {
                    md.topics()
                        .iter()
                        .find(|t| t.name() == topic && t.error().is_none())
                        .map_or(0, |t| t.partitions().len())
                });
                match found {
                    Ok(n) if n > 0 => return Ok((n as u32, probe)),
                    Err(e) if std::time::Instant::now() >= deadline => {
                        return Err(BusError::Unavailable(format!(
                            "reading metadata of topic {topic}: {e}"
                        )))
                    }
                    _ if std::time::Instant::now() >= deadline => {
                        return Err(BusError::Unavailable(format!(
                            "topic {topic} has no partitions in the metadata"
                        )))
                    }
                    _ => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })
        .await
        .map_err(|e| BusError::Unavailable(format!("metadata task failed: {e}")))??;
        if count != config.partitions {
            tracing::warn!(
                topic = %config.topic,
                configured = config.partitions,
                actual = count,
                "the Kafka topic already exists with another partition count; using the topic's"
            );
        }
        Self::start(config, options, count, Some(probe))
    }

    /// Builds the clients without contacting the brokers: no topic creation,
    /// `partitions` taken from the config. For a topic known to exist, and for
    /// tests of an unreachable cluster; [`KafkaBus::connect`] is the normal way.
    pub fn open(config: &BusConfig, options: KafkaOptions) -> Result<KafkaBus, BusError> {
        Self::start(config, options, config.partitions.max(1), None)
    }

    fn start(
        config: &BusConfig,
        options: KafkaOptions,
        partitions: u32,
        probe: Option<BaseConsumer>,
    ) -> Result<KafkaBus, BusError> {
        let producer = make_producer(config, &options)?;
        let probe = match probe {
            Some(p) => p,
            None => with_extra(
                client_config(config)
                    .set("group.id", &config.group_id)
                    .set("enable.auto.commit", "false"),
                &options,
            )
            .create()
            .map_err(unavailable("creating a lag client"))?,
        };
        let shared = Arc::new(Shared {
            pending: AtomicU64::new(0),
            undecodable: AtomicU64::new(0),
        });
        let (stop_tx, stop_rx) = mpsc::channel();
        let lag_shared = shared.clone();
        let topic = config.topic.clone();
        std::thread::Builder::new()
            .name("danmaku-kafka-lag".into())
            .spawn(move || lag_task(probe, topic, partitions, lag_shared, stop_rx))
            .map_err(|e| BusError::Unavailable(format!("starting the lag task: {e}")))?;
        tracing::info!(
            brokers = %config.kafka_brokers,
            topic = %config.topic,
            group = %config.group_id,
            partitions,
            idempotence = config.idempotence,
            "kafka bus ready"
        );
        Ok(KafkaBus {
            config: config.clone(),
            options,
            producer: RwLock::new((0, producer)),
            partitions,
            shared,
            _lag_stop: Mutex::new(stop_tx),
        })
    }

    /// Records skipped because they did not decode (by consumers of this bus).
    pub fn undecodable(&self) -> u64 {
        self.shared.undecodable.load(Ordering::Relaxed)
    }

    pub fn topic(&self) -> &str {
        &self.config.topic
    }

    fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.config.publish_timeout_ms.max(1))
    }

    /// Replaces producer `generation` after a fatal error: librdkafka raises
    /// one when the idempotent producer cannot keep its guarantees (e.g. the
    /// broker reports a sequence gap it cannot repair), and such an instance
    /// refuses every later record; only a new producer can go on. (The
    /// recoverable cases, a timed-out record or an unknown producer id, it
    /// handles itself by bumping the epoch, which Apache Kafka accepts.)
    ///
    /// Nothing acknowledged is lost: records still queued in the old
    /// producer fail, and their publishers get an error.
    fn recover_producer(&self, generation: u64, error: &KafkaError) {
        let fatal = {
            let slot = self.producer.read();
            if slot.0 != generation {
                return; // someone else replaced it already
            }
            slot.1.client().fatal_error()
        };
        if fatal.is_none() && error.rdkafka_error_code() != Some(RDKafkaErrorCode::Fatal) {
            return;
        }
        let fresh = match make_producer(&self.config, &self.options) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "recreating the kafka producer failed");
                return;
            }
        };
        let old = {
            let mut slot = self.producer.write();
            if slot.0 != generation {
                return;
            }
            let old = std::mem::replace(&mut slot.1, fresh);
            slot.0 += 1;
            old
        };
        tracing::warn!(%error, ?fatal, "kafka producer stuck; replaced it with a new one");
        // Dropping a producer purges and flushes (up to 500 ms): not on a runtime thread.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn_blocking(move || drop(old));
        }
    }
}

/// How a marker is written on Kafka: `{"live_end": {...}}`, which no
/// message decodes as (a message has an `id`).
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct MarkerRecord {
    pub live_end: LiveEnd,
}

/// One encoded record to send.
struct Outgoing {
    key: String,
    partition: u32,
    ts: u64,
    payload: Vec<u8>,
}

impl KafkaBus {
    /// Sends `records` and resolves once Kafka acknowledged every one.
    async fn send_all(&self, records: Vec<Outgoing>) -> Result<(), BusError> {
        if records.is_empty() {
            return Ok(());
        }
        let (generation, producer) = self.producer.read().clone();
        let n = records.len() as u64;
        // Enqueue everything first (one batch per partition), then await every
        // delivery report: the client is acknowledged only after all of them.
        let mut deliveries = Vec::with_capacity(records.len());
        for record in &records {
            let kafka_record = FutureRecord::to(&self.config.topic)
                .key(record.key.as_str())
                .payload(&record.payload)
                .partition(record.partition as i32)
                .timestamp(i64::try_from(record.ts).unwrap_or(i64::MAX));
            match producer.send_result(kafka_record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    return Err(BusError::Full(self.pending()));
                }
                Err((e, _)) => {
                    self.recover_producer(generation, &e);
                    return Err(BusError::Unavailable(format!("enqueueing a record: {e}")));
                }
            }
        }
        // librdkafka fails each record after message.timeout.ms (3/4 of
        // ours; it checks about once a second, and an in-flight request can
        // take a little longer), so this bound is usually not what fires; it
        // makes `publish_timeout_ms` a hard limit. A record that timed out
        // may still have been written (its request was in flight): the
        // caller gets an error and may retry. At least once, never an Ok for
        // a record Kafka did not acknowledge.
        let reports = tokio::time::timeout(
            self.publish_timeout(),
            futures_util::future::join_all(deliveries),
        )
        .await
        .map_err(|_| BusError::Unavailable("kafka did not acknowledge in time".into()))?;
        let mut failure: Option<String> = None;
        let mut producer_error: Option<KafkaError> = None;
        for report in reports {
            match report {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    failure.get_or_insert_with(|| format!("kafka refused a record: {e}"));
                    producer_error.get_or_insert(e);
                }
                Err(_) => {
                    failure.get_or_insert_with(|| "the kafka producer went away".to_string());
                }
            }
        }
        if let Some(reason) = failure {
            if let Some(e) = producer_error {
                self.recover_producer(generation, &e);
            }
            return Err(BusError::Unavailable(reason));
        }
        // Count them right away so shedding sees them before the next refresh.
        self.shared.pending.fetch_add(n, Ordering::AcqRel);
        Ok(())
    }
}

#[async_trait]
impl Bus for KafkaBus {
    async fn publish(&self, records: Vec<BusRecord>) -> Result<(), BusError> {
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            let payload = serde_json::to_vec(&record.message)
                .map_err(|e| BusError::Unavailable(format!("encoding a message: {e}")))?;
            out.push(Outgoing {
                partition: record.partition_of(self.partitions),
                ts: record.message.ts,
                key: record.key,
                payload,
            });
        }
        self.send_all(out).await
    }

    async fn publish_markers(&self, markers: Vec<(u32, LiveEnd)>) -> Result<(), BusError> {
        let mut out = Vec::with_capacity(markers.len());
        for (partition, live_end) in markers {
            out.push(Outgoing {
                key: live_end.room.clone(),
                partition: partition % self.partitions.max(1),
                ts: live_end.ended_at,
                payload: serde_json::to_vec(&MarkerRecord { live_end })
                    .map_err(|e| BusError::Unavailable(format!("encoding a marker: {e}")))?,
            });
        }
        self.send_all(out).await
    }

    async fn consumer(&self) -> Result<Box<dyn BusConsumer>, BusError> {
        let consumer: StreamConsumer = with_extra(
            client_config(&self.config)
                .set("group.id", &self.config.group_id)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .set("enable.partition.eof", "false")
                .set("session.timeout.ms", SESSION_TIMEOUT_MS)
                .set("heartbeat.interval.ms", HEARTBEAT_INTERVAL_MS),
            &self.options,
        )
        .create()
        .map_err(unavailable("creating a kafka consumer"))?;
        consumer
            .subscribe(&[&self.config.topic])
            .map_err(unavailable("subscribing"))?;
        Ok(Box::new(KafkaConsumer {
            consumer: Arc::new(consumer),
            topic: self.config.topic.clone(),
            parts: HashMap::new(),
            shared: self.shared.clone(),
        }))
    }

    /// The processors' lag: Σ over partitions of (high watermark − the
    /// group's committed offset, or the low watermark if none), refreshed by a
    /// background thread every [`LAG_REFRESH`] (one OffsetFetch and one
    /// ListOffsets per partition), so this call is one atomic load. Between
    /// refreshes it is adjusted locally (+n on a publish, −n on a commit of
    /// this node), so it is an estimate that can be off by what other nodes did
    /// in the last half second. While Kafka is unreachable it keeps the last value.
    fn pending(&self) -> u64 {
        self.shared.pending.load(Ordering::Acquire)
    }

    fn partitions(&self) -> u32 {
        self.partitions
    }

    async fn ping(&self) -> Result<(), BusError> {
        let producer = self.producer.read().1.clone();
        let topic = self.config.topic.clone();
        tokio::task::spawn_blocking(move || {
            let md = producer
                .client()
                .fetch_metadata(Some(&topic), PING_TIMEOUT)
                .map_err(unavailable("kafka metadata"))?;
            if md.brokers().is_empty() {
                return Err(BusError::Unavailable("kafka reports no brokers".into()));
            }
            if let Some((code, reason)) = producer.client().fatal_error() {
                return Err(BusError::Unavailable(format!(
                    "fatal producer error {code:?}: {reason}"
                )));
            }
            Ok(())
        })
        .await
        .map_err(|e| BusError::Unavailable(format!("ping task failed: {e}")))?
    }
}
