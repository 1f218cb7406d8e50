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
        c.ration.budget_tiers = vec![(0, 100_000)]; // this test is not about rationing
        c.ingest.user_rate_per_s = 100_000.0;
        c.ingest.user_burst = 100_000.0;
    })
    .await;
    let room = "slow";
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
    // Bound: idle 2 s + ping 1 s + send timeout 1 s, plus slack for a loaded box.
    let deadline = Instant::now() + Duration::from_secs(8);
    while t.metric(r#"danmaku_connections{transport="ws"}"#).await > 1.0 {
        assert!(
            Instant::now() < deadline,
            "the stalled viewer was not cut within the bound"
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
