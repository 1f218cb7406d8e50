//! The fault suite's machinery (tests/chaos.rs, tests/rolling_restart.rs):
//! a cluster of real processes on a Redis and an Apache Kafka of its own, a
//! publisher that keeps a ledger of what was acknowledged, WebSocket viewers
//! that resume from their cursor whenever their connection ends, and the
//! invariants checked over all three (see tests/chaos.rs for the list).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use danmaku::auth::Authenticator;
use danmaku::config::Config;
use danmaku::store::redis::RedisStore;
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::procs::{Kafka, Node, OwnRedis, Placement};
use super::{now_ms, WsEnd, WsViewer};

/// Posts per second of the steady load.
pub const RATE_PER_S: u64 = 100;
/// Load before the fault, and after recovery.
pub const STEADY: Duration = Duration::from_secs(3);
/// How long a killed service stays down.
pub const DOWN: Duration = Duration::from_secs(2);
/// The publisher's user: whitelisted, so nothing is rationed away.
pub const PUBLISHER: &str = "chaos-publisher";
pub const ADMIN: &str = "chaos-admin-token";
pub const VIEWERS_PER_FRONT: usize = 2;

/// `Some(())` when redis-server, `extra` and the broker's jars are there;
/// otherwise skips (or, with `DANMAKU_REQUIRE_SERVICES=1`, fails).
pub fn programs(extra: &[&str]) -> Option<()> {
    let mut all = vec!["redis-server"];
    all.extend_from_slice(extra);
    super::procs::require_programs(&all)?;
    super::procs::require_kafka()
}

// ---- the cluster -------------------------------------------------------------

/// Redis and Kafka of the test's own, fronts and processors against them.
pub struct Rig {
    pub redis: OwnRedis,
    /// The live store's URL: `redis`'s, unless `extra` set `DANMAKU_REDIS_URL`
    /// (tests/redis_failover.rs: a Sentinel set of its own).
    pub store_url: String,
    pub kafka: Kafka,
    pub env: Vec<(String, String)>,
    pub http: reqwest::Client,
    pub token: String,
    pub config: Config,
    pub fronts: Vec<Node>,
    pub processors: Vec<Node>,
    /// The fronts' addresses as clients see them (a restarted front has a
    /// new port).
    pub addrs: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Rig {
    /// Two fronts and `processors` processors.
    pub async fn start(
        name: &str,
        kafka: Kafka,
        processors: usize,
        extra: &[(&str, String)],
    ) -> Rig {
        Self::start_with(name, kafka, processors, 2, extra).await
    }

    pub async fn start_with(
        name: &str,
        kafka: Kafka,
        processors: usize,
        fronts: usize,
        extra: &[(&str, String)],
    ) -> Rig {
        let redis = tokio::task::block_in_place(OwnRedis::start);
        Self::start_placed(
            name,
            redis,
            kafka,
            vec![None; processors],
            vec![None; fronts],
            extra,
        )
        .await
    }

    /// One processor and one front per placement (`None`: on loopback here;
    /// else in that network namespace), on `redis` and `kafka`.
    pub async fn start_placed(
        name: &str,
        redis: OwnRedis,
        kafka: Kafka,
        processors: Vec<Option<Placement>>,
        fronts: Vec<Option<Placement>>,
        extra: &[(&str, String)],
    ) -> Rig {
        let unique = format!("{name}-{}-{}", std::process::id(), now_ms());
        let mut env: Vec<(String, String)> = [
            ("DANMAKU_STORE__ENGINE", "redis".to_string()),
            ("DANMAKU_REDIS_URL", redis.url()),
            ("DANMAKU_BUS__ENGINE", "kafka".into()),
            ("DANMAKU_KAFKA_BROKERS", kafka.brokers()),
            ("DANMAKU_BUS__PARTITIONS", "4".into()),
            ("DANMAKU_BUS__TOPIC", format!("t-{unique}")),
            ("DANMAKU_BUS__GROUP_ID", format!("g-{unique}")),
            // A post the broker cannot take fails within 2 s (503).
            ("DANMAKU_BUS__PUBLISH_TIMEOUT_MS", "2000".into()),
            ("DANMAKU_FANOUT__TICK_MS", "50".into()),
            ("DANMAKU_INGEST__WHITELIST_USERS", PUBLISHER.into()),
            ("DANMAKU_INGEST__USER_RATE_PER_S", "100000".into()),
            ("DANMAKU_INGEST__USER_BURST", "100000".into()),
            ("DANMAKU_INGEST__IP_RATE_PER_S", "1000000".into()),
            ("DANMAKU_INGEST__IP_BURST", "1000000".into()),
            (
                "DANMAKU_SERVER__MAX_VIEWER_CONNECTIONS_PER_IP",
                "100000".into(),
            ),
            ("DANMAKU_STORE__MAX_PER_BUCKET", "50000".into()),
            ("DANMAKU_ADMIN_TOKEN", ADMIN.into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let store_url = extra
            .iter()
            .rev()
            .find(|(k, _)| *k == "DANMAKU_REDIS_URL")
            .map_or_else(|| redis.url(), |(_, v)| v.clone());
        // What the nodes load (secrets included, to issue their tokens).
        let config = Config::load(None, env.clone()).expect("the nodes' configuration");
        let token = Authenticator::new(&config.auth).issue(PUBLISHER, "Chaos", 3600);
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let processors: Vec<Node> = processors
            .into_iter()
            .map(|at| Node::spawn_at("processor", &env, at))
            .collect();
        let fronts: Vec<Node> = fronts
            .into_iter()
            .map(|at| Node::spawn_at("front", &env, at))
            .collect();
        for n in processors.iter().chain(&fronts) {
            n.ready(&http).await;
        }
        let addrs = Arc::new(Mutex::new(fronts.iter().map(Node::addr).collect()));
        Rig {
            redis,
            store_url,
            kafka,
            env,
            http,
            token,
            config,
            fronts,
            processors,
            addrs,
        }
    }

    pub async fn store(&self) -> RedisStore {
        RedisStore::connect(&self.store_url, self.config.store.clone())
            .await
            .expect("redis")
    }

    pub async fn stored(&self, room: &str) -> Vec<Value> {
        super::read_stream(&self.store().await, room).await
    }

    /// Waits until every node in `nodes` answers `/readyz` 200; how long it took.
    pub async fn all_ready(&self, nodes: &[&Node], within: Duration, what: &str) -> Duration {
        let t = Instant::now();
        for n in nodes {
            while !n.is_ready(&self.http).await {
                assert!(
                    t.elapsed() < within,
                    "{what}: {} on port {} not ready again within {within:?}",
                    n.role,
                    n.port
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        t.elapsed()
    }

    /// A sample of a node's `/metrics` (0 if absent).
    pub async fn metric(&self, node: &Node, sample: &str) -> f64 {
        super::metric_value(&self.metrics(node).await, sample).unwrap_or(0.0)
    }

    /// A node's whole `/metrics` text.
    pub async fn metrics(&self, node: &Node) -> String {
        self.http
            .get(format!("{}/metrics", node.base()))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .unwrap()
    }

    pub async fn admin_post(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.fronts[0].base()))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("admin POST");
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }
}

// ---- the publisher -----------------------------------------------------------

#[derive(Default)]
pub struct Ledger {
    pub sent: AtomicUsize,
    /// text → (message id, when acknowledged)
    pub acked: Mutex<HashMap<String, (String, Instant)>>,
    /// text → the test's wall clock (unix ms) when the acknowledged attempt
    /// was sent and when its answer came: the server's `ts` lies between.
    pub acked_wall: Mutex<HashMap<String, (u64, u64)>>,
    /// Never acknowledged (refused, failed, or 409 `in_progress`), by text.
    pub refused: Mutex<Vec<String>>,
    /// Answers of every attempt, by status (or `transport`).
    pub answers: Mutex<HashMap<String, usize>>,
    /// Every attempt, in the order they ended.
    pub attempts: Mutex<Vec<Attempt>>,
}

/// One post attempt: where it went, when, its answer and how long it took.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// The post's text (its `client_msg_id` too).
    pub text: String,
    pub to: SocketAddr,
    pub sent: Instant,
    pub took: Duration,
    /// The status (`None`: no answer, a transport error or the client's
    /// timeout).
    pub status: Option<StatusCode>,
    /// The error body's `error.code`, if any.
    pub code: Option<String>,
}

impl Ledger {
    /// The first acknowledgement at or after `t`: how long after `t` it came.
    pub fn first_ack_after(&self, t: Instant) -> Option<Duration> {
        self.acked
            .lock()
            .unwrap()
            .values()
            .filter(|(_, at)| *at >= t)
            .map(|(_, at)| *at - t)
            .min()
    }

    pub fn acked_before(&self, t: Instant) -> Vec<String> {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, (_, at))| *at < t)
            .map(|(text, _)| text.clone())
            .collect()
    }
}

pub struct Load {
    pub ledger: Arc<Ledger>,
    pub stop: Arc<AtomicBool>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Load {
    /// Posts `RATE_PER_S` a second into `room` until stopped; message `i` goes
    /// to front `i % 2` first, then (after a refusal) to the other front.
    pub fn start(rig: &Rig, room: &str, tag: &str) -> Load {
        let ledger = Arc::new(Ledger::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (http, token, addrs, room, tag) = (
            rig.http.clone(),
            rig.token.clone(),
            rig.addrs.clone(),
            room.to_string(),
            tag.to_string(),
        );
        let (l, s) = (ledger.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_S));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut posts = tokio::task::JoinSet::new();
            let mut i = 0usize;
            while !s.load(Ordering::SeqCst) {
                tick.tick().await;
                let text = format!("{tag}-{i}");
                l.sent.fetch_add(1, Ordering::SeqCst);
                posts.spawn(post_with_retry(
                    http.clone(),
                    token.clone(),
                    addrs.clone(),
                    room.clone(),
                    text,
                    i,
                    l.clone(),
                ));
                i += 1;
            }
            while let Some(r) = posts.join_next().await {
                r.expect("a post task panicked");
            }
        });
        Load { ledger, stop, task }
    }

    pub async fn stop(self) -> Arc<Ledger> {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("publisher stopped in time")
            .unwrap();
        self.ledger
    }
}

/// Up to 3 attempts, alternating fronts, 250 ms apart. A 409 `in_progress`
/// (an earlier attempt's claim is still pending, e.g. on a front that was
/// killed mid-request) ends it unacknowledged: that attempt may or may not
/// have reached the bus.
pub async fn post_with_retry(
    http: reqwest::Client,
    token: String,
    addrs: Arc<Mutex<Vec<SocketAddr>>>,
    room: String,
    text: String,
    i: usize,
    ledger: Arc<Ledger>,
) {
    for attempt in 0..3 {
        let addr = {
            let a = addrs.lock().unwrap();
            a[(i + attempt) % a.len()]
        };
        let sent_ms = now_ms();
        let sent = Instant::now();
        let res = http
            .post(format!("http://{addr}/v1/rooms/{room}/danmaku"))
            .bearer_auth(&token)
            .body(json!({"client_msg_id": text, "text": text}).to_string())
            .send()
            .await;
        let (status, body) = match res {
            Ok(r) => {
                let s = r.status();
                (Some(s), r.json::<Value>().await.unwrap_or(Value::Null))
            }
            Err(_) => (None, Value::Null),
        };
        ledger.attempts.lock().unwrap().push(Attempt {
            text: text.clone(),
            to: addr,
            sent,
            took: sent.elapsed(),
            status,
            code: body["error"]["code"].as_str().map(str::to_string),
        });
        *ledger
            .answers
            .lock()
            .unwrap()
            .entry(status.map_or("transport".into(), |s| s.as_u16().to_string()))
            .or_default() += 1;
        match status {
            Some(StatusCode::ACCEPTED) => {
                let id = body["id"].as_str().expect("ack carries an id").to_string();
                let earlier = ledger
                    .acked
                    .lock()
                    .unwrap()
                    .insert(text.clone(), (id, Instant::now()));
                assert!(earlier.is_none(), "{text} acknowledged twice");
                ledger
                    .acked_wall
                    .lock()
                    .unwrap()
                    .insert(text.clone(), (sent_ms, now_ms()));
                return;
            }
            Some(StatusCode::CONFLICT) => break,
            Some(s) => assert!(
                s == StatusCode::SERVICE_UNAVAILABLE,
                "a post was refused with {s}: {body} (only 503 is expected under a fault)"
            ),
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ledger.refused.lock().unwrap().push(text);
}

// ---- viewers -----------------------------------------------------------------

#[derive(Default, Debug)]
pub struct ViewerLog {
    /// (seq, text) in delivery order, across connections.
    pub got: Vec<(u64, String)>,
    pub connections: usize,
    /// Hellos that said `"reset": true` or changed the epoch.
    pub resets: Vec<Value>,
    /// When each reconnection after the first connection succeeded.
    pub reconnected_at: Vec<Instant>,
    /// How each connection ended, in order.
    pub ends: Vec<WsEnd>,
    /// For each reconnection: from the end of the connection before it to
    /// the `hello` on the new one (the wait the close asked for included).
    pub resumed_in: Vec<Duration>,
}

pub struct Viewers {
    /// Viewers stop once they hold this many messages (set at the end).
    pub target: Arc<AtomicUsize>,
    pub tasks: Vec<tokio::task::JoinHandle<ViewerLog>>,
}

impl Viewers {
    /// `VIEWERS_PER_FRONT` WebSocket viewers on each front; each resumes with
    /// its cursor and epoch (on the next front that answers) whenever its
    /// connection ends.
    pub async fn start(rig: &Rig, room: &str) -> Viewers {
        Self::start_n(rig, room, VIEWERS_PER_FRONT).await
    }

    /// `per_front` WebSocket viewers on each front.
    pub async fn start_n(rig: &Rig, room: &str, per_front: usize) -> Viewers {
        let n = rig.addrs.lock().unwrap().len();
        Self::start_on(rig, room, &(0..n).collect::<Vec<_>>(), per_front).await
    }

    /// `per_front` WebSocket viewers on each of `fronts` (indices into
    /// `rig.addrs`), interleaved.
    pub async fn start_on(rig: &Rig, room: &str, fronts: &[usize], per_front: usize) -> Viewers {
        let target = Arc::new(AtomicUsize::new(usize::MAX));
        let mut tasks = Vec::new();
        for k in 0..fronts.len() * per_front {
            let front = fronts[k % fronts.len()];
            let (addrs, room, target) = (rig.addrs.clone(), room.to_string(), target.clone());
            let first = WsViewer::connect(&format!(
                "ws://{}/v1/rooms/{room}/ws",
                addrs.lock().unwrap()[front]
            ))
            .await;
            tasks.push(tokio::spawn(watch(first, addrs, room, front, target)));
        }
        Viewers { target, tasks }
    }

    /// Lets the viewers finish once they have `n` messages (or 30 s passed).
    pub async fn finish(self, n: usize) -> Vec<ViewerLog> {
        self.target.store(n, Ordering::SeqCst);
        let mut logs = Vec::new();
        for t in self.tasks {
            logs.push(
                tokio::time::timeout(Duration::from_secs(40), t)
                    .await
                    .expect("viewer finished in time")
                    .expect("viewer task"),
            );
        }
        logs
    }
}

pub async fn watch(
    first: WsViewer,
    addrs: Arc<Mutex<Vec<SocketAddr>>>,
    room: String,
    mut front: usize,
    target: Arc<AtomicUsize>,
) -> ViewerLog {
    let mut log = ViewerLog {
        connections: 1,
        ..Default::default()
    };
    let epoch = first.epoch.clone();
    let mut cursor = first.cursor;
    let mut viewer = Some(first);
    // When the last connection ended, and how long the client waits first.
    let mut ended: Option<(Instant, Duration)> = None;
    let mut done_since: Option<Instant> = None;
    let give_up = Instant::now() + Duration::from_secs(180);
    loop {
        let target_now = target.load(Ordering::SeqCst);
        if log.got.len() >= target_now {
            return log;
        }
        if target_now != usize::MAX {
            // The end is set: 30 s to get there, else report what arrived.
            let since = *done_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(30) {
                return log;
            }
        }
        if Instant::now() > give_up {
            return log;
        }
        let Some(v) = viewer.as_mut() else {
            // Reconnect with cursor and epoch, to the next front in turn,
            // after the wait the close asked for (docs/protocol.md, §7).
            let wait = ended
                .as_mut()
                .map_or(Duration::ZERO, |(_, w)| std::mem::take(w));
            tokio::time::sleep(wait.max(Duration::from_millis(100))).await;
            let url = {
                let a = addrs.lock().unwrap();
                front = (front + 1) % a.len();
                format!(
                    "ws://{}/v1/rooms/{room}/ws?cursor={cursor}&epoch={epoch}",
                    a[front]
                )
            };
            if let Ok(v) = WsViewer::try_connect(&url).await {
                if v.hello.get("reset").is_some() || v.epoch != epoch {
                    log.resets.push(v.hello.clone());
                }
                log.connections += 1;
                log.reconnected_at.push(Instant::now());
                if let Some((at, _)) = ended.take() {
                    log.resumed_in.push(at.elapsed());
                }
                viewer = Some(v);
            }
            continue;
        };
        let got = v.collect(10_000, Duration::from_millis(200)).await;
        log.got.extend(
            got.iter()
                .map(|m| (m["seq"].as_u64().unwrap(), text_of(m).to_string())),
        );
        cursor = v.cursor;
        if let Some(end) = v.ended.clone() {
            ended = Some((Instant::now(), retry_after(&end)));
            log.ends.push(end);
            viewer = None;
        }
    }
}

/// The wait a shutdown close asks for (`retry_after_ms=N` in its reason).
pub fn retry_after(end: &WsEnd) -> Duration {
    let WsEnd::Closed(Some((_, reason))) = end else {
        return Duration::ZERO;
    };
    reason
        .split("retry_after_ms=")
        .nth(1)
        .and_then(|n| n.trim().parse().ok())
        .map_or(Duration::ZERO, Duration::from_millis)
}

pub fn text_of(m: &Value) -> &str {
    m["text"].as_str().expect("message text")
}

// ---- checks and figures --------------------------------------------------------

/// Waits until the room holds every acknowledged message and has not changed
/// for a second (a post answered 503 after a broker timeout may still land);
/// returns what it holds.
pub async fn settled_store(rig: &Rig, room: &str, ledger: &Ledger, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let acked: HashSet<String> = ledger.acked.lock().unwrap().keys().cloned().collect();
    let mut last = usize::MAX;
    loop {
        let stored = rig.stored(room).await;
        let texts: HashSet<&str> = stored.iter().map(text_of).collect();
        let complete = acked.iter().all(|t| texts.contains(t.as_str()));
        if (complete && stored.len() == last) || Instant::now() > deadline {
            return stored;
        }
        last = stored.len();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// How long from `since` until every text in `texts` is in the store
/// (polled every 100 ms, up to `within`); `None` if it never got there.
pub async fn caught_up(
    rig: &Rig,
    room: &str,
    texts: &[String],
    since: Instant,
    within: Duration,
) -> Option<Duration> {
    let deadline = Instant::now() + within;
    loop {
        let stored = rig.stored(room).await;
        let have: HashSet<&str> = stored.iter().map(text_of).collect();
        if texts.iter().all(|t| have.contains(t.as_str())) {
            return Some(since.elapsed());
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub struct Figures {
    pub sent: usize,
    pub acked: usize,
    pub refused: usize,
    pub stored: usize,
    pub delivered: usize,
    pub duplicates: usize,
    pub lost_acked: usize,
}

/// The invariants over what was acknowledged, stored and delivered; panics
/// with the evidence, or returns the figures. `excused` are acknowledged
/// texts the fault is allowed to lose (only a non-durable broker's).
pub fn check(
    fault: &str,
    ledger: &Ledger,
    stored: &[Value],
    viewers: &[ViewerLog],
    excused: &HashSet<String>,
) -> Figures {
    let acked = ledger.acked.lock().unwrap().clone();
    let sent = ledger.sent.load(Ordering::SeqCst);
    let refused = ledger.refused.lock().unwrap().len();
    assert_eq!(acked.len() + refused, sent, "{fault}: every post ended");

    // Stored exactly once: by text (one text per post, retries included)
    // and by id.
    let mut by_text: HashMap<&str, usize> = HashMap::new();
    let mut ids = HashSet::new();
    let mut duplicates = 0;
    for m in stored {
        *by_text.entry(text_of(m)).or_default() += 1;
        if !ids.insert(m["id"].as_str().expect("id")) {
            duplicates += 1;
        }
    }
    duplicates += by_text
        .values()
        .filter(|n| **n > 1)
        .map(|n| n - 1)
        .sum::<usize>();
    let lost: Vec<&String> = acked
        .keys()
        .filter(|t| !by_text.contains_key(t.as_str()) && !excused.contains(*t))
        .collect();
    let mut wrong_id = Vec::new();
    for m in stored {
        if let Some((id, _)) = acked.get(text_of(m)) {
            if m["id"] != id.as_str() {
                wrong_id.push(format!(
                    "{} stored as {} but acked as {id}",
                    text_of(m),
                    m["id"]
                ));
            }
        }
    }
    let refused_texts: HashSet<String> = ledger.refused.lock().unwrap().iter().cloned().collect();
    let phantom: Vec<&str> = by_text
        .keys()
        .copied()
        .filter(|t| !acked.contains_key(*t) && !refused_texts.contains(*t))
        .collect();

    // Every viewer: exactly the stored messages, each once.
    let want: HashMap<u64, &str> = stored
        .iter()
        .map(|m| (m["seq"].as_u64().unwrap(), text_of(m)))
        .collect();
    let mut delivered = 0;
    for (k, v) in viewers.iter().enumerate() {
        delivered += v.got.len();
        let mut seen = HashSet::new();
        let dup: Vec<u64> = v
            .got
            .iter()
            .filter(|(s, _)| !seen.insert(*s))
            .map(|(s, _)| *s)
            .collect();
        duplicates += dup.len();
        assert!(dup.is_empty(), "{fault}: viewer {k} got seqs {dup:?} twice");
        for (s, t) in &v.got {
            assert_eq!(
                want.get(s).copied(),
                Some(t.as_str()),
                "{fault}: viewer {k} got seq {s} = {t}, which the store does not hold"
            );
        }
        let missing: Vec<u64> = want
            .keys()
            .filter(|s| !seen.contains(*s))
            .copied()
            .collect();
        assert!(
            missing.is_empty(),
            "{fault}: viewer {k} ({} connections) missed {} stored messages, e.g. seqs {:?}",
            v.connections,
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        assert!(
            v.resets.is_empty(),
            "{fault}: viewer {k} was told to reset (the stream was lost): {:?}",
            v.resets
        );
    }
    assert!(
        lost.is_empty(),
        "{fault}: {} acknowledged messages are not stored, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    if duplicates > 0 {
        // The evidence: each text stored more than once, as stored, and
        // every attempt to post it.
        let twice: Vec<&str> = by_text
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(t, _)| *t)
            .collect();
        let attempts = ledger.attempts.lock().unwrap();
        let evidence: Vec<String> = twice
            .iter()
            .map(|t| {
                let copies: Vec<String> = stored
                    .iter()
                    .filter(|m| text_of(m) == *t)
                    .map(|m| format!("seq {} id {} ts {}", m["seq"], m["id"], m["ts"]))
                    .collect();
                let tries: Vec<String> = attempts
                    .iter()
                    .filter(|a| a.text == *t)
                    .map(|a| format!("{} {:?} {:?} in {:?}", a.to, a.status, a.code, a.took))
                    .collect();
                format!("{t}: stored {copies:?}; attempts {tries:?}")
            })
            .collect();
        panic!("{fault}: {duplicates} duplicates: {evidence:#?}");
    }
    assert!(wrong_id.is_empty(), "{fault}: {wrong_id:?}");
    assert!(
        phantom.is_empty(),
        "{fault}: stored but never sent: {phantom:?}"
    );
    Figures {
        sent,
        acked: acked.len(),
        refused,
        stored: stored.len(),
        delivered,
        duplicates,
        lost_acked: lost.len(),
    }
}

pub fn figure_line(fault: &str, f: &Figures, recovery: Duration, extra: &str) -> String {
    format!(
        "chaos {fault}: sent={} acked={} refused={} stored={} delivered={} duplicates={} \
         lost_acked={} recovery_s={:.1}{}{extra}",
        f.sent,
        f.acked,
        f.refused,
        f.stored,
        f.delivered,
        f.duplicates,
        f.lost_acked,
        recovery.as_secs_f64(),
        if extra.is_empty() { "" } else { " " },
    )
}

pub fn secs(d: Option<Duration>) -> String {
    d.map_or("never".into(), |d| format!("{:.1}", d.as_secs_f64()))
}

/// `202`, `503 store_unavailable` (status and error code), or `none` (no
/// answer).
pub fn answer_key(status: Option<StatusCode>, code: Option<&str>) -> String {
    match (status, code) {
        (None, _) => "none".to_string(),
        (Some(s), None) => s.as_u16().to_string(),
        (Some(s), Some(c)) => format!("{} {c}", s.as_u16()),
    }
}

/// The post attempts sent to `to` in `[from, until)`: by answer (status and
/// error code, or `none`), and the slowest.
pub fn attempts_to(
    ledger: &Ledger,
    to: SocketAddr,
    from: Instant,
    until: Instant,
) -> (BTreeMap<String, usize>, Duration) {
    let mut by = BTreeMap::new();
    let mut slowest = Duration::ZERO;
    for a in ledger.attempts.lock().unwrap().iter() {
        if a.to != to || a.sent < from || a.sent >= until {
            continue;
        }
        *by.entry(answer_key(a.status, a.code.as_deref()))
            .or_insert(0) += 1;
        slowest = slowest.max(a.took);
    }
    (by, slowest)
}

/// From `t` to the first attempt sent to `to` at or after `t` that was
/// acknowledged (and answered), up to `within`.
pub async fn first_ack_by(
    ledger: &Ledger,
    to: SocketAddr,
    t: Instant,
    within: Duration,
) -> Duration {
    let deadline = Instant::now() + within;
    loop {
        let acked = ledger
            .attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.to == to && a.sent >= t && a.status == Some(StatusCode::ACCEPTED))
            .map(|a| a.sent + a.took - t)
            .min();
        if let Some(d) = acked {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "no post acknowledged by {to} within {within:?} of the heal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How a node answered once it had refused a post: from the end of the
/// first `503` answer to a post sent to `to` in `[from, until)`, the posts
/// sent there until `until`: (that first refusal's end, how many, the
/// slowest answer). `None` when nothing was refused.
pub fn after_first_refusal(
    ledger: &Ledger,
    to: SocketAddr,
    from: Instant,
    until: Instant,
) -> Option<(Instant, usize, Duration)> {
    let attempts = ledger.attempts.lock().unwrap();
    let ours = || {
        attempts
            .iter()
            .filter(move |a| a.to == to && a.sent >= from && a.sent < until)
    };
    let refused = ours()
        .filter(|a| a.status == Some(StatusCode::SERVICE_UNAVAILABLE))
        .map(|a| a.sent + a.took)
        .min()?;
    let (n, slowest) = ours()
        .filter(|a| a.sent >= refused)
        .fold((0, Duration::ZERO), |(n, s), a| (n + 1, s.max(a.took)));
    Some((refused, n, slowest))
}

/// Waits (up to `within`) for the first acknowledgement at or after `t`.
pub async fn first_ack_after(
    ledger: &Ledger,
    t: Instant,
    within: Duration,
    fault: &str,
) -> Duration {
    let deadline = Instant::now() + within;
    loop {
        if let Some(d) = ledger.first_ack_after(t) {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "{fault}: no post acknowledged within {within:?} of the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn assert_within(fault: &str, what: &str, got: Duration, bound: Duration) {
    assert!(
        got <= bound,
        "{fault}: {what} took {:.1} s (bound {:.0} s)",
        got.as_secs_f64(),
        bound.as_secs_f64()
    );
}
