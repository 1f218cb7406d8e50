//! Replay read tiers (docs/replay.md, "Replay reads"): one load for many
//! first reads of a window, prefetch of hot replays, density control,
//! retractions across fronts, archive retention and live deletion.
//!
//! Lives are written straight into the archive (the archiver has its own
//! tests): what is tested here is what replay reads make of them.
//!
//! Each scenario runs twice: embedded (memory live store, a SQLite file
//! archive, no replay Redis) and on services (`DANMAKU_TEST_REDIS_URL`,
//! `DANMAKU_TEST_REPLAY_REDIS_URL`, `DANMAKU_TEST_MYSQL_URL`; skipped without
//! them unless `DANMAKU_REQUIRE_SERVICES=1`, where they fail). The
//! two-front retraction test needs the services.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::pair::Pair;
use common::procs::ScratchDir;
use common::{assert_error, into_parts, metric_value, now_ms, TestServer};
use danmaku::archive::{Archive, ArchivedMessage, Live};
use danmaku::message::{Kind, Message, Priority, UserRef};
use reqwest::StatusCode;
use serde_json::{json, Value};

const ADMIN: &str = "replay-tiers-admin-token";
const WINDOW_MS: u64 = 1000;

/// Services tests share the replay Redis, whose command counts they read:
/// one at a time.
static SERVICES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where a front's archive and replay Redis are.
struct Backend {
    archive_url: String,
    live_redis: Option<String>,
    replay_redis: Option<String>,
    _dir: Option<ScratchDir>,
}

fn embedded() -> Backend {
    let dir = ScratchDir::new("replay-tiers");
    Backend {
        archive_url: format!("sqlite://{}/archive.db?mode=rwc", dir.0.display()),
        live_redis: None,
        replay_redis: None,
        _dir: Some(dir),
    }
}

fn services() -> Option<Backend> {
    let (live, replay, mysql) = common::procs::replay_service_urls()?;
    Some(Backend {
        archive_url: mysql,
        live_redis: Some(live),
        replay_redis: Some(replay),
        _dir: None,
    })
}

/// A front on `b` (no archiver: the tests write the archive themselves).
async fn front(
    b: &Backend,
    adjust: impl FnOnce(&mut danmaku::config::Config) + Send + 'static,
) -> TestServer {
    let (url, live, replay) = (
        b.archive_url.clone(),
        b.live_redis.clone(),
        b.replay_redis.clone(),
    );
    TestServer::start_with(move |c| {
        c.auth.admin_token = ADMIN.into();
        c.archive.url = url;
        c.archive.run_archiver = false;
        c.archive.replay_window_ms = WINDOW_MS;
        if let Some(live) = live {
            c.store.engine = danmaku::config::StoreEngine::Redis;
            c.store.redis_url = live;
        }
        if let Some(replay) = replay {
            c.store.replay_redis_url = replay;
        }
        adjust(c);
    })
    .await
}

/// A message of `room` at `offset` (ms) into a live that started at `started_at`.
fn message(room: &str, n: usize, priority: Priority, started_at: u64, offset: u64) -> Message {
    Message {
        id: format!("{room}-m{n}"),
        seq: 0,
        room: room.to_string(),
        kind: if priority == Priority::High {
            Kind::Gift
        } else {
            Kind::Danmaku
        },
        priority,
        user: UserRef {
            id: format!("u{n}"),
            name: "viewer".into(),
        },
        text: format!("message {n}"),
        ts: started_at + offset,
        offset_ms: Some(offset),
        gift: None,
        style: None,
    }
}

/// An archived live of `room`, with `at` = (offset ms, priority) of its
/// messages in seq order; ended `ended_ago_ms` ago. Returns the live and the
/// ids of its messages by seq.
async fn seed(
    archive: &dyn Archive,
    room: &str,
    at: &[(u64, Priority)],
    ended_ago_ms: u64,
) -> (Live, Vec<String>) {
    let end_offset = at.iter().map(|m| m.0).max().unwrap_or(0) + 1;
    let started_at = now_ms() - ended_ago_ms - end_offset;
    let id = format!("{room}-live");
    archive.start_live(room, &id, started_at).await.unwrap();
    let rows: Vec<ArchivedMessage> = at
        .iter()
        .enumerate()
        .map(|(i, (offset, p))| {
            let stored = message(room, i, *p, started_at, *offset).into_stored(i as u64 + 1);
            ArchivedMessage {
                seq: stored.seq,
                offset_ms: *offset,
                ts: stored.ts,
                json: stored.json,
            }
        })
        .collect();
    archive.append(&id, &rows, at.len() as u64).await.unwrap();
    archive
        .end_live(room, started_at + end_offset)
        .await
        .unwrap();
    archive.finish(&id, now_ms()).await.unwrap();
    let live = archive.live(&id).await.unwrap().unwrap();
    let ids = (0..at.len()).map(|i| format!("{room}-m{i}")).collect();
    (live, ids)
}

/// `n` low messages per second over `seconds` seconds.
fn steady(seconds: u64, n: u64) -> Vec<(u64, Priority)> {
    (0..seconds * n)
        .map(|i| (i * 1000 / n, Priority::Low))
        .collect()
}

async fn archive_of(ts: &TestServer) -> std::sync::Arc<dyn Archive> {
    danmaku::archive::connect(&ts.config.archive).await.unwrap()
}

fn replay_path(room: &str, live: &str, from: u64, to: u64) -> String {
    format!("/v1/rooms/{room}/replay?live={live}&from_ms={from}&to_ms={to}")
}

async fn metric(ts: &TestServer, sample: &str) -> f64 {
    metric_value(&ts.metrics().await, sample).unwrap_or(0.0)
}

fn message_ids(body: &Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {body}"))
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

/// Calls of `command` the Redis at `url` has run.
async fn redis_calls(url: &str, command: &str) -> u64 {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let text: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:")))
        .and_then(|rest| {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

async fn admin_delete(
    ts: &TestServer,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let mut req = ts.http.delete(ts.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    into_parts(req.send().await.unwrap()).await
}

// ---- (a) single flight ------------------------------------------------------

/// 200 concurrent first reads of one window: one archive query (and on
/// services one replay-Redis read and one fill), all 200 answered alike.
async fn first_reads_share_one_load(b: &Backend) {
    let ts = front(b, |c| c.archive.prefetch_viewers = 0).await;
    let room = ts.room("flight");
    let archive = archive_of(&ts).await;
    let (live, ids) = seed(&*archive, &room, &steady(3, 100), 1000).await;
    // The live's metadata is looked up (and cached) by a first read elsewhere.
    let (status, body, _) = ts.get(&replay_path(&room, &live.id, 2000, 3000)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let queries = metric(&ts, "danmaku_replay_archive_queries_total").await;
    let archive_reads = metric(&ts, "danmaku_replay_reads_total{tier=\"archive\"}").await;
    let cache_reads = metric(&ts, "danmaku_replay_reads_total{tier=\"cache\"}").await;
    let coalesced = metric(&ts, "danmaku_replay_coalesced_total").await;
    let redis_before = match &b.replay_redis {
        Some(url) => Some((
            redis_calls(url, "sismember").await,
            redis_calls(url, "zadd").await,
        )),
        None => None,
    };
    let path = replay_path(&room, &live.id, 0, WINDOW_MS);
    let reads: Vec<_> = (0..200)
        .map(|_| {
            let (http, url) = (ts.http.clone(), ts.url(&path));
            tokio::spawn(async move {
                let res = http.get(url).send().await.unwrap();
                (res.status(), res.text().await.unwrap())
            })
        })
        .collect();
    let mut bodies = Vec::new();
    for r in reads {
        let (status, body) = r.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        bodies.push(body);
    }
    assert!(bodies.iter().all(|b| *b == bodies[0]), "200 answers alike");
    let body: Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(message_ids(&body), ids[..100].to_vec());

    assert_eq!(
        metric(&ts, "danmaku_replay_archive_queries_total").await - queries,
        1.0,
        "one archive query for 200 first reads"
    );
    assert_eq!(
        metric(&ts, "danmaku_replay_reads_total{tier=\"archive\"}").await - archive_reads,
        1.0
    );
    let shared = metric(&ts, "danmaku_replay_coalesced_total").await - coalesced
        + metric(&ts, "danmaku_replay_reads_total{tier=\"cache\"}").await
        - cache_reads;
    assert_eq!(
        shared, 199.0,
        "the other 199 shared the load or hit the cache"
    );
    if let (Some(url), Some((sismember, zadd))) = (&b.replay_redis, redis_before) {
        assert_eq!(
            redis_calls(url, "sismember").await - sismember,
            1,
            "one replay Redis read"
        );
        assert_eq!(
            redis_calls(url, "zadd").await - zadd,
            1,
            "one replay Redis fill"
        );
    }
    ts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_first_reads_share_one_load() {
    first_reads_share_one_load(&embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_first_reads_share_one_load() {
    let Some(b) = services() else { return };
    let _one = SERVICES.lock().await;
    first_reads_share_one_load(&b).await;
}

// ---- (b) prefetch -----------------------------------------------------------

/// A replay 100 viewers watch has its next windows in the front cache before
/// the viewers get there (1× playback: one window length later); a replay
/// 19 watch has none loaded ahead.
async fn hot_replays_are_prefetched(b: &Backend) {
    let ts = front(b, |c| {
        c.archive.prefetch_viewers = 20;
        c.archive.prefetch_max_windows = 2;
    })
    .await;
    let room = ts.room("prefetch");
    let archive = archive_of(&ts).await;
    let (live, ids) = seed(&*archive, &room, &steady(5, 50), 1000).await;
    let viewers = |n: usize, window: u64| {
        let path = replay_path(
            &room,
            &live.id,
            window * WINDOW_MS,
            (window + 1) * WINDOW_MS,
        );
        let reads: Vec<_> = (0..n)
            .map(|_| {
                let (http, url) = (ts.http.clone(), ts.url(&path));
                tokio::spawn(async move {
                    let res = http.get(url).send().await.unwrap();
                    assert_eq!(res.status(), StatusCode::OK);
                    res.json::<Value>().await.unwrap()
                })
            })
            .collect();
        async move {
            let mut out = Vec::new();
            for r in reads {
                out.push(r.await.unwrap());
            }
            out
        }
    };
    // 19 viewers: not hot.
    viewers(19, 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(metric(&ts, "danmaku_replay_prefetched_total").await, 0.0);

    // 81 more (100 within a window's length): windows 1 and 2 (at most 2
    // ahead) are loaded before the viewers reach window 1.
    viewers(81, 0).await;
    // At 1x playback, the viewers reach window 1 one window length after
    // they read window 0.
    let reached_at = Instant::now() + Duration::from_millis(WINDOW_MS);
    loop {
        if metric(&ts, "danmaku_replay_prefetched_total").await >= 2.0 {
            break;
        }
        assert!(
            Instant::now() < reached_at,
            "windows 1 and 2 not prefetched within a window's length"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        metric(&ts, "danmaku_replay_prefetched_total").await,
        2.0,
        "at most prefetch_max_windows ahead"
    );

    // The viewers reach window 1: all from the front cache, counted as
    // prefetch hits; the archive sees only further prefetches (window 3).
    let prefetched = metric(&ts, "danmaku_replay_prefetched_total").await;
    let hits = metric(&ts, "danmaku_replay_prefetch_hits_total").await;
    let cache = metric(&ts, "danmaku_replay_reads_total{tier=\"cache\"}").await;
    let archive_reads = metric(&ts, "danmaku_replay_reads_total{tier=\"archive\"}").await;
    let redis_reads = metric(&ts, "danmaku_replay_reads_total{tier=\"redis\"}").await;
    let bodies = viewers(100, 1).await;
    for body in &bodies {
        assert_eq!(message_ids(body), ids[50..100].to_vec());
    }
    assert_eq!(
        metric(&ts, "danmaku_replay_prefetch_hits_total").await - hits,
        100.0
    );
    assert_eq!(
        metric(&ts, "danmaku_replay_reads_total{tier=\"cache\"}").await - cache,
        100.0
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let more = metric(&ts, "danmaku_replay_prefetched_total").await - prefetched;
    let loads = metric(&ts, "danmaku_replay_reads_total{tier=\"archive\"}").await - archive_reads
        + metric(&ts, "danmaku_replay_reads_total{tier=\"redis\"}").await
        - redis_reads;
    assert_eq!(loads, more, "window 1's reads loaded nothing themselves");
    assert!(more <= 1.0, "only window 3 is new ahead: {more}");
    ts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_hot_replays_are_prefetched() {
    hot_replays_are_prefetched(&embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_hot_replays_are_prefetched() {
    let Some(b) = services() else { return };
    let _one = SERVICES.lock().await;
    hot_replays_are_prefetched(&b).await;
}

// ---- (c) density ------------------------------------------------------------

/// A flooded window delivers each viewer at most the room's budget per second
/// of offset: whitelist all, high's share first, low shed first; the same
/// selection for every read.
async fn flooded_windows_are_rationed(b: &Backend) {
    let ts = front(b, |_| {}).await;
    let room = ts.room("density");
    let res = ts
        .http
        .patch(ts.url(&format!("/v1/admin/rooms/{room}/settings")))
        .bearer_auth(ADMIN)
        .body(json!({"budget_per_s": 10, "high_share": 0.3}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "{}",
        res.text().await.unwrap()
    );
    // Second 0: 100 low, 10 high, 3 whitelist, interleaved; second 1: 2 high,
    // 50 low; second 2: 5 low (quiet).
    let mut at = Vec::new();
    for i in 0..113u64 {
        let p = match i % 11 {
            0 if i < 33 => Priority::Whitelist,
            1 | 6 if i < 55 => Priority::High,
            _ => Priority::Low,
        };
        at.push((i * 8, p));
    }
    for i in 0..52u64 {
        let p = if i == 10 || i == 40 {
            Priority::High
        } else {
            Priority::Low
        };
        at.push((1000 + i * 10, p));
    }
    for i in 0..5u64 {
        at.push((2000 + i * 100, Priority::Low));
    }
    let archive = archive_of(&ts).await;
    let (live, _) = seed(&*archive, &room, &at, 1000).await;
    let in_second = |s: u64, p: Priority| at.iter().filter(|m| m.0 / 1000 == s && m.1 == p).count();
    assert_eq!(
        [
            in_second(0, Priority::Whitelist),
            in_second(0, Priority::High),
            in_second(0, Priority::Low)
        ],
        [3, 10, 100],
        "the flood as meant"
    );

    let rationed = metric(&ts, "danmaku_replay_rationed_total").await;
    let (status, body, headers) = ts.get(&replay_path(&room, &live.id, 0, 3000)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let msgs = body["messages"].as_array().unwrap();
    let mut per_second: BTreeMap<(u64, String), Vec<u64>> = BTreeMap::new();
    for m in msgs {
        let key = (
            m["offset_ms"].as_u64().unwrap() / 1000,
            m["priority"].as_str().unwrap().to_string(),
        );
        per_second
            .entry(key)
            .or_default()
            .push(m["seq"].as_u64().unwrap());
    }
    let kept = |s: u64, p: &str| {
        per_second
            .get(&(s, p.to_string()))
            .cloned()
            .unwrap_or_default()
    };
    // Budget 10 (high 3, low 7): second 0 keeps 3 whitelist, 3 high, 7 low.
    assert_eq!(kept(0, "whitelist").len(), 3);
    assert_eq!(kept(0, "high").len(), 3);
    assert_eq!(kept(0, "low").len(), 7);
    // Second 1: 2 high; low gets its 7 and the unused high (8).
    assert_eq!(kept(1, "high").len(), 2);
    assert_eq!(kept(1, "low").len(), 8);
    // A quiet second is whole.
    assert_eq!(kept(2, "low").len(), 5);
    for s in 0..3 {
        assert!(
            kept(s, "high").len() + kept(s, "low").len() <= 10,
            "second {s}"
        );
    }
    // The first of each bucket are the ones kept (seq order).
    let first = |s: u64, p: Priority, n: usize| -> Vec<u64> {
        at.iter()
            .enumerate()
            .filter(|(_, m)| m.0 / 1000 == s && m.1 == p)
            .map(|(i, _)| i as u64 + 1)
            .take(n)
            .collect()
    };
    assert_eq!(kept(0, "high"), first(0, Priority::High, 3));
    assert_eq!(kept(0, "low"), first(0, Priority::Low, 7));
    // Still in (offset, seq) order.
    let order: Vec<(u64, u64)> = msgs
        .iter()
        .map(|m| (m["offset_ms"].as_u64().unwrap(), m["seq"].as_u64().unwrap()))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        metric(&ts, "danmaku_replay_rationed_total").await - rationed,
        (100 - 7 + 10 - 3 + 50 - 8) as f64
    );
    // Every read gets the same selection (cached, same ETag); a narrower
    // request is the same selection cut to its range.
    let (_, again, h2) = ts.get(&replay_path(&room, &live.id, 0, 3000)).await;
    assert_eq!(again, body);
    assert_eq!(h2["etag"], headers["etag"]);
    let (_, part, _) = ts.get(&replay_path(&room, &live.id, 500, 1500)).await;
    let want: Vec<Value> = msgs
        .iter()
        .filter(|m| (500..1500).contains(&m["offset_ms"].as_u64().unwrap()))
        .cloned()
        .collect();
    assert_eq!(part["messages"].as_array().unwrap(), &want);
    ts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_flooded_windows_are_rationed() {
    flooded_windows_are_rationed(&embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_flooded_windows_are_rationed() {
    let Some(b) = services() else { return };
    let _one = SERVICES.lock().await;
    flooded_windows_are_rationed(&b).await;
}

// ---- (e) deletion and retention -----------------------------------------------

/// `DELETE /v1/admin/lives/{id}`: answers, rows gone, replay and its caches
/// gone.
async fn lives_are_deleted(b: &Backend) {
    let ts = front(b, |_| {}).await;
    let room = ts.room("delete");
    let archive = archive_of(&ts).await;
    let (live, ids) = seed(&*archive, &room, &steady(2, 20), 1000).await;
    // Read (and cache) it first: the front cache and the replay Redis.
    let (status, body, _) = ts.get(&replay_path(&room, &live.id, 0, 2000)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(message_ids(&body), ids);
    let (_, again, _) = ts.get(&replay_path(&room, &live.id, 0, 2000)).await;
    assert_eq!(again, body);

    let path = format!("/v1/admin/lives/{}", live.id);
    assert_error(
        "no token",
        &admin_delete(&ts, &path, None).await,
        StatusCode::UNAUTHORIZED,
        "invalid_admin_token",
    );
    assert_error(
        "bad id",
        &admin_delete(
            &ts,
            &format!("/v1/admin/lives/{}", "x".repeat(65)),
            Some(ADMIN),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_live",
    );
    assert_error(
        "unknown",
        &admin_delete(&ts, "/v1/admin/lives/no-such-live", Some(ADMIN)).await,
        StatusCode::NOT_FOUND,
        "unknown_live",
    );
    // An open live, and an ended one whose archive is still being written.
    let open_room = ts.room("delete-open");
    let open = format!("{open_room}-live");
    archive
        .start_live(&open_room, &open, now_ms())
        .await
        .unwrap();
    let got = admin_delete(&ts, &format!("/v1/admin/lives/{open}"), Some(ADMIN)).await;
    assert_error("open", &got, StatusCode::CONFLICT, "live_open");
    assert_eq!(got.1["live"]["id"], open.as_str());
    archive.end_live(&open_room, now_ms()).await.unwrap();
    let got = admin_delete(&ts, &format!("/v1/admin/lives/{open}"), Some(ADMIN)).await;
    assert_error(
        "not archived",
        &got,
        StatusCode::CONFLICT,
        "live_not_archived",
    );
    assert!(got.2.contains_key("retry-after"));
    assert!(
        archive.live(&open).await.unwrap().is_some(),
        "409 deletes nothing"
    );

    let (status, body, _) = admin_delete(&ts, &path, Some(ADMIN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["live"]["id"], live.id.as_str());
    assert_eq!(body["deleted"]["messages"], 40);
    assert_eq!(archive.count(&live.id).await.unwrap(), 0, "rows gone");
    assert!(archive.live(&live.id).await.unwrap().is_none(), "live gone");
    assert_eq!(
        metric(&ts, "danmaku_archive_deleted_lives_total").await,
        1.0
    );
    // Replay: 404, not the cached windows; the room lists no live.
    let got = ts.get(&replay_path(&room, &live.id, 0, 2000)).await;
    assert_error(
        "replay after delete",
        &got,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let got = ts.get(&format!("/v1/rooms/{room}/replay")).await;
    assert_error(
        "latest after delete",
        &got,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let (_, lives, _) = ts.get(&format!("/v1/rooms/{room}/lives")).await;
    assert_eq!(lives["lives"], json!([]));
    if let Some(url) = &b.replay_redis {
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let keys: u64 = redis::cmd("EXISTS")
            .arg(format!("rp:{{{}}}:m", live.id))
            .arg(format!("rp:{{{}}}:w", live.id))
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(keys, 0, "replay Redis keys deleted");
    }
    // Deleting again: it is gone.
    assert_error(
        "again",
        &admin_delete(&ts, &path, Some(ADMIN)).await,
        StatusCode::NOT_FOUND,
        "unknown_live",
    );
    ts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_lives_are_deleted() {
    lives_are_deleted(&embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_lives_are_deleted() {
    let Some(b) = services() else { return };
    let _one = SERVICES.lock().await;
    lives_are_deleted(&b).await;
}

/// `archive.retain_days`: lives ended longer ago go with their messages;
/// newer ones stay.
async fn old_lives_are_swept(b: &Backend) {
    let ts = front(b, |c| {
        c.archive.retain_days = 1;
        c.archive.retain_sweep_ms = 200;
    })
    .await;
    let archive = archive_of(&ts).await;
    let (old_room, new_room) = (ts.room("retain-old"), ts.room("retain-new"));
    let day = 86_400_000;
    let (old, _) = seed(&*archive, &old_room, &steady(1, 30), 2 * day).await;
    let (new, new_ids) = seed(&*archive, &new_room, &steady(1, 30), day - 600_000).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while archive.live(&old.id).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the old live was not swept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(archive.count(&old.id).await.unwrap(), 0, "its messages too");
    let got = ts.get(&replay_path(&old_room, &old.id, 0, 1000)).await;
    assert_error("swept replay", &got, StatusCode::NOT_FOUND, "not_found");
    assert!(metric(&ts, "danmaku_archive_deleted_messages_total").await >= 30.0);
    // Sweeps go on; the newer live stays.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body, _) = ts.get(&replay_path(&new_room, &new.id, 0, 1000)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(message_ids(&body), new_ids);
    assert_eq!(archive.count(&new.id).await.unwrap(), 30);
    ts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_old_lives_are_swept() {
    old_lives_are_swept(&embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_old_lives_are_swept() {
    let Some(b) = services() else { return };
    let _one = SERVICES.lock().await;
    old_lives_are_swept(&b).await;
}

// ---- (d) two fronts -------------------------------------------------------------

/// A message retracted after its window was cached on two fronts is gone
/// from both (and from the replay Redis); a live deleted on one front is
/// gone from the other's caches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_two_fronts_forget_retracted_and_deleted() {
    let Some(b) = services() else { return };
    let _one = SERVICES.lock().await;
    let replay_redis = b.replay_redis.clone().unwrap();
    let pair = Pair::start(
        b.live_redis.as_deref().unwrap(),
        &[
            ("DANMAKU_ARCHIVE_URL", b.archive_url.as_str()),
            ("DANMAKU_STORE__REPLAY_REDIS_URL", replay_redis.as_str()),
            ("DANMAKU_ARCHIVE__RUN_ARCHIVER", "false"),
            ("DANMAKU_ARCHIVE__REPLAY_WINDOW_MS", "1000"),
        ],
    )
    .await;
    let room = common::pair::unique("retract2");
    let config = {
        let mut c = danmaku::config::Config::embedded();
        c.archive.url = b.archive_url.clone();
        c
    };
    let archive = danmaku::archive::connect(&config.archive).await.unwrap();
    let (live, ids) = seed(&*archive, &room, &steady(2, 20), 1000).await;
    let read = |node: &common::procs::Node| {
        let url = format!("{}{}", node.base(), replay_path(&room, &live.id, 0, 2000));
        let http = pair.http.clone();
        async move {
            let res = http.get(url).send().await.unwrap();
            (res.status(), res.json::<Value>().await.unwrap())
        }
    };
    // Cached on both fronts (the second read of each is a cache hit).
    for node in [&pair.a, &pair.b] {
        for _ in 0..2 {
            let (status, body) = read(node).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(message_ids(&body), ids);
        }
        assert!(
            node.metric(&pair.http, "danmaku_replay_reads_total{tier=\"cache\"}")
                .await
                >= 1.0
        );
    }
    let victim = ids[7].clone();
    let (status, body) = pair
        .admin(
            &pair.a,
            "DELETE",
            &format!("/v1/admin/rooms/{room}/messages/{victim}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let want: Vec<String> = ids.iter().filter(|id| **id != victim).cloned().collect();
    for node in [&pair.a, &pair.b] {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (status, body) = read(node).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            if message_ids(&body) == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "front {} still serves the retracted message",
                node.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The replay Redis holds the window without it.
    let client = redis::Client::open(replay_redis.as_str()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("rp:{{{}}}:m", live.id))
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(!members.is_empty(), "refilled by the reads");
    assert!(
        members
            .iter()
            .all(|m| !m.contains(&format!("\"id\":\"{victim}\""))),
        "the replay Redis still holds it"
    );

    // Deleted on front A: front B's cached windows and live go too.
    let (status, body) = pair
        .admin(
            &pair.a,
            "DELETE",
            &format!("/v1/admin/lives/{}", live.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["deleted"]["messages"], 40, "retracted rows too");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _) = read(&pair.b).await;
        if status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "front B still serves the deleted live"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
