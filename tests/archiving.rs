//! Continuous archiving (docs/replay.md, "Archiver"): a live longer than the
//! live store keeps is replayed whole, also across an archiver outage longer
//! than the store's retention; `live/end` answers once the live is archived;
//! a live started on one front ends on another.
//!
//! - `embedded_*`: one process (memory bus, memory store, SQLite); always runs.
//! - `two_fronts_*`: two `serve` processes on one Redis and one SQLite file;
//!   needs `DANMAKU_TEST_REDIS_URL`.
//! - `processes_*`: front, processor and archiver processes on Redis, Kafka,
//!   MariaDB and the replay Redis (`DANMAKU_TEST_REDIS_URL`,
//!   `DANMAKU_TEST_KAFKA_BROKERS`, `DANMAKU_TEST_MYSQL_URL`,
//!   `DANMAKU_TEST_REPLAY_REDIS_URL`, as scripts/test.sh sets them).
//!
//! A test whose services are missing skips, unless
//! `DANMAKU_REQUIRE_SERVICES=1`, where it fails.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pair::{Pair, ADMIN};
use common::procs::{Node, ScratchDir};
use common::{now_ms, TestServer};
use danmaku::auth::Authenticator;
use danmaku::config::Config;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// What a replay of a whole live must be: every posted text once, in seq order.
fn assert_whole(body: &Value, texts: &BTreeSet<String>) {
    let messages = body["messages"].as_array().expect("messages");
    let got: Vec<&str> = messages
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    let unique: BTreeSet<&str> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "a message replayed twice");
    let missing: Vec<&String> = texts
        .iter()
        .filter(|t| !unique.contains(t.as_str()))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} missing, e.g. {missing:?}",
        texts.len() - unique.len().min(texts.len()),
        texts.len()
    );
    assert_eq!(got.len(), texts.len(), "messages from outside the live");
    let seqs: Vec<u64> = messages
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "not in seq order: {:?}",
        &seqs[..seqs.len().min(50)]
    );
    assert!(messages.iter().all(|m| m["offset_ms"].is_u64()));
}

/// Posts `n` danmaku (texts `"{tag}{i}"`), spread evenly over `over`, from
/// `workers` concurrent clients; a refused post is retried with the same
/// `client_msg_id` (stored once) until accepted. Returns the texts.
async fn post_spread(
    http: &reqwest::Client,
    base: &str,
    room: &str,
    token: &str,
    tag: &str,
    n: usize,
    over: Duration,
) -> BTreeSet<String> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now();
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (http, next) = (http.clone(), next.clone());
            let url = format!("{base}/v1/rooms/{room}/danmaku");
            let auth = format!("Bearer {token}");
            let tag = tag.to_string();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        return;
                    }
                    tokio::time::sleep_until(start + over * i as u32 / n as u32).await;
                    let body =
                        json!({"client_msg_id": format!("{tag}{i}"), "text": format!("{tag}{i}")});
                    let deadline = Instant::now() + Duration::from_secs(30);
                    loop {
                        let res = http
                            .post(&url)
                            .header("authorization", &auth)
                            .header("content-type", "application/json")
                            .body(body.to_string())
                            .send()
                            .await;
                        if matches!(&res, Ok(r) if r.status() == StatusCode::ACCEPTED) {
                            break;
                        }
                        assert!(
                            Instant::now() < deadline,
                            "post {tag}{i} not accepted in 30 s: {res:?}"
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    (0..n).map(|i| format!("{tag}{i}")).collect()
}

async fn admin(http: &reqwest::Client, base: &str, path: &str) -> (StatusCode, Value) {
    let res = http
        .post(format!("{base}{path}"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("admin POST");
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// `POST /v1/admin/rooms/{room}/live/{action}` (`start` or `end`).
async fn post_live(
    http: &reqwest::Client,
    base: &str,
    room: &str,
    action: &str,
) -> (StatusCode, Value) {
    admin(http, base, &format!("/v1/admin/rooms/{room}/live/{action}")).await
}

/// Starts a live (201) and returns its id.
async fn start_live(http: &reqwest::Client, base: &str, room: &str) -> String {
    let (status, body) = post_live(http, base, room, "start").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["live"]["id"].as_str().unwrap().to_string()
}

async fn replay(http: &reqwest::Client, base: &str, room: &str, live: &str) -> Value {
    let res = http
        .get(format!(
            "{base}/v1/rooms/{room}/replay?live={live}&from_ms=0&to_ms=300000"
        ))
        .send()
        .await
        .expect("replay GET");
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

/// Ends the live on `base`: 200 and archived (202 are retried: the
/// archiver catching up after an outage may take longer than one wait).
async fn end_archived(http: &reqwest::Client, base: &str, room: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (status, body) = post_live(http, base, room, "end").await;
        match status {
            StatusCode::OK => {
                assert_eq!(body["status"], "archived", "{body}");
                assert_eq!(body["live"]["archived"], true, "{body}");
                return body;
            }
            StatusCode::ACCEPTED => {
                assert_eq!(body["status"], "ending", "{body}");
                assert_eq!(body["live"]["archived"], false, "{body}");
                assert!(Instant::now() < deadline, "never archived: {body}");
            }
            other => panic!("live/end: {other} {body}"),
        }
    }
}

// ---- one process ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_live_longer_than_the_store_keeps_is_replayed_whole() {
    let ts = TestServer::start_with(|c| {
        c.auth.admin_token = ADMIN.into();
        c.store.max_per_bucket = 50;
        c.store.max_age_s = 5;
        // Replay rations a flood like the live did (tests/replay_tiers.rs);
        // this test counts every archived message, so nothing is rationed.
        c.ration.budget_tiers = vec![(0, 1_000_000)];
        c.archive.settle_ms = 100;
        c.archive.batch_size = 200;
        c.archive.replay_window_ms = 60_000;
    })
    .await;
    let room = ts.room("long");
    let token = ts.token("u1", "alice");
    let (s, _, _) = ts.post_danmaku(&room, &token, "before", "before").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    ts.wait_stored(&room, 1).await;
    tokio::time::sleep(Duration::from_millis(5)).await;

    let live = start_live(&ts.http, &ts.base, &room).await;
    let texts = post_spread(
        &ts.http,
        &ts.base,
        &room,
        &token,
        "e",
        2000,
        Duration::from_secs(2),
    )
    .await;
    let kept = ts.read_all(&room).await.len();
    assert!(kept <= 150, "the store kept {kept}: retention did not bite");

    // 200 at once: the markers followed the last messages.
    let t = Instant::now();
    let (status, body) = post_live(&ts.http, &ts.base, &room, "end").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "archived", "{body}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let (s, _, _) = ts.post_danmaku(&room, &token, "after", "after").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_whole(&replay(&ts.http, &ts.base, &room, &live).await, &texts);
    // Ending again: nothing to end.
    let (status, _) = post_live(&ts.http, &ts.base, &room, "end").await;
    assert_eq!(status, StatusCode::CONFLICT);
    wait_caught_up(&ts.http, &ts.base).await;
    ts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_end_answers_202_while_the_archiver_is_behind_then_200() {
    // Every message waits 3 s before it is archived: an end right after the
    // posts cannot be archived within a 300 ms wait.
    let ts = TestServer::start_with(|c| {
        c.auth.admin_token = ADMIN.into();
        c.archive.settle_ms = 3000;
        c.archive.end_wait_ms = 300;
    })
    .await;
    let room = ts.room("ending");
    let token = ts.token("u1", "alice");
    let live = start_live(&ts.http, &ts.base, &room).await;
    let texts = post_spread(
        &ts.http,
        &ts.base,
        &room,
        &token,
        "w",
        50,
        Duration::from_millis(200),
    )
    .await;
    let t = Instant::now();
    let (status, body) = post_live(&ts.http, &ts.base, &room, "end").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "ending");
    assert_eq!(body["live"]["id"], live.as_str());
    assert!(body["live"]["ended_at"].is_u64(), "{body}");
    assert!(t.elapsed() >= Duration::from_millis(300));
    // Not replayable yet; the end may be asked again until it is archived.
    let (status, body, _) = ts
        .get(&format!(
            "/v1/rooms/{room}/replay?live={live}&from_ms=0&to_ms=10000"
        ))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "live_not_archived");
    let body = end_archived(&ts.http, &ts.base, &room).await;
    assert_eq!(body["live"]["id"], live.as_str());
    let (status, body, _) = ts
        .get(&format!(
            "/v1/rooms/{room}/replay?live={live}&from_ms=0&to_ms=60000"
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_whole(&body, &texts);
    ts.shutdown().await;
}

// ---- two fronts, one Redis ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fronts_start_on_one_end_on_the_other() {
    let Some(urls) = common::procs::service_urls(&["DANMAKU_TEST_REDIS_URL"]) else {
        return;
    };
    let scratch = ScratchDir::new("live-ab");
    let archive = format!("sqlite://{}/archive.db?mode=rwc", scratch.0.display());
    let p = Pair::start(
        &urls[0],
        &[
            ("DANMAKU_ARCHIVE_URL", archive.as_str()),
            ("DANMAKU_ARCHIVE__SETTLE_MS", "100"),
            // Replays whole, unrationed: the test counts every message.
            ("DANMAKU_RATION__BUDGET_TIERS", "0:1000000"),
            ("DANMAKU_INGEST__USER_RATE_PER_S", "100000"),
            ("DANMAKU_INGEST__USER_BURST", "100000"),
        ],
    )
    .await;
    let room = common::pair::unique("ab");
    let live = start_live(&p.http, &p.a.base(), &room).await;
    // B sees A's live: a second start there is refused with it.
    let (status, body) = post_live(&p.http, &p.b.base(), &room, "start").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["live"]["id"], live.as_str());

    let token = Authenticator::new(&Config::embedded().auth).issue("u1", "Fan", 600);
    let mut texts = post_spread(
        &p.http,
        &p.a.base(),
        &room,
        &token,
        "a",
        150,
        Duration::from_millis(500),
    )
    .await;
    texts.extend(
        post_spread(
            &p.http,
            &p.b.base(),
            &room,
            &token,
            "b",
            150,
            Duration::from_millis(500),
        )
        .await,
    );
    // Each node's own (embedded) pipeline archives its own posts; B's end
    // markers travel only B's, and settle as long as A's last posts do.
    let (status, body) = post_live(&p.http, &p.b.base(), &room, "end").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["live"]["id"], live.as_str());
    assert_eq!(body["status"], "archived");
    for node in [&p.a, &p.b] {
        assert_whole(&replay(&p.http, &node.base(), &room, &live).await, &texts);
    }
    let (status, _) = post_live(&p.http, &p.a.base(), &room, "end").await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "ended on B: nothing left to end on A"
    );
}

// ---- front, processor, archiver: Kafka, Redis, MariaDB ------------------------

struct Cluster {
    env: Vec<(String, String)>,
    http: reqwest::Client,
    token: String,
}

impl Cluster {
    fn new(name: &str, urls: &[String]) -> Cluster {
        let unique = format!("{name}-{}-{}", std::process::id(), now_ms());
        let mut env: Vec<(String, String)> = [
            ("DANMAKU_STORE__ENGINE", "redis"),
            ("DANMAKU_REDIS_URL", urls[0].as_str()),
            ("DANMAKU_KAFKA_BROKERS", urls[1].as_str()),
            ("DANMAKU_ARCHIVE_URL", urls[2].as_str()),
            ("DANMAKU_REPLAY_REDIS_URL", urls[3].as_str()),
            ("DANMAKU_BUS__ENGINE", "kafka"),
            ("DANMAKU_BUS__PARTITIONS", "4"),
            ("DANMAKU_ADMIN_TOKEN", ADMIN),
            // The live store keeps 50 a bucket and 5 s: far less than a live.
            ("DANMAKU_STORE__MAX_PER_BUCKET", "50"),
            // Replays whole, unrationed: the test counts every message.
            ("DANMAKU_RATION__BUDGET_TIERS", "0:1000000"),
            ("DANMAKU_STORE__MAX_AGE_S", "5"),
            ("DANMAKU_ARCHIVE__RUN_ARCHIVER", "false"),
            ("DANMAKU_ARCHIVE__SETTLE_MS", "500"),
            // Small batches with a pause: a catch-up lasts long enough to be seen.
            ("DANMAKU_ARCHIVE__BATCH_SIZE", "100"),
            ("DANMAKU_ARCHIVE__BATCH_PAUSE_MS", "20"),
            ("DANMAKU_ARCHIVE__END_WAIT_MS", "10000"),
            // One window holds the whole live: seq order across the replay.
            ("DANMAKU_ARCHIVE__REPLAY_WINDOW_MS", "60000"),
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
        Cluster {
            env,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            token: Authenticator::new(&Config::embedded().auth).issue("u1", "Fan", 3600),
        }
    }

    async fn node(&self, role: &'static str) -> Node {
        let n = Node::spawn(role, &self.env);
        n.ready(&self.http).await;
        n
    }
}

/// The archiver's lag (seconds, messages) as `/metrics` tells it, after
/// checking `/readyz` tells it too; `None` while the node does not answer.
async fn lag(http: &reqwest::Client, base: &str) -> Option<(f64, f64)> {
    let ready: Value = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    assert!(ready["archiver"]["lag_seconds"].is_f64(), "{ready}");
    assert!(ready["archiver"]["lag_messages"].is_i64(), "{ready}");
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some((
        common::metric_value(&text, "danmaku_archiver_lag_seconds")?,
        common::metric_value(&text, "danmaku_archiver_lag_messages")?,
    ))
}

/// Waits (up to 10 s) until both lags are 0.
async fn wait_caught_up(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = lag(http, base).await;
        if now == Some((0.0, 0.0)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "lag did not fall back to 0: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_replay_whole_lives_beyond_retention_and_across_a_killed_archiver() {
    let Some(urls) = common::procs::service_urls(&[
        "DANMAKU_TEST_REDIS_URL",
        "DANMAKU_TEST_KAFKA_BROKERS",
        "DANMAKU_TEST_MYSQL_URL",
        "DANMAKU_TEST_REPLAY_REDIS_URL",
    ]) else {
        return;
    };
    let c = Cluster::new("archiving", &urls);
    let _processor = c.node("processor").await;
    let mut archiver = c.node("archiver").await;
    let front = c.node("front").await;
    let base = front.base();
    let n = 5000;
    let over = Duration::from_secs(16);

    // 1. A live of 5 000 messages over 16 s; the store keeps 5 s of it.
    let room = common::pair::unique("long");
    let live = start_live(&c.http, &base, &room).await;
    let texts = post_spread(&c.http, &base, &room, &c.token, "p", n, over).await;
    let t = Instant::now();
    end_archived(&c.http, &base, &room).await;
    eprintln!("live 1: archived {:?} after its end", t.elapsed());
    assert_whole(&replay(&c.http, &base, &room, &live).await, &texts);

    // 2. The same with the archiver SIGKILLed for 8 s (longer than the 5 s
    // the store keeps) during the live, then restarted; its lag rises, then
    // falls back to 0.
    let room = common::pair::unique("outage");
    let live = start_live(&c.http, &base, &room).await;
    let posting = {
        let (http, base, room, token) =
            (c.http.clone(), base.clone(), room.clone(), c.token.clone());
        tokio::spawn(async move { post_spread(&http, &base, &room, &token, "q", n, over).await })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    archiver.sigkill();
    tokio::time::sleep(Duration::from_secs(8)).await;
    archiver.restart();
    archiver.ready(&c.http).await;
    // Watch the lag from the restart on (every 20 ms) until the live is archived.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (http, done, archiver) = (c.http.clone(), done.clone(), archiver.base());
        tokio::spawn(async move {
            let mut samples: Vec<(f64, f64)> = Vec::new();
            while !done.load(Ordering::SeqCst) {
                if let Some(s) = lag(&http, &archiver).await {
                    samples.push(s);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            samples
        })
    };
    let texts = posting.await.unwrap();
    let t = Instant::now();
    end_archived(&c.http, &base, &room).await;
    eprintln!("live 2: archived {:?} after its end", t.elapsed());
    // Caught up: both lags back to 0 (the message lag is refreshed each 0.5 s).
    wait_caught_up(&c.http, &archiver.base()).await;
    done.store(true, Ordering::SeqCst);
    let samples = watcher.await.unwrap();
    let max_seconds = samples.iter().map(|s| s.0).fold(0.0, f64::max);
    let max_messages = samples.iter().map(|s| s.1).fold(0.0, f64::max);
    eprintln!(
        "archiver lag after the restart: max {max_seconds} s, max {max_messages} messages ({} samples)",
        samples.len()
    );
    assert!(max_seconds > 1.0, "lag seconds never rose: {samples:?}");
    assert!(max_messages > 0.0, "lag messages never rose");
    assert_whole(&replay(&c.http, &base, &room, &live).await, &texts);
}
