//! A viewer that stops reading is cut; the rest keep full service.
//! Its own test binary, so the process's memory figure is this test's alone.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// A viewer that stops reading is cut within the documented bound
/// (idle_timeout_s without a pong, or send_timeout_ms blocked on a write)
/// while another viewer keeps full service; memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_viewer_is_cut_and_others_keep_full_service() {
    let t = TestServer::start_with(|c| {
        c.fanout.ping_s = 1;
        c.fanout.idle_timeout_s = 2;
        c.fanout.send_timeout_ms = 1000;
        unlimited_posts(c);
    })
    .await;
    // Bound: idle 2 s + ping 1 s + send timeout 1 s, plus slack for a loaded box.
    stalled_viewer_is_cut_within(&t, "slow", Duration::from_secs(8)).await;
}

/// With `server.socket_send_buffer_bytes` a viewer that stops reading (and
/// so answers no ping either, but pings are a minute apart here) is cut by
/// the write timeout once its small kernel buffer is full: ~500 KB of frames,
/// which the kernel's autotuned loopback buffers would simply absorb.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_send_buffer_cuts_a_stalled_viewer_on_writes() {
    let t = TestServer::start_with(|c| {
        c.fanout.ping_s = 60;
        c.fanout.idle_timeout_s = 120;
        c.fanout.send_timeout_ms = 1000;
        c.server.socket_send_buffer_bytes = 8192;
        unlimited_posts(c);
    })
    .await;
    stalled_viewer_is_cut_within(&t, "slow-buffer", Duration::from_secs(8)).await;
}

fn unlimited_posts(c: &mut danmaku::config::Config) {
    c.ration.budget_tiers = vec![(0, 100_000)]; // these tests are not about rationing
    c.ingest.user_rate_per_s = 100_000.0;
    c.ingest.user_burst = 100_000.0;
}

/// Posts ~1 500 messages of 200 bytes over 5 s to `room` with a healthy and
/// a stalled WebSocket viewer: the stalled one is cut within `bound` after
/// the posts, the healthy one gets every message in order, and this test's
/// memory does not balloon.
async fn stalled_viewer_is_cut_within(t: &TestServer, room: &str, bound: Duration) {
    let mut healthy = t.ws(room, &[]).await;
    // Connected, hello read, then never polled again: no reads, no pongs.
    let stalled = t.ws(room, &[]).await;
    assert_eq!(
        t.metric(r#"danmaku_connections{transport="ws"}"#).await,
        2.0
    );
    let rss_before = rss_kb();

    let token = t.token("u1", "Fan");
    let text = "x".repeat(200);
    let started = Instant::now();
    let mut posted = 0;
    let reader = tokio::spawn(async move {
        let got = healthy.collect(1500, Duration::from_secs(30)).await;
        (got, healthy)
    });
    while started.elapsed() < Duration::from_secs(5) {
        for _ in 0..50 {
            let (s, _, _) = t
                .post_danmaku(room, &token, &format!("m{posted}"), &text)
                .await;
            assert_eq!(s, StatusCode::ACCEPTED);
            posted += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        if posted >= 1500 {
            break;
        }
    }
    let deadline = Instant::now() + bound;
    while t.metric(r#"danmaku_connections{transport="ws"}"#).await > 1.0 {
        assert!(
            Instant::now() < deadline,
            "the stalled viewer was not cut within {bound:?} of the last post"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (got, healthy) = reader.await.unwrap();
    eprintln!(
        "healthy viewer ended: {:?}; slow cuts {}",
        healthy.ended,
        t.metric("danmaku_slow_consumer_disconnects_total").await
    );
    assert_eq!(got.len(), posted, "the healthy viewer got every message");
    assert_strictly_increasing("healthy viewer", &got);
    let growth_mb = rss_kb().saturating_sub(rss_before) / 1024;
    assert!(growth_mb < 128, "memory grew by {growth_mb} MB");
    drop(stalled);
}
