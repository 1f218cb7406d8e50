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
    // Processing delay is per kind (the gears and shedding act per kind).
    assert_eq!(
        metric_value(
            &text,
            "danmaku_process_delay_seconds_count{kind=\"danmaku\"}"
        ),
        Some(1.0),
        "{text}"
    );
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

/// Process facts an operator checks first: descriptors against the cap,
/// memory, CPU, and which build runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_and_build_metrics() {
    let ts = TestServer::start().await;
    let text = ts.metrics().await;
    let value = |sample: &str| {
        metric_value(&text, sample).unwrap_or_else(|| panic!("{sample} missing:\n{text}"))
    };
    let open = value("process_open_fds");
    // The listener, the runtime's epoll and this test's connection at least.
    assert!(open >= 4.0, "open fds {open}");
    assert!(open <= value("process_max_fds"), "{open} over the cap");
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_cpu_seconds_total") >= 0.0);
    assert!(value("process_threads") >= 2.0);
    let build = text
        .lines()
        .find(|l| l.starts_with("danmaku_build_info{"))
        .unwrap_or_else(|| panic!("danmaku_build_info missing:\n{text}"));
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && build.ends_with(" 1"),
        "{build}"
    );
}

/// With `server.internal_listen` set, metrics, readiness and the admin
/// routes answer there only; the public listener keeps the API and
/// `/healthz` and answers the rest with the JSON 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_listener_takes_metrics_readiness_and_admin() {
    const ADMIN: &str = "internal-listener-admin-token";
    let ts = TestServer::start_with(|c| {
        c.server.internal_listen = "127.0.0.1:0".into();
        c.auth.admin_token = ADMIN.into();
    })
    .await;
    let internal = format!(
        "http://{}",
        ts.server.internal_addr().expect("internal listener bound")
    );
    assert_ne!(internal, ts.base);
    let room = ts.room("ops");
    let settings = format!("/v1/admin/rooms/{room}/settings");
    let get = |base: String, path: String| {
        let http = ts.http.clone();
        async move {
            let res = http
                .get(format!("{base}{path}"))
                .bearer_auth(ADMIN)
                .send()
                .await
                .expect("GET");
            into_parts(res).await
        }
    };

    for path in ["/metrics", "/readyz", settings.as_str()] {
        let got = get(ts.base.clone(), path.to_string()).await;
        assert_error(
            &format!("public {path}"),
            &got,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
    assert_eq!(ts.get("/healthz").await.0, StatusCode::OK);
    let tok = ts.token("u1", "Alice");
    assert_eq!(
        ts.post_danmaku(&room, &tok, "c1", "hi").await.0,
        StatusCode::ACCEPTED,
        "the public API is still public"
    );

    let (status, body, _) = get(internal.clone(), "/readyz".into()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready", "{body}");
    let (status, body, _) = get(internal.clone(), settings.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room"], room.as_str(), "{body}");
    assert_eq!(
        get(internal.clone(), "/healthz".into()).await.0,
        StatusCode::OK
    );
    let res = ts
        .http
        .get(format!("{internal}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.expect("metrics body");
    assert_eq!(
        metric_value(&text, "danmaku_messages_ingested_total{kind=\"danmaku\"}"),
        Some(1.0),
        "the internal listener reports the public listener's traffic"
    );
    // Viewer routes stay off the internal listener.
    let got = get(internal.clone(), format!("/v1/rooms/{room}/snapshot")).await;
    assert_error(
        "internal snapshot",
        &got,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    ts.shutdown().await;
}
