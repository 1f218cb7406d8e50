//! Big rooms fed by notices (docs/architecture.md, "Fan-out"): the
//! processor's "room updated" notice carries the stored batch, fronts take
//! it from there and read Redis only to fill a hole or after a reconnect.
//!
//! Two `serve` nodes on one Redis (`DANMAKU_TEST_REDIS_URL`), each with its
//! own processor (posts alternate between them, so two processors write the
//! room and their notices may arrive out of order), WebSocket viewers over
//! both fronts, 50 msg/s. Every viewer gets every message exactly once,
//! in seq order; each front reads the store for the room at most once a
//! second. Again with every 5th notice dropped on purpose: still everything,
//! once, in order (the holes are filled by reads).
//!
//! Short by default: 15 s of posting, 400 viewers (the room is big from half
//! the viewers on). The full run is `DANMAKU_BIG_ROOM_SECONDS=60
//! DANMAKU_BIG_ROOM_VIEWERS=2000`, which needs a machine where this debug
//! test process can read 2 000 sockets × 10 frames/s (on the shared 2-core
//! box it cannot: its viewers fall behind, not the servers).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pair::{unique, Pair};
use common::procs::Node;
use common::test_redis_url;
use futures_util::StreamExt;
use reqwest::StatusCode;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const RATE_PER_S: u64 = 50;
const HUB_READS: &str = "danmaku_store_reads_total{source=\"hub\"}";
const NOTICE_MESSAGES: &str = "danmaku_notice_messages_total";
const GAP_FILLS: &str = "danmaku_notice_gap_fills_total";

/// One run at a time: each is 2 servers and thousands of sockets.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seqs of a batch frame's messages, in frame order, without parsing the
/// whole JSON (2 000 viewers in one debug test process): every `"seq":`
/// outside a string is a message's (a text's quote would be escaped).
fn batch_seqs(text: &str) -> Option<Vec<u64>> {
    if !text.starts_with("{\"type\":\"batch\"") {
        return None;
    }
    Some(
        text.match_indices("\"seq\":")
            .filter_map(|(at, key)| {
                let digits: String = text[at + key.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                digits.parse().ok()
            })
            .collect(),
    )
}

/// One viewer: connects, then records every message seq until it has seen
/// `last` (0 while posting goes on) or `until` passes. Errs on a seq out of
/// order or repeated.
async fn watch(
    url: String,
    last: Arc<AtomicU64>,
    until: Instant,
    connected: tokio::sync::mpsc::Sender<()>,
) -> Result<Vec<u64>, String> {
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    let hello = match ws.next().await {
        Some(Ok(WsMessage::Text(t))) => t.to_string(),
        other => return Err(format!("no hello: {other:?}")),
    };
    if !hello.contains("\"cursor\":0,") {
        return Err(format!("a fresh room starts at 0: {hello}"));
    }
    let _ = connected.send(()).await;
    drop(connected);
    let mut seen: Vec<u64> = Vec::new();
    loop {
        let want = last.load(Ordering::Acquire);
        if want > 0 && seen.last().is_some_and(|s| *s >= want) {
            return Ok(seen);
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(seen);
        }
        let next = tokio::time::timeout(left.min(Duration::from_millis(500)), ws.next()).await;
        match next {
            Err(_) => continue,
            Ok(Some(Ok(WsMessage::Text(t)))) => {
                for seq in batch_seqs(t.as_str()).unwrap_or_default() {
                    if seen.last().is_some_and(|s| *s >= seq) {
                        return Err(format!("seq {seq} after {:?}", seen.last()));
                    }
                    seen.push(seq);
                }
            }
            Ok(Some(Ok(WsMessage::Close(c)))) => return Err(format!("closed: {c:?}")),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(format!("socket error: {e}")),
            Ok(None) => return Err("stream ended".into()),
        }
    }
}

/// Viewers in the room over every front, as a new viewer's hello tells.
async fn online(node: &Node, room: &str) -> u64 {
    let url = format!("{}/v1/rooms/{room}/ws", node.base().replace("http", "ws"));
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await else {
        return 0;
    };
    let n = match ws.next().await {
        Some(Ok(WsMessage::Text(t))) => serde_json::from_str::<serde_json::Value>(t.as_str())
            .ok()
            .and_then(|v| v["online"].as_u64())
            .unwrap_or(0),
        _ => 0,
    };
    let _ = ws.close(None).await;
    n
}

/// What one run measured.
struct Run {
    posted: u64,
    seconds: f64,
    /// Per front: hub store reads, notice-carried messages, gap fills (deltas).
    reads: [f64; 2],
    carried: [f64; 2],
    fills: [f64; 2],
}

async fn run(drop_every: u64) -> Option<Run> {
    let redis = test_redis_url()?;
    let viewers = env_or("DANMAKU_BIG_ROOM_VIEWERS", 400) as usize;
    let seconds = env_or("DANMAKU_BIG_ROOM_SECONDS", 15);
    let drop_every = drop_every.to_string();
    // Big from half the viewers on (1 000 for the default 2 000).
    let threshold = (viewers as u64 / 2).max(1);
    let threshold_env = threshold.to_string();
    let pair = Pair::start(
        &redis,
        &[
            ("DANMAKU_SERVER__MAX_VIEWER_CONNECTIONS_PER_IP", "100000"),
            ("DANMAKU_FANOUT__TICK_MS", "100"),
            ("DANMAKU_FANOUT__BIG_ROOM_THRESHOLD", &threshold_env),
            ("DANMAKU_FANOUT__BIG_MIN_READ_GAP_MS", "1000"),
            ("DANMAKU_STORE__FAULT_DROP_NOTICE_EVERY", &drop_every),
        ],
    )
    .await;
    let fronts = [&pair.a, &pair.b];
    let room = unique("big-notices");

    // Viewers, half on each front, all in before the first post.
    let last = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds + 60);
    let (connected_tx, mut connected) = tokio::sync::mpsc::channel(viewers.max(1));
    let mut tasks = Vec::with_capacity(viewers);
    for i in 0..viewers {
        let node = fronts[i % 2];
        let url = format!("{}/v1/rooms/{room}/ws", node.base().replace("http", "ws"));
        tasks.push(tokio::spawn(watch(
            url,
            last.clone(),
            until,
            connected_tx.clone(),
        )));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(connected_tx);
    let mut n = 0;
    while n < viewers {
        match tokio::time::timeout(Duration::from_secs(60), connected.recv()).await {
            Ok(Some(())) => n += 1,
            _ => break,
        }
    }
    assert_eq!(n, viewers, "every viewer connected");
    // Both fronts count the room as big (presence rounds, about 1 s).
    let big = common::pair::within(Duration::from_secs(20), || async {
        online(&pair.a, &room).await >= threshold && online(&pair.b, &room).await >= threshold
    })
    .await;
    assert!(big, "the room is big on both fronts");

    let http = &pair.http;
    let before = metrics(fronts, http).await;
    let start = Instant::now();
    let total = seconds * RATE_PER_S;
    let mut posted = 0;
    for i in 0..total {
        let due = start + Duration::from_millis(i * 1000 / RATE_PER_S);
        tokio::time::sleep_until(due.into()).await;
        let node = fronts[(i % 2) as usize];
        // Many users: the per-user rate limit stays out of the way.
        let user = format!("u{}", i % 200);
        let (status, body) = pair.post(node, &room, &user, &format!("m{i}")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "post {i}: {body}");
        posted += 1;
    }
    let spent = start.elapsed().as_secs_f64();
    // Reads over the posting window plus the tail: every message delivered.
    last.store(posted, Ordering::Release);
    let mut failures = Vec::new();
    let mut short = 0;
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.expect("viewer task") {
            Err(e) => failures.push(format!("viewer {i}: {e}")),
            Ok(seen) => {
                if seen != (1..=posted).collect::<Vec<u64>>() {
                    short += 1;
                    if failures.len() < 5 {
                        let missing: Vec<u64> = (1..=posted)
                            .filter(|s| !seen.contains(s))
                            .take(10)
                            .collect();
                        failures.push(format!(
                            "viewer {i} got {} of {posted}; first missing {missing:?}",
                            seen.len()
                        ));
                    }
                }
            }
        }
    }
    let after = metrics(fronts, http).await;
    let seconds_measured = start.elapsed().as_secs_f64();
    assert!(
        failures.is_empty(),
        "{short} viewers short; {failures:#?} (drop every {drop_every}); per front \
         [hub reads, notice messages, gap fills] before {before:?}, after {after:?}"
    );
    let delta = |k: usize, f: usize| after[f][k] - before[f][k];
    let result = Run {
        posted,
        seconds: seconds_measured,
        reads: [delta(0, 0), delta(0, 1)],
        carried: [delta(1, 0), delta(1, 1)],
        fills: [delta(2, 0), delta(2, 1)],
    };
    eprintln!(
        "big room, drop every {drop_every}: {posted} messages in {spent:.1} s to {viewers} \
         viewers; per front over {:.1} s: hub reads {:?}, notice-carried messages {:?}, \
         gap fills {:?}",
        result.seconds, result.reads, result.carried, result.fills
    );
    Some(result)
}

/// Per front: [hub reads, notice messages, gap fills].
async fn metrics(fronts: [&Node; 2], http: &reqwest::Client) -> [[f64; 3]; 2] {
    let mut out = [[0.0; 3]; 2];
    for (f, node) in fronts.iter().enumerate() {
        for (k, sample) in [HUB_READS, NOTICE_MESSAGES, GAP_FILLS].iter().enumerate() {
            out[f][k] = node.metric(http, sample).await;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_room_is_fed_by_notices() {
    let _serial = SERIAL.lock().await;
    let Some(run) = run(0).await else { return };
    for f in 0..2 {
        // One room: at most one read per second per front (+1 for the
        // window's edges); none is needed at all.
        assert!(
            run.reads[f] <= run.seconds.ceil() + 1.0,
            "front {f}: {} hub reads in {:.1} s",
            run.reads[f],
            run.seconds
        );
        // Nearly every message came from a notice: reads only filled the odd
        // hole of two processors' notices crossing (none needed at all).
        assert!(
            run.carried[f] >= run.posted as f64 * 0.5,
            "front {f}: only {} of {} messages came from notices",
            run.carried[f],
            run.posted
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_notices_are_filled_by_reads() {
    let _serial = SERIAL.lock().await;
    let Some(run) = run(5).await else { return };
    let fills: f64 = run.fills.iter().sum();
    assert!(
        fills >= 1.0,
        "the dropped notices left holes that reads filled"
    );
}
