//! Issues 4 and 5 with real processes: `front` and `processor` roles of the
//! `danmaku` binary against a real Redis and a real Kafka-protocol broker.
//!
//! Needs `DANMAKU_TEST_REDIS_URL` and `DANMAKU_TEST_KAFKA_BROKERS` (set by
//! scripts/test.sh). Without them the tests skip, unless
//! `DANMAKU_REQUIRE_SERVICES=1`, where they fail.

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{now_ms, WsViewer, WAIT};
use danmaku::auth::Authenticator;
use danmaku::config::Config;
use danmaku::store::redis::RedisStore;
use danmaku::store::LiveStore;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn services() -> Option<(String, String)> {
    let redis = std::env::var("DANMAKU_TEST_REDIS_URL").ok();
    let kafka = std::env::var("DANMAKU_TEST_KAFKA_BROKERS").ok();
    match (redis, kafka) {
        (Some(r), Some(k)) if !r.is_empty() && !k.is_empty() => Some((r, k)),
        _ => {
            assert!(
                std::env::var("DANMAKU_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "DANMAKU_REQUIRE_SERVICES=1 but DANMAKU_TEST_REDIS_URL / DANMAKU_TEST_KAFKA_BROKERS are not set"
            );
            eprintln!("skipping: set DANMAKU_TEST_REDIS_URL and DANMAKU_TEST_KAFKA_BROKERS");
            None
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `danmaku` process; killed when dropped.
struct Node {
    child: Child,
    port: u16,
    role: &'static str,
    env: Vec<(String, String)>,
}

impl Node {
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(role: &'static str, env: &[(String, String)]) -> Node {
        let port = free_port();
        let mut env = env.to_vec();
        env.push(("DANMAKU_LISTEN".into(), format!("127.0.0.1:{port}")));
        let child = Command::new(env!("CARGO_BIN_EXE_danmaku"))
            .arg(role)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("DANMAKU_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn danmaku");
        Node {
            child,
            port,
            role,
            env,
        }
    }

    async fn ready(&self, http: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{}/readyz", self.base())).send().await {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} did not become ready",
                self.role
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The same role and port again (after a kill).
    fn restart(&mut self) {
        self.sigkill();
        let mut env = self.env.clone();
        env.retain(|(k, _)| k != "DANMAKU_LISTEN");
        let again = Node::spawn(self.role, &env);
        let port = again.port;
        let _ = std::mem::replace(self, again);
        self.port = port;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
        let store = self.store().await;
        let mut out = Vec::new();
        let mut cursor = 0;
        loop {
            let read = store
                .read_range(room, cursor, u64::MAX, 1000)
                .await
                .unwrap();
            out.extend(
                read.messages
                    .iter()
                    .map(|m| serde_json::from_slice::<Value>(&m.json).unwrap()),
            );
            if read.messages.is_empty() || read.cursor <= cursor {
                return out;
            }
            cursor = read.cursor;
        }
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
    let c = Arc::new(Cluster::new("kill", &redis, &kafka, &[]));
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
