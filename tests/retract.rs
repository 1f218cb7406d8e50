//! Retracting a message (DESIGN §3.9, §4: `DELETE /v1/admin/rooms/{room}/
//! messages/{id}`): connected viewers get a retract frame on every transport,
//! and reads by cursor, snapshots and replay omit the message from then on
//! (replay windows cached before the retraction included); the archive keeps
//! it. Bad requests change nothing.
//!
//! Runs on the embedded engines, and on the Redis live store with
//! `DANMAKU_TEST_ENGINE=redis` (scripts/test.sh); with
//! `DANMAKU_TEST_REPLAY_REDIS_URL` set the replay Redis tier is in the path
//! too, and with `DANMAKU_TEST_MYSQL_URL` the archive is MySQL / MariaDB.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;

const ADMIN: &str = "retract-test-admin-token";

async fn start(adjust: impl FnOnce(&mut danmaku::config::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.auth.admin_token = ADMIN.into();
        c.archive.settle_ms = 0;
        c.archive.poll_interval_ms = 50;
        c.archive.replay_window_ms = 1000;
        if let Ok(url) = std::env::var("DANMAKU_TEST_REPLAY_REDIS_URL") {
            if !url.trim().is_empty() && c.store.redis_url != url {
                c.store.replay_redis_url = url;
            }
        }
        if let Ok(url) = std::env::var("DANMAKU_TEST_MYSQL_URL") {
            if !url.trim().is_empty() {
                c.archive.url = url;
            }
        }
        adjust(c);
    })
    .await
}

/// `DELETE /v1/admin/rooms/{room}/messages/{id}` (with the admin token unless
/// `token` says otherwise).
async fn retract_as(
    ts: &TestServer,
    room: &str,
    id: &str,
    token: Option<&str>,
) -> (StatusCode, Value, HeaderMap) {
    let mut req = ts
        .http
        .delete(ts.url(&format!("/v1/admin/rooms/{room}/messages/{id}")));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    into_parts(req.send().await.expect("DELETE")).await
}

async fn retract(ts: &TestServer, room: &str, id: &str) -> (StatusCode, Value) {
    let (status, body, _) = retract_as(ts, room, id, Some(ADMIN)).await;
    (status, body)
}

async fn admin_post(ts: &TestServer, path: &str) -> (StatusCode, Value) {
    let res = ts
        .http
        .post(ts.url(path))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("POST");
    let (status, body, _) = into_parts(res).await;
    (status, body)
}

/// Posts `texts` as one viewer each (no rate limit in the way); their ids.
async fn post_all(ts: &TestServer, room: &str, texts: &[&str]) -> Vec<String> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut out = Vec::new();
    for text in texts {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tok = ts.token(&format!("user-{n}"), &format!("User {n}"));
        let (status, body, _) = ts.post_danmaku(room, &tok, &format!("c-{n}"), text).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        out.push(body["id"].as_str().expect("id").to_string());
    }
    out
}

async fn snapshot(ts: &TestServer, room: &str) -> (Value, String) {
    let (status, body, headers) = ts.get(&format!("/v1/rooms/{room}/snapshot")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (body, etag(&headers))
}

fn etag(headers: &HeaderMap) -> String {
    headers["etag"].to_str().expect("etag").to_string()
}

fn snapshot_ids(snap: &Value) -> Vec<String> {
    ["whitelist", "high", "low"]
        .iter()
        .flat_map(|b| ids(snap["buckets"][b].as_array().expect("bucket")))
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// The next SSE event named `name` (others skipped).
async fn sse_until(sse: &mut SseReader, name: &str) -> SseEvent {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let ev = sse
            .next_event(left)
            .await
            .unwrap_or_else(|| panic!("no SSE `{name}` event in time"));
        if ev.event.as_deref() == Some(name) {
            return ev;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retraction_reaches_every_viewer_and_every_read_omits_it() {
    let ts = start(|_| {}).await;
    let room = ts.room("retract");
    let room = room.as_str();
    let mut ws = ts.ws(room, &[]).await;
    let mut sse = ts.sse(room, None).await;
    let posted = post_all(&ts, room, &["keep one", "take me back", "keep two"]).await;
    let (a, b, c) = (&posted[0], &posted[1], &posted[2]);
    let got = ws.collect(3, WAIT).await;
    assert_eq!(ids(&got), posted, "the WebSocket viewer saw all three");
    let (got, _) = sse.collect(3, WAIT).await;
    assert_eq!(ids(&got), posted, "the SSE viewer saw all three");
    let (snap, etag_before) = snapshot(&ts, room).await;
    assert!(snapshot_ids(&snap).contains(b), "{snap}");
    let head = snap["cursor"].as_u64().unwrap();

    // A long-poll held at the head is answered by the retraction.
    let held = {
        let http = ts.http.clone();
        let url = ts.url(&format!("/v1/rooms/{room}/poll?cursor={head}&wait_ms=8000"));
        tokio::spawn(async move {
            let started = Instant::now();
            let res = http.get(url).send().await.expect("poll");
            let (status, body, _) = into_parts(res).await;
            (status, body, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (status, body) = retract(&ts, room, b).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], b.as_str());
    assert_eq!(body["room"], room);
    let seq = body["seq"].as_u64().expect("seq");
    assert_eq!(seq, got[1]["seq"].as_u64().unwrap());

    let (frame, late) = ws.until_other(WAIT, |v| v["type"] == "retract").await;
    let frame = frame.expect("a retract frame on the WebSocket");
    assert!(late.is_empty(), "nothing else came: {late:?}");
    assert_eq!(frame["room"], room);
    assert_eq!(strings(&frame["ids"]), vec![b.clone()]);

    let ev = sse_until(&mut sse, "retract").await;
    assert_eq!(ev.id, None, "a retract event moves no Last-Event-ID");
    assert_eq!(strings(&ev.json()["ids"]), vec![b.clone()]);

    let (status, body, took) = held.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        took < Duration::from_secs(5),
        "answered by the retraction ({took:?})"
    );
    assert_eq!(strings(&body["retracted"]), vec![b.clone()]);
    assert!(body["messages"].as_array().unwrap().is_empty(), "{body}");

    // Reads by cursor omit it; the cursor passes it.
    let (status, body) = ts.poll(room, Some(0), None, 0).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        ids(body["messages"].as_array().unwrap()),
        vec![a.clone(), c.clone()]
    );
    assert_eq!(body["cursor"].as_u64(), Some(head));
    assert_eq!(strings(&body["retracted"]), vec![b.clone()]);
    assert_eq!(ids(&ts.read_all(room).await), vec![a.clone(), c.clone()]);
    let mut late_viewer = ts.ws(room, &[("cursor", "0")]).await;
    let caught_up = late_viewer.collect(2, WAIT).await;
    assert_eq!(ids(&caught_up), vec![a.clone(), c.clone()]);

    // The snapshot omits it, under a new ETag.
    let deadline = Instant::now() + WAIT;
    let snap = loop {
        let (snap, tag) = snapshot(&ts, room).await;
        if tag != etag_before {
            break snap;
        }
        assert!(Instant::now() < deadline, "the snapshot ETag never changed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(snapshot_ids(&snap), vec![a.clone(), c.clone()]);
    assert_eq!(
        snap["cursor"].as_u64(),
        Some(head),
        "the cursor did not move"
    );

    // The stream goes on without a gap; a retraction is not a trim.
    let later = post_all(&ts, room, &["after it"]).await;
    let got = ws.collect(1, WAIT).await;
    assert_eq!(ids(&got), later);
    // Exactly once: nothing but that batch came after the retract frame.
    assert!(ws.others.is_empty(), "{:?}", ws.others);
    let ev = sse.next_event(WAIT).await.expect("the next SSE event");
    assert_eq!(ev.event.as_deref(), Some("batch"), "{ev:?}");
    assert_eq!(ids(ev.json()["messages"].as_array().unwrap()), later);

    // Retracting again: the same answer (idempotent), announced again.
    let (status, again) = retract(&ts, room, b).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["seq"].as_u64(), Some(seq));
    let (frame, _) = ws.until_other(WAIT, |v| v["type"] == "retract").await;
    assert_eq!(
        strings(&frame.expect("retract again")["ids"]),
        vec![b.clone()]
    );
    assert_eq!(
        ts.metric(r#"danmaku_moderation_actions_total{action="retract"}"#)
            .await,
        2.0
    );
    ws.close().await;
    late_viewer.close().await;
    ts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_retractions_are_refused_and_change_nothing() {
    let ts = start(|_| {}).await;
    let room = ts.room("refused");
    let room = room.as_str();
    let posted = post_all(&ts, room, &["one", "two"]).await;
    ts.wait_stored(room, 2).await;
    let mut ws = ts.ws(room, &[]).await;
    let long = "x".repeat(65);
    let other_room = ts.room("elsewhere");
    let cases: [(&str, &str, Option<&str>, StatusCode, &str); 7] = [
        (
            room,
            "no-such-message",
            Some(ADMIN),
            StatusCode::NOT_FOUND,
            "unknown_message",
        ),
        (
            &other_room,
            &posted[0],
            Some(ADMIN),
            StatusCode::NOT_FOUND,
            "unknown_message",
        ),
        (
            room,
            &long,
            Some(ADMIN),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            room,
            "a%7Bb",
            Some(ADMIN),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            room,
            "a%20b",
            Some(ADMIN),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "bad.room",
            &posted[0],
            Some(ADMIN),
            StatusCode::BAD_REQUEST,
            "bad_room",
        ),
        (
            room,
            &posted[0],
            None,
            StatusCode::UNAUTHORIZED,
            "invalid_admin_token",
        ),
    ];
    for (r, id, token, status, code) in cases {
        let got = retract_as(&ts, r, id, token).await;
        let what = format!("DELETE {r}/{id} (token: {})", token.is_some());
        assert_error(&what, &got, status, code);
    }
    let got = retract_as(&ts, room, &posted[0], Some("wrong-token")).await;
    assert_eq!(got.0, StatusCode::UNAUTHORIZED);
    // Nothing changed: the messages stay, nobody was told, nothing counted.
    assert_eq!(ids(&ts.read_all(room).await), posted);
    let (status, body) = ts.poll(room, Some(0), None, 0).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(body["messages"].as_array().unwrap()), posted);
    assert!(body.get("retracted").is_none(), "{body}");
    let (frame, _) = ws
        .until_other(Duration::from_millis(600), |v| v["type"] == "retract")
        .await;
    assert!(frame.is_none(), "no retract frame: {frame:?}");
    assert_eq!(
        ts.metric(r#"danmaku_moderation_actions_total{action="retract"}"#)
            .await,
        0.0
    );
    ws.close().await;
    ts.shutdown().await;

    // Admin routes off (no token configured): 404, like every admin route.
    let off = TestServer::start().await;
    let got = retract_as(&off, room, &posted[0], Some(ADMIN)).await;
    assert_eq!(got.0, StatusCode::NOT_FOUND, "{}", got.1);
    off.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_room_cache_forgets_the_message() {
    let ts = start(|c| {
        c.fanout.big_room_threshold = 1;
        c.fanout.presence_interval_ms = 100;
    })
    .await;
    let room = ts.room("big");
    let room = room.as_str();
    let mut ws = ts.ws(room, &[]).await;
    ts.wait_metric(
        &format!(r#"danmaku_top_room_online{{room="{room}"}}"#),
        1.0,
        WAIT,
    )
    .await;
    let posted = post_all(&ts, room, &["big one", "big two", "big three"]).await;
    assert_eq!(ids(&ws.collect(3, WAIT).await), posted);
    let (status, body) = retract(&ts, room, &posted[1]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (frame, _) = ws.until_other(WAIT, |v| v["type"] == "retract").await;
    assert_eq!(
        strings(&frame.expect("retract frame")["ids"]),
        vec![posted[1].clone()]
    );
    // Long-poll and snapshot of a big room come from this node's cache.
    let hits = ts
        .metric(r#"danmaku_cache_reads_total{result="hit"}"#)
        .await;
    let (_, body) = ts.poll(room, Some(0), None, 0).await;
    assert_eq!(
        ids(body["messages"].as_array().unwrap()),
        vec![posted[0].clone(), posted[2].clone()]
    );
    assert!(
        ts.metric(r#"danmaku_cache_reads_total{result="hit"}"#)
            .await
            > hits
    );
    let (snap, _) = snapshot(&ts, room).await;
    assert_eq!(
        snapshot_ids(&snap),
        vec![posted[0].clone(), posted[2].clone()]
    );
    ws.close().await;
    ts.shutdown().await;
}

async fn wait_archived(ts: &TestServer, room: &str, live: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body, _) = ts.get(&format!("/v1/rooms/{room}/lives")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let done = body["lives"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["id"] == live && l["archived"] == true);
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "live {live} not archived: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn replay_ids(ts: &TestServer, room: &str, live: &str) -> Vec<String> {
    let (status, body, _) = ts
        .get(&format!(
            "/v1/rooms/{room}/replay?live={live}&from_ms=0&to_ms=60000"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    ids(body["messages"].as_array().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_omits_retracted_messages_and_the_archive_keeps_them() {
    let ts = start(|_| {}).await;
    let room = ts.room("replay");
    let room = room.as_str();
    let (status, body) = admin_post(&ts, &format!("/v1/admin/rooms/{room}/live/start")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let live = body["live"]["id"].as_str().unwrap().to_string();
    let posted = post_all(&ts, room, &["r one", "r two", "r three", "r four"]).await;
    ts.wait_stored(room, 4).await;
    // Retracted while the live is on: the archiver will not copy it from the
    // live store, yet the archive keeps it (marked).
    let (status, body) = retract(&ts, room, &posted[3]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (status, body) = admin_post(&ts, &format!("/v1/admin/rooms/{room}/live/end")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_archived(&ts, room, &live).await;
    let archive = ts.server.state().replay.archive().clone();

    // Fetched (and cached) before the next retraction…
    assert_eq!(replay_ids(&ts, room, &live).await, posted[..3].to_vec());
    let cached = ts
        .metric(r#"danmaku_replay_reads_total{tier="cache"}"#)
        .await;
    assert_eq!(replay_ids(&ts, room, &live).await, posted[..3].to_vec());
    assert!(
        ts.metric(r#"danmaku_replay_reads_total{tier="cache"}"#)
            .await
            > cached,
        "the second read came from the cache"
    );
    // …and not served from that cache after it.
    let (status, body) = retract(&ts, room, &posted[1]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        replay_ids(&ts, room, &live).await,
        vec![posted[0].clone(), posted[2].clone()]
    );
    assert_eq!(
        archive.count(&live).await.unwrap(),
        4,
        "the archive keeps both retracted messages"
    );
    assert!(
        archive.mark_retracted(room, &posted[3]).await.unwrap(),
        "marked"
    );
    let w = archive.read_window(&live, 0, 60_000).await.unwrap();
    assert_eq!(w.len(), 2, "archive reads omit marked rows");
    ts.shutdown().await;
}

/// Rows archived before the `msg_id` column (migration 0002) are found by
/// their body's own `id` — not by a user id that happens to be equal.
#[tokio::test]
async fn rows_archived_before_msg_id_are_found_by_their_own_id() {
    use danmaku::archive::ArchivedMessage;
    let dir = std::env::temp_dir().join(format!("danmaku-retract-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("a{}.db", now_ms()));
    let mut cfg = danmaku::config::Config::embedded().archive;
    cfg.url = format!("sqlite://{}?mode=rwc", path.display());
    let a = danmaku::archive::connect(&cfg).await.unwrap();
    a.start_live("r", "l1", 1000).await.unwrap();
    let row = |seq: u64, id: &str, user: &str| ArchivedMessage {
        seq,
        offset_ms: seq * 100,
        ts: 1000 + seq * 100,
        json: format!(r#"{{"id":"{id}","seq":{seq},"text":"t","user":{{"id":"{user}"}}}}"#).into(),
    };
    let rows = [row(1, "m_1", "m1"), row(2, "m1", "u"), row(3, "m3", "u")];
    a.append("l1", &rows, 3).await.unwrap();
    a.end_live("r", 5000).await.unwrap();
    // As archived by a version without `msg_id`.
    let pool = sqlx::AnyPool::connect(&cfg.url).await.unwrap();
    sqlx::query("UPDATE live_messages SET msg_id = NULL")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert!(!a.mark_retracted("r", "m9").await.unwrap(), "unknown");
    assert!(
        !a.mark_retracted("other-room", "m1").await.unwrap(),
        "another room's"
    );
    assert!(a.mark_retracted("r", "m1").await.unwrap());
    assert!(
        a.mark_retracted("r", "m1").await.unwrap(),
        "again: still marked"
    );
    let kept: Vec<u64> = a
        .read_window("l1", 0, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(
        kept,
        vec![1, 3],
        "m1 only (m_1's user is `m1`; `_` is no wildcard)"
    );
    assert_eq!(a.count("l1").await.unwrap(), 3, "kept, marked");
    let _ = std::fs::remove_dir_all(&dir);
}
