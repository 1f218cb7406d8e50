//! Kafka clients' configuration, the topic, and the lag probe behind
//! [`KafkaBus::pending`](super::KafkaBus::pending).

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};

use super::{
    KafkaOptions, Shared, ADMIN_TIMEOUT, LAG_QUERY_TIMEOUT, LAG_REFRESH, LINGER_MS,
    RECONNECT_BACKOFF_MAX_MS,
};
use crate::bus::BusError;
use crate::config::BusConfig;

pub(super) fn unavailable<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> BusError {
    move |e| BusError::Unavailable(format!("{what}: {e}"))
}

pub(super) fn client_config(config: &BusConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", config.kafka_brokers.trim())
        .set("client.id", "danmaku")
        .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS);
    c
}

pub(super) fn with_extra(config: &mut ClientConfig, options: &KafkaOptions) -> ClientConfig {
    for (k, v) in &options.extra {
        config.set(k, v);
    }
    config.clone()
}

pub(super) fn make_producer(
    config: &BusConfig,
    options: &KafkaOptions,
) -> Result<FutureProducer, BusError> {
    // librdkafka's own limit, under the hard one of `publish` so that its
    // (more precise) error usually comes first.
    let timeout_ms = (config.publish_timeout_ms.max(4) * 3 / 4).to_string();
    with_extra(
        client_config(config)
            .set("acks", "all")
            .set(
                "enable.idempotence",
                if config.idempotence { "true" } else { "false" },
            )
            .set("max.in.flight.requests.per.connection", "5")
            .set("linger.ms", LINGER_MS)
            .set("message.timeout.ms", &timeout_ms),
        options,
    )
    .create()
    .map_err(unavailable("creating the kafka producer"))
}

pub(super) async fn ensure_topic(
    config: &BusConfig,
    options: &KafkaOptions,
) -> Result<(), BusError> {
    let admin: AdminClient<DefaultClientContext> = with_extra(&mut client_config(config), options)
        .create()
        .map_err(unavailable("creating a kafka admin client"))?;
    let topic = NewTopic::new(
        &config.topic,
        config.partitions.max(1) as i32,
        TopicReplication::Fixed(config.replication_factor),
    );
    let opts = AdminOptions::new()
        .request_timeout(Some(ADMIN_TIMEOUT))
        .operation_timeout(Some(ADMIN_TIMEOUT));
    let results = tokio::time::timeout(
        ADMIN_TIMEOUT + Duration::from_secs(2),
        admin.create_topics([&topic], &opts),
    )
    .await
    .map_err(|_| BusError::Unavailable("creating the kafka topic timed out".into()))?
    .map_err(unavailable("creating the kafka topic"))?;
    for result in results {
        match result {
            Ok(name) => {
                tracing::info!(topic = %name, partitions = config.partitions, "created the kafka topic")
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(BusError::Unavailable(format!(
                    "creating the kafka topic {name}: {code}"
                )))
            }
        }
    }
    Ok(())
}

/// Refreshes `shared.pending` every [`LAG_REFRESH`] until the bus is dropped.
pub(super) fn lag_task(
    probe: BaseConsumer,
    topic: String,
    partitions: u32,
    shared: Arc<Shared>,
    stop: mpsc::Receiver<()>,
) {
    let mut failing = false;
    loop {
        match group_lag(&probe, &topic, partitions) {
            Ok(lag) => {
                shared.pending.store(lag, Ordering::Release);
                if failing {
                    tracing::info!(topic = %topic, lag, "kafka lag readable again");
                    failing = false;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(topic = %topic, error = %e, "reading the kafka lag failed; keeping the last value");
                    failing = true;
                }
            }
        }
        match stop.recv_timeout(LAG_REFRESH) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

pub(super) fn group_lag(
    probe: &BaseConsumer,
    topic: &str,
    partitions: u32,
) -> Result<u64, KafkaError> {
    let mut tpl = TopicPartitionList::with_capacity(partitions as usize);
    for p in 0..partitions as i32 {
        tpl.add_partition(topic, p);
    }
    let committed = probe.committed_offsets(tpl, LAG_QUERY_TIMEOUT)?;
    let mut lag: u64 = 0;
    for p in 0..partitions as i32 {
        let (low, high) = probe.fetch_watermarks(topic, p, LAG_QUERY_TIMEOUT)?;
        let from = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o.max(low),
            _ => low,
        };
        lag += (high - from).max(0) as u64;
    }
    Ok(lag)
}
