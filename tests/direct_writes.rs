//! Hubs write frames to in-step WebSocket viewers themselves (`fanout.
//! direct_writes`). These tests cross the hand-over both ways: a viewer that
//! stops reading fills its socket, the hub hands it back to its own task,
//! which catches it up from the store; once it reads again and is in step,
//! the hub takes it over again. Every message must arrive once, in order.

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;

async fn post_many(t: &TestServer, room: &str, token: &str, from: usize, n: usize) {
    let text = "y".repeat(190);
    for i in from..from + n {
        let (s, body, _) = t.post_danmaku(room, token, &format!("m{i}"), &text).await;
        assert_eq!(s, StatusCode::ACCEPTED, "post {i}: {body}");
    }
}

/// Lifts rationing and rate limits: these tests are about delivery.
fn unrationed(c: &mut danmaku::config::Config) {
    c.ration.budget_tiers = vec![(0, 100_000)];
    c.ingest.user_rate_per_s = 100_000.0;
    c.ingest.user_burst = 100_000.0;
}

fn seq_list(messages: &[serde_json::Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_viewer_is_handed_back_caught_up_and_taken_over_again() {
    let t = TestServer::start_with(|c| {
        c.fanout.push_backlog_bytes = 4096;
        // The stall below must end in the hand-over, not in a cut or in
        // lite frames: those have their own tests.
        c.fanout.send_timeout_ms = 30_000;
        c.fanout.max_lag_frames = 10_000;
        c.ration.lite_after_ms = 600_000;
        unrationed(c);
    })
    .await;
    let room = "handover";
    let url = t.ws_url(room, &[]);
    let mut steady = t.ws(room, &[]).await;
    let mut stalled = WsViewer::connect_small_buffer(&url, 2048).await;
    let token = t.token("u1", "Fan");

    // Both in step: the hub writes to them.
    post_many(&t, room, &token, 0, 20).await;
    let first = stalled.collect(20, WAIT).await;
    assert_eq!(seq_list(&first), (1..=20).collect::<Vec<u64>>());
    // The hub counts its writes once the whole fan-out is done, which may be
    // just after the viewer read the bytes.
    let written = t
        .wait_metric(
            r#"danmaku_direct_writes_total{result="written"}"#,
            1.0,
            Duration::from_secs(5),
        )
        .await;
    assert!(written >= 1.0, "the hub wrote frames itself: {written}");

    // `stalled` reads nothing while frames are posted until its socket and
    // then its backlog are full and the hub hands it back to its task (the
    // kernel takes a few MB first, so the amount is not fixed).
    let (steady_tx, steady_rx) = tokio::sync::oneshot::channel::<usize>();
    let reader = tokio::spawn(async move {
        let mut got = steady.collect(usize::MAX, Duration::from_millis(1)).await;
        let mut want = None::<usize>;
        let mut steady_rx = steady_rx;
        while want.is_none_or(|w| got.len() < w) {
            if want.is_none() {
                if let Ok(w) = steady_rx.try_recv() {
                    want = Some(w);
                }
            }
            got.extend(steady.collect(1, Duration::from_millis(200)).await);
            if steady.ended.is_some() {
                break;
            }
        }
        (got, steady)
    });
    let mut total = 20;
    let detach = r#"danmaku_direct_detached_total{reason="backlog"}"#;
    while t.metric(detach).await < 1.0 {
        assert!(total < 40_000, "no backlog detach after {total} messages");
        let posters: Vec<_> = (0..8)
            .map(|p| post_many(&t, room, &token, total + p * 250, 250))
            .collect();
        futures_util::future::join_all(posters).await;
        total += 8 * 250;
    }
    steady_tx.send(total).unwrap();

    // It reads again: everything arrives once and in order.
    let rest = stalled.collect(total - 20, Duration::from_secs(120)).await;
    let mut all = first;
    all.extend(rest);
    assert_eq!(
        seq_list(&all),
        (1..=total as u64).collect::<Vec<u64>>(),
        "the stalled viewer got every message once, in order"
    );
    let (got, mut steady) = reader.await.unwrap();
    assert_eq!(
        seq_list(&got),
        (1..=total as u64).collect::<Vec<u64>>(),
        "the steady viewer got every message once, in order"
    );

    // In step again, the stalled viewer is taken over by the hub again:
    // after it rejoins, frames reach both viewers as direct writes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = t
        .metric(r#"danmaku_direct_writes_total{result="written"}"#)
        .await;
    post_many(&t, room, &token, total, 10).await;
    let tail = stalled.collect(10, WAIT).await;
    assert_eq!(
        seq_list(&tail),
        (total as u64 + 1..=total as u64 + 10).collect::<Vec<u64>>()
    );
    let tail_steady = steady.collect(10, WAIT).await;
    assert_eq!(tail_steady.len(), 10);
    // Counted once each fan-out is done (possibly just after the bytes arrived).
    let after = t
        .wait_metric(
            r#"danmaku_direct_writes_total{result="written"}"#,
            before + 2.0,
            WAIT,
        )
        .await;
    let frames = t.metric("danmaku_frames_encoded_total").await;
    assert!(frames > 0.0);
    assert!(
        after - before >= 2.0,
        "both viewers are written to by the hub again ({before} -> {after})"
    );
    assert!(stalled.ended.is_none() && steady.ended.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_direct_writes_off_viewers_are_served_by_their_own_tasks() {
    let t = TestServer::start_with(|c| {
        c.fanout.direct_writes = false;
        unrationed(c);
    })
    .await;
    let room = "tasks";
    let mut a = t.ws(room, &[]).await;
    let mut b = t.ws(room, &[]).await;
    let token = t.token("u1", "Fan");
    post_many(&t, room, &token, 0, 50).await;
    for v in [&mut a, &mut b] {
        let got = v.collect(50, WAIT).await;
        assert_eq!(seq_list(&got), (1..=50).collect::<Vec<u64>>());
    }
    assert_eq!(
        t.metric(r#"danmaku_direct_writes_total{result="written"}"#)
            .await,
        0.0
    );
    assert!(t.wait_metric("danmaku_frames_sent_total", 2.0, WAIT).await >= 2.0);
}

/// A viewer resuming in a big room catches up from the node's cache, which
/// may hand it the very frame the hub broadcast: it must still be sent (it
/// was not written by the hub to this viewer), then the hub takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_in_a_big_room_gets_the_cached_frame_then_hub_writes() {
    let t = TestServer::start_with(|c| {
        c.fanout.big_room_threshold = 1;
        c.fanout.presence_interval_ms = 100;
        unrationed(c);
    })
    .await;
    let room = "bigresume";
    let mut first = t.ws(room, &[]).await;
    let deadline = std::time::Instant::now() + WAIT;
    while t
        .metric(&format!(r#"danmaku_top_room_online{{room="{room}"}}"#))
        .await
        < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the room never became big"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = t.token("u1", "Fan");
    post_many(&t, room, &token, 0, 3).await;
    assert_eq!(first.collect(3, WAIT).await.len(), 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    post_many(&t, room, &token, 3, 3).await;
    assert_eq!(first.collect(3, WAIT).await.len(), 3);
    // Resume from the cursor before the newest frame: the cache answers
    // with that broadcast frame itself.
    let n = first.batches.len();
    assert!(n >= 2, "two frames at least");
    let from = first.batches[n - 2]["cursor"].as_u64().unwrap();
    let last_to = first.batches[n - 1]["cursor"].as_u64().unwrap();
    let from_s = from.to_string();
    let epoch = first.epoch.clone();
    let mut resumed = t.ws(room, &[("cursor", &from_s), ("epoch", &epoch)]).await;
    let caught_up = resumed.collect((last_to - from) as usize, WAIT).await;
    assert_eq!(
        seq_list(&caught_up),
        (from + 1..=last_to).collect::<Vec<u64>>(),
        "the cached frame reached the resumed viewer"
    );
    post_many(&t, room, &token, 6, 4).await;
    let more = resumed.collect(4, WAIT).await;
    assert_eq!(
        seq_list(&more),
        (last_to + 1..=last_to + 4).collect::<Vec<u64>>()
    );
    assert_eq!(first.collect(4, WAIT).await.len(), 4);
}

/// The live store loses a room's stream (a Redis restart without
/// persistence): viewers the hub was writing to are handed back, told
/// `reset` with the new epoch, and get the new stream from its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_stream_resets_viewers_the_hub_was_writing_to() {
    let Some(url) = test_redis_url() else { return };
    let redis_url = url.clone();
    let t = TestServer::start_with(move |c| {
        c.store.engine = danmaku::config::StoreEngine::Redis;
        c.store.redis_url = redis_url;
        unrationed(c);
    })
    .await;
    let room = t.room("lost");
    let mut v = t.ws(&room, &[]).await;
    let token = t.token("u1", "Fan");
    post_many(&t, &room, &token, 0, 5).await;
    assert_eq!(v.collect(5, WAIT).await.len(), 5);
    let old_epoch = v.epoch.clone();
    assert!(
        t.wait_metric(
            r#"danmaku_direct_writes_total{result="written"}"#,
            1.0,
            WAIT
        )
        .await
            >= 1.0
    );

    // Lose the stream: every key of the room goes (docs/redis-keys.md).
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for key in [
        "seq",
        "epoch",
        "b:whitelist",
        "b:high",
        "b:low",
        "ids",
        "trimmed",
    ] {
        let _: () = redis::cmd("DEL")
            .arg(format!("dm:{{{room}}}:{key}"))
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    post_many(&t, &room, &token, 5, 3).await;
    let (hello, before) = v.until_other(WAIT, |m| m["type"] == "hello").await;
    assert!(
        before.is_empty(),
        "nothing of the new stream before the reset: {before:?}"
    );
    let hello = hello.expect("a reset hello");
    assert_ne!(hello["epoch"], old_epoch.as_str(), "{hello}");
    v.accept_reset(&hello);
    let fresh = v.collect(3, WAIT).await;
    assert_eq!(
        seq_list(&fresh),
        vec![1, 2, 3],
        "the new stream from its start"
    );
    let out_of_step = r#"danmaku_direct_detached_total{reason="out_of_step"}"#;
    assert!(
        t.metric(out_of_step).await >= 1.0,
        "the hub handed the viewer back"
    );
}
