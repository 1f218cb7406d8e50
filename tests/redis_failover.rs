//! Redis failover with Sentinel (issue 23), on real processes: a primary,
//! two replicas and three sentinels (scripts/redis-sentinel.sh), fronts and
//! a processor on `redis+sentinel://…` and an Apache Kafka of the test's own.
//!
//! - `sentinel_failover_under_load`: the primary SIGKILLed under steady
//!   posts; the sentinels promote a replica and every role follows it by
//!   itself. Every acknowledged post is stored exactly once (the processor
//!   appends with `store.redis_wait_replicas = 1`: an append counts only once
//!   a replica holds it), and every viewer gets each message once in order,
//!   or a reset followed by exactly the store's history. Prints `chaos
//!   sentinel_failover: …` (BENCHMARKS.md, "Fault suite").
//! - `notices_follow_a_live_old_primary`: the primary SIGSTOPped until the
//!   sentinels promote a replica and every node follows it, then SIGCONTed:
//!   it answers again, still a primary (the sentinels demote it only ~8 s
//!   later), so a notice subscription left on it stays open and hears
//!   nothing the new primary publishes. Posts keep reaching the viewers of
//!   both fronts within 2 s, each node counts one switch
//!   (`danmaku_redis_primary_switches_total`), nothing acknowledged is lost
//!   or stored twice. Hubs re-read on their own only every 20 s here, so
//!   only notices meet the bound (each front must also take messages from
//!   notices meanwhile). Prints `chaos sentinel_live_old_primary: …`, with
//!   how long after the promotion each front took its first message from a
//!   notice (BENCHMARKS.md, "Sentinel: following a live old primary").
//! - `lost_writes_get_a_new_epoch_never_reused_seqs`: the loss forced (the
//!   replicas frozen and cut off, messages appended to the primary alone and
//!   shown to viewers, the primary SIGKILLed): the promoted replica hands
//!   those seqs out again, but under a new epoch, so the viewers who saw the
//!   lost messages get a reset and then the new history — never another
//!   message under a seq they saw.
//! - `a_frozen_primary_fails_calls_at_once_until_the_promoted_one_serves`:
//!   the primary SIGSTOPped: the store health gate trips on the first
//!   unanswered readiness `PING`, calls fail at once, and the gate's prober
//!   reaches the promoted primary.
//!
//! Needs redis-server (sentinels run as `redis-server --sentinel`), redis-cli
//! and the Kafka jars; skips without them unless `DANMAKU_REQUIRE_SERVICES=1`.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fault::*;
use common::now_ms;
use common::procs::{free_port, Kafka, ScratchDir};
use common::{WsEnd, WsViewer};
use danmaku::config::Config;
use danmaku::message::{Kind, Message, Priority, UserRef};
use danmaku::store::redis::RedisStore;
use danmaku::store::{AppendOutcome, LiveStore, RoomNotice};
use serde_json::Value;

/// One failover at a time (each starts its own Redis set and Kafka).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MASTER: &str = "danmaku";

// ---- the Sentinel set ----------------------------------------------------------

/// scripts/redis-sentinel.sh's primary, two replicas and three sentinels on
/// free ports; stopped when dropped.
struct SentinelSet {
    dir: ScratchDir,
    data: [u16; 3],
    sentinels: [u16; 3],
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/redis-sentinel.sh")
}

impl SentinelSet {
    fn start() -> SentinelSet {
        let set = SentinelSet {
            dir: ScratchDir::new("sentinel"),
            data: [free_port(), free_port(), free_port()],
            sentinels: [free_port(), free_port(), free_port()],
        };
        let status = Command::new(script())
            .arg("start")
            .arg(&set.dir.0)
            .args(set.data.iter().chain(&set.sentinels).map(u16::to_string))
            .env("DANMAKU_SENTINEL_MASTER", MASTER)
            .status()
            .expect("run scripts/redis-sentinel.sh");
        assert!(status.success(), "scripts/redis-sentinel.sh start failed");
        set
    }

    fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/{MASTER}", hosts.join(","))
    }

    /// The data node every sentinel names as primary now, once it answers
    /// `ROLE` `master` (a sentinel that has not caught up with a failover
    /// would name an old one: killing that would test nothing).
    fn primary(&self) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let named: Vec<Option<u16>> = self
                .sentinels
                .iter()
                .map(|s| {
                    let out = redis_cli(*s, &["SENTINEL", "get-master-addr-by-name", MASTER]);
                    out.lines().nth(1).and_then(|p| p.trim().parse().ok())
                })
                .collect();
            if let Some(p) = named[0] {
                let agreed = named.iter().all(|n| *n == Some(p));
                if agreed && redis_cli(p, &["ROLE"]).lines().next() == Some("master") {
                    return p;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels do not agree on a primary: {named:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (up to `within`) until the sentinels name a primary other than
    /// `old`; how long it took.
    async fn promoted_after(&self, old: u16, since: Instant, within: Duration) -> Duration {
        loop {
            let named = redis_cli(
                self.sentinels[0],
                &["SENTINEL", "get-master-addr-by-name", MASTER],
            );
            if named
                .lines()
                .nth(1)
                .is_some_and(|p| p.trim() != old.to_string())
            {
                return since.elapsed();
            }
            assert!(
                since.elapsed() < within,
                "the sentinels promoted no replica within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&self, port: u16, sig: &str) {
        let pid = std::fs::read_to_string(self.dir.0.join(format!("{port}.pid")))
            .expect("pid file")
            .trim()
            .to_string();
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(&pid)
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} {pid} (redis on {port})");
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(&self.dir.0).status();
    }
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli on PATH");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn programs_here() -> Option<()> {
    programs(&["redis-cli"])
}

// ---- viewers that honour resets ------------------------------------------------

/// What one WebSocket viewer was shown.
#[derive(Default, Debug)]
struct Shown {
    /// Segments of the stream: a new one starts at every reset (a `hello`
    /// with `reset` or another epoch, mid-stream or on reconnecting).
    /// Each holds (epoch, seq, text) in delivery order.
    segments: Vec<Vec<(String, u64, String)>>,
    resets: usize,
    connections: usize,
    /// When each text was first shown (in any segment).
    seen_at: HashMap<String, Instant>,
}

impl Shown {
    fn last(&self) -> &[(String, u64, String)] {
        self.segments.last().map_or(&[], Vec::as_slice)
    }
}

/// Viewers on every front; each resumes with its cursor and epoch (on the
/// next front) whenever its connection ends, and follows resets.
struct Watchers {
    /// A viewer stops once its current segment holds this many messages.
    target: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Shown>>,
    /// Every viewer's log so far (for waiting on them mid-test).
    live: Vec<Arc<Mutex<Shown>>>,
}

impl Watchers {
    async fn start(ports: &[u16], room: &str, per_front: usize) -> Watchers {
        let target = Arc::new(AtomicUsize::new(usize::MAX));
        let mut tasks = Vec::new();
        let mut live = Vec::new();
        for k in 0..ports.len() * per_front {
            let first = WsViewer::connect(&format!(
                "ws://127.0.0.1:{}/v1/rooms/{room}/ws",
                ports[k % ports.len()]
            ))
            .await;
            let log = Arc::new(Mutex::new(Shown::default()));
            live.push(log.clone());
            tasks.push(tokio::spawn(follow(
                first,
                ports.to_vec(),
                room.to_string(),
                k % ports.len(),
                target.clone(),
                log,
            )));
        }
        Watchers {
            target,
            tasks,
            live,
        }
    }

    /// Waits until every viewer was shown `text` (in any segment).
    async fn all_shown(&self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let all = self.live.iter().all(|l| {
                l.lock()
                    .unwrap()
                    .segments
                    .iter()
                    .flatten()
                    .any(|(_, _, t)| t == text)
            });
            if all {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not every viewer was shown {text} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self, n: usize) -> Vec<Shown> {
        self.target.store(n, Ordering::SeqCst);
        let mut out = Vec::new();
        for t in self.tasks {
            out.push(
                tokio::time::timeout(Duration::from_secs(40), t)
                    .await
                    .expect("viewer finished in time")
                    .expect("viewer task"),
            );
        }
        out
    }
}

async fn follow(
    first: WsViewer,
    ports: Vec<u16>,
    room: String,
    mut front: usize,
    target: Arc<AtomicUsize>,
    log: Arc<Mutex<Shown>>,
) -> Shown {
    let mut epoch = first.epoch.clone();
    let mut cursor = first.cursor;
    log.lock().unwrap().connections = 1;
    log.lock().unwrap().segments.push(Vec::new());
    let mut viewer = Some(first);
    let mut done_since: Option<Instant> = None;
    let give_up = Instant::now() + Duration::from_secs(180);
    loop {
        let target_now = target.load(Ordering::SeqCst);
        if log.lock().unwrap().last().len() >= target_now || Instant::now() > give_up {
            break;
        }
        if target_now != usize::MAX
            && done_since.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(30)
        {
            break;
        }
        let Some(v) = viewer.as_mut() else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            front = (front + 1) % ports.len();
            let url = format!(
                "ws://127.0.0.1:{}/v1/rooms/{room}/ws?cursor={cursor}&epoch={epoch}",
                ports[front]
            );
            if let Ok(v) = WsViewer::try_connect(&url).await {
                let hello = v.hello.clone();
                let mut l = log.lock().unwrap();
                l.connections += 1;
                if hello.get("reset").is_some() || v.epoch != epoch {
                    l.resets += 1;
                    l.segments.push(Vec::new());
                }
                epoch = v.epoch.clone();
                cursor = v.cursor;
                viewer = Some(v);
            }
            continue;
        };
        match v.next_json(Duration::from_millis(200)).await {
            Ok(m) if m["type"] == "hello" => {
                let e = m["epoch"].as_str().expect("hello.epoch").to_string();
                if m.get("reset").is_some() || e != epoch {
                    let mut l = log.lock().unwrap();
                    l.resets += 1;
                    l.segments.push(Vec::new());
                }
                epoch = e;
                cursor = m["cursor"].as_u64().expect("hello.cursor");
            }
            Ok(m) if m["type"] == "batch" => {
                let e = m["epoch"].as_str().expect("batch.epoch").to_string();
                assert_eq!(e, epoch, "a batch of another epoch without a hello: {m}");
                let mut l = log.lock().unwrap();
                let seg = l.segments.last_mut().expect("a segment");
                let now = Instant::now();
                let mut texts = Vec::new();
                for msg in m["messages"].as_array().expect("messages") {
                    let text = text_of(msg).to_string();
                    texts.push(text.clone());
                    seg.push((e.clone(), msg["seq"].as_u64().expect("seq"), text));
                }
                for text in texts {
                    l.seen_at.entry(text).or_insert(now);
                }
                cursor = m["cursor"].as_u64().expect("batch.cursor");
            }
            Ok(_) | Err(WsEnd::Timeout) => {}
            Err(_) => viewer = None,
        }
    }
    std::mem::take(&mut *log.lock().unwrap())
}

/// What viewers were shown, against the store read after: panics with the
/// evidence, or returns (resets, messages shown under a lost seq).
///
/// - every segment is in strictly increasing seq order (nothing twice);
/// - under the store's epoch, every (seq, text) is the store's;
/// - the last segment is exactly the store's history (each message once);
/// - under an older epoch a (seq, text) that the store does not hold was
///   lost with the old primary: then the viewer's later segments are of
///   another epoch (it was reset), and it is counted.
fn check_shown(fault: &str, shown: &[Shown], stored: &[Value], epoch: &str) -> (usize, usize) {
    let want: Vec<(u64, &str)> = stored
        .iter()
        .map(|m| (m["seq"].as_u64().unwrap(), text_of(m)))
        .collect();
    let at: HashMap<u64, &str> = want.iter().copied().collect();
    let (mut resets, mut replaced) = (0, 0);
    for (k, v) in shown.iter().enumerate() {
        resets += v.resets;
        for seg in &v.segments {
            for w in seg.windows(2) {
                assert!(
                    w[0].1 < w[1].1,
                    "{fault}: viewer {k} got seq {} after {} without a reset",
                    w[1].1,
                    w[0].1
                );
            }
            for (e, seq, text) in seg {
                if at.get(seq) == Some(&text.as_str()) {
                    continue;
                }
                assert_ne!(
                    e, epoch,
                    "{fault}: viewer {k} got seq {seq} = {text} in the current epoch, the store holds {:?}",
                    at.get(seq)
                );
                replaced += 1;
            }
        }
        let last: Vec<(u64, &str)> = v.last().iter().map(|(_, s, t)| (*s, t.as_str())).collect();
        assert!(
            last == want,
            "{fault}: viewer {k} ({} connections, {} resets): its last segment ({} messages, {:?}…) is not the store's history ({} messages, {:?}…)",
            v.connections,
            v.resets,
            last.len(),
            &last[..last.len().min(5)],
            want.len(),
            &want[..want.len().min(5)]
        );
        assert!(
            v.last().iter().all(|(e, _, _)| e == epoch),
            "{fault}: viewer {k} ended in an older epoch"
        );
    }
    (resets, replaced)
}

// ---- the rig -------------------------------------------------------------------

async fn rig_on(set: &SentinelSet, name: &str, processors: usize) -> Rig {
    rig_on_with(set, name, processors, &[]).await
}

async fn rig_on_with(
    set: &SentinelSet,
    name: &str,
    processors: usize,
    extra: &[(&str, String)],
) -> Rig {
    let mut env = vec![
        ("DANMAKU_REDIS_URL", set.url()),
        ("DANMAKU_STORE__REDIS_WAIT_REPLICAS", "1".into()),
        ("DANMAKU_STORE__REDIS_WAIT_TIMEOUT_MS", "500".into()),
        ("DANMAKU_BUS__PUBLISH_TIMEOUT_MS", "2000".into()),
    ];
    env.extend(extra.iter().cloned());
    Rig::start_with(
        name,
        tokio::task::block_in_place(Kafka::start),
        processors,
        2,
        &env,
    )
    .await
}

fn ports(rig: &Rig) -> Vec<u16> {
    rig.addrs.lock().unwrap().iter().map(|a| a.port()).collect()
}

// ---- the tests -----------------------------------------------------------------

/// SIGKILL the primary under load; the sentinels promote a replica and
/// fronts and the processor follow by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_under_load() {
    let Some(()) = programs_here() else { return };
    let _one = SERIAL.lock().await;
    let fault = "sentinel_failover";
    let set = tokio::task::block_in_place(SentinelSet::start);
    let rig = rig_on(&set, "failover", 1).await;
    let room = format!("failover-{}", now_ms());
    let viewers = Watchers::start(&ports(&rig), &room, VIEWERS_PER_FRONT).await;
    let load = Load::start(&rig, &room, "f");
    tokio::time::sleep(STEADY).await;

    let old = set.primary();
    if old != set.data[0] {
        // Allowed (the sentinels judge a slow primary down), but worth knowing.
        eprintln!("{fault}: the sentinels failed over before the kill (a loaded machine)");
    }
    let writer_key = format!("dm:{{{room}}}:primary");
    let epoch_before = rig.store().await.head(&room).await.expect("head").epoch;
    let writer_before = redis_cli(old, &["GET", &writer_key]);
    let killed = Instant::now();
    set.signal(old, "KILL");
    let promoted = set
        .promoted_after(old, killed, Duration::from_secs(30))
        .await;
    let acked_again = first_ack_after(&load.ledger, killed, Duration::from_secs(30), fault).await;
    // Recovery: a post sent after the promotion is stored (the processor
    // writes to the new primary and a replica holds it).
    let after = Instant::now();
    let first_after = loop {
        let acked = load.ledger.acked.lock().unwrap().clone();
        if let Some(t) = acked
            .iter()
            .filter(|(_, (_, at))| *at >= after)
            .min_by_key(|(_, (_, at))| *at)
            .map(|(t, _)| t.clone())
        {
            break t;
        }
        assert!(
            after.elapsed() < Duration::from_secs(30),
            "{fault}: no ack after the promotion"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stored_again = caught_up(&rig, &room, &[first_after], killed, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("{fault}: nothing posted after the failover was stored"));
    let nodes: Vec<&common::procs::Node> = rig.fronts.iter().chain(&rig.processors).collect();
    rig.all_ready(&nodes, Duration::from_secs(20), fault).await;
    tokio::time::sleep(STEADY).await;

    let ledger = load.stop().await;
    let stored = settled_store(&rig, &room, &ledger, Duration::from_secs(30)).await;
    let epoch = rig.store().await.head(&room).await.expect("head").epoch;
    // The promoted replica's first append started a new epoch.
    assert_ne!(
        epoch,
        epoch_before,
        "{fault}: the epoch survived the failover (writer before: {writer_before:?}, after: {:?}; {})",
        redis_cli(set.primary(), &["GET", &writer_key]),
        redis_cli(set.primary(), &["INFO", "replication"])
    );
    let shown = viewers.finish(stored.len()).await;
    // Stored once, nothing acknowledged lost (the viewers are checked below,
    // by segments, as resets are allowed here).
    let f = check(fault, &ledger, &stored, &[], &HashSet::new());
    let (resets, replaced) = check_shown(fault, &shown, &stored, &epoch);
    let delivered: usize = shown.iter().map(|s| s.last().len()).sum();
    let outage = ack_gap(&ledger, killed);
    eprintln!(
        "{}",
        figure_line(
            fault,
            &Figures { delivered, ..f },
            stored_again,
            &format!(
                "promoted_s={:.1} acked_again_s={:.1} post_outage_s={:.1} viewer_resets={resets} \
                 shown_then_lost={replaced} answers={:?}",
                promoted.as_secs_f64(),
                acked_again.as_secs_f64(),
                outage.as_secs_f64(),
                ledger.answers.lock().unwrap()
            )
        )
    );
    assert_within(fault, "recovery", stored_again, Duration::from_secs(20));
}

/// The switch counted by each node's `danmaku_redis_primary_switches_total`.
const SWITCHES: &str = "danmaku_redis_primary_switches_total";
/// How soon after its acknowledgement a post must reach every viewer once
/// every node follows the new primary.
const SHOWN_WITHIN: Duration = Duration::from_secs(2);
/// The hubs' own reads (`fanout.read_interval_ms`): a hub whose room keeps
/// changing re-reads the store this long after its last news even while
/// notices are "live", which would deliver posts within ~1 s without any
/// notice. Far above [`SHOWN_WITHIN`], so only notices meet the bound.
const HUB_READ_INTERVAL_MS: &str = "20000";
/// How long the posts are watched while the old primary is alive again: well
/// inside the ~8 s the sentinels wait before they demote it (which would
/// close the subscriptions on it and hide the fault).
const ALIVE_WINDOW: Duration = Duration::from_secs(5);

/// The old primary stays alive: frozen (SIGSTOP) until the sentinels promote
/// a replica and every node counts the switch, then thawed (SIGCONT), a
/// primary of its own again. A notice subscription left on it would stay
/// open and hear nothing: viewers would see no post until the sentinels
/// demote it. Here every post acknowledged while it is alive reaches the
/// viewers of both fronts within [`SHOWN_WITHIN`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_follow_a_live_old_primary() {
    let Some(()) = programs_here() else { return };
    let _one = SERIAL.lock().await;
    let fault = "sentinel_live_old_primary";
    let set = tokio::task::block_in_place(SentinelSet::start);
    let rig = rig_on_with(
        &set,
        "liveold",
        1,
        &[(
            "DANMAKU_FANOUT__READ_INTERVAL_MS",
            HUB_READ_INTERVAL_MS.into(),
        )],
    )
    .await;
    let room = format!("liveold-{}", now_ms());
    let fronts = ports(&rig);
    let viewers = Watchers::start(&fronts, &room, VIEWERS_PER_FRONT).await;
    let load = Load::start(&rig, &room, "l");
    tokio::time::sleep(STEADY).await;

    let nodes: Vec<&common::procs::Node> = rig.fronts.iter().chain(&rig.processors).collect();
    for n in &nodes {
        assert_eq!(
            rig.metric(n, SWITCHES).await,
            0.0,
            "{fault}: {} switched before the fault",
            n.role
        );
    }
    let old = set.primary();
    let stopped = Instant::now();
    set.signal(old, "STOP");
    let promoted = set
        .promoted_after(old, stopped, Duration::from_secs(30))
        .await;
    let promoted_at = stopped + promoted;
    // Nothing comes from the frozen primary: any message a hub takes from a
    // notice from here on came through the new one.
    let taken_at_promotion = notice_messages(&rig).await;
    // Every node follows by itself (its watcher): each counts the switch.
    let mut switched = Vec::new();
    for n in &nodes {
        loop {
            let count = rig.metric(n, SWITCHES).await;
            if count >= 1.0 {
                assert_eq!(count, 1.0, "{fault}: {} counted {count} switches", n.role);
                switched.push(promoted_at.elapsed());
                break;
            }
            assert!(
                stopped.elapsed() < Duration::from_secs(40),
                "{fault}: the {} on port {} did not count the switch",
                n.role,
                n.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Each front takes messages from notices again: how long after the
    // promotion the first one came.
    let mut first_notice: Vec<Option<Duration>> = vec![None; fronts.len()];
    while first_notice.iter().any(Option::is_none) {
        let taken = notice_messages(&rig).await;
        for (k, n) in taken.iter().enumerate() {
            if *n > taken_at_promotion[k] && first_notice[k].is_none() {
                first_notice[k] = Some(promoted_at.elapsed());
            }
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(40),
            "{fault}: no message from notices on some front after the promotion: {first_notice:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    set.signal(old, "CONT");
    let thawed = Instant::now();
    let taken_before = notice_messages(&rig).await;
    // The old primary answers again, as a primary: what the fault is.
    while redis_cli(old, &["ROLE"]).lines().next() != Some("master") {
        assert!(
            thawed.elapsed() < Duration::from_secs(2),
            "{fault}: the old primary is not a primary after SIGCONT"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(ALIVE_WINDOW).await;
    let window_end = Instant::now();
    let still_primary = redis_cli(old, &["ROLE"]).lines().next() == Some("master");
    let taken_after = notice_messages(&rig).await;
    tokio::time::sleep(STEADY).await;

    let ledger = load.stop().await;
    let stored = settled_store(&rig, &room, &ledger, Duration::from_secs(30)).await;
    let epoch = rig.store().await.head(&room).await.expect("head").epoch;
    let shown = viewers.finish(stored.len()).await;
    let f = check(fault, &ledger, &stored, &[], &HashSet::new());
    let (resets, replaced) = check_shown(fault, &shown, &stored, &epoch);
    for n in &nodes {
        assert_eq!(
            rig.metric(n, SWITCHES).await,
            1.0,
            "{fault}: {} switches",
            n.role
        );
    }
    assert!(
        still_primary,
        "{fault}: the sentinels demoted the old primary within {ALIVE_WINDOW:?} of SIGCONT \
         (its subscriptions were closed: the test forced nothing; a loaded machine?)"
    );

    // While the old primary was alive again, every acknowledged post reached
    // every viewer of both fronts within SHOWN_WITHIN of its acknowledgement.
    let acked = ledger.acked.lock().unwrap().clone();
    let in_window: Vec<(&String, Instant)> = acked
        .iter()
        .map(|(t, (_, at))| (t, *at))
        .filter(|(_, at)| *at >= thawed && *at <= window_end)
        .collect();
    assert!(
        in_window.len() as u64 >= ALIVE_WINDOW.as_secs() * RATE_PER_S / 2,
        "{fault}: only {} posts acknowledged while the old primary was alive",
        in_window.len()
    );
    // Notices carried them: the hubs took messages from notices (most of
    // them; the processor's catch-up batches can exceed the notice's size,
    // and a notice without its batch makes the hub read).
    let taken: Vec<f64> = taken_after
        .iter()
        .zip(&taken_before)
        .map(|(a, b)| a - b)
        .collect();
    for (front, n) in taken.iter().enumerate() {
        assert!(
            *n >= in_window.len() as f64 / 4.0,
            "{fault}: front {front} took {n} messages from notices while the old primary was \
             alive ({} posts acknowledged): its notices stayed on the old primary",
            in_window.len()
        );
    }
    let mut worst = vec![Duration::ZERO; fronts.len()];
    let mut first_after = vec![Duration::MAX; fronts.len()];
    for (k, v) in shown.iter().enumerate() {
        let front = k % fronts.len();
        for (text, acked_at) in &in_window {
            let Some(at) = v.seen_at.get(*text) else {
                panic!("{fault}: viewer {k} (front {front}) was never shown {text}");
            };
            let late = at.saturating_duration_since(*acked_at);
            assert!(
                late <= SHOWN_WITHIN,
                "{fault}: viewer {k} (front {front}) was shown {text} {:.1} s after its \
                 acknowledgement (bound {SHOWN_WITHIN:?}): notices stayed on the old primary",
                late.as_secs_f64()
            );
            worst[front] = worst[front].max(late);
        }
        // The first post acknowledged after the promotion, as this viewer
        // saw it: how long after the promotion.
        for (text, (_, acked_at)) in &acked {
            if *acked_at >= promoted_at {
                if let Some(at) = v.seen_at.get(text) {
                    first_after[front] = first_after[front].min(*at - promoted_at);
                }
            }
        }
    }
    let delivered: usize = shown.iter().map(|s| s.last().len()).sum();
    eprintln!(
        "{}",
        figure_line(
            fault,
            &Figures { delivered, ..f },
            first_after.iter().copied().max().unwrap_or_default(),
            &format!(
                "promoted_s={:.1} nodes_switched_s={:?} first_notice_message_s={:?} \
                 first_shown_after_promotion_s={:?} \
                 worst_ack_to_shown_while_old_alive_s={:?} posts_while_old_alive={} \
                 taken_from_notices={taken:?} viewer_resets={resets} shown_then_lost={replaced}",
                promoted.as_secs_f64(),
                switched.iter().map(|d| round1(*d)).collect::<Vec<_>>(),
                first_notice
                    .iter()
                    .map(|d| round2(d.unwrap_or_default()))
                    .collect::<Vec<_>>(),
                first_after.iter().map(|d| round1(*d)).collect::<Vec<_>>(),
                worst.iter().map(|d| round2(*d)).collect::<Vec<_>>(),
                in_window.len()
            )
        )
    );
}

/// Each front's `danmaku_notice_messages_total` (messages its hubs took
/// from notices, without a store read).
async fn notice_messages(rig: &Rig) -> Vec<f64> {
    let mut taken = Vec::new();
    for front in &rig.fronts {
        taken.push(rig.metric(front, "danmaku_notice_messages_total").await);
    }
    taken
}

fn round1(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

fn round2(d: Duration) -> f64 {
    (d.as_secs_f64() * 100.0).round() / 100.0
}

/// The longest time without an acknowledgement from one second before `t`
/// on: the posts' outage window (first refused → first acknowledged again).
fn ack_gap(ledger: &Ledger, t: Instant) -> Duration {
    let from = t.checked_sub(Duration::from_secs(1)).unwrap_or(t);
    let mut at: Vec<Instant> = ledger
        .acked
        .lock()
        .unwrap()
        .values()
        .map(|(_, a)| *a)
        .filter(|a| *a >= from)
        .collect();
    at.sort();
    at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

fn message(room: &str, text: &str) -> Message {
    Message {
        id: format!("{room}-{text}"),
        seq: 0,
        room: room.to_string(),
        kind: Kind::Danmaku,
        // The whitelisted publisher's: no rationing holds it back.
        priority: Priority::Whitelist,
        user: UserRef {
            id: PUBLISHER.into(),
            name: "Chaos".into(),
        },
        text: text.to_string(),
        ts: now_ms(),
        offset_ms: None,
        gift: None,
        style: None,
    }
}

fn outcome_seq(o: &AppendOutcome) -> u64 {
    match o {
        AppendOutcome::Stored { seq } | AppendOutcome::Duplicate { seq } => *seq,
    }
}

/// Appends `texts` (one batch) and notifies the fronts; the seqs.
async fn append(store: &RedisStore, room: &str, texts: &[&str]) -> (String, Vec<u64>) {
    let batch: Vec<Message> = texts.iter().map(|t| message(room, t)).collect();
    let appended = store.append_in_epoch(room, batch).await.expect("append");
    store
        .notify(vec![RoomNotice::name_only(room)])
        .await
        .expect("notify");
    let seqs = appended.outcomes.iter().map(outcome_seq).collect();
    (appended.epoch, seqs)
}

/// The loss forced: what the promoted replica never got was shown to
/// viewers; its seqs come again, under a new epoch, and the viewers reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_writes_get_a_new_epoch_never_reused_seqs() {
    let Some(()) = programs_here() else { return };
    let _one = SERIAL.lock().await;
    let fault = "sentinel_lost_writes";
    let set = tokio::task::block_in_place(SentinelSet::start);
    let rig = rig_on(&set, "lostwrites", 0).await;
    let room = format!("lost-{}", now_ms());
    let store = RedisStore::connect(&set.url(), Config::embedded().store)
        .await
        .expect("store via sentinel");
    let viewers = Watchers::start(&ports(&rig), &room, 2).await;

    // Replicated history: seqs 1..=3.
    let (e1, seqs) = append(&store, &room, &["a1", "a2", "a3"]).await;
    assert_eq!(seqs, [1, 2, 3]);
    let old = set.primary();
    let replicas: Vec<u16> = set.data.iter().copied().filter(|p| *p != old).collect();
    let seq_key = format!("dm:{{{room}}}:seq");
    for r in &replicas {
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis_cli(*r, &["GET", &seq_key]).trim() != "3" {
            assert!(Instant::now() < deadline, "replica {r} did not get seq 3");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    viewers.all_shown("a3", Duration::from_secs(10)).await;

    // Cut the replicas off (frozen, so they cannot resync) and write to the
    // primary alone: seqs 4..=5, shown to every viewer, then the primary dies.
    for r in &replicas {
        set.signal(*r, "STOP");
    }
    redis_cli(old, &["CLIENT", "KILL", "TYPE", "replica"]);
    let (e_lost, seqs) = append(&store, &room, &["lost4", "lost5"]).await;
    assert_eq!(
        (e_lost.as_str(), seqs.as_slice()),
        (e1.as_str(), &[4, 5][..])
    );
    viewers.all_shown("lost5", Duration::from_secs(10)).await;
    let killed = Instant::now();
    set.signal(old, "KILL");
    for r in &replicas {
        set.signal(*r, "CONT");
    }
    let promoted = set
        .promoted_after(old, killed, Duration::from_secs(30))
        .await;

    // The new primary lacks seqs 4 and 5; the next append follows it (the
    // store's watcher) and hands seq 4 out again, under a new epoch.
    let (e2, seqs) = loop {
        let batch = vec![message(&room, "new4"), message(&room, "new5")];
        match store.append_in_epoch(&room, batch).await {
            Ok(a) => {
                break (
                    a.epoch,
                    a.outcomes.iter().map(outcome_seq).collect::<Vec<_>>(),
                )
            }
            Err(_) => {
                assert!(
                    killed.elapsed() < Duration::from_secs(30),
                    "{fault}: no append on the new primary"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let recovered = killed.elapsed();
    assert_eq!(seqs, [4, 5], "{fault}: the lost seqs are handed out again");
    assert_ne!(e2, e1, "{fault}: a failover that lost seqs kept the epoch");
    store
        .notify(vec![RoomNotice::name_only(&room)])
        .await
        .expect("notify");
    let (e3, seqs) = append(&store, &room, &["new6"]).await;
    assert_eq!(
        (e3.as_str(), seqs.as_slice()),
        (e2.as_str(), &[6][..]),
        "one new epoch, not one per append"
    );

    let stored = rig.stored(&room).await;
    let texts: Vec<&str> = stored.iter().map(text_of).collect();
    assert_eq!(
        texts,
        ["a1", "a2", "a3", "new4", "new5", "new6"],
        "{fault}: the new history"
    );
    let shown = viewers.finish(stored.len()).await;
    let (resets, replaced) = check_shown(fault, &shown, &stored, &e2);
    for (k, v) in shown.iter().enumerate() {
        assert!(
            v.resets >= 1,
            "{fault}: viewer {k} saw lost seqs and was not reset"
        );
        let saw_lost = v
            .segments
            .iter()
            .flatten()
            .any(|(e, s, t)| *e == e1 && *s == 4 && t == "lost4");
        assert!(
            saw_lost,
            "{fault}: viewer {k} was not shown the lost writes (the test forced nothing)"
        );
    }
    // A viewer coming back with a cursor of a lost seq is reset too (once
    // the fronts know the new epoch: the viewers above were reset).
    let back = WsViewer::connect(&format!(
        "ws://127.0.0.1:{}/v1/rooms/{room}/ws?cursor=5&epoch={e1}",
        ports(&rig)[0]
    ))
    .await;
    assert_eq!(back.hello["reset"], true, "{fault}: {}", back.hello);
    assert_eq!(back.epoch, e2);

    eprintln!(
        "chaos {fault}: lost_writes=2 viewers={} shown_then_lost={replaced} viewer_resets={resets} \
         reused_seqs_under_old_epoch=0 promoted_s={:.1} recovery_s={:.1}",
        shown.len(),
        promoted.as_secs_f64(),
        recovered.as_secs_f64()
    );
}

/// The replay Redis tier on `redis+sentinel://…` too: windows are cached on
/// the primary, and after a failover on the promoted replica (meanwhile
/// replay answers from the archive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_redis_follows_the_sentinels() {
    let Some(()) = common::procs::require_programs(&["redis-server", "redis-cli"]) else {
        return;
    };
    let _one = SERIAL.lock().await;
    let set = tokio::task::block_in_place(SentinelSet::start);
    let dir = ScratchDir::new("replay-sentinel");
    let (archive_url, replay_url) = (
        format!("sqlite://{}/archive.db?mode=rwc", dir.0.display()),
        set.url(),
    );
    let ts = common::TestServer::start_with(move |c| {
        c.archive.url = archive_url;
        c.archive.run_archiver = false;
        c.archive.replay_window_ms = 1000;
        c.archive.prefetch_viewers = 0;
        c.store.replay_redis_url = replay_url;
    })
    .await;
    let room = ts.room("replay-sentinel");
    let archive = danmaku::archive::connect(&ts.config.archive).await.unwrap();
    // One window a second, 10 messages each: enough fresh windows to read
    // one every 200 ms while the tier follows the failover.
    const WINDOWS: u64 = 150;
    let started_at = now_ms() - 2 * WINDOWS * 1000;
    let live = format!("{room}-live");
    archive.start_live(&room, &live, started_at).await.unwrap();
    let rows: Vec<danmaku::archive::ArchivedMessage> = (0..WINDOWS * 10)
        .map(|i| {
            let mut m = message(&room, &format!("r{i}"));
            m.ts = started_at + i * 100;
            m.offset_ms = Some(i * 100);
            let stored = m.into_stored(i + 1);
            danmaku::archive::ArchivedMessage {
                seq: stored.seq,
                offset_ms: i * 100,
                ts: stored.ts,
                json: stored.json,
            }
        })
        .collect();
    archive.append(&live, &rows, WINDOWS * 10).await.unwrap();
    archive
        .end_live(&room, started_at + WINDOWS * 1000)
        .await
        .unwrap();
    archive.finish(&live, now_ms()).await.unwrap();

    let filled = format!("rp:{{{live}}}:w");
    let window = |from: u64| {
        format!(
            "/v1/rooms/{room}/replay?live={live}&from_ms={from}&to_ms={}",
            from + 1000
        )
    };
    let (status, body, _) = ts.get(&window(0)).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let old = set.primary();
    assert_eq!(redis_cli(old, &["SISMEMBER", &filled, "0"]).trim(), "1");

    let killed = Instant::now();
    set.signal(old, "KILL");
    set.promoted_after(old, killed, Duration::from_secs(30))
        .await;
    let new = set.primary();
    // Each read answers (from the archive while the tier is away); the
    // window lands on the new primary once the tier follows it.
    let mut from = 1000;
    loop {
        let (status, body, _) = ts.get(&window(from)).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
        if redis_cli(new, &["SISMEMBER", &filled, &from.to_string()]).trim() == "1" {
            break;
        }
        // A window never read before (a read one is in the front's cache).
        from += 1000;
        assert!(
            from < WINDOWS * 1000,
            "the replay tier did not follow the new primary"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "replay via sentinel: a window cached on the new primary {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    ts.shutdown().await;
}

/// The primary frozen (SIGSTOP: connections stay open, nothing answers):
/// the store health gate (src/store/redis/health.rs) trips on the first
/// readiness `PING` left unanswered (800 ms), calls then fail at once
/// instead of each waiting out the 5 s response timeout, and once the
/// sentinels promote a replica the gate's prober finds the *new* primary
/// (the one `sentinel::Primary` follows) and the store serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_fails_calls_at_once_until_the_promoted_one_serves() {
    let Some(()) = programs_here() else { return };
    let _one = SERIAL.lock().await;
    let set = tokio::task::block_in_place(SentinelSet::start);
    let old = tokio::task::block_in_place(|| set.primary());
    let store = RedisStore::connect(&set.url(), Config::embedded().store)
        .await
        .expect("the sentinels' primary");
    let room = format!("frozen-primary-{}", now_ms());
    store.head(&room).await.expect("the primary answers");

    set.signal(old, "STOP");
    let frozen = Instant::now();
    let ping = store.ping().await;
    assert!(ping.is_err(), "a frozen primary answered PING");
    assert!(store.health().unreachable, "the gate did not trip");
    let tripped = frozen.elapsed();
    // Refused at once until the prober reaches the promoted primary.
    let (mut refused, mut slowest) = (0, Duration::ZERO);
    let served = loop {
        let t = Instant::now();
        let head = store.head(&room).await;
        let took = t.elapsed();
        match head {
            Ok(_) => break frozen.elapsed(),
            Err(e) => {
                refused += 1;
                slowest = slowest.max(took);
                assert!(e.to_string().contains("unreachable since"), "{e}");
            }
        }
        assert!(
            frozen.elapsed() < Duration::from_secs(30),
            "the store never served the promoted primary"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let promoted = set
        .promoted_after(old, frozen, Duration::from_secs(1))
        .await;
    set.signal(old, "CONT");
    eprintln!(
        "primary {old} frozen: gate tripped after {:.2} s; {refused} calls refused, slowest \
         {:.3} s; served {:.1} s after the freeze (promoted by {:.1} s); trips {}",
        tripped.as_secs_f64(),
        slowest.as_secs_f64(),
        served.as_secs_f64(),
        promoted.as_secs_f64(),
        store.health().trips
    );
    assert!(
        tripped < Duration::from_secs(1),
        "tripped after {tripped:?}"
    );
    assert!(refused > 0, "nothing was refused");
    assert!(
        slowest < Duration::from_secs(1),
        "refusals took {slowest:?}"
    );
    assert_eq!(store.health().trips, 1);
}
