//! Fan-out at scale on one box: 1000 real WebSocket viewers on loopback in
//! one room, 200 messages from several users. Every viewer gets every
//! message exactly once, in seq order, from frames encoded once per tick and
//! shared by all connections.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use reqwest::StatusCode;

const VIEWERS: usize = 1000;
const MESSAGES: usize = 200;
const USERS: usize = 10;
/// Connections opened at once.
const CONNECT_CONCURRENCY: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_viewers_each_receive_all_messages_once_in_order() {
    tokio::time::timeout(Duration::from_secs(90), run())
        .await
        .expect("the whole fan-out test finishes within 90 s");
}

async fn run() {
    let ts = TestServer::start_with(|c| {
        c.fanout.tick_ms = 50;
        // This test is about fan-out, not rationing or slow-consumer
        // shedding (covered elsewhere): a per-viewer budget well above the
        // offered rate, and rings deep enough that a briefly busy 2-core
        // debug build neither sheds low (lite frames) nor cuts viewers.
        c.ration.budget_tiers = vec![(0, 10_000)];
        c.fanout.max_lag_frames = 512;
        c.ration.lite_after_ms = 60_000;
    })
    .await;
    let room = ts.room("big-room");
    let room = room.as_str();

    let started = Instant::now();
    let url = ts.ws_url(room, &[]);
    let viewers: Vec<WsViewer> = futures_util::stream::iter(0..VIEWERS)
        .map(|_| {
            let url = url.clone();
            async move { WsViewer::connect(&url).await }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let connected_in = started.elapsed();
    for v in &viewers {
        assert_eq!(v.hello["cursor"], 0, "empty room: {}", v.hello);
    }
    let epoch = viewers[0].epoch.clone();
    assert!(viewers.iter().all(|v| v.epoch == epoch), "one stream epoch");
    ts.wait_metric(
        "danmaku_connections{transport=\"ws\"}",
        VIEWERS as f64,
        WAIT,
    )
    .await;
    // The online count's announcements while viewers were joining reached
    // only those already there: count frames from when the last one (at most
    // one presence round, 1 s, after the last join) has gone out.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = ts.metrics().await;
    let encoded_before = metric_value(&before, "danmaku_frames_encoded_total").unwrap_or(0.0);
    let sent_before = metric_value(&before, "danmaku_frames_sent_total").unwrap_or(0.0);

    // Every viewer reads on its own task while the messages are posted.
    let readers: Vec<_> = viewers
        .into_iter()
        .map(|mut v| {
            tokio::spawn(async move {
                let got = v.collect_ids(MESSAGES, Duration::from_secs(60)).await;
                let (ended, others) = (v.ended.clone(), v.others.len());
                // The viewer is handed back, still connected: frames sent
                // after it has read everything (online counts) must still
                // reach all of them for the frame counts below to add up.
                (got, ended, others, v)
            })
        })
        .collect();

    let tokens: Vec<String> = (0..USERS)
        .map(|u| ts.token(&format!("user-{u}"), &format!("User {u}")))
        .collect();
    let mut posted = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        let r = ts
            .post_danmaku(
                room,
                &tokens[i % USERS],
                &format!("c{i}"),
                &format!("message {i}"),
            )
            .await;
        assert_eq!(r.0, StatusCode::ACCEPTED, "post {i}: {}", r.1);
        posted.push(r.1["id"].as_str().unwrap().to_string());
    }
    let posted_set: HashSet<&String> = posted.iter().collect();
    assert_eq!(posted_set.len(), MESSAGES, "distinct ids");

    let expected_seqs: Vec<u64> = (1..=MESSAGES as u64).collect();
    let mut short = Vec::new();
    let mut still_connected = Vec::with_capacity(VIEWERS);
    for (i, reader) in readers.into_iter().enumerate() {
        let (got, ended, others, viewer) = reader.await.expect("reader task");
        still_connected.push(viewer);
        let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
        if seqs != expected_seqs {
            short.push(format!(
                "viewer {i}: {} messages (ended: {ended:?}, other messages: {others}), first seqs {:?}",
                seqs.len(),
                &seqs[..seqs.len().min(10)]
            ));
            continue;
        }
        let ids: HashSet<&String> = got.iter().map(|(_, id)| id).collect();
        assert_eq!(
            ids, posted_set,
            "viewer {i} got exactly the posted messages"
        );
    }
    assert!(
        short.is_empty(),
        "{} of {VIEWERS} viewers did not get all {MESSAGES} messages once in seq order:\n{}",
        short.len(),
        short[..short.len().min(20)].join("\n")
    );

    // One encoding per frame, shared by every connection. A hub counts its
    // writes once the whole fan-out is done, possibly after the viewers read.
    ts.wait_metric(
        "danmaku_messages_delivered_total{transport=\"stream\"}",
        (MESSAGES * VIEWERS) as f64,
        WAIT,
    )
    .await;
    // A frame is counted as encoded before its fan-out and as sent in parts
    // as its writes complete (per shard of the hub's writes, per viewer a
    // task serves), so a scrape during a fan-out (an online-count frame, say)
    // reads it part sent (CI: 32 485 of 33 000): look for a scrape between
    // fan-outs. Viewers stay connected until the end (CI read 39 424 of
    // 40 000 when they closed as they finished: an online-count frame then
    // reached only the 424 still there).
    let deadline = Instant::now() + WAIT;
    let (m, encoded, sent) = loop {
        let m = ts.metrics().await;
        let encoded =
            metric_value(&m, "danmaku_frames_encoded_total").unwrap_or(0.0) - encoded_before;
        let sent = metric_value(&m, "danmaku_frames_sent_total").unwrap_or(0.0) - sent_before;
        if sent == encoded * VIEWERS as f64 || Instant::now() >= deadline {
            break (m, encoded, sent);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(encoded >= 1.0);
    assert!(
        encoded <= MESSAGES as f64,
        "frames batch messages per tick: {encoded} frames for {MESSAGES} messages"
    );
    assert_eq!(
        sent,
        encoded * VIEWERS as f64,
        "every encoded frame went to all {VIEWERS} viewers"
    );
    // In step, viewers are written to by the hub itself (no task per viewer).
    let direct = metric_value(&m, "danmaku_direct_writes_total{result=\"written\"}").unwrap_or(0.0)
        + metric_value(&m, "danmaku_direct_writes_total{result=\"queued\"}").unwrap_or(0.0);
    assert!(
        direct >= sent / 2.0,
        "most frame copies were hub writes: {direct} of {sent}"
    );
    assert_eq!(
        metric_value(&m, "danmaku_messages_delivered_total{transport=\"stream\"}"),
        Some((MESSAGES * VIEWERS) as f64)
    );
    drop(still_connected);
    eprintln!(
        "fan-out: {VIEWERS} viewers connected in {connected_in:?}; {encoded} frames; total {:?}",
        started.elapsed()
    );
}
