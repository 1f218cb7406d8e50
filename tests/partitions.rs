//! Network partitions (issue 23): under steady load, cut one process off
//! part of the network for `DANMAKU_PARTITION_SECONDS` (default 5; the
//! figures in BENCHMARKS.md "Fault suite" are of 10), then heal, and hold the
//! fault suite's invariants (tests/chaos.rs): every acknowledged message
//! stored exactly once, every viewer gets exactly the stored messages, each
//! role recovers by itself. The cuts:
//!
//! - **a front cut from Redis** (not from Kafka): its answers during the cut
//!   are answers (202, or 503 with an error code), never hangs, within
//!   [`ANSWER_BOUND`]; its `/readyz` turns 503 saying `"store": false`, so a
//!   load balancer drains it; its reads answer too;
//! - **the processor cut from Kafka**: the fronts keep acknowledging; its
//!   `/readyz` turns 503 saying `"bus": false`; after the heal it resumes
//!   from its committed offsets and the store catches up;
//! - **a front cut from everything** (a lost host): clients time out on it
//!   and their retries go to the other front, which keeps acknowledging.
//!
//! Each process runs in a network namespace of its own, joined to a bridge
//! that carries the Redis and Kafka addresses (tests/common/netns.rs); a cut
//! drops packets with nftables, so connections hang as across a real
//! partition rather than being refused. The load and the viewers are the
//! fault suite's (tests/common/fault.rs): one publisher at `RATE_PER_S`,
//! round robin over the two fronts, a refused post retried on the other;
//! WebSocket viewers on the front that is not cut.
//!
//! Each cut prints one line, `chaos cut-<what>: sent=.. acked=.. refused=..
//! stored=.. delivered=.. duplicates=0 lost_acked=0 recovery_s=..` and the
//! cut's own figures: `during_cut` = the cut process's answers by status
//! (and error code), `max_answer_s` = the slowest of them, `readyz_503_s` =
//! from the cut to its `/readyz` answering 503. `recovery_s` is from the heal
//! to the cut front's first acknowledgement with its `/readyz` 200 (fronts),
//! or to the store holding every message acknowledged before the heal
//! (processor).
//!
//! Needs root, `ip` and `nft` besides the fault suite's programs; without
//! them it skips, unless `DANMAKU_REQUIRE_SERVICES=1`, where it fails.
//! `scripts/partitions.sh` runs it alone.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fault::*;
use common::netns::{require_netns, Cut, Net};
use common::now_ms;
use common::procs::{free_port, Kafka, Node, OwnRedis, Placement};
use reqwest::StatusCode;
use serde_json::Value;

/// One cut at a time (see tests/chaos.rs).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The longest a reachable front may take to answer anything during a cut.
const ANSWER_BOUND: Duration = Duration::from_secs(6);
/// The longest `/readyz` may take, however many of its checks time out:
/// each check's bound is 1 s and they run at once (one after the other, two
/// that time out would take 2 s and more); the rest is a busy machine's
/// slack.
const READY_BOUND: Duration = Duration::from_millis(1900);

fn cut_for() -> Duration {
    let s = std::env::var("DANMAKU_PARTITION_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(5);
    Duration::from_secs(s)
}

/// A processor and two fronts, each in a namespace of its own, on a Redis
/// and a Kafka bound to addresses of the bridge.
struct Cluster {
    // Dropped in this order: the processes, then the network.
    rig: Rig,
    net: Net,
    redis_ip: Ipv4Addr,
    kafka_ip: Ipv4Addr,
    processor_at: Placement,
    fronts_at: Vec<Placement>,
}

impl Cluster {
    async fn start(name: &str) -> Option<Cluster> {
        programs(&[])?;
        require_netns()?;
        let mut net = Net::create();
        let redis_ip = net.service_addr(2);
        let kafka_ip = net.service_addr(3);
        let redis = tokio::task::block_in_place(|| OwnRedis::start_on(&redis_ip.to_string()));
        let kafka = tokio::task::block_in_place(|| {
            Kafka::start_on(&kafka_ip.to_string(), free_port(), None)
        });
        let processor_at = net.host();
        let fronts_at = vec![net.host(), net.host()];
        let rig = Rig::start_placed(
            name,
            redis,
            kafka,
            vec![Some(processor_at.clone())],
            fronts_at.iter().cloned().map(Some).collect(),
            // Not on loopback: a node refuses the development secrets there.
            &[
                ("DANMAKU_JWT_SECRET", "partition-suite-jwt-secret".into()),
                ("DANMAKU_GIFT_SECRETS", "partition-suite-gift-secret".into()),
            ],
        )
        .await;
        Some(Cluster {
            rig,
            net,
            redis_ip,
            kafka_ip,
            processor_at,
            fronts_at,
        })
    }
}

// ---- what the cut process answers --------------------------------------------

/// `/readyz` (and, for a front, reads) of one node, asked every 200 ms.
#[derive(Default)]
struct Probes {
    /// (since the cut, path, status or `None` for no answer, how long, body)
    seen: Vec<(Duration, String, Option<StatusCode>, Duration, Value)>,
}

impl Probes {
    /// The first `/readyz` 503 whose `checks[check]` is false: how long
    /// after the cut.
    fn readyz_503(&self, check: &str) -> Option<Duration> {
        self.seen
            .iter()
            .find(|(_, path, s, _, body)| {
                path == "/readyz"
                    && *s == Some(StatusCode::SERVICE_UNAVAILABLE)
                    && body["checks"][check] == false
            })
            .map(|(at, ..)| *at)
    }

    /// Answers to `path` by status, and the slowest.
    fn summary(&self, path: &str) -> (BTreeMap<String, usize>, Duration) {
        let mut by = BTreeMap::new();
        let mut slowest = Duration::ZERO;
        for (_, _, s, took, body) in self.seen.iter().filter(|(_, p, ..)| p == path) {
            *by.entry(answer_key(*s, body["error"]["code"].as_str()))
                .or_insert(0) += 1;
            slowest = slowest.max(*took);
        }
        (by, slowest)
    }
}

/// Asks `base` + each of `paths` (each path on its own, one request at a
/// time, 200 ms apart) until stopped; a 10 s client timeout stands for a
/// hang.
fn probe(
    http: &reqwest::Client,
    base: String,
    paths: Vec<String>,
    since: Instant,
) -> (
    Arc<Mutex<Probes>>,
    Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinSet<()>,
) {
    let probes = Arc::new(Mutex::new(Probes::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for path in paths {
        let (p, s, http, base) = (probes.clone(), stop.clone(), http.clone(), base.clone());
        tasks.spawn(async move {
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                let t = Instant::now();
                let (status, body) = match http.get(format!("{base}{path}")).send().await {
                    Ok(r) => (Some(r.status()), r.json().await.unwrap_or(Value::Null)),
                    Err(_) => (None, Value::Null),
                };
                p.lock().unwrap().seen.push((
                    since.elapsed(),
                    path.clone(),
                    status,
                    t.elapsed(),
                    body,
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
    (probes, stop, tasks)
}

/// `202`, `503 store_unavailable` (status and error code), or `none` (no
/// answer).
fn answer_key(status: Option<StatusCode>, code: Option<&str>) -> String {
    match (status, code) {
        (None, _) => "none".to_string(),
        (Some(s), None) => s.as_u16().to_string(),
        (Some(s), Some(c)) => format!("{} {c}", s.as_u16()),
    }
}

/// The post attempts sent to `to` in `[from, until)`: by answer (status and
/// error code, or `none`), and the slowest.
fn attempts_to(
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
async fn first_ack_by(ledger: &Ledger, to: SocketAddr, t: Instant, within: Duration) -> Duration {
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

// ---- the cuts ----------------------------------------------------------------

/// Front 1 cut from Redis, not from Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_front_from_redis() {
    let _one = SERIAL.lock().await;
    let Some(c) = Cluster::start("cut-redis").await else {
        return;
    };
    let rig = &c.rig;
    let room = format!("cut-redis-{}", now_ms());
    let cold_room = format!("cut-redis-cold-{}", now_ms());
    let viewers = Viewers::start_on(rig, &room, &[0], 4).await;
    let load = Load::start(rig, &room, "r");
    tokio::time::sleep(STEADY).await;

    let front = &rig.fronts[1];
    let cut_at = Instant::now();
    c.net.cut(&c.fronts_at[1], &Cut::From(vec![c.redis_ip]));
    // Reads: the busy room (its hub is warm) and a room this front has not
    // served yet (whatever it answers needs the store).
    let (probes, stop, mut tasks) = probe(
        &rig.http,
        front.base(),
        vec![
            "/readyz".into(),
            format!("/v1/rooms/{room}/poll?wait_ms=0"),
            format!("/v1/rooms/{cold_room}/poll?wait_ms=0"),
        ],
        cut_at,
    );
    tokio::time::sleep(cut_for()).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
    c.net.heal(&c.fronts_at[1]);
    let healed = Instant::now();

    let acked_again =
        first_ack_by(&load.ledger, front.addr(), healed, Duration::from_secs(20)).await;
    let ready = rig
        .all_ready(&[front], Duration::from_secs(20), "cut-redis")
        .await;
    tokio::time::sleep(STEADY).await;
    let ledger = load.stop().await;
    let stored = settled_store(rig, &room, &ledger, Duration::from_secs(30)).await;
    let logs = viewers.finish(stored.len()).await;
    let f = check("cut-redis", &ledger, &stored, &logs, &HashSet::new());

    let (during, slowest) = attempts_to(&ledger, front.addr(), cut_at, healed);
    let probes = probes.lock().unwrap();
    let readyz_503 = probes.readyz_503("store");
    let (readyz, readyz_slowest) = probes.summary("/readyz");
    let (warm, warm_slowest) = probes.summary(&format!("/v1/rooms/{room}/poll?wait_ms=0"));
    let (cold, cold_slowest) = probes.summary(&format!("/v1/rooms/{cold_room}/poll?wait_ms=0"));
    let recovery = acked_again.max(ready);
    eprintln!(
        "{}",
        figure_line(
            "cut-redis",
            &f,
            recovery,
            &format!(
                "cut_s={:.0} during_cut={during:?} max_answer_s={:.1} readyz_503_s={} \
                 readyz={readyz:?} readyz_max_s={:.1} warm_poll={warm:?} warm_poll_max_s={:.1} \
                 cold_poll={cold:?} cold_poll_max_s={:.1} acked_again_s={:.1} ready_s={:.1}",
                cut_for().as_secs_f64(),
                slowest.as_secs_f64(),
                secs(readyz_503),
                readyz_slowest.as_secs_f64(),
                warm_slowest.as_secs_f64(),
                cold_slowest.as_secs_f64(),
                acked_again.as_secs_f64(),
                ready.as_secs_f64(),
            )
        )
    );
    assert!(
        !during.contains_key("none"),
        "cut-redis: a post to the front cut from Redis got no answer: {during:?}"
    );
    assert_within(
        "cut-redis",
        "the slowest post answer",
        slowest,
        ANSWER_BOUND,
    );
    assert_within(
        "cut-redis",
        "the slowest readyz",
        readyz_slowest,
        READY_BOUND,
    );
    for (what, by, took) in [
        ("readyz", &readyz, readyz_slowest),
        ("a warm poll", &warm, warm_slowest),
        ("a cold poll", &cold, cold_slowest),
    ] {
        // An answer: a success (served from the front's cache) or a 503
        // with an error code; never a hang, never a 500.
        let bad: Vec<&String> = by
            .keys()
            .filter(|k| !(k.starts_with('2') || k.starts_with("503 ") || *k == "503"))
            .collect();
        assert!(bad.is_empty(), "cut-redis: {what} answered {by:?}");
        assert_within(
            "cut-redis",
            &format!("the slowest {what}"),
            took,
            ANSWER_BOUND,
        );
    }
    let readyz_503 = readyz_503.expect("cut-redis: /readyz never said 503 with store false");
    assert_within(
        "cut-redis",
        "readyz turning 503",
        readyz_503,
        Duration::from_secs(4),
    );
    assert_within("cut-redis", "recovery", recovery, Duration::from_secs(15));
}

/// The processor cut from Kafka (not from Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_processor_from_kafka() {
    let _one = SERIAL.lock().await;
    let Some(c) = Cluster::start("cut-bus").await else {
        return;
    };
    let rig = &c.rig;
    let room = format!("cut-bus-{}", now_ms());
    let viewers = Viewers::start_on(rig, &room, &[0], 4).await;
    let load = Load::start(rig, &room, "p");
    tokio::time::sleep(STEADY).await;

    let processor: &Node = &rig.processors[0];
    let cut_at = Instant::now();
    c.net.cut(&c.processor_at, &Cut::From(vec![c.kafka_ip]));
    let (probes, stop, mut tasks) =
        probe(&rig.http, processor.base(), vec!["/readyz".into()], cut_at);
    tokio::time::sleep(cut_for()).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
    let stored_during = rig.stored(&room).await.len();
    c.net.heal(&c.processor_at);
    let healed = Instant::now();

    let acked = load.ledger.acked_before(healed);
    let caught = caught_up(rig, &room, &acked, healed, Duration::from_secs(60)).await;
    let ready = rig
        .all_ready(&[processor], Duration::from_secs(30), "cut-bus")
        .await;
    tokio::time::sleep(STEADY).await;
    let ledger = load.stop().await;
    let stored = settled_store(rig, &room, &ledger, Duration::from_secs(30)).await;
    let logs = viewers.finish(stored.len()).await;
    let f = check("cut-bus", &ledger, &stored, &logs, &HashSet::new());

    let acked_during = ledger
        .acked
        .lock()
        .unwrap()
        .values()
        .filter(|(_, at)| *at >= cut_at && *at < healed)
        .count();
    let probes = probes.lock().unwrap();
    let readyz_503 = probes.readyz_503("bus");
    let (readyz, readyz_slowest) = probes.summary("/readyz");
    let caught = caught.expect("cut-bus: the store caught up with what was acked before the heal");
    eprintln!(
        "{}",
        figure_line(
            "cut-bus",
            &f,
            caught,
            &format!(
                "cut_s={:.0} acked_during_cut={acked_during} stored_at_heal={stored_during} \
                 readyz_503_s={} readyz={readyz:?} readyz_max_s={:.1} ready_s={:.1} answers={:?}",
                cut_for().as_secs_f64(),
                secs(readyz_503),
                readyz_slowest.as_secs_f64(),
                ready.as_secs_f64(),
                ledger.answers.lock().unwrap()
            )
        )
    );
    assert_eq!(f.refused, 0, "cut-bus: the fronts kept acknowledging");
    assert!(
        acked_during > 0,
        "cut-bus: nothing acknowledged during the cut"
    );
    let readyz_503 =
        readyz_503.expect("cut-bus: the processor's /readyz never said 503 with bus false");
    assert_within(
        "cut-bus",
        "readyz turning 503",
        readyz_503,
        Duration::from_secs(4),
    );
    assert_within("cut-bus", "the slowest readyz", readyz_slowest, READY_BOUND);
    assert_within("cut-bus", "catching up", caught, Duration::from_secs(30));
}

/// Front 1 cut from everything (a lost host), viewers and posts included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_front_from_everything() {
    let _one = SERIAL.lock().await;
    let Some(c) = Cluster::start("cut-all").await else {
        return;
    };
    let rig = &c.rig;
    let room = format!("cut-all-{}", now_ms());
    let viewers = Viewers::start_on(rig, &room, &[0], 4).await;
    let load = Load::start(rig, &room, "a");
    tokio::time::sleep(STEADY).await;

    let front = &rig.fronts[1];
    let cut_at = Instant::now();
    c.net.cut(&c.fronts_at[1], &Cut::Everything);
    tokio::time::sleep(cut_for()).await;
    c.net.heal(&c.fronts_at[1]);
    let healed = Instant::now();

    let acked_again =
        first_ack_by(&load.ledger, front.addr(), healed, Duration::from_secs(30)).await;
    let ready = rig
        .all_ready(&[front], Duration::from_secs(30), "cut-all")
        .await;
    tokio::time::sleep(STEADY).await;
    let ledger = load.stop().await;
    let stored = settled_store(rig, &room, &ledger, Duration::from_secs(30)).await;
    let logs = viewers.finish(stored.len()).await;
    let f = check("cut-all", &ledger, &stored, &logs, &HashSet::new());

    let (during, slowest) = attempts_to(&ledger, front.addr(), cut_at, healed);
    let (healthy, _) = attempts_to(&ledger, rig.fronts[0].addr(), cut_at, healed);
    let recovery = acked_again.max(ready);
    eprintln!(
        "{}",
        figure_line(
            "cut-all",
            &f,
            recovery,
            &format!(
                "cut_s={:.0} during_cut={during:?} max_answer_s={:.1} healthy_front_during_cut={healthy:?} \
                 acked_again_s={:.1} ready_s={:.1}",
                cut_for().as_secs_f64(),
                slowest.as_secs_f64(),
                acked_again.as_secs_f64(),
                ready.as_secs_f64(),
            )
        )
    );
    assert!(
        healthy.get("202").copied().unwrap_or(0) > 0,
        "cut-all: the healthy front acknowledged nothing during the cut: {healthy:?}"
    );
    assert_within("cut-all", "recovery", recovery, Duration::from_secs(15));
}

/// Front 1 cut from Kafka (not from Redis): its posts answer 503 within the
/// publish timeout; then, cut from Redis too, its `/readyz` still answers
/// within about one check's timeout, naming both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_front_from_kafka() {
    let _one = SERIAL.lock().await;
    let Some(c) = Cluster::start("cut-kafka").await else {
        return;
    };
    let rig = &c.rig;
    let room = format!("cut-kafka-{}", now_ms());
    let viewers = Viewers::start_on(rig, &room, &[0], 4).await;
    let load = Load::start(rig, &room, "k");
    tokio::time::sleep(STEADY).await;

    let front = &rig.fronts[1];
    let cut_at = Instant::now();
    c.net.cut(&c.fronts_at[1], &Cut::From(vec![c.kafka_ip]));
    let (probes, stop, mut tasks) = probe(&rig.http, front.base(), vec!["/readyz".into()], cut_at);
    tokio::time::sleep(cut_for()).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
    c.net.heal(&c.fronts_at[1]);
    let healed = Instant::now();

    let acked_again =
        first_ack_by(&load.ledger, front.addr(), healed, Duration::from_secs(20)).await;
    let ready = rig
        .all_ready(&[front], Duration::from_secs(20), "cut-kafka")
        .await;
    tokio::time::sleep(STEADY).await;
    let ledger = load.stop().await;
    let stored = settled_store(rig, &room, &ledger, Duration::from_secs(30)).await;
    let logs = viewers.finish(stored.len()).await;
    let f = check("cut-kafka", &ledger, &stored, &logs, &HashSet::new());

    // Cut from both: the checks run at once, so no slower than one.
    let both_at = Instant::now();
    c.net
        .cut(&c.fronts_at[1], &Cut::From(vec![c.kafka_ip, c.redis_ip]));
    let (both, stop, mut tasks) = probe(&rig.http, front.base(), vec!["/readyz".into()], both_at);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
    c.net.heal(&c.fronts_at[1]);

    let (during, slowest) = attempts_to(&ledger, front.addr(), cut_at, healed);
    let probes = probes.lock().unwrap();
    let readyz_503 = probes.readyz_503("bus");
    let (readyz, readyz_slowest) = probes.summary("/readyz");
    let both = both.lock().unwrap();
    let (both_readyz, both_slowest) = both.summary("/readyz");
    let recovery = acked_again.max(ready);
    eprintln!(
        "{}",
        figure_line(
            "cut-kafka",
            &f,
            recovery,
            &format!(
                "cut_s={:.0} during_cut={during:?} max_answer_s={:.1} readyz_503_s={} \
                 readyz={readyz:?} readyz_max_s={:.1} readyz_cut_from_both={both_readyz:?} \
                 readyz_cut_from_both_max_s={:.1} acked_again_s={:.1} ready_s={:.1}",
                cut_for().as_secs_f64(),
                slowest.as_secs_f64(),
                secs(readyz_503),
                readyz_slowest.as_secs_f64(),
                both_slowest.as_secs_f64(),
                acked_again.as_secs_f64(),
                ready.as_secs_f64(),
            )
        )
    );
    assert!(
        !during.contains_key("none"),
        "cut-kafka: a post to the front cut from Kafka got no answer: {during:?}"
    );
    assert!(
        during.contains_key("503 bus_unavailable"),
        "cut-kafka: no post was refused with 503 bus_unavailable: {during:?}"
    );
    assert_within(
        "cut-kafka",
        "the slowest post answer",
        slowest,
        ANSWER_BOUND,
    );
    let readyz_503 = readyz_503.expect("cut-kafka: /readyz never said 503 with bus false");
    assert_within(
        "cut-kafka",
        "readyz turning 503",
        readyz_503,
        Duration::from_secs(4),
    );
    assert_within(
        "cut-kafka",
        "the slowest readyz",
        readyz_slowest,
        READY_BOUND,
    );
    assert!(
        both.seen
            .iter()
            .any(|(.., body)| body["checks"]["store"] == false && body["checks"]["bus"] == false),
        "cut-kafka: /readyz of a front cut from both never named both: {both_readyz:?}"
    );
    assert_within(
        "cut-kafka",
        "readyz cut from both",
        both_slowest,
        READY_BOUND,
    );
    assert_within("cut-kafka", "recovery", recovery, Duration::from_secs(15));
}
