//! Network partitions (issue 23): under steady load, cut one process off
//! part of the network for `DANMAKU_PARTITION_SECONDS` (default 5; the
//! figures in BENCHMARKS.md "Fault suite" are of 10), then heal, and hold the
//! fault suite's invariants (tests/chaos.rs): every acknowledged message
//! stored exactly once, every viewer gets exactly the stored messages, each
//! role recovers by itself. The cuts:
//!
//! - **a front cut from Redis** (not from Kafka): its answers during the cut
//!   are answers (202, or 503 with an error code), never hangs, within
//!   [`ANSWER_BOUND`]; once it has refused a post it refuses the rest at
//!   once (the store health gate), within [`FAST_REFUSAL_BOUND`]; its
//!   `/readyz` turns 503 saying `"store": false`, so a load balancer drains
//!   it; its reads answer too; it acknowledges again within
//!   [`REDIS_RECOVERY_BOUND`] of the heal; its viewers get every message,
//!   each once, after the heal;
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
//! WebSocket viewers on both fronts (on front 0 only when front 1 is cut
//! from everything: its viewers' reconnection is tests/chaos.rs's front kill).
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
use std::sync::atomic::{AtomicBool, Ordering};
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
/// The longest a front cut from Redis may take to refuse a post once it has
/// refused one: the store health gate (src/store/redis/health.rs) fails
/// calls at once while Redis is unreachable, instead of each waiting out the
/// 5 s response timeout.
const FAST_REFUSAL_BOUND: Duration = Duration::from_secs(1);
/// The longest from the heal to the front cut from Redis acknowledging
/// again (and `/readyz` 200): the gate's prober swaps a fresh connection in
/// on its first `PONG` (every 250 ms), rather than waiting on the old
/// connection's TCP retransmission backoff.
const REDIS_RECOVERY_BOUND: Duration = Duration::from_millis(1500);
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
    /// Takes the suite's lock (one cut at a time) and starts a cluster;
    /// `None`: skipped (see [`require_netns`]).
    async fn start_alone(name: &str) -> Option<(tokio::sync::MutexGuard<'static, ()>, Cluster)> {
        let one = SERIAL.lock().await;
        Some((one, Self::start(name).await?))
    }

    async fn start(name: &str) -> Option<Cluster> {
        require_netns()?;
        programs(&[])?;
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

/// Requests in flight against one node while it is cut.
struct Probing {
    probes: Arc<Mutex<Probes>>,
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Probing {
    /// Asks `base` + each of `paths` (each path on its own, one request at
    /// a time, 200 ms apart) until [`Probing::finish`]; the client's 10 s
    /// timeout stands for a hang.
    fn start(http: &reqwest::Client, base: String, paths: Vec<String>, since: Instant) -> Probing {
        let probes = Arc::new(Mutex::new(Probes::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for path in paths {
            let (p, s, http, base) = (probes.clone(), stop.clone(), http.clone(), base.clone());
            tasks.spawn(async move {
                while !s.load(Ordering::SeqCst) {
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
        Probing {
            probes,
            stop,
            tasks,
        }
    }

    /// Stops asking (after the requests in flight end); what was answered.
    async fn finish(mut self) -> Probes {
        self.stop.store(true, Ordering::SeqCst);
        while let Some(t) = self.tasks.join_next().await {
            t.unwrap();
        }
        std::mem::take(&mut *self.probes.lock().unwrap())
    }
}

// ---- one cut under load ------------------------------------------------------------

/// Which process a cut isolates.
#[derive(Clone, Copy)]
enum Target {
    Front(usize),
    Processor,
}

/// What a cut under load came to, invariants checked.
struct Outcome {
    f: Figures,
    ledger: Arc<Ledger>,
    /// What the cut process answered to the probes during the cut.
    probes: Probes,
    cut_at: Instant,
    healed: Instant,
    /// Fronts: heal → its first acknowledged post, with `/readyz` 200.
    /// Processor: heal → every post acknowledged before the heal stored.
    recovery: Duration,
    /// Posts in the store when the cut was healed.
    stored_at_heal: usize,
    room: String,
    /// Viewers on each front (front 1's are on the cut one, if a front is).
    viewers_on: Vec<usize>,
    /// Reconnections of the viewers, all told.
    reconnects: usize,
}

/// Under the fault suite's load in a room of its own (viewers on front 0),
/// cuts `target` off `cut` for [`cut_for`] while asking it `probe_paths`
/// (`{room}` in a path stands for the room), heals, waits for recovery and
/// checks the invariants.
async fn cut_under_load(
    c: &Cluster,
    tag: &str,
    target: Target,
    cut: Cut,
    probe_paths: &[&str],
) -> Outcome {
    let rig = &c.rig;
    let room = &format!("{tag}-{}", now_ms());
    let probe_paths = probe_paths
        .iter()
        .map(|p| p.replace("{room}", room))
        .collect();
    // Viewers on a front that stays reachable (a front cut from everything
    // is a lost host: its viewers' reconnection is the fault suite's front
    // kill).
    let on: &[usize] = match (&target, &cut) {
        (Target::Front(_), Cut::Everything) => &[0],
        _ => &[0, 1],
    };
    let viewers = Viewers::start_on(rig, room, on, 4 / on.len()).await;
    let load = Load::start(rig, room, tag);
    tokio::time::sleep(STEADY).await;

    let (node, at): (&Node, &Placement) = match target {
        Target::Front(k) => (&rig.fronts[k], &c.fronts_at[k]),
        Target::Processor => (&rig.processors[0], &c.processor_at),
    };
    let cut_at = Instant::now();
    c.net.cut(at, &cut);
    let probing = Probing::start(&rig.http, node.base(), probe_paths, cut_at);
    tokio::time::sleep(cut_for()).await;
    let probes = probing.finish().await;
    let stored_at_heal = rig.stored(room).await.len();
    c.net.heal(at);
    let healed = Instant::now();

    let recovery = match target {
        Target::Front(_) => {
            let acked =
                first_ack_by(&load.ledger, node.addr(), healed, Duration::from_secs(30)).await;
            let ready = rig.all_ready(&[node], Duration::from_secs(30), tag).await;
            acked.max(ready)
        }
        Target::Processor => {
            let acked = load.ledger.acked_before(healed);
            let caught = caught_up(rig, room, &acked, healed, Duration::from_secs(60)).await;
            rig.all_ready(&[node], Duration::from_secs(30), tag).await;
            caught.unwrap_or_else(|| {
                panic!("{tag}: the store did not catch up with what was acked before the heal")
            })
        }
    };
    tokio::time::sleep(STEADY).await;
    let ledger = load.stop().await;
    let stored = settled_store(rig, room, &ledger, Duration::from_secs(30)).await;
    let logs = viewers.finish(stored.len()).await;
    let f = check(tag, &ledger, &stored, &logs, &HashSet::new());
    Outcome {
        f,
        ledger,
        probes,
        cut_at,
        healed,
        recovery,
        stored_at_heal,
        room: room.clone(),
        viewers_on: on.to_vec(),
        reconnects: logs.iter().map(|l| l.connections - 1).sum(),
    }
}

impl Outcome {
    /// Posts sent to `to` during the cut: by answer, and the slowest.
    fn during(&self, to: SocketAddr) -> (BTreeMap<String, usize>, Duration) {
        attempts_to(&self.ledger, to, self.cut_at, self.healed)
    }

    /// The figure line: the fault suite's, then `extra`.
    fn print(&self, tag: &str, extra: &str) {
        eprintln!(
            "{}",
            figure_line(
                tag,
                &self.f,
                self.recovery,
                &format!(
                    "cut_s={:.0} viewers_on_fronts={:?} viewer_reconnects={} {extra}",
                    cut_for().as_secs_f64(),
                    self.viewers_on,
                    self.reconnects
                )
            )
        );
    }

    /// `/readyz` turned 503 naming `check` soon after the cut, and every
    /// answer came within [`READY_BOUND`].
    fn assert_drained(&self, tag: &str, check: &str) -> String {
        let (readyz, slowest) = self.probes.summary("/readyz");
        let turned = self.probes.readyz_503(check);
        let figures = format!(
            "readyz_503_s={} readyz={readyz:?} readyz_max_s={:.1}",
            secs(turned),
            slowest.as_secs_f64()
        );
        let turned = turned.unwrap_or_else(|| {
            panic!("{tag}: /readyz never said 503 with {check} false: {readyz:?}")
        });
        assert_within(tag, "readyz turning 503", turned, Duration::from_secs(4));
        assert_within(tag, "the slowest readyz", slowest, READY_BOUND);
        figures
    }
}

// ---- the cuts ----------------------------------------------------------------

/// Front 1 cut from Redis, not from Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_front_from_redis() {
    let tag = "cut-redis";
    let Some((_one, c)) = Cluster::start_alone(tag).await else {
        return;
    };
    // Reads: the busy room (small on this front: no viewers there, so it
    // reads through to the store) and a room this front has not served yet.
    let warm = "/v1/rooms/{room}/poll?wait_ms=0";
    let cold = "/v1/rooms/{room}-cold/poll?wait_ms=0";
    let cut = Cut::From(vec![c.redis_ip]);
    let o = cut_under_load(&c, tag, Target::Front(1), cut, &["/readyz", warm, cold]).await;
    let (warm, cold) = (
        warm.replace("{room}", &o.room),
        cold.replace("{room}", &o.room),
    );
    let (during, slowest) = o.during(c.rig.fronts[1].addr());
    let fast = after_first_refusal(&o.ledger, c.rig.fronts[1].addr(), o.cut_at, o.healed);
    let drained = o.assert_drained(tag, "store");
    let (warm_by, warm_slowest) = o.probes.summary(&warm);
    let (cold_by, cold_slowest) = o.probes.summary(&cold);
    o.print(
        tag,
        &format!(
            "during_cut={during:?} max_answer_s={:.1} first_refusal_s={} after_it={} \
             after_it_max_s={:.2} {drained} warm_poll={warm_by:?} \
             warm_poll_max_s={:.1} cold_poll={cold_by:?} cold_poll_max_s={:.1}",
            slowest.as_secs_f64(),
            secs(fast.map(|(at, ..)| at - o.cut_at)),
            fast.map_or(0, |(_, n, _)| n),
            fast.map_or(0.0, |(.., max)| max.as_secs_f64()),
            warm_slowest.as_secs_f64(),
            cold_slowest.as_secs_f64(),
        ),
    );
    assert!(
        !during.contains_key("none"),
        "{tag}: a post to the front cut from Redis got no answer: {during:?}"
    );
    assert_within(tag, "the slowest post answer", slowest, ANSWER_BOUND);
    for (what, by, took) in [
        ("warm poll", &warm_by, warm_slowest),
        ("cold poll", &cold_by, cold_slowest),
    ] {
        // An answer: a success (served from the front's cache) or a 503
        // with an error code; never a hang, never a 500.
        let bad: Vec<&String> = by
            .keys()
            .filter(|k| !(k.starts_with('2') || k.starts_with("503 ")))
            .collect();
        assert!(bad.is_empty(), "{tag}: a {what} answered {by:?}");
        assert_within(tag, &format!("the slowest {what}"), took, ANSWER_BOUND);
    }
    let (_, n, after_max) =
        fast.unwrap_or_else(|| panic!("{tag}: the front cut from Redis refused no post"));
    assert!(
        n > 0,
        "{tag}: no post sent to the cut front after its first refusal"
    );
    assert_within(
        tag,
        "a refusal after the first",
        after_max,
        FAST_REFUSAL_BOUND,
    );
    assert_within(tag, "recovery", o.recovery, REDIS_RECOVERY_BOUND);
}

/// Front 1 cut from Kafka (not from Redis): its posts answer 503 within the
/// publish timeout; then, cut from Redis too, its `/readyz` still answers
/// within about one check's timeout, naming both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_front_from_kafka() {
    let tag = "cut-kafka";
    let Some((_one, c)) = Cluster::start_alone(tag).await else {
        return;
    };
    let cut = Cut::From(vec![c.kafka_ip]);
    let o = cut_under_load(&c, tag, Target::Front(1), cut, &["/readyz"]).await;
    let front = &c.rig.fronts[1];
    let (during, slowest) = o.during(front.addr());
    let drained = o.assert_drained(tag, "bus");

    // Cut from both: the checks run at once, so no slower than one.
    let both_at = Instant::now();
    c.net
        .cut(&c.fronts_at[1], &Cut::From(vec![c.kafka_ip, c.redis_ip]));
    let probing = Probing::start(&c.rig.http, front.base(), vec!["/readyz".into()], both_at);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let both = probing.finish().await;
    c.net.heal(&c.fronts_at[1]);
    let (both_by, both_slowest) = both.summary("/readyz");
    o.print(
        tag,
        &format!(
            "during_cut={during:?} max_answer_s={:.1} {drained} readyz_cut_from_both={both_by:?} \
             readyz_cut_from_both_max_s={:.1}",
            slowest.as_secs_f64(),
            both_slowest.as_secs_f64(),
        ),
    );
    assert!(
        !during.contains_key("none"),
        "{tag}: a post to the front cut from Kafka got no answer: {during:?}"
    );
    assert!(
        during.contains_key("503 bus_unavailable"),
        "{tag}: no post was refused with 503 bus_unavailable: {during:?}"
    );
    assert_within(tag, "the slowest post answer", slowest, ANSWER_BOUND);
    assert!(
        both.seen
            .iter()
            .any(|(.., body)| body["checks"]["store"] == false && body["checks"]["bus"] == false),
        "{tag}: /readyz of a front cut from both never named both: {both_by:?}"
    );
    assert_within(tag, "readyz cut from both", both_slowest, READY_BOUND);
    assert_within(tag, "recovery", o.recovery, Duration::from_secs(15));
}

/// The processor cut from Kafka (not from Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_processor_from_kafka() {
    let tag = "cut-bus";
    let Some((_one, c)) = Cluster::start_alone(tag).await else {
        return;
    };
    let cut = Cut::From(vec![c.kafka_ip]);
    let o = cut_under_load(&c, tag, Target::Processor, cut, &["/readyz"]).await;
    let acked_during = o
        .ledger
        .acked
        .lock()
        .unwrap()
        .values()
        .filter(|(_, at)| *at >= o.cut_at && *at < o.healed)
        .count();
    let drained = o.assert_drained(tag, "bus");
    o.print(
        tag,
        &format!(
            "acked_during_cut={acked_during} stored_at_heal={} {drained} answers={:?}",
            o.stored_at_heal,
            o.ledger.answers.lock().unwrap()
        ),
    );
    assert_eq!(o.f.refused, 0, "{tag}: the fronts kept acknowledging");
    assert!(
        acked_during > 0,
        "{tag}: nothing acknowledged during the cut"
    );
    assert_within(tag, "catching up", o.recovery, Duration::from_secs(30));
}

/// Front 1 cut from everything (a lost host): clients time out on it, and
/// their retries go to front 0, which keeps acknowledging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_front_from_everything() {
    let tag = "cut-all";
    let Some((_one, c)) = Cluster::start_alone(tag).await else {
        return;
    };
    let o = cut_under_load(&c, tag, Target::Front(1), Cut::Everything, &[]).await;
    let (during, slowest) = o.during(c.rig.fronts[1].addr());
    let (healthy, _) = o.during(c.rig.fronts[0].addr());
    o.print(
        tag,
        &format!(
            "during_cut={during:?} max_answer_s={:.1} healthy_front_during_cut={healthy:?}",
            slowest.as_secs_f64(),
        ),
    );
    assert!(
        healthy.get("202").copied().unwrap_or(0) > 0,
        "{tag}: the healthy front acknowledged nothing during the cut: {healthy:?}"
    );
    assert_within(tag, "recovery", o.recovery, Duration::from_secs(15));
}
