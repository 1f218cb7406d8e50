//! The Kafka bus against a real Apache Kafka broker.
//!
//! `DANMAKU_TEST_KAFKA_BROKERS` (e.g. `127.0.0.1:9092`) points at a broker
//! these tests may create topics on. Unset, the tests that need it skip with a
//! notice, or fail when `DANMAKU_REQUIRE_SERVICES=1`. Every test uses its own
//! topic and consumer group, so they run in parallel. The unreachable-broker
//! test needs no broker and always runs. scripts/test.sh starts the broker
//! (scripts/kafka.sh).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use danmaku::bus::kafka::{KafkaBus, KafkaOptions};
use danmaku::bus::{Bus, BusConsumer, BusError, BusRecord, Delivery, LiveEnd, Payload};
use danmaku::config::{BusConfig, Config};
use danmaku::message::{
    new_message_id, now_ms, Gift, Kind, Message, Priority, Style, StyleMode, UserRef,
};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// How long a test waits for the group to settle and records to arrive.
const PATIENCE: Duration = Duration::from_secs(45);

fn brokers() -> Option<String> {
    match std::env::var("DANMAKU_TEST_KAFKA_BROKERS") {
        Ok(b) if !b.trim().is_empty() => Some(b),
        _ => {
            if std::env::var("DANMAKU_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!(
                    "DANMAKU_REQUIRE_SERVICES=1 but DANMAKU_TEST_KAFKA_BROKERS is not set: start \
                     Apache Kafka (`scripts/kafka.sh start 9092 /tmp/kafka`) and set \
                     DANMAKU_TEST_KAFKA_BROKERS=127.0.0.1:9092"
                );
            }
            eprintln!(
                "skipping: DANMAKU_TEST_KAFKA_BROKERS is not set (no Kafka broker to test against)"
            );
            None
        }
    }
}

/// `let brokers = need_kafka!();` — the brokers, or return (skip).
macro_rules! need_kafka {
    () => {
        match brokers() {
            Some(b) => b,
            None => return,
        }
    };
}

/// A bus config with a topic and group no other test (or earlier run) uses.
fn cfg(brokers: &str, name: &str, partitions: u32) -> BusConfig {
    let unique = format!("{name}-{:012x}", rand::random::<u64>() >> 16);
    BusConfig {
        engine: danmaku::config::BusEngine::Kafka,
        partitions,
        kafka_brokers: brokers.into(),
        topic: format!("t-{unique}"),
        group_id: format!("g-{unique}"),
        publish_timeout_ms: 10_000,
        ..Config::embedded().bus
    }
}

async fn connect(config: &BusConfig) -> KafkaBus {
    KafkaBus::connect(config)
        .await
        .expect("connect to DANMAKU_TEST_KAFKA_BROKERS")
}

fn msg(room: &str, kind: Kind, text: &str) -> Message {
    Message {
        id: new_message_id(),
        seq: 0,
        room: room.into(),
        kind,
        priority: match kind {
            Kind::Danmaku => Priority::Low,
            Kind::Gift => Priority::High,
            Kind::System => Priority::Whitelist,
        },
        user: UserRef {
            id: "u1".into(),
            name: "ü \"quoted\"".into(),
        },
        text: text.into(),
        ts: now_ms(),
        offset_ms: None,
        gift: None,
        style: None,
    }
}

/// Polls until `n` deliveries arrived (or fails after [`PATIENCE`]).
async fn take(consumer: &mut Box<dyn BusConsumer>, n: usize) -> Vec<Delivery> {
    let start = Instant::now();
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            start.elapsed() < PATIENCE,
            "got {} of {n} deliveries within {PATIENCE:?}",
            got.len()
        );
        match consumer
            .poll(n - got.len(), Duration::from_millis(500))
            .await
        {
            Ok(batch) => {
                assert!(batch.len() <= n - got.len(), "poll returned more than max");
                got.extend(batch);
            }
            Err(e) => {
                eprintln!("poll: {e} (retrying)");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    got
}

/// Everything that arrives within `for_`.
async fn drain(consumer: &mut Box<dyn BusConsumer>, for_: Duration) -> Vec<Delivery> {
    let start = Instant::now();
    let mut got = Vec::new();
    while start.elapsed() < for_ {
        if let Ok(batch) = consumer.poll(100, Duration::from_millis(250)).await {
            got.extend(batch);
        }
    }
    got
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < PATIENCE,
            "not within {PATIENCE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn texts(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| d.message().unwrap().text.clone())
        .collect()
}

#[tokio::test]
async fn round_trip_keeps_every_field_and_the_memory_placement() {
    let brokers = need_kafka!();
    let config = cfg(&brokers, "roundtrip", 4);
    let bus = connect(&config).await;
    assert_eq!(bus.partitions(), 4);
    bus.ping().await.expect("ping");

    let mut gift = msg("room-a", Kind::Gift, "a rocket 🚀 for \"you\"\n");
    gift.gift = Some(Gift {
        gift_id: "rocket".into(),
        count: 3,
        value: 500,
    });
    gift.style = Some(Style {
        color: Some("#ff0000".into()),
        mode: Some(StyleMode::Top),
    });
    gift.offset_ms = Some(1234);
    gift.seq = 42;
    let plain = msg("room-b", Kind::Danmaku, "");
    let records = vec![
        BusRecord::keyed_by_room_kind(gift.clone()),
        BusRecord::keyed_by_room_kind(plain.clone()),
    ];
    let want_partitions: Vec<u32> = records.iter().map(|r| r.partition_of(4)).collect();
    bus.publish(records).await.expect("publish");

    let mut consumer = bus.consumer().await.unwrap();
    let got = take(&mut consumer, 2).await;
    let by_id: HashMap<&str, &Delivery> = got
        .iter()
        .map(|d| (d.message().unwrap().id.as_str(), d))
        .collect();
    assert_eq!(by_id[gift.id.as_str()].message(), Some(&gift));
    assert_eq!(by_id[plain.id.as_str()].message(), Some(&plain));
    // Same partition as the embedded bus would pick (FNV of "room/kind").
    assert_eq!(by_id[gift.id.as_str()].partition, want_partitions[0]);
    assert_eq!(by_id[plain.id.as_str()].partition, want_partitions[1]);
    consumer.commit(&got).await.expect("commit");
}

/// Live-end markers land on the partition asked for, after what was
/// published there before, and decode as markers; the stored log is a
/// topic of its own, created at connect.
#[tokio::test]
async fn markers_follow_the_messages_of_their_partition() {
    let brokers = need_kafka!();
    let config = cfg(&brokers, "markers", 3);
    let stored = config.stored();
    assert_eq!(stored.topic, format!("{}-stored", config.topic));
    assert_eq!(stored.group_id, format!("{}-archiver", config.group_id));
    let bus = connect(&config).await;
    let log = connect(&stored).await;
    assert_eq!(log.topic(), stored.topic);
    let m = msg("room-m", Kind::Danmaku, "before the end");
    bus.publish(vec![BusRecord::keyed_by_room_kind(m.clone())])
        .await
        .unwrap();
    let p = BusRecord::keyed_by_room_kind(m.clone()).partition_of(3);
    let marker = |partition: u32| LiveEnd {
        live: "l1".into(),
        room: "room-m".into(),
        ended_at: 7,
        partition,
        partitions: 3,
    };
    bus.publish_markers((0..3).map(|i| (i, marker(i))).collect())
        .await
        .unwrap();
    let mut consumer = bus.consumer().await.unwrap();
    let got = take(&mut consumer, 4).await;
    let on_p: Vec<&Payload> = got
        .iter()
        .filter(|d| d.partition == p)
        .map(|d| &d.payload)
        .collect();
    assert_eq!(
        on_p,
        vec![&Payload::Message(m), &Payload::LiveEnd(marker(p))],
        "the marker follows the message of its partition"
    );
    for d in &got {
        if let Payload::LiveEnd(l) = &d.payload {
            assert_eq!(l.partition, d.partition, "each copy on its own partition");
        }
    }
    consumer.commit(&got).await.unwrap();
}

#[tokio::test]
async fn order_per_key_is_kept() {
    let brokers = need_kafka!();
    let config = cfg(&brokers, "order", 4);
    let bus = connect(&config).await;
    let rooms = ["r1", "r2", "r3"];
    // Interleaved rooms, several records per publish, several publishes.
    for round in 0..5 {
        let mut records = Vec::new();
        for i in 0..8 {
            for room in rooms {
                records.push(BusRecord::keyed_by_room_kind(msg(
                    room,
                    Kind::Danmaku,
                    &(round * 8 + i).to_string(),
                )));
            }
        }
        bus.publish(records).await.expect("publish");
    }
    let mut consumer = bus.consumer().await.unwrap();
    let got = take(&mut consumer, 3 * 40).await;
    for room in rooms {
        let mine: Vec<&Delivery> = got
            .iter()
            .filter(|d| d.message().unwrap().room == room)
            .collect();
        let order: Vec<String> = mine
            .iter()
            .map(|d| d.message().unwrap().text.clone())
            .collect();
        assert_eq!(order, (0..40).map(|i| i.to_string()).collect::<Vec<_>>());
        let key = format!("{room}/danmaku");
        let p = danmaku::bus::partition_for(&key, 4);
        assert!(
            mine.iter().all(|d| d.partition == p),
            "{room} on one partition"
        );
        assert!(mine.windows(2).all(|w| w[0].offset < w[1].offset));
    }
    consumer.commit(&got).await.expect("commit");
}

#[tokio::test]
async fn explicit_partition_is_honoured() {
    let brokers = need_kafka!();
    let config = cfg(&brokers, "explicit", 4);
    let bus = connect(&config).await;
    let key_home = danmaku::bus::partition_for("hot/danmaku", 4);
    let mut records = Vec::new();
    for (i, p) in [Some(0), Some(1), Some(2), Some(3), Some(7), None]
        .into_iter()
        .enumerate()
    {
        let mut r = BusRecord::keyed_by_room_kind(msg("hot", Kind::Danmaku, &i.to_string()));
        r.partition = p;
        records.push(r);
    }
    bus.publish(records).await.expect("publish");
    let mut consumer = bus.consumer().await.unwrap();
    let got = take(&mut consumer, 6).await;
    let placed: HashMap<String, u32> = got
        .iter()
        .map(|d| (d.message().unwrap().text.clone(), d.partition))
        .collect();
    assert_eq!(placed["0"], 0);
    assert_eq!(placed["1"], 1);
    assert_eq!(placed["2"], 2);
    assert_eq!(placed["3"], 3);
    assert_eq!(placed["4"], 3, "partition 7 of 4 wraps like the memory bus");
    assert_eq!(placed["5"], key_home, "no partition: the key's");
    consumer.commit(&got).await.expect("commit");
}

#[tokio::test]
async fn committed_records_stay_done_and_uncommitted_ones_come_again() {
    let brokers = need_kafka!();
    crash_semantics(&brokers, false).await;
}

/// The same with all ten records in one record batch, so the successor
/// resumes from an offset inside that batch (the broker serves the batch
/// from its start; the consumer drops the records before the offset).
#[tokio::test]
async fn uncommitted_records_come_again_from_inside_a_batch() {
    let brokers = need_kafka!();
    crash_semantics(&brokers, true).await;
}

async fn crash_semantics(brokers: &str, one_batch: bool) {
    let config = cfg(brokers, "commit", 2);
    let bus = connect(&config).await;
    let records: Vec<BusRecord> = (0..10)
        .map(|i| BusRecord::keyed_by_room_kind(msg("crash", Kind::Danmaku, &i.to_string())))
        .collect();
    if one_batch {
        bus.publish(records).await.expect("publish");
    } else {
        // One publish per record: every record is a batch of its own.
        for r in records {
            bus.publish(vec![r]).await.expect("publish");
        }
    }

    // A processor takes all ten, stores and commits only the first four, then dies.
    let mut a = bus.consumer().await.unwrap();
    let got = take(&mut a, 10).await;
    assert_eq!(
        texts(&got),
        (0..10).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    a.commit(&got[..4]).await.expect("commit");
    drop(a);

    // Its successor in the group gets exactly the six it did not commit.
    let mut b = bus.consumer().await.unwrap();
    let again = take(&mut b, 6).await;
    assert_eq!(
        texts(&again),
        (4..10).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    let ids: Vec<&str> = got[4..]
        .iter()
        .map(|d| d.message().unwrap().id.as_str())
        .collect();
    let again_ids: Vec<&str> = again
        .iter()
        .map(|d| d.message().unwrap().id.as_str())
        .collect();
    assert_eq!(ids, again_ids, "the same messages, not copies");
    b.commit(&again).await.expect("commit");
    drop(b);

    // Everything is committed now: a new member sees nothing old, only new.
    let mut c = bus.consumer().await.unwrap();
    bus.publish(vec![BusRecord::keyed_by_room_kind(msg(
        "crash",
        Kind::Danmaku,
        "late",
    ))])
    .await
    .expect("publish");
    let fresh = take(&mut c, 1).await;
    assert_eq!(texts(&fresh), vec!["late"]);
    let more = drain(&mut c, Duration::from_secs(2)).await;
    assert!(more.is_empty(), "nothing redelivered: {:?}", texts(&more));
    c.commit(&fresh).await.expect("commit");
}

#[tokio::test]
async fn pending_counts_unconsumed_records_until_committed() {
    let brokers = need_kafka!();
    let config = cfg(&brokers, "pending", 3);
    let bus = connect(&config).await;
    assert_eq!(bus.pending(), 0);
    let records = (0..7)
        .map(|i| BusRecord::keyed_by_room_kind(msg(&format!("p{i}"), Kind::Gift, "x")))
        .collect();
    bus.publish(records).await.expect("publish");
    eventually("pending == 7", || bus.pending() == 7).await;
    tokio::time::sleep(danmaku::bus::kafka::LAG_REFRESH * 3).await;
    assert_eq!(bus.pending(), 7, "confirmed by Kafka");

    let mut consumer = bus.consumer().await.unwrap();
    let got = take(&mut consumer, 7).await;
    // Consumed but not committed: still pending.
    tokio::time::sleep(danmaku::bus::kafka::LAG_REFRESH * 3).await;
    assert_eq!(bus.pending(), 7);
    // A prefix of the deliveries is a prefix of each partition: exactly 3 done.
    consumer.commit(&got[..3]).await.expect("commit");
    eventually("pending == 4", || bus.pending() == 4).await;
    tokio::time::sleep(danmaku::bus::kafka::LAG_REFRESH * 3).await;
    assert_eq!(bus.pending(), 4, "confirmed by Kafka");
    consumer.commit(&got).await.expect("commit");
    eventually("pending == 0", || bus.pending() == 0).await;
    tokio::time::sleep(danmaku::bus::kafka::LAG_REFRESH * 3).await;
    assert_eq!(bus.pending(), 0, "confirmed by Kafka");
}

#[tokio::test]
async fn undecodable_records_are_skipped_and_committed_past() {
    let brokers = need_kafka!();
    let config = cfg(&brokers, "poison", 1);
    let bus = connect(&config).await;
    let raw: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let send_raw = |payload: &'static str| {
        let raw = raw.clone();
        let topic = config.topic.clone();
        async move {
            raw.send(
                FutureRecord::to(&topic)
                    .key("junk")
                    .payload(payload)
                    .partition(0),
                Duration::from_secs(5),
            )
            .await
            .expect("raw produce");
        }
    };
    send_raw("not json").await;
    bus.publish(vec![BusRecord::keyed_by_room_kind(msg(
        "ok",
        Kind::Danmaku,
        "good",
    ))])
    .await
    .unwrap();
    send_raw("{\"id\": 1}").await;

    let mut a = bus.consumer().await.unwrap();
    let got = take(&mut a, 1).await;
    assert_eq!(texts(&got), vec!["good"]);
    a.commit(&got).await.unwrap();
    // The trailing bad record is read and committed past on a later poll.
    let rest = drain(&mut a, Duration::from_secs(3)).await;
    assert!(rest.is_empty());
    assert_eq!(bus.undecodable(), 2);
    drop(a);
    eventually("nothing left pending", || bus.pending() == 0).await;

    let mut b = bus.consumer().await.unwrap();
    let later = drain(&mut b, Duration::from_secs(5)).await;
    assert!(
        later.is_empty(),
        "the partition is not wedged: nothing comes again"
    );
    assert_eq!(bus.undecodable(), 2, "the bad records were committed past");
}

#[tokio::test]
async fn unreachable_broker_fails_publish_within_the_timeout() {
    // Needs no broker: port 1 refuses every connection.
    let config = BusConfig {
        engine: danmaku::config::BusEngine::Kafka,
        kafka_brokers: "127.0.0.1:1".into(),
        topic: "danmaku-unreachable".into(),
        group_id: "danmaku-unreachable".into(),
        publish_timeout_ms: 1500,
        ..Config::embedded().bus
    };
    let bus = KafkaBus::open(&config, KafkaOptions::default()).unwrap();
    let start = Instant::now();
    let result = bus
        .publish(vec![BusRecord::keyed_by_room_kind(msg(
            "r",
            Kind::Danmaku,
            "lost?",
        ))])
        .await;
    let took = start.elapsed();
    assert!(
        matches!(result, Err(BusError::Unavailable(_))),
        "never Ok: {result:?}"
    );
    eprintln!("publish to an unreachable broker failed after {took:?}: {result:?}");
    assert!(took < Duration::from_millis(1500 + 300), "took {took:?}");
    assert!(bus.ping().await.is_err());
    assert_eq!(bus.pending(), 0, "a failed publish is not pending");

    let start = Instant::now();
    let connected = KafkaBus::connect(&config).await;
    eprintln!(
        "connect to an unreachable broker failed after {:?}: {:?}",
        start.elapsed(),
        connected.as_ref().err()
    );
    assert!(connected.is_err());
    assert!(start.elapsed() < Duration::from_secs(20));
}
