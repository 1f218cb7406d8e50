//! Shedding per (room, kind): a flood that puts room A behind sheds A's low
//! danmaku, while room B's low is accepted and reaches B's viewers at once,
//! and A's whitelist is accepted and delivered.
//!
//! Both tests would fail if shedding were global again: by the bus backlog
//! (A's backlog is the bus's; the embedded test checks A's low is refused
//! after the backlog drained, the cluster test that B is accepted while A's
//! backlog waits) or by any room's delay (B would be refused with A).

mod common;

use std::time::{Duration, Instant};

use common::procs::Node;
use common::{now_ms, texts, TestServer, WsViewer};
use danmaku::auth::Authenticator;
use danmaku::bus::partition_for;
use danmaku::config::Config;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Embedded engines. Room A's danmaku is put 1.5 s behind by pausing the
/// processor while A's posts wait on the bus (B posts nothing meanwhile).
/// When it resumes, the processor measures A's delay and tells fronts at
/// once; then A's low is refused, B's low is accepted and delivered to B's
/// viewer within 1 s, and A's whitelist is accepted and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_behind_sheds_its_own_low_only() {
    let t = TestServer::start_with(|c| {
        c.ingest.shed_low_delay_ms = 300;
        c.ingest.user_burst = 1000.0;
        c.ingest.whitelist_users = vec!["boss".into()];
        c.fanout.tick_ms = 50;
    })
    .await;
    let (a, b) = (t.room("hot"), t.room("quiet"));
    let fan = t.token("fan", "Fan");
    let boss = t.token("boss", "Host");
    let mut on_a = t.ws(&a, &[]).await;
    let mut on_b = t.ws(&b, &[]).await;

    t.server.pause_processor(true).await;
    for i in 0..30 {
        let (s, body, _) = t.post_danmaku(&a, &fan, &format!("a{i}"), "flood").await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    t.server.pause_processor(false).await;
    assert_eq!(on_a.collect(30, Duration::from_secs(10)).await.len(), 30);

    let (s, body, headers) = t.post_danmaku(&a, &fan, "a-over", "flood").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "overloaded");
    assert!(headers.get("retry-after").is_some());
    let (s, body, _) = t.post_danmaku(&a, &boss, "a-boss", "host here").await;
    assert_eq!(s, StatusCode::ACCEPTED, "A's whitelist goes: {body}");
    let posted = Instant::now();
    let (s, body, _) = t.post_danmaku(&b, &fan, "b1", "calm").await;
    assert_eq!(s, StatusCode::ACCEPTED, "B is not behind: {body}");
    let got = on_b.collect(1, Duration::from_secs(1)).await;
    assert_eq!(texts(&got), vec!["calm"], "B's viewer got it within 1 s");
    eprintln!("B delivered in {} ms", posted.elapsed().as_millis());
    let got = on_a.collect(1, Duration::from_secs(5)).await;
    assert_eq!(texts(&got), vec!["host here"], "A's whitelist delivered");
    assert_eq!(got[0]["priority"], "whitelist");
}

/// Redis and Kafka of the test run (scripts/test.sh sets both), as
/// tests/cluster.rs takes them.
fn services() -> Option<(String, String)> {
    let urls =
        common::procs::service_urls(&["DANMAKU_TEST_REDIS_URL", "DANMAKU_TEST_KAFKA_BROKERS"])?;
    let [redis, kafka] = <[String; 2]>::try_from(urls).ok()?;
    Some((redis, kafka))
}

/// A room name whose danmaku key lands on `partition` of a 2-partition topic.
fn room_on(prefix: &str, partition: u32) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}-{}", now_ms()))
        .find(|r| partition_for(&format!("{r}/danmaku"), 2) == partition)
        .unwrap()
}

async fn post(
    http: &reqwest::Client,
    front: &Node,
    token: &str,
    room: &str,
    id: &str,
) -> (StatusCode, Value) {
    let res = http
        .post(format!("{}/v1/rooms/{room}/danmaku", front.base()))
        .header("authorization", format!("Bearer {token}"))
        .body(json!({"client_msg_id": id, "text": id}).to_string())
        .send()
        .await
        .expect("post");
    let s = res.status();
    (s, res.json().await.unwrap_or(Value::Null))
}

/// Real processes: two fronts and two processors on Redis and Kafka, the
/// topic with two partitions, room A's danmaku on one and room B's on the
/// other, so each processor owns one room (checked before the flood).
///
/// How A falls behind, legitimately: A is posted through both fronts faster
/// than its one serial lane can store it. `gears.spread_partitions = 1`
/// keeps A on its own partition in every gear, and `processor.batch_max = 1`
/// makes its processor store one message per poll–write–commit cycle (a
/// Kafka commit round trip each), so A's messages queue on A's partition and
/// the delay the processor measures for A grows past
/// `ingest.shed_low_delay_ms` (300 ms). The cluster is not saturated: B's
/// processor is idle and the bus stays far below `bus_full_pending`. While
/// A's low is shed, B's low is accepted and delivered to B's viewer (on the
/// other front) within 1 s, and A's whitelist is accepted and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_in_one_room_sheds_it_and_not_the_others() {
    let Some((redis, kafka)) = services() else {
        return;
    };
    let unique = format!("shed-{}-{}", std::process::id(), now_ms());
    let env: Vec<(String, String)> = [
        ("DANMAKU_STORE__ENGINE", "redis"),
        ("DANMAKU_REDIS_URL", redis.as_str()),
        ("DANMAKU_BUS__ENGINE", "kafka"),
        ("DANMAKU_KAFKA_BROKERS", kafka.as_str()),
        ("DANMAKU_BUS__PARTITIONS", "2"),
        ("DANMAKU_BUS__TOPIC", &format!("t-{unique}")),
        ("DANMAKU_BUS__GROUP_ID", &format!("g-{unique}")),
        ("DANMAKU_FANOUT__TICK_MS", "50"),
        ("DANMAKU_PROCESSOR__BATCH_MAX", "1"),
        ("DANMAKU_GEARS__SPREAD_PARTITIONS", "1"),
        ("DANMAKU_INGEST__SHED_LOW_DELAY_MS", "300"),
        ("DANMAKU_INGEST__BUS_FULL_PENDING", "1000000"),
        ("DANMAKU_INGEST__WHITELIST_USERS", "boss"),
        ("DANMAKU_INGEST__USER_RATE_PER_S", "100000"),
        ("DANMAKU_INGEST__USER_BURST", "100000"),
        ("DANMAKU_INGEST__IP_RATE_PER_S", "1000000"),
        ("DANMAKU_INGEST__IP_BURST", "1000000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let spawn = |role| {
        let n = Node::spawn(role, &env);
        let http = http.clone();
        async move {
            n.ready(&http).await;
            n
        }
    };
    let processors = [spawn("processor").await, spawn("processor").await];
    let fronts = [spawn("front").await, spawn("front").await];
    let auth = Authenticator::new(&Config::embedded().auth);
    let fan = auth.issue("fan", "Fan", 3600);
    let boss = auth.issue("boss", "Host", 3600);
    let (a, b) = (room_on("hot", 0), room_on("quiet", 1));

    // Each processor owns one partition (the group has settled): one post
    // to each room raises both processors' stored counts.
    let deadline = Instant::now() + Duration::from_secs(60);
    for round in 0.. {
        assert!(
            Instant::now() < deadline,
            "the group never split the partitions"
        );
        let before = [
            processors[0]
                .metric(&http, "danmaku_messages_stored_total")
                .await,
            processors[1]
                .metric(&http, "danmaku_messages_stored_total")
                .await,
        ];
        for room in [&a, &b] {
            let (s, body) = post(&http, &fronts[0], &fan, room, &format!("w{round}")).await;
            assert_eq!(s, StatusCode::ACCEPTED, "{body}");
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let after = [
            processors[0]
                .metric(&http, "danmaku_messages_stored_total")
                .await,
            processors[1]
                .metric(&http, "danmaku_messages_stored_total")
                .await,
        ];
        if after[0] == before[0] + 1.0 && after[1] == before[1] + 1.0 {
            break;
        }
    }

    let ws = |front: &Node, room: &str| format!("ws://127.0.0.1:{}/v1/rooms/{room}/ws", front.port);
    let mut on_a = WsViewer::connect(&ws(&fronts[0], &a)).await;
    let mut on_b = WsViewer::connect(&ws(&fronts[1], &b)).await;

    // The flood: 16 posts in flight, alternating fronts, until A is shed,
    // then on for 3 s more while B and A's whitelist are checked.
    let shed_at = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
    let flood = {
        let (http, fan, a, shed_at) = (http.clone(), fan.clone(), a.clone(), shed_at.clone());
        let bases = [fronts[0].base(), fronts[1].base()];
        tokio::spawn(async move {
            let (mut accepted, mut refused) = (0usize, 0usize);
            let started = Instant::now();
            let mut posts = futures_util::stream::iter(0..)
                .map(|i: usize| {
                    let url = format!("{}/v1/rooms/{a}/danmaku", bases[i % 2]);
                    let req = http
                        .post(url)
                        .header("authorization", format!("Bearer {fan}"))
                        .body(
                            json!({"client_msg_id": format!("f{i}"), "text": "flood"}).to_string(),
                        );
                    async move { req.send().await.map(|r| r.status()) }
                })
                .buffer_unordered(16);
            while let Some(res) = posts.next().await {
                match res.expect("flood post") {
                    StatusCode::ACCEPTED => accepted += 1,
                    StatusCode::TOO_MANY_REQUESTS => {
                        refused += 1;
                        shed_at.lock().unwrap().get_or_insert_with(Instant::now);
                    }
                    other => panic!("flood post: {other}"),
                }
                let since = *shed_at.lock().unwrap();
                let done = since.map_or(started.elapsed() > Duration::from_secs(60), |t| {
                    t.elapsed() > Duration::from_secs(3)
                });
                if done {
                    break;
                }
            }
            (accepted, refused)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while shed_at.lock().unwrap().is_none() {
        assert!(Instant::now() < deadline, "A was never shed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A's low is shed now: B's low goes through, and fast.
    for i in 0..5 {
        let posted = Instant::now();
        let (s, body) = post(&http, &fronts[0], &fan, &b, &format!("b{i}")).await;
        assert_eq!(s, StatusCode::ACCEPTED, "B is not shed with A: {body}");
        let got = on_b.collect(1, Duration::from_secs(1)).await;
        assert_eq!(texts(&got), vec![format!("b{i}")], "B's viewer within 1 s");
        eprintln!(
            "B post {i} delivered in {} ms",
            posted.elapsed().as_millis()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (s, body) = post(&http, &fronts[1], &boss, &a, "boss").await;
    assert_eq!(s, StatusCode::ACCEPTED, "A's whitelist is accepted: {body}");
    let (accepted, refused) = flood.await.unwrap();
    eprintln!("flood on A: {accepted} accepted, {refused} refused (429)");
    assert!(refused > 0 && accepted > 0);

    // A's whitelist reaches A's viewer (behind A's backlog, which drains).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        for m in on_a.collect(1, Duration::from_secs(5)).await {
            if m["user"]["id"] == "boss" {
                assert_eq!(m["priority"], "whitelist");
                seen = true;
            }
        }
    }
    assert!(seen, "A's whitelist message was delivered");
}
