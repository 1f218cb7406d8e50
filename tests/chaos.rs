//! The fault suite: under steady load, kill and restart one thing
//! at a time — Redis, the broker, MariaDB, a processor, a front — and hold
//! the invariants (docs/architecture.md, "Invariants"):
//!
//! - every acknowledged message is stored exactly once (read back from the
//!   live store, matched by text, which is unique per post);
//! - nothing is stored twice, and nothing that was never sent;
//! - every viewer, resuming from its cursor and epoch whenever its
//!   connection ends (on whatever front is up), gets exactly the stored
//!   messages: none twice, none missing;
//! - each role recovers by itself (nothing but the killed process is
//!   restarted), within a bound.
//!
//! Each fault prints one figure line:
//! `chaos <fault>: sent=.. acked=.. refused=.. stored=.. delivered=..
//! duplicates=0 lost_acked=0 recovery_s=..` (+ fault-specific figures), where
//! `recovery_s` is the time from the restart until the first post is acked
//! again (for faults that stop acks), the restarted role's `/readyz` is 200
//! (processor, front) or the live is fully archived (MariaDB).
//!
//! The load: one publisher posting `RATE_PER_S` messages a second, round
//! robin over two fronts, each post retried (same `client_msg_id`) on the
//! other front when refused; four WebSocket viewers, two per front. The
//! publisher is a whitelisted user, so rationing never holds a message back
//! and "every viewer gets every stored message" is exact (rationing has its
//! own tests).
//!
//! The suite runs its own redis-server, Apache Kafka (scripts/kafka.sh) and
//! MariaDB (it kills them), so it needs only the programs: `redis-server`,
//! `java` and `mvn` (or the broker's jars cached already), `mariadbd` and
//! `mysql_install_db`. Without them it
//! skips, unless `DANMAKU_REQUIRE_SERVICES=1`, where it fails. The faults run
//! one at a time (a lock), so their timings do not disturb each other.
//! `scripts/chaos.sh` runs this suite alone.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::procs::{self, Kafka, Node, OwnMariaDb, OwnRedis};
use common::{now_ms, WsViewer};
use danmaku::auth::Authenticator;
use danmaku::config::Config;
use danmaku::store::redis::RedisStore;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Posts per second of the steady load.
const RATE_PER_S: u64 = 100;
/// Load before the fault, and after recovery.
const STEADY: Duration = Duration::from_secs(3);
/// How long a killed service stays down.
const DOWN: Duration = Duration::from_secs(2);
/// The publisher's user: whitelisted, so nothing is rationed away.
const PUBLISHER: &str = "chaos-publisher";
const ADMIN: &str = "chaos-admin-token";
const VIEWERS_PER_FRONT: usize = 2;

/// One fault at a time (the test harness runs tests on parallel threads, each
/// with its own runtime; an async mutex, as it is held across awaits, and one
/// that a failed test does not poison).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn programs(extra: &[&str]) -> Option<()> {
    let mut all = vec!["redis-server"];
    all.extend_from_slice(extra);
    procs::require_programs(&all)?;
    procs::require_kafka()
}

// ---- the cluster -------------------------------------------------------------

/// Redis and Kafka of the test's own, fronts and processors against them.
struct Rig {
    redis: OwnRedis,
    kafka: Kafka,
    env: Vec<(String, String)>,
    http: reqwest::Client,
    token: String,
    config: Config,
    fronts: Vec<Node>,
    processors: Vec<Node>,
    /// The fronts' ports as clients see them (a restarted front has a new one).
    ports: Arc<Mutex<Vec<u16>>>,
}

impl Rig {
    async fn start(name: &str, kafka: Kafka, processors: usize, extra: &[(&str, String)]) -> Rig {
        let redis = OwnRedis::start();
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
        let config = Config::embedded();
        let token = Authenticator::new(&config.auth).issue(PUBLISHER, "Chaos", 3600);
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let processors: Vec<Node> = (0..processors)
            .map(|_| Node::spawn("processor", &env))
            .collect();
        let fronts: Vec<Node> = (0..2).map(|_| Node::spawn("front", &env)).collect();
        for n in processors.iter().chain(&fronts) {
            n.ready(&http).await;
        }
        let ports = Arc::new(Mutex::new(fronts.iter().map(|f| f.port).collect()));
        Rig {
            redis,
            kafka,
            env,
            http,
            token,
            config,
            fronts,
            processors,
            ports,
        }
    }

    async fn store(&self) -> RedisStore {
        RedisStore::connect(&self.redis.url(), self.config.store.clone())
            .await
            .expect("redis")
    }

    async fn stored(&self, room: &str) -> Vec<Value> {
        common::read_stream(&self.store().await, room).await
    }

    /// Waits until every node in `nodes` answers `/readyz` 200; how long it took.
    async fn all_ready(&self, nodes: &[&Node], within: Duration, what: &str) -> Duration {
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
    async fn metric(&self, node: &Node, sample: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", node.base()))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .unwrap();
        common::metric_value(&text, sample).unwrap_or(0.0)
    }

    async fn admin_post(&self, path: &str) -> (StatusCode, Value) {
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
struct Ledger {
    sent: AtomicUsize,
    /// text → (message id, when acknowledged)
    acked: Mutex<HashMap<String, (String, Instant)>>,
    /// Never acknowledged (refused, failed, or 409 `in_progress`), by text.
    refused: Mutex<Vec<String>>,
    /// Answers of every attempt, by status (or `transport`).
    answers: Mutex<HashMap<String, usize>>,
}

impl Ledger {
    /// The first acknowledgement at or after `t`: how long after `t` it came.
    fn first_ack_after(&self, t: Instant) -> Option<Duration> {
        self.acked
            .lock()
            .unwrap()
            .values()
            .filter(|(_, at)| *at >= t)
            .map(|(_, at)| *at - t)
            .min()
    }

    fn acked_before(&self, t: Instant) -> Vec<String> {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, (_, at))| *at < t)
            .map(|(text, _)| text.clone())
            .collect()
    }
}

struct Load {
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    /// Posts `RATE_PER_S` a second into `room` until stopped; message `i` goes
    /// to front `i % 2` first, then (after a refusal) to the other front.
    fn start(rig: &Rig, room: &str, tag: &str) -> Load {
        let ledger = Arc::new(Ledger::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (http, token, ports, room, tag) = (
            rig.http.clone(),
            rig.token.clone(),
            rig.ports.clone(),
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
                    ports.clone(),
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

    async fn stop(self) -> Arc<Ledger> {
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
async fn post_with_retry(
    http: reqwest::Client,
    token: String,
    ports: Arc<Mutex<Vec<u16>>>,
    room: String,
    text: String,
    i: usize,
    ledger: Arc<Ledger>,
) {
    for attempt in 0..3 {
        let port = {
            let p = ports.lock().unwrap();
            p[(i + attempt) % p.len()]
        };
        let res = http
            .post(format!("http://127.0.0.1:{port}/v1/rooms/{room}/danmaku"))
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
struct ViewerLog {
    /// (seq, text) in delivery order, across connections.
    got: Vec<(u64, String)>,
    connections: usize,
    /// Hellos that said `"reset": true` or changed the epoch.
    resets: Vec<Value>,
    /// When each reconnection after the first connection succeeded.
    reconnected_at: Vec<Instant>,
}

struct Viewers {
    /// Viewers stop once they hold this many messages (set at the end).
    target: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<ViewerLog>>,
}

impl Viewers {
    /// `VIEWERS_PER_FRONT` WebSocket viewers on each front; each resumes with
    /// its cursor and epoch (on the next front that answers) whenever its
    /// connection ends.
    async fn start(rig: &Rig, room: &str) -> Viewers {
        let target = Arc::new(AtomicUsize::new(usize::MAX));
        let mut tasks = Vec::new();
        let n = rig.ports.lock().unwrap().len();
        for k in 0..n * VIEWERS_PER_FRONT {
            let (ports, room, target) = (rig.ports.clone(), room.to_string(), target.clone());
            let first = WsViewer::connect(&format!(
                "ws://127.0.0.1:{}/v1/rooms/{room}/ws",
                ports.lock().unwrap()[k % n]
            ))
            .await;
            tasks.push(tokio::spawn(watch(first, ports, room, k % n, target)));
        }
        Viewers { target, tasks }
    }

    /// Lets the viewers finish once they have `n` messages (or 30 s passed).
    async fn finish(self, n: usize) -> Vec<ViewerLog> {
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

async fn watch(
    first: WsViewer,
    ports: Arc<Mutex<Vec<u16>>>,
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
            // Reconnect with cursor and epoch, to the next front in turn.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let url = {
                let p = ports.lock().unwrap();
                front = (front + 1) % p.len();
                format!(
                    "ws://127.0.0.1:{}/v1/rooms/{room}/ws?cursor={cursor}&epoch={epoch}",
                    p[front]
                )
            };
            if let Ok(v) = WsViewer::try_connect(&url).await {
                if v.hello.get("reset").is_some() || v.epoch != epoch {
                    log.resets.push(v.hello.clone());
                }
                log.connections += 1;
                log.reconnected_at.push(Instant::now());
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
        if v.ended.is_some() {
            viewer = None;
        }
    }
}

fn text_of(m: &Value) -> &str {
    m["text"].as_str().expect("message text")
}

// ---- checks and figures --------------------------------------------------------

/// Waits until the room holds every acknowledged message and has not changed
/// for a second (a post answered 503 after a broker timeout may still land);
/// returns what it holds.
async fn settled_store(rig: &Rig, room: &str, ledger: &Ledger, within: Duration) -> Vec<Value> {
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
async fn caught_up(
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

struct Figures {
    sent: usize,
    acked: usize,
    refused: usize,
    stored: usize,
    delivered: usize,
    duplicates: usize,
    lost_acked: usize,
}

/// The invariants over what was acknowledged, stored and delivered; panics
/// with the evidence, or returns the figures. `excused` are acknowledged
/// texts the fault is allowed to lose (only a non-durable broker's).
fn check(
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
    assert_eq!(duplicates, 0, "{fault}: duplicates");
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

fn figure_line(fault: &str, f: &Figures, recovery: Duration, extra: &str) -> String {
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

fn secs(d: Option<Duration>) -> String {
    d.map_or("never".into(), |d| format!("{:.1}", d.as_secs_f64()))
}

/// Waits (up to `within`) for the first acknowledgement at or after `t`.
async fn first_ack_after(ledger: &Ledger, t: Instant, within: Duration, fault: &str) -> Duration {
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

fn assert_within(fault: &str, what: &str, got: Duration, bound: Duration) {
    assert!(
        got <= bound,
        "{fault}: {what} took {:.1} s (bound {:.0} s)",
        got.as_secs_f64(),
        bound.as_secs_f64()
    );
}

// ---- the faults ------------------------------------------------------------------

/// Redis SIGKILLed (AOF, fsync always) and restarted on its port: posts are
/// refused meanwhile (503, never a false ack), fronts and the processor
/// reconnect by themselves, the epoch survives so viewers resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_redis_sigkill() {
    let Some(()) = programs(&[]) else { return };
    let _one = SERIAL.lock().await;
    let mut rig = Rig::start("redis", tokio::task::block_in_place(Kafka::start), 1, &[]).await;
    let room = format!("chaos-redis-{}", now_ms());
    let viewers = Viewers::start(&rig, &room).await;
    let load = Load::start(&rig, &room, "r");
    tokio::time::sleep(STEADY).await;

    let killed = Instant::now();
    rig.redis.sigkill();
    tokio::time::sleep(DOWN).await;
    tokio::task::block_in_place(|| rig.redis.spawn());
    let restarted = Instant::now();
    let acked_again =
        first_ack_after(&load.ledger, restarted, Duration::from_secs(20), "redis").await;
    let nodes: Vec<&Node> = rig.fronts.iter().chain(&rig.processors).collect();
    let ready = rig
        .all_ready(&nodes, Duration::from_secs(20), "redis")
        .await;
    let before_kill = load.ledger.acked_before(killed);
    let caught = caught_up(&rig, &room, &before_kill, killed, Duration::from_secs(20)).await;
    tokio::time::sleep(STEADY).await;

    let ledger = load.stop().await;
    let stored = settled_store(&rig, &room, &ledger, Duration::from_secs(30)).await;
    let logs = viewers.finish(stored.len()).await;
    let f = check("redis", &ledger, &stored, &logs, &HashSet::new());
    let recovery = acked_again.max(ready);
    eprintln!(
        "{}",
        figure_line(
            "redis",
            &f,
            recovery,
            &format!(
                "acked_again_s={:.1} ready_s={:.1} down_s={:.1} caught_up_s={} reconnects={} answers={:?}",
                acked_again.as_secs_f64(),
                ready.as_secs_f64(),
                (restarted - killed).as_secs_f64(),
                secs(caught),
                logs.iter().map(|l| l.connections - 1).sum::<usize>(),
                ledger.answers.lock().unwrap()
            )
        )
    );
    assert_within("redis", "recovery", recovery, Duration::from_secs(15));
}

/// A processor SIGKILLed (one of two) and restarted: posts are still
/// acknowledged meanwhile (the broker holds them); the survivor and the
/// restarted one take over its partitions; every acked message is stored
/// once (uncommitted deliveries come again; the store dedups them by id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_processor_sigkill() {
    let Some(()) = programs(&[]) else { return };
    let _one = SERIAL.lock().await;
    let mut rig = Rig::start(
        "processor",
        tokio::task::block_in_place(Kafka::start),
        2,
        &[],
    )
    .await;
    let room = format!("chaos-proc-{}", now_ms());
    let viewers = Viewers::start(&rig, &room).await;
    let load = Load::start(&rig, &room, "p");
    tokio::time::sleep(STEADY).await;

    // Kill the one that is storing the room's messages (a room's messages
    // go to one partition in gear 1, so one processor does the work).
    let mut work = Vec::new();
    for p in &rig.processors {
        work.push(rig.metric(p, "danmaku_messages_stored_total").await);
    }
    let busy = if work[1] > work[0] { 1 } else { 0 };
    let killed = Instant::now();
    rig.processors[busy].sigkill();
    tokio::time::sleep(DOWN).await;
    rig.processors[busy].restart();
    let restarted = Instant::now();
    let ready = rig
        .all_ready(
            &[&rig.processors[busy]],
            Duration::from_secs(30),
            "processor",
        )
        .await;
    let before_kill = load.ledger.acked_before(killed);
    let caught = caught_up(&rig, &room, &before_kill, killed, Duration::from_secs(60)).await;
    tokio::time::sleep(STEADY).await;

    let ledger = load.stop().await;
    let stored = settled_store(&rig, &room, &ledger, Duration::from_secs(60)).await;
    let logs = viewers.finish(stored.len()).await;
    let f = check("processor", &ledger, &stored, &logs, &HashSet::new());
    eprintln!(
        "{}",
        figure_line(
            "processor",
            &f,
            ready,
            &format!(
                "killed_had_stored={} survivor_had_stored={} down_s={:.1} caught_up_s={} answers={:?}",
                work[busy],
                work[1 - busy],
                (restarted - killed).as_secs_f64(),
                secs(caught),
                ledger.answers.lock().unwrap()
            )
        )
    );
    assert_eq!(f.refused, 0, "processor: the fronts kept acknowledging");
    assert_within("processor", "recovery", ready, Duration::from_secs(15));
    let caught =
        caught.expect("processor: the store caught up with what was acked before the kill");
    assert_within("processor", "catching up", caught, Duration::from_secs(45));
}

/// A front SIGKILLed with viewers on it: its viewers resume on the other
/// front with cursor and epoch and get exactly what they missed; posts to it
/// fail (never acked) and are retried on the other front; it restarts by
/// itself (a new process, a new port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_front_sigkill() {
    let Some(()) = programs(&[]) else { return };
    let _one = SERIAL.lock().await;
    let mut rig = Rig::start("front", tokio::task::block_in_place(Kafka::start), 1, &[]).await;
    let room = format!("chaos-front-{}", now_ms());
    let viewers = Viewers::start(&rig, &room).await;
    let load = Load::start(&rig, &room, "f");
    tokio::time::sleep(STEADY).await;

    let killed = Instant::now();
    rig.fronts[1].sigkill();
    tokio::time::sleep(DOWN).await;
    rig.fronts[1].restart();
    let restarted = Instant::now();
    let ready = rig
        .all_ready(&[&rig.fronts[1]], Duration::from_secs(30), "front")
        .await;
    rig.ports.lock().unwrap()[1] = rig.fronts[1].port;
    tokio::time::sleep(STEADY).await;

    let ledger = load.stop().await;
    let stored = settled_store(&rig, &room, &ledger, Duration::from_secs(30)).await;
    let logs = viewers.finish(stored.len()).await;
    let f = check("front", &ledger, &stored, &logs, &HashSet::new());
    // The killed front's viewers (odd indices) reconnected elsewhere.
    let resumed: Vec<Option<Duration>> = logs
        .iter()
        .skip(1)
        .step_by(2)
        .map(|l| l.reconnected_at.first().map(|t| *t - killed))
        .collect();
    for (k, r) in resumed.iter().enumerate() {
        assert!(r.is_some(), "front: viewer {} never reconnected", 2 * k + 1);
    }
    let resumed_s = resumed.iter().flatten().max().copied().unwrap_or_default();
    let retried = ledger
        .answers
        .lock()
        .unwrap()
        .get("transport")
        .copied()
        .unwrap_or(0);
    eprintln!(
        "{}",
        figure_line(
            "front",
            &f,
            ready,
            &format!(
                "down_s={:.1} viewers_resumed_s={:.1} failed_attempts_on_killed_front={retried} answers={:?}",
                (restarted - killed).as_secs_f64(),
                resumed_s.as_secs_f64(),
                ledger.answers.lock().unwrap()
            )
        )
    );
    assert!(retried > 0, "front: some posts went to the killed front");
    assert_within("front", "recovery", ready, Duration::from_secs(15));
    assert_within(
        "front",
        "viewers resuming",
        resumed_s,
        Duration::from_secs(5),
    );
}

/// The broker SIGKILLed and restarted on its port and log directory: posts
/// are refused meanwhile (503 within `publish_timeout_ms`, never a false
/// ack); fronts and the processor reconnect by themselves. Apache Kafka keeps
/// whatever it acknowledged across a kill of its process (the log is in the
/// page cache; on restart it recovers the unflushed segments), so no
/// acknowledged message may be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_broker_sigkill() {
    let Some(()) = programs(&[]) else { return };
    let _one = SERIAL.lock().await;
    let kafka = tokio::task::block_in_place(Kafka::start);
    let mut rig = Rig::start("broker", kafka, 1, &[]).await;
    let room = format!("chaos-broker-{}", now_ms());
    let viewers = Viewers::start(&rig, &room).await;
    let load = Load::start(&rig, &room, "b");
    tokio::time::sleep(STEADY).await;

    let killed = Instant::now();
    rig.kafka.sigkill();
    tokio::time::sleep(DOWN).await;
    tokio::task::block_in_place(|| rig.kafka.restart());
    let restarted = Instant::now();
    let acked_again =
        first_ack_after(&load.ledger, restarted, Duration::from_secs(30), "broker").await;
    let nodes: Vec<&Node> = rig.fronts.iter().chain(&rig.processors).collect();
    let ready = rig
        .all_ready(&nodes, Duration::from_secs(30), "broker")
        .await;
    let before_kill = load.ledger.acked_before(killed);
    let caught = caught_up(&rig, &room, &before_kill, killed, Duration::from_secs(30)).await;
    tokio::time::sleep(STEADY).await;

    let ledger = load.stop().await;
    let stored = settled_store(&rig, &room, &ledger, Duration::from_secs(30)).await;
    let excused: HashSet<String> = HashSet::new();
    let logs = viewers.finish(stored.len()).await;
    let f = check("broker", &ledger, &stored, &logs, &excused);
    let recovery = acked_again.max(ready);
    eprintln!(
        "{}",
        figure_line(
            "broker",
            &f,
            recovery,
            &format!(
                "acked_again_s={:.1} ready_s={:.1} down_s={:.1} caught_up_s={} answers={:?}",
                acked_again.as_secs_f64(),
                ready.as_secs_f64(),
                (restarted - killed).as_secs_f64(),
                secs(caught),
                ledger.answers.lock().unwrap()
            )
        )
    );
    assert_within("broker", "recovery", recovery, Duration::from_secs(20));
}

/// MariaDB SIGKILLed (and started again on its port and data) while the
/// archiver writes a live that is on, in small batches: the archiver retries
/// by itself, the end answers 200 once it has caught up, and the archive ends
/// with every message of the live exactly once. The live traffic (fronts,
/// processor, Redis) does not notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_mariadb_sigkill() {
    let Some(()) = programs(&["mariadbd", "mysql_install_db"]) else {
        return;
    };
    let _one = SERIAL.lock().await;
    let db = tokio::task::block_in_place(OwnMariaDb::start);
    let archive_env = [
        ("DANMAKU_ARCHIVE_URL", db.url()),
        ("DANMAKU_ARCHIVE__BATCH_SIZE", "20".into()),
        ("DANMAKU_ARCHIVE__BATCH_PAUSE_MS", "100".into()),
        ("DANMAKU_ARCHIVE__SETTLE_MS", "500".into()),
        ("DANMAKU_ARCHIVE__POLL_INTERVAL_MS", "100".into()),
    ];
    let mut archive_config = Config::embedded().archive;
    archive_config.url = db.url();
    // The roles start together on an empty database: each applies the
    // migrations at start, serialised by the archive's own lock.
    let rig = Rig::start(
        "mariadb",
        tokio::task::block_in_place(Kafka::start),
        1,
        &archive_env,
    )
    .await;
    let archiver = Node::spawn("archiver", &rig.env);
    archiver.ready(&rig.http).await;
    let room = format!("chaos-mariadb-{}", now_ms());
    let (s, body) = rig
        .admin_post(&format!("/v1/admin/rooms/{room}/live/start"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let live = body["live"]["id"].as_str().unwrap().to_string();
    let started_at = body["live"]["started_at"].as_u64().unwrap();
    let viewers = Viewers::start(&rig, &room).await;
    let load = Load::start(&rig, &room, "m");
    tokio::time::sleep(STEADY).await;

    // Kill it while the archiver writes the live.
    let archive = danmaku::archive::connect(&archive_config).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let rows_at_kill = loop {
        let n = archive.count(&live).await.unwrap();
        if n >= 40 {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "mariadb: the live is not being archived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let killed = Instant::now();
    tokio::task::block_in_place(|| db.sigkill());
    drop(archive);
    tokio::time::sleep(DOWN).await;
    tokio::task::block_in_place(|| db.start_again());
    let restarted = Instant::now();

    // The archiver catches up by itself; the front's archive pool recovers
    // too: the end answers 200 once everything before it is archived (503
    // while the front cannot reach the archive, 202 while the archiver is
    // behind; both may be retried).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (recovery, ended_at) = loop {
        let (s, body) = rig
            .admin_post(&format!("/v1/admin/rooms/{room}/live/end"))
            .await;
        if s == StatusCode::OK {
            assert_eq!(body["live"]["id"], live.as_str(), "{body}");
            break (
                restarted.elapsed(),
                body["live"]["ended_at"].as_u64().unwrap(),
            );
        }
        assert!(
            s == StatusCode::ACCEPTED || s == StatusCode::SERVICE_UNAVAILABLE,
            "mariadb: live/end {s} {body}"
        );
        assert!(
            Instant::now() < deadline,
            "mariadb: the live was not archived within 30 s of the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(STEADY).await;
    let ledger = load.stop().await;
    let stored = settled_store(&rig, &room, &ledger, Duration::from_secs(30)).await;
    let logs = viewers.finish(stored.len()).await;
    let f = check("mariadb", &ledger, &stored, &logs, &HashSet::new());

    // The archive holds exactly the live's stored messages, each once.
    let archive = danmaku::archive::connect(&archive_config).await.unwrap();
    let rows = archive.read_window(&live, 0, u64::MAX >> 2).await.unwrap();
    let want: Vec<(u64, String)> = stored
        .iter()
        .filter(|m| {
            let ts = m["ts"].as_u64().unwrap();
            ts >= started_at && ts <= ended_at
        })
        .map(|m| {
            (
                m["seq"].as_u64().unwrap(),
                m["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut got: Vec<(u64, String)> = rows
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(&r.json).unwrap();
            (r.seq, v["id"].as_str().unwrap().to_string())
        })
        .collect();
    got.sort();
    let archive_dups = got.len() - got.iter().map(|(s, _)| *s).collect::<HashSet<_>>().len();
    assert_eq!(archive_dups, 0, "mariadb: a message archived twice");
    assert_eq!(
        archive.count(&live).await.unwrap(),
        want.len() as u64,
        "mariadb: archive row count"
    );
    assert_eq!(
        got, want,
        "mariadb: the archive is the live, no more, no less"
    );
    assert!(
        (rows_at_kill as usize) < want.len(),
        "mariadb: killed after the live was archived ({rows_at_kill} of {})",
        want.len()
    );
    eprintln!(
        "{}",
        figure_line(
            "mariadb",
            &f,
            recovery,
            &format!(
                "live_messages={} archived={} archive_duplicates={archive_dups} \
                 archived_at_kill={rows_at_kill} down_s={:.1} answers={:?}",
                want.len(),
                got.len(),
                (restarted - killed).as_secs_f64(),
                ledger.answers.lock().unwrap()
            )
        )
    );
    assert_eq!(
        f.refused, 0,
        "mariadb: live traffic does not need the archive"
    );
    assert_within("mariadb", "recovery", recovery, Duration::from_secs(20));
    drop(archiver);
}
