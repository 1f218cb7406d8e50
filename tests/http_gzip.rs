//! `Content-Encoding: gzip` for snapshots and big rooms' long-poll answers
//! (`snapshot.gzip`, `poll.gzip`): computed once and shared by every request
//! that accepts gzip, `Vary: Accept-Encoding`, the gzip form's own ETag, and
//! plain bytes for clients that do not accept it.

mod common;

use std::io::Read;

use common::*;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;

const COMPRESSED: &str = r#"danmaku_http_gzip_total{outcome="compressed"}"#;
const SHARED: &str = r#"danmaku_http_gzip_total{outcome="shared"}"#;

fn gunzip(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut out)
        .expect("a gzip body");
    out
}

/// GET `path` with these request headers: status, headers, raw body bytes.
async fn get(
    t: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut req = t.http.get(t.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.expect("GET");
    let status = res.status();
    let h = res.headers().clone();
    (status, h, res.bytes().await.expect("body").to_vec())
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

fn varies_on_encoding(h: &HeaderMap) -> bool {
    h.get_all("vary").iter().any(|v| {
        v.to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("accept-encoding")
    })
}

async fn post_texts(t: &TestServer, room: &str, n: usize) {
    let token = t.token("u1", "Fan");
    for i in 0..n {
        let text = format!("第{i}条弹幕 主播太强了!!! gg wp, what a play #{i} 哈哈哈哈");
        let (s, body, _) = t.post_danmaku(room, &token, &format!("m{i}"), &text).await;
        assert_eq!(s, StatusCode::ACCEPTED, "post {i}: {body}");
    }
}

fn unrationed(c: &mut danmaku::config::Config) {
    c.ration.budget_tiers = vec![(0, 100_000)];
    c.ingest.user_rate_per_s = 100_000.0;
    c.ingest.user_burst = 100_000.0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_gzipped_once_for_every_client_that_accepts_it() {
    let t = TestServer::start_with(unrationed).await;
    let room = t.room("gz-snap");
    post_texts(&t, &room, 20).await;
    t.wait_stored(&room, 20).await;
    let path = format!("/v1/rooms/{room}/snapshot");

    let (s, plain_h, plain) = get(&t, &path, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        header(&plain_h, "content-encoding"),
        None,
        "no Accept-Encoding: plain"
    );
    assert!(varies_on_encoding(&plain_h), "{plain_h:?}");
    let tag = header(&plain_h, "etag").unwrap().to_string();
    assert!(
        plain.len() >= 1024,
        "over snapshot.gzip_min_bytes: {}",
        plain.len()
    );
    let v: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(v["buckets"]["low"].as_array().unwrap().len(), 20);

    let (compressed, shared) = (t.metric(COMPRESSED).await, t.metric(SHARED).await);
    let gz_tag = format!("{}-gz\"", tag.trim_end_matches('"'));
    let mut first = None;
    for accept in [
        "gzip",
        "gzip, deflate, br",
        "br;q=1.0, gzip;q=0.8",
        "*",
        "gzip",
    ] {
        let (s, h, body) = get(&t, &path, &[("accept-encoding", accept)]).await;
        assert_eq!(s, StatusCode::OK, "{accept}");
        assert_eq!(header(&h, "content-encoding"), Some("gzip"), "{accept}");
        assert_eq!(header(&h, "content-type"), Some("application/json"));
        assert!(varies_on_encoding(&h), "{h:?}");
        assert_eq!(
            header(&h, "etag"),
            Some(gz_tag.as_str()),
            "its own strong ETag"
        );
        assert!(
            body.len() * 2 < plain.len(),
            "{} vs {}",
            body.len(),
            plain.len()
        );
        assert_eq!(
            gunzip(&body),
            plain,
            "decoded: the plain body byte for byte"
        );
        match &first {
            None => first = Some(body),
            Some(f) => assert_eq!(f, &body, "the same bytes"),
        }
    }
    assert_eq!(
        (
            t.metric(COMPRESSED).await - compressed,
            t.metric(SHARED).await - shared
        ),
        (1.0, 4.0),
        "five requests, one compression"
    );

    // Revalidation, each representation by its own tag.
    let (s, h, body) = get(
        &t,
        &path,
        &[("accept-encoding", "gzip"), ("if-none-match", &gz_tag)],
    )
    .await;
    assert_eq!((s, body.len()), (StatusCode::NOT_MODIFIED, 0));
    assert_eq!(header(&h, "etag"), Some(gz_tag.as_str()));
    assert!(varies_on_encoding(&h));
    let (s, h, _) = get(&t, &path, &[("if-none-match", &tag)]).await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);
    assert_eq!(header(&h, "etag"), Some(tag.as_str()));
    // The plain tag does not name the gzip form: that client gets it whole.
    let (s, h, body) = get(
        &t,
        &path,
        &[("accept-encoding", "gzip"), ("if-none-match", &tag)],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(header(&h, "content-encoding"), Some("gzip"));
    assert_eq!(gunzip(&body), plain);
    // gzip refused, or only other codings: plain bytes.
    for accept in ["gzip;q=0", "identity", "br", "*;q=0.5, gzip;q=0"] {
        let (s, h, body) = get(&t, &path, &[("accept-encoding", accept)]).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(header(&h, "content-encoding"), None, "{accept}");
        assert_eq!(header(&h, "etag"), Some(tag.as_str()));
        assert_eq!(body, plain, "{accept}");
    }
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_snapshots_and_a_switched_off_gzip_go_plain() {
    let t = TestServer::start_with(unrationed).await;
    let room = t.room("gz-small");
    post_texts(&t, &room, 1).await;
    t.wait_stored(&room, 1).await;
    let path = format!("/v1/rooms/{room}/snapshot");
    let (s, h, body) = get(&t, &path, &[("accept-encoding", "gzip")]).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.len() < 1024, "{}", body.len());
    assert_eq!(header(&h, "content-encoding"), None, "under gzip_min_bytes");
    assert!(!header(&h, "etag").unwrap().contains("-gz"));
    serde_json::from_slice::<Value>(&body).expect("plain JSON");
    t.shutdown().await;

    let off = TestServer::start_with(|c| {
        unrationed(c);
        c.snapshot.gzip = false;
        c.poll.gzip = false;
    })
    .await;
    let room = off.room("gz-off");
    post_texts(&off, &room, 20).await;
    off.wait_stored(&room, 20).await;
    let path = format!("/v1/rooms/{room}/snapshot");
    let (s, h, body) = get(&off, &path, &[("accept-encoding", "gzip")]).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.len() >= 1024);
    assert_eq!(
        header(&h, "content-encoding"),
        None,
        "snapshot.gzip = false"
    );
    assert!(!varies_on_encoding(&h), "{h:?}");
    serde_json::from_slice::<Value>(&body).expect("plain JSON");
    off.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_rooms_poll_answer_is_gzipped_once_per_frame() {
    let t = TestServer::start_with(|c| {
        unrationed(c);
        c.fanout.big_room_threshold = 1;
        c.fanout.presence_interval_ms = 100;
        c.poll.gzip_min_bytes = 256;
    })
    .await;
    let room = t.room("gz-poll");
    let mut ws = t.ws(&room, &[]).await;
    t.wait_metric(
        &format!(r#"danmaku_top_room_online{{room="{room}"}}"#),
        1.0,
        WAIT,
    )
    .await;
    post_texts(&t, &room, 12).await;
    let got = ws.collect(12, WAIT).await;
    assert_eq!(got.len(), 12);
    // The cursor before the newest frame: a poll from it is answered with
    // exactly that frame, from the cache.
    let before_newest = match ws.batches.len() {
        0 | 1 => ws.hello["cursor"].as_u64().unwrap(),
        n => ws.batches[n - 2]["cursor"].as_u64().unwrap(),
    };
    let newest = ws.batches.last().unwrap().clone();
    let path = format!("/v1/rooms/{room}/poll?cursor={before_newest}&wait_ms=0");

    let hits = t.metric(r#"danmaku_cache_reads_total{result="hit"}"#).await;
    let (s, plain_h, plain) = get(&t, &path, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(header(&plain_h, "content-encoding"), None);
    assert!(varies_on_encoding(&plain_h));
    let answer: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(answer["messages"], newest["messages"], "the newest frame");
    assert_eq!(answer["cursor"], newest["cursor"]);
    assert!(answer["online"].as_u64().unwrap() >= 1, "{answer}");
    assert!(t.metric(r#"danmaku_cache_reads_total{result="hit"}"#).await > hits);

    let (compressed, shared) = (t.metric(COMPRESSED).await, t.metric(SHARED).await);
    for _ in 0..5 {
        let (s, h, body) = get(&t, &path, &[("accept-encoding", "gzip")]).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(header(&h, "content-encoding"), Some("gzip"));
        assert_eq!(header(&h, "danmaku-protocol"), Some("1"));
        assert!(varies_on_encoding(&h));
        assert_eq!(gunzip(&body), plain, "decoded: the plain answer");
    }
    assert_eq!(
        (
            t.metric(COMPRESSED).await - compressed,
            t.metric(SHARED).await - shared
        ),
        (1.0, 4.0),
        "five polls, one compression"
    );
    let (_, h, body) = get(&t, &path, &[("accept-encoding", "gzip;q=0")]).await;
    assert_eq!(header(&h, "content-encoding"), None);
    assert_eq!(body, plain);
    ws.close().await;
    t.shutdown().await;
}
