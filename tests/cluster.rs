//! The roles as real processes: `front` and `processor` roles of the
//! `danmaku` binary against a real Redis and a real Kafka-protocol broker.
//!
//! Needs `DANMAKU_TEST_REDIS_URL` and `DANMAKU_TEST_KAFKA_BROKERS` (set by
//! scripts/test.sh). Without them the tests skip, unless
//! `DANMAKU_REQUIRE_SERVICES=1`, where they fail.

mod common;

use common::procs::{Kafka, Node, OwnRedis};
use common::proxy::Proxy;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{now_ms, WsViewer, WAIT};
use danmaku::auth::Authenticator;
use danmaku::config::Config;
use danmaku::store::redis::RedisStore;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn services() -> Option<(String, String)> {
    let urls =
        common::procs::service_urls(&["DANMAKU_TEST_REDIS_URL", "DANMAKU_TEST_KAFKA_BROKERS"])?;
    let [redis, kafka] = <[String; 2]>::try_from(urls).ok()?;
    Some((redis, kafka))
}

/// A cluster: its own topic, consumer group, key namespace per test.
struct Cluster {
    env: Vec<(String, String)>,
    redis_url: String,
    http: reqwest::Client,
    token: String,
    config: Config,
}

impl Cluster {
    fn new(name: &str, redis: &str, kafka: &str, extra: &[(&str, &str)]) -> Cluster {
        let unique = format!("{name}-{}-{}", std::process::id(), now_ms());
        let mut env: Vec<(String, String)> = [
            ("DANMAKU_STORE__ENGINE", "redis"),
            ("DANMAKU_REDIS_URL", redis),
            ("DANMAKU_BUS__ENGINE", "kafka"),
            ("DANMAKU_KAFKA_BROKERS", kafka),
            ("DANMAKU_BUS__PARTITIONS", "4"),
            ("DANMAKU_BUS__PUBLISH_TIMEOUT_MS", "3000"),
            ("DANMAKU_FANOUT__TICK_MS", "50"),
            ("DANMAKU_INGEST__USER_RATE_PER_S", "100000"),
            ("DANMAKU_INGEST__USER_BURST", "100000"),
            ("DANMAKU_INGEST__IP_RATE_PER_S", "1000000"),
            ("DANMAKU_INGEST__IP_BURST", "1000000"),
            ("DANMAKU_SERVER__MAX_VIEWER_CONNECTIONS_PER_IP", "100000"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.push(("DANMAKU_BUS__TOPIC".into(), format!("t-{unique}")));
        env.push(("DANMAKU_BUS__GROUP_ID".into(), format!("g-{unique}")));
        for (k, v) in extra {
            env.push((k.to_string(), v.to_string()));
        }
        let config = Config::embedded();
        let token = Authenticator::new(&config.auth).issue("u1", "Fan", 3600);
        Cluster {
            env,
            redis_url: redis.to_string(),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            token,
            config,
        }
    }

    async fn node(&self, role: &'static str) -> Node {
        let n = Node::spawn(role, &self.env);
        n.ready(&self.http).await;
        n
    }

    async fn post(&self, front: &Node, room: &str, id: &str, text: &str) -> (StatusCode, Value) {
        let res = self
            .http
            .post(format!("{}/v1/rooms/{room}/danmaku", front.base()))
            .header("authorization", format!("Bearer {}", self.token))
            .body(json!({"client_msg_id": id, "text": text}).to_string())
            .send()
            .await;
        match res {
            Ok(r) => {
                let s = r.status();
                (s, r.json().await.unwrap_or(Value::Null))
            }
            Err(e) => (
                StatusCode::BAD_GATEWAY,
                json!({"transport_error": e.to_string()}),
            ),
        }
    }

    async fn store(&self) -> RedisStore {
        RedisStore::connect(&self.redis_url, self.config.store.clone())
            .await
            .expect("redis")
    }

    /// Every stored message of a room (straight from Redis).
    async fn stored(&self, room: &str) -> Vec<Value> {
        common::read_stream(&self.store().await, room).await
    }

    async fn wait_stored(&self, room: &str, n: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let all = self.stored(room).await;
            if all.len() >= n || Instant::now() > deadline {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn ws_url(node: &Node, room: &str, query: &str) -> String {
    format!("ws://127.0.0.1:{}/v1/rooms/{room}/ws{query}", node.port)
}

fn texts(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect()
}

fn assert_unique_ids(messages: &[Value]) {
    let ids: HashSet<&str> = messages.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), messages.len(), "a message is stored twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_on_front_a_reach_viewers_on_front_b_and_cursors_cross_fronts() {
    let Some((redis, kafka)) = services() else {
        return;
    };
    let c = Cluster::new("ab", &redis, &kafka, &[]);
    let processor = c.node("processor").await;
    let a = c.node("front").await;
    let b = c.node("front").await;
    let room = format!("cross-{}", now_ms());

    let mut on_b = WsViewer::connect(&ws_url(&b, &room, "")).await;
    for i in 0..5 {
        let (s, body) = c.post(&a, &room, &format!("m{i}"), &format!("m{i}")).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    }
    let got = on_b.collect(5, Duration::from_secs(20)).await;
    assert_eq!(
        texts(&got),
        vec!["m0", "m1", "m2", "m3", "m4"],
        "front B saw A's posts in order"
    );
    let (cursor, epoch) = (on_b.cursor, on_b.epoch.clone());
    on_b.close().await;

    // While away, more posts land (on B this time); resume on A from B's cursor.
    for i in 5..9 {
        let (s, _) = c.post(&b, &room, &format!("m{i}"), &format!("m{i}")).await;
        assert_eq!(s, StatusCode::ACCEPTED);
    }
    c.wait_stored(&room, 9, WAIT).await;
    let mut on_a = WsViewer::connect(&ws_url(
        &a,
        &room,
        &format!("?cursor={cursor}&epoch={epoch}"),
    ))
    .await;
    assert!(
        on_a.hello.get("reset").is_none(),
        "same stream on both fronts: {}",
        on_a.hello
    );
    let missed = on_a.collect(4, Duration::from_secs(20)).await;
    assert_eq!(
        texts(&missed),
        vec!["m5", "m6", "m7", "m8"],
        "exactly what it missed"
    );
    drop(processor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_sigkill_mid_stream_stores_every_ack_exactly_once() {
    let Some((redis, kafka)) = services() else {
        return;
    };
    // A restarted processor leaves the room seconds behind (longer on a
    // loaded machine), and a behind room sheds its low (tests/shedding.rs);
    // this test is about the kill, so shedding stays out of the way.
    let c = Arc::new(Cluster::new(
        "kill",
        &redis,
        &kafka,
        &[
            ("DANMAKU_INGEST__SHED_LOW_DELAY_MS", "600000"),
            ("DANMAKU_INGEST__SHED_HIGH_DELAY_MS", "600000"),
        ],
    ));
    let mut processor = c.node("processor").await;
    let front = Arc::new(c.node("front").await);
    let room = format!("kill-{}", now_ms());

    let acked = Arc::new(AtomicUsize::new(0));
    let total = 600;
    let poster = {
        let (c, front, room, acked) = (c.clone(), front.clone(), room.clone(), acked.clone());
        tokio::spawn(async move {
            let mut refused = 0;
            for i in 0..total {
                let (s, _) = c
                    .post(&front, &room, &format!("k{i}"), &format!("k{i}"))
                    .await;
                if s == StatusCode::ACCEPTED {
                    acked.fetch_add(1, Ordering::SeqCst);
                } else {
                    refused += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            refused
        })
    };
    // Let some land, then SIGKILL the processor mid-stream and restart it.
    while acked.load(Ordering::SeqCst) < total / 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    processor.sigkill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    processor.restart();
    processor.ready(&c.http).await;
    let refused = poster.await.unwrap();
    let acked = acked.load(Ordering::SeqCst);
    assert_eq!(
        refused, 0,
        "the front kept accepting while the processor was down"
    );
    let stored = c.wait_stored(&room, acked, Duration::from_secs(60)).await;
    assert_eq!(stored.len(), acked, "every acknowledged message is stored");
    assert_unique_ids(&stored);
    eprintln!(
        "processor kill: {acked} acknowledged, {} stored",
        stored.len()
    );
}

/// `cmdstat_zrangebyscore` calls so far (every live-store range read issues
/// three: one per bucket, in one transaction).
async fn zrange_calls(redis_url: &str) -> u64 {
    let client = redis::Client::open(redis_url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // A loaded machine may let one INFO time out: ask again, a few times.
    let mut info = None;
    for _ in 0..5 {
        match redis::cmd("INFO")
            .arg("commandstats")
            .query_async::<String>(&mut conn)
            .await
        {
            Ok(text) => {
                info = Some(text);
                break;
            }
            Err(e) => eprintln!("INFO commandstats: {e}; asking again"),
        }
    }
    let info = info.expect("INFO commandstats answered");
    info.lines()
        .find(|l| l.starts_with("cmdstat_zrangebyscore:"))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A big room (1000 viewers over 2 fronts) costs Redis reads that grow with
/// fronts × seconds, not with viewers; small-room long-polls read through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_room_reads_grow_with_fronts_not_viewers() {
    let Some((redis, kafka)) = services() else {
        return;
    };
    let c = Arc::new(Cluster::new(
        "cost",
        &redis,
        &kafka,
        &[
            ("DANMAKU_FANOUT__BIG_ROOM_THRESHOLD", "300"),
            ("DANMAKU_FANOUT__BIG_MIN_READ_GAP_MS", "1000"),
            ("DANMAKU_FANOUT__PRESENCE_INTERVAL_MS", "300"),
            ("DANMAKU_POLL__MAX_WAIT_MS", "2000"),
        ],
    ));
    let _processor = c.node("processor").await;
    let fronts = [
        Arc::new(c.node("front").await),
        Arc::new(c.node("front").await),
    ];
    let room = format!("big-{}", now_ms());

    // 1000 viewers, 500 per front, opened 50 at a time.
    let mut viewers = Vec::new();
    for batch in 0..20 {
        let front = fronts[batch % 2].clone();
        let opens = (0..50).map(|_| {
            let url = ws_url(&front, &room, "");
            async move { WsViewer::connect(&url).await }
        });
        viewers.extend(futures_util::future::join_all(opens).await);
    }
    let sample = format!(r#"danmaku_top_room_online{{room="{room}"}}"#);
    let deadline = Instant::now() + Duration::from_secs(20);
    for front in &fronts {
        while front.metric(&c.http, &sample).await < 1000.0 {
            assert!(
                Instant::now() < deadline,
                "room never counted 1000 viewers as big"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let before = zrange_calls(&c.redis_url).await;
    let started = Instant::now();
    let seconds = 10;
    let collectors: Vec<_> = viewers
        .into_iter()
        .map(|mut v| {
            tokio::spawn(async move { v.collect(5 * seconds, Duration::from_secs(40)).await.len() })
        })
        .collect();
    for i in 0..5 * seconds {
        let front = &fronts[i % 2];
        let (s, b) = c
            .post(front, &room, &format!("b{i}"), &format!("b{i}"))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let big_calls = zrange_calls(&c.redis_url).await - before;
    let mut delivered = 0;
    for col in collectors {
        delivered += col.await.unwrap();
    }
    assert_eq!(
        delivered,
        1000 * 5 * seconds,
        "every viewer got every message"
    );
    let bound = (2.0 * elapsed.ceil() * 3.0 * 2.0) as u64; // fronts × s × 3 per read × 2 slack
    eprintln!(
        "big room: {big_calls} ZRANGEBYSCORE in {elapsed:.1} s for 1000 viewers on 2 fronts (bound {bound})"
    );
    assert!(big_calls <= bound, "{big_calls} range reads > {bound}");

    // For contrast: 100 long-poll viewers of a small room read through.
    let small = format!("small-{}", now_ms());
    let before = zrange_calls(&c.redis_url).await;
    let requests = Arc::new(AtomicUsize::new(0));
    let stop = Instant::now() + Duration::from_secs(5);
    let pollers: Vec<_> = (0..100)
        .map(|i| {
            let (c, front, small, requests) = (
                c.clone(),
                fronts[i % 2].clone(),
                small.clone(),
                requests.clone(),
            );
            tokio::spawn(async move {
                let mut cursor = 0u64;
                while Instant::now() < stop {
                    let r = c
                        .http
                        .get(format!(
                            "{}/v1/rooms/{small}/poll?cursor={cursor}&wait_ms=500",
                            front.base()
                        ))
                        .send()
                        .await
                        .unwrap();
                    let v: Value = r.json().await.unwrap();
                    cursor = v["cursor"].as_u64().unwrap_or(cursor);
                    requests.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for i in 0..20 {
        c.post(&fronts[0], &small, &format!("s{i}"), "small").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for p in pollers {
        p.await.unwrap();
    }
    let small_calls = zrange_calls(&c.redis_url).await - before;
    let requests = requests.load(Ordering::Relaxed);
    eprintln!(
        "small room read-through: {small_calls} ZRANGEBYSCORE for {requests} poll requests ({:.2} reads per request)",
        small_calls as f64 / 3.0 / requests as f64
    );
    assert!(
        small_calls as f64 / 3.0 >= requests as f64 * 0.9,
        "read-through reads per request"
    );
}

/// Restarting Redis mid-run loses no acknowledged message; fronts answer
/// 503 meanwhile (never a false ack) and recover without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_loses_no_acknowledged_message() {
    let Some((_, kafka)) = services() else { return };
    let mut redis = OwnRedis::start();
    let c = Arc::new(Cluster::new("redis-restart", &redis.url(), &kafka, &[]));
    let _processor = c.node("processor").await;
    let front = Arc::new(c.node("front").await);
    let room = format!("rr-{}", now_ms());
    // The viewer reads all along (a viewer that reads nothing is cut after
    // idle_timeout_s, as it should be).
    let mut viewer = WsViewer::connect(&ws_url(&front, &room, "")).await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let reader = {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                let got = viewer.collect(1, Duration::from_millis(200)).await;
                if viewer.ended.is_some() {
                    return viewer.ended.clone();
                }
                seen.lock().unwrap().extend(got);
            }
        })
    };

    let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let poster = {
        let (c, front, room, acked, refused) = (
            c.clone(),
            front.clone(),
            room.clone(),
            acked.clone(),
            refused.clone(),
        );
        tokio::spawn(async move {
            for i in 0..400 {
                let text = format!("r{i}");
                let (s, _) = c.post(&front, &room, &text, &text).await;
                if s == StatusCode::ACCEPTED {
                    acked.lock().unwrap().push(text);
                } else {
                    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "outage answers 503");
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let down = Instant::now();
    let redis = tokio::task::spawn_blocking(move || {
        redis.restart(Duration::from_secs(2));
        redis
    })
    .await
    .unwrap();
    // The front reports ready again by itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = c
            .http
            .get(format!("{}/readyz", front.base()))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "front did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = down.elapsed();
    poster.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    let stored = c
        .wait_stored(&room, acked.len(), Duration::from_secs(30))
        .await;
    let stored_texts: HashSet<String> = texts(&stored).into_iter().collect();
    for t in &acked {
        assert!(stored_texts.contains(t), "acknowledged {t} was lost");
    }
    assert_eq!(stored.len(), acked.len(), "nothing unacknowledged or twice");
    assert_unique_ids(&stored);
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() < acked.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = seen.lock().unwrap().len();
    reader.abort();
    assert_eq!(
        seen,
        acked.len(),
        "the connected viewer got every stored message"
    );
    drop(redis);
    eprintln!(
        "redis restart: {} acked, {} refused with 503, ready again after {:.1} s",
        acked.len(),
        refused.load(Ordering::Relaxed),
        recovered.as_secs_f64()
    );
}

/// Broker unreachable: posts fail fast with 503 (never a false ack); when it
/// is back, posts are accepted again and every acknowledged one is stored.
/// The test runs its own Kafka that advertises the proxy's address, so every
/// client connection goes through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_posts_fail_fast_then_recover() {
    let Some((redis, _)) = services() else { return };
    let broker_port = common::procs::free_port();
    let proxy = Proxy::start(format!("127.0.0.1:{broker_port}")).await;
    let Some(()) = common::procs::require_kafka() else {
        return;
    };
    let broker = tokio::task::block_in_place(|| Kafka::start_at(broker_port, Some(proxy.port)));
    let kafka = format!("127.0.0.1:{}", proxy.port);
    let c = Arc::new(Cluster::new(
        "broker-down",
        &redis,
        &kafka,
        &[
            ("DANMAKU_BUS__PUBLISH_TIMEOUT_MS", "2000"),
            // Right after the outage the room is seconds behind, and a
            // behind room sheds its low (tests/shedding.rs); this test is
            // about the outage, so shedding stays out of the way.
            ("DANMAKU_INGEST__SHED_LOW_DELAY_MS", "600000"),
            ("DANMAKU_INGEST__SHED_HIGH_DELAY_MS", "600000"),
        ],
    ));
    let _processor = c.node("processor").await;
    let front = c.node("front").await;
    let room = format!("bd-{}", now_ms());
    let mut acked = Vec::new();
    for i in 0..20 {
        let (s, b) = c
            .post(&front, &room, &format!("a{i}"), &format!("a{i}"))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
        acked.push(format!("a{i}"));
    }

    proxy.down();
    let down_at = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..5 {
        let t = Instant::now();
        let (s, b) = c
            .post(&front, &room, &format!("d{i}"), &format!("d{i}"))
            .await;
        slowest = slowest.max(t.elapsed());
        assert_eq!(
            s,
            StatusCode::SERVICE_UNAVAILABLE,
            "no false ack while the broker is away: {b}"
        );
        assert_eq!(b["error"]["code"], "bus_unavailable", "{b}");
    }
    // Bounded by bus.publish_timeout_ms (2 s here) plus the bus's 2 s guard.
    assert!(
        slowest < Duration::from_secs(5),
        "posts fail fast (slowest {slowest:?})"
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.restore();
    // Posts are accepted again without restarting anything.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    let recovered_after = loop {
        let text = format!("b{i}");
        let (s, _) = c.post(&front, &room, &text, &text).await;
        if s == StatusCode::ACCEPTED {
            acked.push(text);
            break down_at.elapsed();
        }
        assert!(Instant::now() < deadline, "posts did not recover");
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for j in 0..20 {
        let text = format!("c{j}");
        let (s, b) = c.post(&front, &room, &text, &text).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
        acked.push(text);
    }
    let stored = c
        .wait_stored(&room, acked.len(), Duration::from_secs(60))
        .await;
    let stored_texts: HashSet<String> = texts(&stored).into_iter().collect();
    for t in &acked {
        assert!(stored_texts.contains(t), "acknowledged {t} was lost");
    }
    assert!(
        !stored_texts.iter().any(|t| t.starts_with('d')),
        "a refused post was stored"
    );
    assert_unique_ids(&stored);
    eprintln!(
        "broker down: refusals took at most {:.2} s; posts accepted again {:.1} s after the cut ({:.1} s after restore)",
        slowest.as_secs_f64(),
        recovered_after.as_secs_f64(),
        recovered_after.as_secs_f64() - 1.0 - slowest.as_secs_f64() * 5.0
    );
    drop(broker);
    proxy.restore();
}
