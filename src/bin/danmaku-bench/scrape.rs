//! What the tool reads from the server over HTTP besides the load itself:
//! `/healthz` (is it up) and `/metrics` (the server's own counters, reported
//! as the difference over a run).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::net::{Body, Conn, Target};

/// Waits (up to `bound`) until `path` (`/healthz`, `/readyz`) answers 200.
pub async fn wait_ok(target: &Target, path: &str, bound: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < bound {
        if let Ok((200, _)) = http_get(target, path).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A plain GET; returns (status, body).
pub async fn http_get(target: &Target, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut conn = Conn::connect(target, 0, 64 * 1024).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        target.host
    );
    conn.write_all(req.as_bytes()).await?;
    let head = conn.read_head().await?;
    let body = match conn.read_body(&head).await? {
        Body::InBuffer(n) => conn.data()[..n].to_vec(),
        Body::Owned(v) => v,
    };
    Ok((head.status, body))
}

/// `name{labels}` → value of every sample in the server's /metrics.
pub async fn metrics(target: &Target) -> BTreeMap<String, f64> {
    let Ok((200, body)) = http_get(target, "/metrics").await else {
        return BTreeMap::new();
    };
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

const METRICS_OF_INTEREST: &[&str] = &[
    "danmaku_messages_ingested_total",
    "danmaku_ingest_rejections_total",
    "danmaku_messages_stored_total",
    "danmaku_frames_encoded_total",
    "danmaku_frames_sent_total",
    "danmaku_messages_delivered_total",
    "danmaku_slow_consumer_disconnects_total",
    "danmaku_ration_dropped_total",
    "danmaku_queue_low_dropped_total",
    "danmaku_store_reads_total",
    "danmaku_cache_reads_total",
    "danmaku_top_room_online",
    "danmaku_hub_tick_seconds_sum",
    "danmaku_hub_tick_seconds_count",
    "danmaku_snapshot_builds_total",
    "danmaku_snapshot_responses_total",
];

pub fn metrics_delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter(|(k, _)| {
            METRICS_OF_INTEREST
                .iter()
                .any(|m| k.split('{').next() == Some(*m))
        })
        .filter_map(|(k, v)| {
            let gauge = k.starts_with("danmaku_room_");
            let d = if gauge {
                *v
            } else {
                v - before.get(k).copied().unwrap_or(0.0)
            };
            (d != 0.0).then(|| (k.clone(), d))
        })
        .collect()
}
