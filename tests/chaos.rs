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
//! Redis is also frozen (SIGSTOP) rather than killed: connections stay open
//! and nothing answers, a partition's shape; the fronts then refuse at once
//! (the store health gate) and serve again within 1.5 s of the thaw.
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
//! `scripts/chaos.sh` runs this suite alone; the machinery (cluster,
//! publisher, viewers, checks) is in tests/common/fault.rs.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::fault::*;
use common::now_ms;
use common::procs::{Kafka, Node, OwnMariaDb, ScratchDir};
use danmaku::config::Config;
use danmaku::store::LiveStore;
use reqwest::StatusCode;
use serde_json::Value;

/// One fault at a time (the test harness runs tests on parallel threads, each
/// with its own runtime; an async mutex, as it is held across awaits, and one
/// that a failed test does not poison).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

/// How long Redis stays frozen in `chaos_redis_sigstop`: past the 5 s
/// response timeout of the first calls, so the fronts find it unreachable
/// and refuse for a while before the thaw.
const FROZEN: Duration = Duration::from_secs(7);

/// Redis frozen (SIGSTOP) and thawed: its connections stay open and nothing
/// answers, as across a partition that drops packets. The store health gate
/// (src/store/redis/health.rs): once a front has refused a post it refuses
/// the rest at once (within 1 s, not after the 5 s response timeout each),
/// and each front acknowledges again within 1.5 s of the thaw; nothing
/// acknowledged is lost or stored twice, viewers get every message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_redis_sigstop() {
    let Some(()) = programs(&[]) else { return };
    let _one = SERIAL.lock().await;
    let tag = "redis-sigstop";
    let node_logs = ScratchDir::new("sigstop-logs");
    let rig = Rig::start(
        tag,
        tokio::task::block_in_place(Kafka::start),
        1,
        &[
            ("DANMAKU_TEST_NODE_LOGS", node_logs.0.display().to_string()),
            ("DANMAKU_LOG_FORMAT", "json".to_string()),
        ],
    )
    .await;
    let room = format!("chaos-{tag}-{}", now_ms());
    let viewers = Viewers::start(&rig, &room).await;
    let load = Load::start(&rig, &room, "f");
    tokio::time::sleep(STEADY).await;

    let frozen = Instant::now();
    rig.redis.freeze();
    // Past the first calls' 5 s timeout: both fronts say so in their metrics.
    tokio::time::sleep(FROZEN - Duration::from_millis(1500)).await;
    let mut gauges = Vec::new();
    for front in &rig.fronts {
        gauges.push(rig.metric(front, "danmaku_store_unreachable").await);
    }
    tokio::time::sleep_until((frozen + FROZEN).into()).await;
    rig.redis.thaw();
    let thawed = Instant::now();
    let mut acked_again = Vec::new();
    for front in &rig.fronts {
        let after = first_ack_by(&load.ledger, front.addr(), thawed, Duration::from_secs(20)).await;
        acked_again.push(after);
    }
    let nodes: Vec<&Node> = rig.fronts.iter().chain(&rig.processors).collect();
    let ready = rig.all_ready(&nodes, Duration::from_secs(20), tag).await;
    let before = load.ledger.acked_before(frozen);
    let caught = caught_up(&rig, &room, &before, frozen, Duration::from_secs(20)).await;
    tokio::time::sleep(STEADY).await;

    for (k, front) in rig.fronts.iter().enumerate() {
        assert_eq!(
            gauges[k], 1.0,
            "{tag}: front {k}'s danmaku_store_unreachable while frozen"
        );
        let after = (
            rig.metric(front, "danmaku_store_unreachable").await,
            rig.metric(front, "danmaku_store_unreachable_trips_total")
                .await,
        );
        assert_eq!(
            after,
            (0.0, 1.0),
            "{tag}: front {k}'s gauge and trips after the thaw"
        );
    }

    let ledger = load.stop().await;
    let stored = settled_store(&rig, &room, &ledger, Duration::from_secs(30)).await;
    let logs = viewers.finish(stored.len()).await;
    let f = check(tag, &ledger, &stored, &logs, &HashSet::new());
    let fast: Vec<_> = rig
        .fronts
        .iter()
        .map(|front| after_first_refusal(&ledger, front.addr(), frozen, thawed))
        .collect();
    let recovery = acked_again.iter().copied().max().unwrap_or_default();
    eprintln!(
        "{}",
        figure_line(
            tag,
            &f,
            recovery,
            &format!(
                "frozen_s={:.1} first_refusal_s={:?} after_it={:?} after_it_max_s={:?} \
                 acked_again_s={:?} ready_s={:.1} caught_up_s={} answers={:?}",
                (thawed - frozen).as_secs_f64(),
                fast.iter()
                    .map(|r| secs(r.map(|(at, ..)| at - frozen)))
                    .collect::<Vec<_>>(),
                fast.iter()
                    .map(|r| r.map_or(0, |(_, n, _)| n))
                    .collect::<Vec<_>>(),
                fast.iter()
                    .map(|r| format!("{:.2}", r.map_or(0.0, |(.., max)| max.as_secs_f64())))
                    .collect::<Vec<_>>(),
                acked_again
                    .iter()
                    .map(|d| format!("{:.2}", d.as_secs_f64()))
                    .collect::<Vec<_>>(),
                ready.as_secs_f64(),
                secs(caught),
                ledger.answers.lock().unwrap()
            )
        )
    );
    for (k, r) in fast.iter().enumerate() {
        let (_, n, slowest) =
            r.unwrap_or_else(|| panic!("{tag}: front {k} refused no post while Redis was frozen"));
        assert!(n > 0, "{tag}: no post to front {k} after its first refusal");
        assert_within(
            tag,
            &format!("front {k}'s refusals after its first"),
            slowest,
            Duration::from_secs(1),
        );
    }
    assert_within(tag, "recovery", recovery, Duration::from_millis(1500));

    // Every refusal failed a store call, but the log is not flooded: at most
    // one line a second per front (src/log_throttle.rs), the rest counted.
    let frozen_s = (thawed - frozen).as_secs();
    for (k, front) in rig.fronts.iter().enumerate() {
        let path = node_logs.0.join(format!("front-{}.log", front.port));
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["fields"]["message"] == "live store call failed")
            .collect();
        let suppressed: u64 = lines
            .iter()
            .map(|v| v["fields"]["suppressed"].as_u64().expect("suppressed"))
            .sum();
        eprintln!(
            "{tag}: front {k}: {} store-failure lines, {suppressed} failures counted in them",
            lines.len()
        );
        assert!(
            !lines.is_empty() && lines.len() as u64 <= frozen_s + 2,
            "{tag}: front {k} logged {} store-failure lines in a {frozen_s} s freeze:\n{}",
            lines.len(),
            lines
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(
            suppressed > 0,
            "{tag}: front {k}: its lines stand for more failures than themselves"
        );
    }
}

/// How long an idempotency claim stays pending before a retry takes it over
/// (src/ingest/idempotency.rs, `takeover_after`): the rig's publish timeout
/// (2 s) + 15 s.
const TAKEOVER_AFTER: Duration = Duration::from_secs(17);

/// A front SIGKILLed while it publishes a post (the broker frozen, so the
/// publish waits): its idempotency claim stays pending. Retries of the post
/// on the other front answer 409 `in_progress` while the claim is younger
/// than the takeover bound, then take it over: 202 with the claim's message
/// id, and the message is stored exactly once, whether or not the dead
/// front's record landed after the thaw. (Before the takeover every retry
/// answered 409 for the key's TTL: a gift whose front died was lost.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_front_killed_mid_publish() {
    let Some(()) = programs(&[]) else { return };
    let _one = SERIAL.lock().await;
    let tag = "front-mid-publish";
    let mut rig = Rig::start(tag, tokio::task::block_in_place(Kafka::start), 1, &[]).await;
    let room = format!("chaos-{tag}-{}", now_ms());
    let (a, b) = (rig.fronts[0].base(), rig.fronts[1].base());
    let (http, token) = (rig.http.clone(), rig.token.clone());
    let post = |base: &str, text: &str| {
        let request = http
            .post(format!("{base}/v1/rooms/{room}/danmaku"))
            .bearer_auth(&token)
            .body(serde_json::json!({"client_msg_id": text, "text": text}).to_string());
        async move {
            match request.send().await {
                Ok(r) => (
                    Some(r.status()),
                    r.json::<Value>().await.unwrap_or(Value::Null),
                ),
                Err(_) => (None, Value::Null),
            }
        }
    };
    // Both fronts have published once (connected to the broker, the room
    // loaded).
    for (base, text) in [(&a, "warm-a"), (&b, "warm-b")] {
        let (status, body) = post(base, text).await;
        assert_eq!(status, Some(StatusCode::ACCEPTED), "{tag}: {text}: {body}");
    }

    let text = format!("gift-{}", now_ms());
    // The post's idempotency key (docs/redis-keys.md), to see A claim it.
    let key = format!("dm:{{{room}}}:{}:{PUBLISHER}:{text}", PUBLISHER.len());
    let store = rig.store().await;
    rig.kafka.freeze();
    let claimed = Instant::now();
    let first = tokio::spawn(post(&a, &text));
    // Killed once it holds the claim, within its 2 s publish timeout (after
    // which it would mark the key for a retry itself).
    loop {
        let held = store.get_value(&key).await.expect("read the claim");
        if held.is_some_and(|v| v.contains("|pending:")) {
            break;
        }
        assert!(
            claimed.elapsed() < Duration::from_secs(10),
            "{tag}: front A never claimed the post"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rig.fronts[0].sigkill();
    let killed_after = claimed.elapsed();
    let (status, body) = first.await.unwrap();
    assert_ne!(
        status,
        Some(StatusCode::ACCEPTED),
        "{tag}: acknowledged with the broker frozen: {body}"
    );
    rig.kafka.thaw();

    // Retried on the other front until answered, every 500 ms.
    let mut answers: Vec<(Duration, Option<StatusCode>, Value)> = Vec::new();
    let accepted = loop {
        let (status, body) = post(&b, &text).await;
        let at = claimed.elapsed();
        answers.push((at, status, body.clone()));
        if status == Some(StatusCode::ACCEPTED) {
            break body;
        }
        let answer = (status, body["error"]["code"].as_str());
        // Once taken over, the publish may still fail while the thawed
        // broker recovers (then the key is marked for a retry, same id).
        let publish_failed = (
            Some(StatusCode::SERVICE_UNAVAILABLE),
            Some("bus_unavailable"),
        );
        assert!(
            answer == (Some(StatusCode::CONFLICT), Some("in_progress"))
                || (answer == publish_failed && at >= TAKEOVER_AFTER - Duration::from_secs(1)),
            "{tag}: a retry at {at:?}: {answer:?}"
        );
        assert!(
            at < TAKEOVER_AFTER + Duration::from_secs(10),
            "{tag}: the dead front's claim was never taken over"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let took_over = answers
        .iter()
        .find(|(_, status, _)| *status != Some(StatusCode::CONFLICT))
        .unwrap()
        .0;
    let id = accepted["id"].as_str().expect("id").to_string();
    assert!(
        answers.len() > 1 && took_over >= TAKEOVER_AFTER - Duration::from_secs(1),
        "{tag}: taken over after {took_over:?}, before the bound {TAKEOVER_AFTER:?}"
    );
    assert_eq!(
        rig.metric(&rig.fronts[1], "danmaku_idempotency_takeovers_total")
            .await,
        1.0
    );
    let (status, again) = post(&b, &text).await;
    assert_eq!(
        (status, again["id"].as_str()),
        (Some(StatusCode::ACCEPTED), Some(id.as_str())),
        "{tag}: a retry after the takeover gets its answer"
    );

    // Stored once, under the claim's id (the processor has caught up once
    // the warm-up posts and this one are in, and a late copy would follow
    // within a few seconds).
    let deadline = Instant::now() + Duration::from_secs(30);
    let copies = loop {
        let stored = rig.stored(&room).await;
        let copies: Vec<Value> = stored.into_iter().filter(|m| text_of(m) == text).collect();
        if !copies.is_empty() || Instant::now() > deadline {
            break copies;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = rig
        .stored(&room)
        .await
        .into_iter()
        .filter(|m| text_of(m) == text)
        .count();
    eprintln!(
        "chaos {tag}: killed_after_claim_s={:.2} taken_over_s={:.1} retries_409={} \
         stored={later} acked_lost=0",
        killed_after.as_secs_f64(),
        took_over.as_secs_f64(),
        answers
            .iter()
            .filter(|(_, status, _)| *status == Some(StatusCode::CONFLICT))
            .count()
    );
    assert_eq!(copies.len(), 1, "{tag}: stored copies: {copies:?}");
    assert_eq!(later, 1, "{tag}: a second copy landed later");
    assert_eq!(copies[0]["id"], id, "{tag}: stored under the claim's id");
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
    rig.addrs.lock().unwrap()[1] = rig.fronts[1].addr();
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
