//! A node's `/healthz`, `/readyz` and `/metrics`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let ts = TestServer::start().await;
    let room = ts.room("r1");
    let room = room.as_str();
    let (status, body, _) = ts.get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body, _) = ts.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready", "{body}");
    for dependency in ["store", "bus", "accepting", "archive"] {
        assert_eq!(body["checks"][dependency], true, "{dependency}: {body}");
    }

    // Some traffic so every family has samples.
    let mut v = ts.ws(room, &[]).await;
    let tok = ts.token("u1", "Alice");
    assert_eq!(
        ts.post_danmaku(room, &tok, "c1", "hi").await.0,
        StatusCode::ACCEPTED
    );
    let refused = ts.post_danmaku_raw(room, None, b"{}".to_vec()).await;
    assert_eq!(refused.0, StatusCode::UNAUTHORIZED);
    assert_eq!(v.collect(1, WAIT).await.len(), 1);
    // A hub counts its writes once the whole fan-out is done, which may be
    // just after the viewer read the bytes.
    ts.wait_metric("danmaku_frames_sent_total", 1.0, WAIT).await;

    let (status, text) = ts.get_text("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for family in [
        "danmaku_connections",
        "danmaku_messages_ingested_total",
        "danmaku_messages_delivered_total",
        "danmaku_frames_sent_total",
        "danmaku_ingest_rejections_total",
        "danmaku_messages_stored_total",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(family)),
            "/metrics has {family}:\n{text}"
        );
    }
    assert_eq!(
        metric_value(&text, "danmaku_connections{transport=\"ws\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&text, "danmaku_messages_ingested_total{kind=\"danmaku\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &text,
            "danmaku_ingest_rejections_total{reason=\"missing_token\"}"
        ),
        Some(1.0)
    );
    assert!(metric_value(&text, "danmaku_frames_sent_total").unwrap_or(0.0) >= 1.0);
    assert!(metric_sum(&text, "danmaku_messages_delivered_total") >= 1.0);
    v.close().await;

    // The viewer's departure is reflected.
    let deadline = Instant::now() + WAIT;
    while ts.metric("danmaku_connections{transport=\"ws\"}").await != 0.0 {
        assert!(
            Instant::now() < deadline,
            "ws connection gauge never dropped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
