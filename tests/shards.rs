//! Viewer shards (`fanout.viewer_shards`, `src/fanout/direct/shards.rs`): a
//! big room's direct writes split over several tasks. Many real WebSocket
//! viewers, several hundred messages: every viewer gets every message once,
//! in seq order, while the frames are written by more than one shard — in
//! one process on the embedded engines, and on two fronts sharing a Redis.
//!
//! The two-front test needs `DANMAKU_TEST_REDIS_URL` (scripts/test.sh sets
//! it); it skips without it unless `DANMAKU_REQUIRE_SERVICES=1`, where it fails.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::pair::{unique, Pair};
use common::*;
use futures_util::StreamExt;
use reqwest::StatusCode;

const MESSAGES: usize = 300;
const USERS: usize = 10;
const SHARDS: usize = 4;
/// Connections opened at once.
const CONNECT_CONCURRENCY: usize = 50;

/// A viewer reading on its own task: the (seq, id) pairs it got, and how
/// its connection ended if it did.
type Reader = tokio::task::JoinHandle<(Vec<(u64, String)>, Option<WsEnd>)>;

/// Opens `n` viewers on `url` (all at cursor 0) and starts each reading
/// `MESSAGES` messages on its own task.
async fn readers(url: &str, n: usize) -> Vec<Reader> {
    let viewers: Vec<WsViewer> = futures_util::stream::iter(0..n)
        .map(|_| async move { WsViewer::connect(url).await })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    viewers
        .into_iter()
        .map(|mut v| {
            assert_eq!(v.hello["cursor"], 0, "empty room: {}", v.hello);
            tokio::spawn(async move {
                let got = v.collect_ids(MESSAGES, Duration::from_secs(150)).await;
                (got, v.ended.clone())
            })
        })
        .collect()
}

/// Posts message `i` for each of `0..MESSAGES` with `post`, several at
/// once (the store gives them their seqs); the ids acknowledged.
async fn post_all<F, Fut>(post: F) -> Vec<String>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = (StatusCode, serde_json::Value)>,
{
    futures_util::stream::iter(0..MESSAGES)
        .map(|i| {
            let answer = post(i);
            async move {
                let (s, body) = answer.await;
                assert_eq!(s, StatusCode::ACCEPTED, "post {i}: {body}");
                body["id"].as_str().unwrap().to_string()
            }
        })
        .buffer_unordered(USERS)
        .collect()
        .await
}

/// Every reader got exactly the `posted` ids, once each, in seq order 1..=N.
async fn assert_all_got_all(readers: Vec<Reader>, posted: &[String]) {
    let posted: HashSet<&String> = posted.iter().collect();
    assert_eq!(posted.len(), MESSAGES, "distinct ids");
    let expected: Vec<u64> = (1..=MESSAGES as u64).collect();
    let total = readers.len();
    let mut wrong = Vec::new();
    for (i, reader) in readers.into_iter().enumerate() {
        let (got, ended) = reader.await.expect("reader task");
        let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
        let ids: HashSet<&String> = got.iter().map(|(_, id)| id).collect();
        if seqs != expected || ids != posted {
            wrong.push(format!(
                "viewer {i}: {} messages (ended: {ended:?}), first seqs {:?}",
                seqs.len(),
                &seqs[..seqs.len().min(10)]
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {total} viewers did not get all {MESSAGES} messages once in seq order:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(20)].join("\n")
    );
}

/// Frames whose direct writes were split into more than two shards, and
/// all frames written directly (`danmaku_direct_frame_shards`).
fn sharded_frames(metrics: &str) -> (f64, f64) {
    let all = metric_value(metrics, "danmaku_direct_frame_shards_count").unwrap_or(0.0);
    let up_to_two =
        metric_value(metrics, r#"danmaku_direct_frame_shards_bucket{le="2"}"#).unwrap_or(0.0);
    (all - up_to_two, all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_room_delivers_every_message_once_in_order() {
    const VIEWERS: usize = 600;
    let ts = TestServer::start_with(|c| {
        c.fanout.viewer_shards = SHARDS;
        // 600 viewers: four shards of 150.
        c.fanout.shard_min_viewers = 50;
        c.fanout.tick_ms = 50;
        // About delivery, not rationing or shedding (covered elsewhere).
        c.ration.budget_tiers = vec![(0, 100_000)];
        c.fanout.max_lag_frames = 512;
        c.ration.lite_after_ms = 60_000;
    })
    .await;
    let room = ts.room("sharded");
    let readers = readers(&ts.ws_url(&room, &[]), VIEWERS).await;
    let tokens: Vec<String> = (0..USERS)
        .map(|u| ts.token(&format!("user-{u}"), &format!("User {u}")))
        .collect();
    let (ts, room, tokens) = (&ts, room.as_str(), &tokens);
    let posted = post_all(|i| async move {
        let (s, body, _) = ts
            .post_danmaku(
                room,
                &tokens[i % USERS],
                &format!("c{i}"),
                &format!("m {i}"),
            )
            .await;
        (s, body)
    })
    .await;
    assert_all_got_all(readers, &posted).await;

    // The hub counts its writes once every shard is done.
    ts.wait_metric(
        "danmaku_messages_delivered_total{transport=\"stream\"}",
        (MESSAGES * VIEWERS) as f64,
        WAIT,
    )
    .await;
    let m = ts.metrics().await;
    assert_eq!(
        metric_value(&m, "danmaku_direct_viewer_shards"),
        Some(SHARDS as f64)
    );
    let (sharded, all) = sharded_frames(&m);
    assert!(
        sharded >= 1.0 && sharded * 2.0 >= all,
        "most frames were written by {SHARDS} shards: {sharded} of {all}"
    );
    let shard_writes = metric_value(&m, "danmaku_direct_shard_write_seconds_count").unwrap_or(0.0);
    assert!(
        shard_writes >= sharded * SHARDS as f64,
        "each shard's write is timed: {shard_writes} for {sharded} sharded frames"
    );
    let direct = metric_value(&m, r#"danmaku_direct_writes_total{result="written"}"#)
        .unwrap_or(0.0)
        + metric_value(&m, r#"danmaku_direct_writes_total{result="queued"}"#).unwrap_or(0.0);
    let sent = metric_value(&m, "danmaku_frames_sent_total").unwrap_or(0.0);
    assert!(
        direct * 2.0 >= sent,
        "most frame copies were the shards' writes: {direct} of {sent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_rooms_on_two_fronts_deliver_every_message_once_in_order() {
    const PER_FRONT: usize = 250;
    let Some(redis) = test_redis_url() else {
        return;
    };
    let shards = SHARDS.to_string();
    let p = Pair::start(
        &redis,
        &[
            ("DANMAKU_FANOUT__VIEWER_SHARDS", &shards),
            ("DANMAKU_FANOUT__SHARD_MIN_VIEWERS", "25"),
            ("DANMAKU_FANOUT__MAX_LAG_FRAMES", "512"),
            ("DANMAKU_RATION__BUDGET_TIERS", "0:100000"),
            ("DANMAKU_RATION__LITE_AFTER_MS", "60000"),
            ("DANMAKU_INGEST__USER_RATE_PER_S", "1000"),
            ("DANMAKU_INGEST__USER_BURST", "1000"),
            ("DANMAKU_SERVER__MAX_VIEWER_CONNECTIONS_PER_IP", "100000"),
        ],
    )
    .await;
    let room = unique("sharded");
    let ws = |port: u16| format!("ws://127.0.0.1:{port}/v1/rooms/{room}/ws");
    let mut all = readers(&ws(p.a.port), PER_FRONT).await;
    all.extend(readers(&ws(p.b.port), PER_FRONT).await);
    let (p, room) = (&p, room.as_str());
    let posted = post_all(|i| async move {
        // Posted on both fronts by turns.
        let front = if i % 2 == 0 { &p.a } else { &p.b };
        p.post(
            front,
            room,
            &format!("user-{}", i % USERS),
            &format!("c{i}"),
        )
        .await
    })
    .await;
    assert_all_got_all(all, &posted).await;
    for front in [&p.a, &p.b] {
        let all = front
            .metric(&p.http, "danmaku_direct_frame_shards_count")
            .await;
        let up_to_two = front
            .metric(&p.http, r#"danmaku_direct_frame_shards_bucket{le="2"}"#)
            .await;
        let sharded = all - up_to_two;
        assert!(
            sharded >= 1.0 && sharded * 2.0 >= all,
            "most frames on each front were written by {SHARDS} shards: {sharded} of {all}"
        );
    }
}
