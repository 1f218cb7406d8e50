//! Replay (docs/replay.md): live start/end, the archive's idempotent
//! batches, and replay reads through cache → replay Redis → archive.
//! Continuous archiving (lives longer than the store keeps, a killed
//! archiver) is in tests/archiving.rs.
//!
//! The embedded test always runs (SQLite in memory, memory store). The service
//! test needs `DANMAKU_TEST_REDIS_URL` (live Redis), `DANMAKU_TEST_REPLAY_REDIS_URL`
//! (a second redis-server) and `DANMAKU_TEST_MYSQL_URL` (MariaDB, see
//! scripts/mariadb-test.sh); without them it skips, unless
//! `DANMAKU_REQUIRE_SERVICES=1`, where it fails.

mod common;

use common::proxy::Proxy;

use std::time::{Duration, Instant};

use common::{metric_value, now_ms, TestServer, WAIT};
use danmaku::message::{Kind, Message, Priority, UserRef};
use reqwest::StatusCode;
use serde_json::Value;

const ADMIN: &str = "replay-test-admin-token";

async fn admin_post(ts: &TestServer, path: &str) -> (StatusCode, Value) {
    let res = ts
        .http
        .post(ts.url(path))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("POST");
    let status = res.status();
    let body = res.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

async fn metric(ts: &TestServer, sample: &str) -> f64 {
    metric_value(&ts.metrics().await, sample).unwrap_or(0.0)
}

async fn wait_archived(ts: &TestServer, room: &str, live: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body, _) = ts.get(&format!("/v1/rooms/{room}/lives")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if let Some(l) = body["lives"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["id"] == live && l["archived"] == true)
        {
            return l.clone();
        }
        assert!(
            Instant::now() < deadline,
            "live {live} not archived: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn offsets(messages: &Value) -> Vec<u64> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset_ms"].as_u64().expect("offset_ms"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_live_is_archived_and_replayed() {
    let ts = TestServer::start_with(|c| {
        c.auth.admin_token = ADMIN.into();
        c.archive.settle_ms = 0;
        c.archive.poll_interval_ms = 50;
        c.archive.replay_window_ms = 1000;
    })
    .await;
    let room = ts.room("replay");
    let token = ts.token("u1", "alice");

    // Admin only.
    let res = ts
        .http
        .post(ts.url(&format!("/v1/admin/rooms/{room}/live/start")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let (status, _) = admin_post(&ts, &format!("/v1/admin/rooms/{room}/live/end")).await;
    assert_eq!(status, StatusCode::CONFLICT, "no live to end");

    // Before the live: not part of it.
    let (s, _, _) = ts.post_danmaku(&room, &token, "before", "before").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    ts.wait_stored(&room, 1).await;
    tokio::time::sleep(Duration::from_millis(5)).await;

    let (status, body) = admin_post(&ts, &format!("/v1/admin/rooms/{room}/live/start")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let live = body["live"]["id"].as_str().unwrap().to_string();
    let (status, body) = admin_post(&ts, &format!("/v1/admin/rooms/{room}/live/start")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["live"]["id"], live.as_str());

    // Not replayable until ended and archived.
    let (status, body, _) = ts
        .get(&format!(
            "/v1/rooms/{room}/replay?live={live}&from_ms=0&to_ms=1000"
        ))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "live_not_ended");

    for i in 0..30 {
        let (s, b, _) = ts
            .post_danmaku(&room, &token, &format!("m{i}"), &format!("hello {i}"))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }
    ts.wait_stored(&room, 31).await;
    let (status, body) = admin_post(&ts, &format!("/v1/admin/rooms/{room}/live/end")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "archived", "{body}");
    assert_eq!(body["live"]["archived"], true, "{body}");
    let l = wait_archived(&ts, &room, &live).await;
    let duration = l["duration_ms"].as_u64().unwrap();
    assert!(duration >= 800, "{l}");
    assert!(l["started_at"].as_u64().unwrap() > 0 && l["ended_at"].as_u64().is_some());

    // Whole live: the 30 messages, by offset, with offset_ms.
    let to = duration + 1;
    let (status, body, headers) = ts
        .get(&format!(
            "/v1/rooms/{room}/replay?live={live}&from_ms=0&to_ms={to}"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["live"], live.as_str());
    assert_eq!(body["room"], room.as_str());
    let msgs = body["messages"].as_array().unwrap();
    let texts: Vec<_> = msgs.iter().map(|m| m["text"].as_str().unwrap()).collect();
    let want: Vec<String> = (0..30).map(|i| format!("hello {i}")).collect();
    assert_eq!(texts, want);
    let offs = offsets(&body["messages"]);
    assert!(offs.windows(2).all(|w| w[0] <= w[1]), "{offs:?}");
    assert!(*offs.last().unwrap() >= 800, "{offs:?}");
    let etag = headers["etag"].to_str().unwrap().to_string();
    assert!(headers["cache-control"]
        .to_str()
        .unwrap()
        .contains("max-age"));

    // Default live = the latest archived; same window, same ETag; 304.
    let (status, body2, h2) = ts
        .get(&format!("/v1/rooms/{room}/replay?from_ms=0&to_ms={to}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body2, body);
    assert_eq!(h2["etag"].to_str().unwrap(), etag);
    let res = ts
        .http
        .get(ts.url(&format!(
            "/v1/rooms/{room}/replay?live={live}&from_ms=0&to_ms={to}"
        )))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);

    // A sub-window: exactly from <= offset < to.
    let (a, b) = (offs[5], offs[25]);
    let (_, sub, _) = ts
        .get(&format!(
            "/v1/rooms/{room}/replay?live={live}&from_ms={a}&to_ms={b}"
        ))
        .await;
    let want: Vec<u64> = offs.iter().copied().filter(|o| *o >= a && *o < b).collect();
    assert_eq!(offsets(&sub["messages"]), want);

    // Second read of a window: from the cache, no archive query.
    let q = ts.metric("danmaku_replay_archive_queries_total").await;
    let c = metric(&ts, "danmaku_replay_reads_total{tier=\"cache\"}").await;
    let _ = ts
        .get(&format!(
            "/v1/rooms/{room}/replay?live={live}&from_ms={a}&to_ms={b}"
        ))
        .await;
    assert_eq!(ts.metric("danmaku_replay_archive_queries_total").await, q);
    assert!(metric(&ts, "danmaku_replay_reads_total{tier=\"cache\"}").await > c);

    // Bad requests.
    for (query, code) in [
        ("from_ms=10&to_ms=10", StatusCode::BAD_REQUEST),
        ("from_ms=0&to_ms=999999999", StatusCode::BAD_REQUEST),
        ("from_ms=x", StatusCode::BAD_REQUEST),
        ("live=nope&from_ms=0&to_ms=10", StatusCode::NOT_FOUND),
    ] {
        let (status, body, _) = ts.get(&format!("/v1/rooms/{room}/replay?{query}")).await;
        assert_eq!(status, code, "{query}: {body}");
        assert!(body["error"]["code"].is_string());
    }
    let (status, _, _) = ts
        .get(&format!(
            "/v1/rooms/{}/replay?from_ms=0&to_ms=10",
            ts.room("other")
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(ts
        .metrics()
        .await
        .contains("danmaku_archive_batch_messages"));
    ts.shutdown().await;
}

// ---- services: live Redis, replay Redis, MariaDB --------------------------

fn services() -> Option<(String, String, String)> {
    common::procs::replay_service_urls()
}

fn host_port(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.rsplit('@').next().unwrap();
    rest.split('/').next().unwrap().to_string()
}

/// Total commands the Redis at `url` has run, `info` and `config` excluded.
async fn redis_calls(url: &str) -> u64 {
    redis_calls_by_command(url).await.values().sum()
}

async fn redis_calls_by_command(url: &str) -> std::collections::BTreeMap<String, u64> {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let text: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter(|l| !l.starts_with("info:") && !l.starts_with("config"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse::<u64>().ok())?;
            Some((name.to_string(), calls))
        })
        .collect()
}

async fn replay_server(live_redis: &str, replay_redis: &str, mysql: &str) -> TestServer {
    replay_server_with(live_redis, replay_redis, mysql, |_| {}).await
}

async fn replay_server_with(
    live_redis: &str,
    replay_redis: &str,
    mysql: &str,
    adjust: impl FnOnce(&mut danmaku::config::Config) + Send + 'static,
) -> TestServer {
    let (live_redis, replay_redis, mysql) = (
        live_redis.to_string(),
        replay_redis.to_string(),
        mysql.to_string(),
    );
    TestServer::start_with(move |c| {
        c.auth.admin_token = ADMIN.into();
        c.store.engine = danmaku::config::StoreEngine::Redis;
        c.store.redis_url = live_redis;
        c.store.replay_redis_url = replay_redis;
        c.store.max_per_bucket = 20_000;
        c.archive.url = mysql;
        c.archive.run_archiver = false; // the test writes the archive itself
        c.archive.replay_window_ms = 500;
        // Presence exchanges and the control plane's catch-up check are
        // this front's only periodic live-Redis traffic; far apart, so that
        // the live Redis sees nothing but replay reads (of which there must
        // be none) while they are counted.
        c.fanout.presence_interval_ms = 600_000;
        c.store.control_catch_up_ms = 600_000;
        // 10 000 messages in ~2 s: no per-viewer rationing (density) here.
        c.ration.budget_tiers = vec![(0, 1_000_000)];
        adjust(c);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_archive_replay_uses_its_tiers() {
    let Some((redis_url, replay_url, mysql_url)) = services() else {
        return;
    };
    let proxy = Proxy::start(host_port(&replay_url)).await;
    let proxied = format!("redis://127.0.0.1:{}/", proxy.port);
    let ts = replay_server(&redis_url, &proxied, &mysql_url).await;
    let room = ts.room("replay10k");

    // A live of 10 000 messages over ~2 s (so that they span several
    // windows), written straight into MariaDB in batches of 500 (the
    // archiver's path has its own tests: tests/archiving.rs); a batch
    // written twice inserts nothing twice.
    let archive = danmaku::archive::connect(&ts.config.archive).await.unwrap();
    let live = format!("{room}-live");
    let started_at = now_ms();
    archive.start_live(&room, &live, started_at).await.unwrap();
    let mut expected: Vec<(u64, u64, String)> = Vec::new(); // (offset, seq, id)
    for b in 0..20u64 {
        let batch: Vec<danmaku::message::StoredMessage> = (0..500u64)
            .map(|i| {
                Message {
                    id: format!("{room}-{b}-{i}"),
                    seq: 0,
                    room: room.clone(),
                    kind: Kind::Danmaku,
                    priority: if i % 10 == 0 {
                        Priority::High
                    } else {
                        Priority::Low
                    },
                    user: UserRef {
                        id: format!("u{i}"),
                        name: "n".into(),
                    },
                    text: format!("m {b} {i}"),
                    ts: started_at + b * 100 + i / 50,
                    offset_ms: None,
                    gift: None,
                    style: None,
                }
                .into_stored(b * 500 + i + 1)
            })
            .collect();
        let rows: Vec<_> = batch
            .iter()
            .map(|m| danmaku::archiver::archived(m, started_at))
            .collect();
        archive.append(&live, &rows, 0).await.unwrap();
        if b % 5 == 0 {
            archive.append(&live, &rows, 0).await.unwrap();
        }
        expected.extend(
            batch
                .iter()
                .map(|m| (m.ts - started_at, m.seq, m.id.clone())),
        );
    }
    archive.end_live(&room, now_ms()).await.unwrap().unwrap();
    assert!(archive
        .note_end_marker(&live, 0, 1, now_ms())
        .await
        .unwrap());
    expected.sort();
    assert_eq!(archive.count(&live).await.unwrap(), 10_000);
    let all = archive.read_window(&live, 0, u64::MAX >> 2).await.unwrap();
    let got: Vec<u64> = all.iter().map(|m| m.seq).collect();
    assert_eq!(got, (1..=10_000).collect::<Vec<u64>>(), "by seq, once each");

    // Replay windows: exactly from <= offset < to, in order; zero commands
    // on the live Redis.
    let max = expected.last().unwrap().0 + 1;
    let windows = [
        (0, max),
        (0, 1),
        (137, 1233),
        (max / 2, max / 2 + 700),
        (max - 10, max + 5000),
    ];
    // A first replay read loads the room's settings (control plane, once).
    let _ = ts
        .get(&format!(
            "/v1/rooms/{room}/replay?live={live}&from_ms=0&to_ms=1"
        ))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = redis_calls(&redis_url).await;
    let before_by = redis_calls_by_command(&redis_url).await;
    for (from, to) in windows {
        let (status, body, _) = ts
            .get(&format!(
                "/v1/rooms/{room}/replay?live={live}&from_ms={from}&to_ms={to}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let got: Vec<String> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect();
        let want: Vec<String> = expected
            .iter()
            .filter(|(o, _, _)| *o >= from && *o < to)
            .map(|(_, _, id)| id.clone())
            .collect();
        assert_eq!(got.len(), want.len(), "window [{from}, {to})");
        assert_eq!(got, want, "window [{from}, {to})");
    }
    // Second read of the same window: no archive query.
    let q = metric(&ts, "danmaku_replay_archive_queries_total").await;
    let a = metric(&ts, "danmaku_replay_reads_total{tier=\"archive\"}").await;
    let (status, _, _) = ts
        .get(&format!(
            "/v1/rooms/{room}/replay?live={live}&from_ms=137&to_ms=1233"
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(metric(&ts, "danmaku_replay_archive_queries_total").await, q);
    assert_eq!(
        metric(&ts, "danmaku_replay_reads_total{tier=\"archive\"}").await,
        a
    );
    assert!(metric(&ts, "danmaku_replay_reads_total{tier=\"cache\"}").await > 0.0);
    let after = redis_calls(&redis_url).await;
    let after_by = redis_calls_by_command(&redis_url).await;
    let delta: Vec<_> = after_by
        .iter()
        .filter(|(k, v)| before_by.get(*k) != Some(v))
        .collect();
    assert_eq!(
        after, before,
        "replay reads touched the live Redis: {delta:?}"
    );

    // A second front (cold cache) gets the windows from the replay Redis.
    let ts2 = replay_server(&redis_url, &proxied, &mysql_url).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // its start-up connections
    let _ = ts2
        .get(&format!(
            "/v1/rooms/{room}/replay?live={live}&from_ms=0&to_ms=1"
        ))
        .await;
    let before_by = redis_calls_by_command(&redis_url).await;
    let (status, body, _) = ts2
        .get(&format!(
            "/v1/rooms/{room}/replay?live={live}&from_ms=0&to_ms={max}"
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["messages"].as_array().unwrap().len(), 10_000);
    assert!(metric(&ts2, "danmaku_replay_reads_total{tier=\"redis\"}").await > 0.0);
    assert_eq!(
        metric(&ts2, "danmaku_replay_reads_total{tier=\"archive\"}").await,
        0.0
    );
    let after_by = redis_calls_by_command(&redis_url).await;
    assert_eq!(after_by, before_by, "replay reads touched the live Redis");
    ts2.shutdown().await;

    // Replay Redis down: a cold front still answers (archive), then recovers.
    proxy.down();
    let ts3 = replay_server(&redis_url, &proxied, &mysql_url).await;
    // Readiness shows it, but the node stays in service for live rooms.
    let (status, ready, _) = ts3.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["checks"]["replay_redis"], false, "{ready}");
    assert_eq!(ready["checks"]["archive"], true, "{ready}");
    let (status, body, _) = ts3
        .get(&format!(
            "/v1/rooms/{room}/replay?live={live}&from_ms=0&to_ms=500"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let want = expected.iter().filter(|(o, _, _)| *o < 500).count();
    assert_eq!(body["messages"].as_array().unwrap().len(), want);
    assert!(metric(&ts3, "danmaku_replay_reads_total{tier=\"archive\"}").await > 0.0);
    assert!(metric(&ts3, "danmaku_replay_redis_errors_total").await > 0.0);
    proxy.restore();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, ready, _) = ts3.get("/readyz").await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["checks"]["replay_redis"], true, "{ready}");
    let (status, _, _) = ts3
        .get(&format!(
            "/v1/rooms/{room}/replay?live={live}&from_ms=500&to_ms={max}"
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        metric(&ts3, "danmaku_replay_reads_total{tier=\"redis\"}").await > 0.0,
        "replay Redis used again after it came back"
    );
    ts3.shutdown().await;

    // A front with no cache of its own, connected to the replay Redis when it
    // goes away: answers from the archive meanwhile, back on Redis after.
    let ts4 = replay_server_with(&redis_url, &proxied, &mysql_url, |c| {
        c.archive.replay_cache_messages = 0;
    })
    .await;
    let path = format!("/v1/rooms/{room}/replay?live={live}&from_ms=0&to_ms={max}");
    let tier = |t: &str| format!("danmaku_replay_reads_total{{tier=\"{t}\"}}");
    let (status, body, _) = ts4.get(&path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["messages"].as_array().unwrap().len(), 10_000);
    let redis_hits = metric(&ts4, &tier("redis")).await;
    assert!(redis_hits > 0.0);
    assert_eq!(metric(&ts4, &tier("archive")).await, 0.0);
    proxy.down();
    let (status, down_body, _) = ts4.get(&path).await;
    assert_eq!(status, StatusCode::OK, "{down_body}");
    assert_eq!(down_body["messages"], body["messages"]);
    assert!(metric(&ts4, &tier("archive")).await > 0.0);
    proxy.restore();
    let deadline = Instant::now() + WAIT;
    loop {
        let before = metric(&ts4, &tier("redis")).await;
        let (status, again, _) = ts4.get(&path).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(again["messages"], body["messages"]);
        if metric(&ts4, &tier("redis")).await > before {
            break;
        }
        assert!(Instant::now() < deadline, "replay Redis not used again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ts4.shutdown().await;
    ts.shutdown().await;
}

#[test]
fn archive_and_replay_redis_env_names() {
    use danmaku::config::Config;
    let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let c = Config::load(
        None,
        env(&[
            ("DANMAKU_ARCHIVE_URL", "mysql://u:p@127.0.0.1:3306/d"),
            ("DANMAKU_REPLAY_REDIS_URL", "redis://127.0.0.1:6380/"),
            ("DANMAKU_ARCHIVE__BATCH_SIZE", "50"),
        ]),
    )
    .unwrap();
    assert_eq!(c.archive.url, "mysql://u:p@127.0.0.1:3306/d");
    assert_eq!(c.store.replay_redis_url, "redis://127.0.0.1:6380/");
    assert_eq!(c.archive.batch_size, 50);
    // Replay traffic never goes to the live Redis.
    let same = Config::load(
        None,
        env(&[
            ("DANMAKU_REDIS_URL", "redis://127.0.0.1:6379/"),
            ("DANMAKU_REPLAY_REDIS_URL", "redis://127.0.0.1:6379/"),
        ]),
    );
    assert!(same.is_err());
    assert!(Config::load(None, env(&[("DANMAKU_ARCHIVE_URL", "postgres://x")])).is_err());
}

/// SQLite file engine: migrations, idempotent batches, windows, pending lives.
#[tokio::test]
async fn sqlite_file_archive_is_idempotent() {
    use danmaku::archive::{ArchiveError, ArchivedMessage};
    let dir = std::env::temp_dir().join(format!("danmaku-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("a{}.db", now_ms()));
    let mut cfg = danmaku::config::Config::embedded().archive;
    cfg.url = format!("sqlite://{}?mode=rwc", path.display());
    let a = danmaku::archive::connect(&cfg).await.unwrap();
    let live = a.start_live("r", "l1", 1000).await.unwrap();
    assert!(matches!(
        a.start_live("r", "l2", 1001).await,
        Err(ArchiveError::AlreadyLive(_))
    ));
    assert!(a.pending(10).await.unwrap().is_empty(), "not ended yet");
    a.end_live("r", 5000).await.unwrap().unwrap();
    assert_eq!(a.pending(10).await.unwrap()[0].id, live.id);
    let rows: Vec<ArchivedMessage> = (1..=10)
        .map(|seq| ArchivedMessage {
            seq,
            offset_ms: (10 - seq) * 100,
            ts: 1000 + (10 - seq) * 100,
            json: format!("{{\"seq\":{seq}}}").into(),
        })
        .collect();
    a.append("l1", &rows[..6], 6).await.unwrap();
    a.append("l1", &rows, 10).await.unwrap(); // a redone batch
    a.append("l1", &rows[3..], 10).await.unwrap();
    assert_eq!(a.count("l1").await.unwrap(), 10);
    assert_eq!(
        a.live("l1").await.unwrap().unwrap().archived_through_seq,
        10
    );
    let w = a.read_window("l1", 200, 500).await.unwrap();
    let seqs: Vec<u64> = w.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![6, 7, 8], "by seq (offsets 400, 300, 200)");
    assert_eq!(w[0].json, "{\"seq\":6}");
    // The archiver's look-up: open lives, and lives ended since a time.
    a.start_live("r2", "l2", 2000).await.unwrap();
    let since = |t: u64| {
        let a = a.clone();
        async move {
            let rooms = ["r".to_string(), "r2".to_string(), "r3".to_string()];
            let mut ids: Vec<String> = a
                .lives_since(&rooms, t)
                .await
                .unwrap()
                .into_iter()
                .map(|l| l.id)
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(since(5000).await, vec!["l1", "l2"]);
    assert_eq!(since(5001).await, vec!["l2"], "l1 ended at 5000");
    // Archived once every copy of the end marker is noted, each once.
    assert!(!a.note_end_marker("l1", 0, 3, 6000).await.unwrap());
    assert!(!a.note_end_marker("l1", 0, 3, 6000).await.unwrap());
    assert!(!a.note_end_marker("l1", 2, 3, 6000).await.unwrap());
    assert!(
        !a.note_end_marker("l2", 0, 1, 6000).await.unwrap(),
        "l2 is on"
    );
    assert!(a.latest_archived("r").await.unwrap().is_none());
    assert!(a.note_end_marker("l1", 1, 3, 6000).await.unwrap());
    assert_eq!(a.live("l1").await.unwrap().unwrap().archived_at, Some(6000));
    assert!(a.pending(10).await.unwrap().is_empty());
    assert_eq!(a.latest_archived("r").await.unwrap().unwrap().id, "l1");
    // Reopened: the data is on disk, migrations are not applied twice.
    drop(a);
    let a = danmaku::archive::connect(&cfg).await.unwrap();
    assert_eq!(a.count("l1").await.unwrap(), 10);
    let _ = std::fs::remove_dir_all(&dir);
}
