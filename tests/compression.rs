//! permessage-deflate (RFC 7692) for WebSocket viewers, against the real
//! server with a hand-written client (tokio-tungstenite cannot negotiate
//! it): the upgrade's answer, compressed frames that inflate to every
//! message once and in order (hub writes, the viewer's own task, and the
//! hand-overs between them), compressed client messages, a deflate bomb,
//! and plain frames for clients that did not offer the extension.

mod common;

use std::time::Duration;

use common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";
const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

/// What a raw client read.
#[derive(Debug)]
enum Incoming {
    Json(Value),
    Close(u16),
}

/// A WebSocket client that negotiates permessage-deflate by hand.
struct RawWs {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// The server's `Sec-WebSocket-Extensions` answer.
    extensions: Option<String>,
    /// Data messages received compressed (RSV1) and plain.
    compressed: usize,
    plain: usize,
    /// Bytes of frames read (headers included).
    wire_bytes: usize,
}

impl RawWs {
    async fn connect(t: &TestServer, room: &str, query: &str, offer: Option<&str>) -> RawWs {
        Self::connect_with(t, room, query, offer, None).await
    }

    async fn connect_with(
        t: &TestServer,
        room: &str,
        query: &str,
        offer: Option<&str>,
        rcvbuf: Option<u32>,
    ) -> RawWs {
        let addr: std::net::SocketAddr = t.base.trim_start_matches("http://").parse().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let mut tcp = socket.connect(addr).await.unwrap();
        let ext = offer.map_or(String::new(), |o| {
            format!("Sec-WebSocket-Extensions: {o}\r\n")
        });
        let req = format!(
            "GET /v1/rooms/{room}/ws{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n{ext}\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
                .await
                .expect("upgrade answer in time")
                .unwrap();
            assert!(n > 0, "connection closed before the upgrade answer");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..end].to_vec()).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "upgraded: {head}");
        let extensions = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_string())
        });
        buf.drain(..end);
        let mut ws = RawWs {
            tcp,
            buf,
            extensions,
            compressed: 0,
            plain: 0,
            wire_bytes: 0,
        };
        match ws.next(WAIT).await {
            Some(Incoming::Json(hello)) => assert_eq!(hello["type"], "hello", "{hello}"),
            other => panic!("no hello: {other:?}"),
        }
        ws
    }

    /// The next whole frame: (first byte, payload).
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let len7 = (self.buf[1] & 0x7f) as usize;
                let (hdr, len) = match len7 {
                    126 if self.buf.len() >= 4 => {
                        (4, u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize)
                    }
                    127 if self.buf.len() >= 10 => (
                        10,
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (2, n),
                };
                if hdr != usize::MAX && self.buf.len() >= hdr + len {
                    assert_eq!(self.buf[1] & 0x80, 0, "server frames are unmasked");
                    let first = self.buf[0];
                    let payload = self.buf[hdr..hdr + len].to_vec();
                    self.buf.drain(..hdr + len);
                    self.wire_bytes += hdr + len;
                    return Some((first, payload));
                }
            }
            let mut chunk = [0u8; 16 << 10];
            let n = self.tcp.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next message (inflated if it came compressed); pings answered.
    async fn next(&mut self, within: Duration) -> Option<Incoming> {
        tokio::time::timeout(within, async {
            let mut message: Option<(bool, Vec<u8>)> = None;
            loop {
                let (first, payload) = self.frame().await?;
                match first & 0x0f {
                    0x8 => {
                        let code = payload
                            .get(..2)
                            .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                        return Some(Incoming::Close(code));
                    }
                    0x9 => self.send_frame(0x8A, &payload).await,
                    0xA => {}
                    op => {
                        if op != 0 {
                            message = Some((first & 0x40 != 0, Vec::new()));
                        } else {
                            assert_eq!(first & 0x70, 0, "RSV bits on a continuation");
                        }
                        let (_, body) = message.as_mut().expect("a message started");
                        body.extend_from_slice(&payload);
                        if first & 0x80 != 0 {
                            let (rsv1, body) = message.take().unwrap();
                            let text = if rsv1 {
                                self.compressed += 1;
                                inflate(&body)
                            } else {
                                self.plain += 1;
                                body
                            };
                            return Some(Incoming::Json(serde_json::from_slice(&text).unwrap()));
                        }
                    }
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Batch messages until `n` arrived (other JSON skipped).
    async fn collect(&mut self, n: usize, within: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Incoming::Json(v)) if v["type"] == "batch" => {
                    got.extend(v["messages"].as_array().unwrap().iter().cloned());
                }
                Some(Incoming::Json(_)) => {}
                other => panic!("after {} messages: {other:?}", got.len()),
            }
        }
        got
    }

    /// Sends one masked frame (`first`: FIN, RSV bits, opcode).
    async fn send_frame(&mut self, first: u8, payload: &[u8]) {
        let mask = [0x5a, 0x17, 0xc3, 0x08];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        self.tcp.write_all(&out).await.unwrap();
    }

    /// Sends `text` compressed, in `pieces` frames (RSV1 on the first only).
    async fn send_compressed(&mut self, text: &[u8], pieces: usize) {
        let z = deflate(text);
        let size = z.len().div_ceil(pieces);
        let chunks: Vec<&[u8]> = z.chunks(size).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let fin = if i + 1 == chunks.len() { 0x80 } else { 0 };
            let first = if i == 0 { 0x40 | 0x1 } else { 0 };
            self.send_frame(fin | first, chunk).await;
        }
    }
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&TAIL));
    out.truncate(out.len() - 4);
    out
}

/// A message from an empty window (the server takes no context over).
fn inflate(body: &[u8]) -> Vec<u8> {
    let mut input = body.to_vec();
    input.extend_from_slice(&TAIL);
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(body.len() * 20 + 1024);
    loop {
        let before = d.total_in();
        d.decompress_vec(&input[before as usize..], &mut out, FlushDecompress::Sync)
            .expect("valid deflate data");
        if d.total_in() as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
        out.reserve(out.capacity());
    }
}

fn unrationed(c: &mut danmaku::config::Config) {
    c.ration.budget_tiers = vec![(0, 100_000)];
    c.ingest.user_rate_per_s = 100_000.0;
    c.ingest.user_burst = 100_000.0;
}

/// A realistic danmaku text, Chinese and English.
fn text(i: usize) -> String {
    format!("第{i}条弹幕 主播太强了!!! gg wp, what a play #{i} 哈哈哈哈")
}

async fn post_many(t: &TestServer, room: &str, token: &str, from: usize, n: usize) {
    post_texts(t, room, token, from, n, text).await
}

/// Text that hardly compresses: fills a stalled viewer's socket as fast as
/// plain frames do.
fn noise(i: usize) -> String {
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..2000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                    [(x % 62) as usize],
            )
        })
        .collect()
}

async fn post_texts(
    t: &TestServer,
    room: &str,
    token: &str,
    from: usize,
    n: usize,
    text: fn(usize) -> String,
) {
    for i in from..from + n {
        let (s, body, _) = t
            .post_danmaku(room, token, &format!("m{i}"), &text(i))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "post {i}: {body}");
    }
}

fn seq_list(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offering_clients_get_compressed_frames_and_the_others_plain_ones() {
    let t = TestServer::start_with(|c| {
        unrationed(c);
        c.fanout.ws_compression_min_bytes = 64;
    })
    .await;
    let room = t.room("deflate");
    let mut browser = RawWs::connect(&t, &room, "", Some(BROWSER_OFFER)).await;
    let mut plain = RawWs::connect(&t, &room, "", None).await;
    let mut narrow = RawWs::connect(
        &t,
        &room,
        "",
        Some("permessage-deflate; server_max_window_bits=10"),
    )
    .await;
    let mut window_15 = RawWs::connect(
        &t,
        &room,
        "",
        Some("x-unknown, permessage-deflate; server_max_window_bits=15"),
    )
    .await;
    assert_eq!(
        browser.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    assert_eq!(plain.extensions, None, "no offer, no extension");
    assert_eq!(
        narrow.extensions, None,
        "a window under 15 bits is declined"
    );
    assert_eq!(
        window_15.extensions.as_deref(),
        Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=15"
        )
    );

    let token = t.token("u1", "Fan");
    post_many(&t, &room, &token, 0, 60).await;
    let want: Vec<u64> = (1..=60).collect();
    for (name, viewer) in [
        ("browser", &mut browser),
        ("plain", &mut plain),
        ("narrow", &mut narrow),
        ("window_15", &mut window_15),
    ] {
        let got = viewer.collect(60, WAIT).await;
        assert_eq!(seq_list(&got), want, "{name}: every message once, in order");
        assert_eq!(got[59]["text"], text(59), "{name}");
    }
    assert!(browser.compressed > 0, "the browser got compressed frames");
    assert!(window_15.compressed > 0);
    assert_eq!(
        (plain.compressed, narrow.compressed),
        (0, 0),
        "no RSV1 without the extension"
    );
    assert!(
        browser.wire_bytes * 2 < plain.wire_bytes,
        "compressed {} bytes vs plain {}",
        browser.wire_bytes,
        plain.wire_bytes
    );
    let deflated = t
        .wait_metric(r#"danmaku_ws_bytes_total{encoding="deflate"}"#, 1.0, WAIT)
        .await;
    let plain_bytes = t
        .metric(r#"danmaku_ws_bytes_total{encoding="plain"}"#)
        .await;
    assert!(
        deflated > 0.0 && plain_bytes > deflated,
        "{deflated} / {plain_bytes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_compression_off_nothing_is_negotiated() {
    let t = TestServer::start_with(|c| c.fanout.ws_compression = false).await;
    let room = t.room("off");
    let mut v = RawWs::connect(&t, &room, "", Some(BROWSER_OFFER)).await;
    assert_eq!(v.extensions, None);
    let token = t.token("u1", "Fan");
    post_many(&t, &room, &token, 0, 5).await;
    assert_eq!(seq_list(&v.collect(5, WAIT).await), vec![1, 2, 3, 4, 5]);
    assert_eq!(v.compressed, 0);
}

/// The viewer's own task sends compressed frames too: with direct writes
/// off it sends every frame, and a compressing viewer that stalls is
/// handed back by the hub, caught up by its task, then taken over again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_frames_from_the_viewers_task_too() {
    let t = TestServer::start_with(|c| {
        unrationed(c);
        c.fanout.direct_writes = false;
    })
    .await;
    let room = t.room("task");
    let mut v = RawWs::connect(&t, &room, "", Some(BROWSER_OFFER)).await;
    let token = t.token("u1", "Fan");
    for round in 0..5 {
        post_many(&t, &room, &token, round * 20, 20).await;
        let got = v.collect(20, WAIT).await;
        let from = round as u64 * 20 + 1;
        assert_eq!(seq_list(&got), (from..from + 20).collect::<Vec<u64>>());
    }
    assert!(v.compressed > 0, "compressed frames from the task");
    assert_eq!(
        t.metric(r#"danmaku_direct_writes_total{result="written"}"#)
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_compressing_viewer_is_handed_back_and_taken_over_again() {
    let t = TestServer::start_with(|c| {
        c.fanout.push_backlog_bytes = 4096;
        c.fanout.send_timeout_ms = 30_000;
        c.fanout.max_lag_frames = 10_000;
        c.ration.lite_after_ms = 600_000;
        // The stalled client answers no ping while the room fills its socket.
        c.fanout.idle_timeout_s = 600;
        // Long, hardly compressible texts fill the socket in fewer posts.
        c.ingest.max_text_chars = 2000;
        unrationed(c);
    })
    .await;
    let room = t.room("handover");
    let mut stalled = RawWs::connect_with(&t, &room, "", Some(BROWSER_OFFER), Some(2048)).await;
    let token = t.token("u1", "Fan");
    post_many(&t, &room, &token, 0, 20).await;
    let first = stalled.collect(20, WAIT).await;
    assert_eq!(seq_list(&first), (1..=20).collect::<Vec<u64>>());
    t.wait_metric(
        r#"danmaku_direct_writes_total{result="written"}"#,
        1.0,
        WAIT,
    )
    .await;

    // It reads nothing until the hub hands it back (backlog full).
    let mut total = 20;
    let detach = r#"danmaku_direct_detached_total{reason="backlog"}"#;
    while t.metric(detach).await < 1.0 {
        if total >= 40_000 {
            let m = t.metrics().await;
            let lines: Vec<&str> = m
                .lines()
                .filter(|l| {
                    l.contains("direct_") || l.contains("slow_consumer") || l.contains("ws_bytes")
                })
                .collect();
            panic!("no backlog detach after {total} messages: {lines:#?}");
        }
        let posters: Vec<_> = (0..8)
            .map(|p| post_texts(&t, &room, &token, total + p * 250, 250, noise))
            .collect();
        futures_util::future::join_all(posters).await;
        total += 8 * 250;
    }
    let rest = stalled.collect(total - 20, Duration::from_secs(120)).await;
    let mut all = first;
    all.extend(rest);
    assert_eq!(
        seq_list(&all),
        (1..=total as u64).collect::<Vec<u64>>(),
        "every message once, in order, across the hand-back"
    );

    // In step again: the hub takes it over and writes compressed frames.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = t
        .metric(r#"danmaku_direct_writes_total{result="written"}"#)
        .await;
    let compressed_before = stalled.compressed;
    post_many(&t, &room, &token, total, 40).await;
    let tail = stalled.collect(40, WAIT).await;
    assert_eq!(
        seq_list(&tail),
        (total as u64 + 1..=total as u64 + 40).collect::<Vec<u64>>()
    );
    assert!(stalled.compressed > compressed_before);
    let after = t
        .wait_metric(
            r#"danmaku_direct_writes_total{result="written"}"#,
            before + 1.0,
            WAIT,
        )
        .await;
    assert!(after > before, "the hub writes to it again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_send_is_acked_and_stored() {
    let t = TestServer::start_with(unrationed).await;
    let room = t.room("send");
    let token = t.token("u7", "Sender");
    let query = format!("?token={token}");
    let mut v = RawWs::connect(&t, &room, &query, Some(BROWSER_OFFER)).await;
    for (i, pieces) in [(1, 1), (2, 3)] {
        let send = serde_json::json!({
            "type": "send",
            "client_msg_id": format!("c{i}"),
            "text": format!("压缩的弹幕 compressed {i}"),
        });
        v.send_compressed(send.to_string().as_bytes(), pieces).await;
        let ack = loop {
            match v.next(WAIT).await {
                Some(Incoming::Json(j)) if j["type"] == "ack" => break j,
                Some(Incoming::Json(_)) => {}
                other => panic!("no ack: {other:?}"),
            }
        };
        assert_eq!(ack["client_msg_id"], format!("c{i}"), "{ack}");
        assert!(ack["id"].as_str().is_some_and(|id| !id.is_empty()), "{ack}");
    }
    // A plain message still works on the same connection.
    v.send_frame(0x81, br#"{"type":"ping"}"#).await;
    let pong = loop {
        match v.next(WAIT).await {
            Some(Incoming::Json(j)) if j["type"] == "pong" => break j,
            Some(Incoming::Json(_)) => {}
            other => panic!("no pong: {other:?}"),
        }
    };
    assert_eq!(pong["type"], "pong");
    let stored = t.wait_stored(&room, 2).await;
    assert_eq!(
        texts(&stored),
        vec!["压缩的弹幕 compressed 1", "压缩的弹幕 compressed 2"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deflate_bomb_is_closed_with_1009() {
    let t = TestServer::start().await;
    let room = t.room("bomb");
    let mut v = RawWs::connect(&t, &room, "", Some(BROWSER_OFFER)).await;
    // 16 MB of one byte: a few KB compressed.
    v.send_compressed(&vec![b' '; 16 << 20], 1).await;
    let end = loop {
        match v.next(WAIT).await {
            Some(Incoming::Json(_)) => {}
            other => break other,
        }
    };
    assert!(matches!(end, Some(Incoming::Close(1009))), "{end:?}");

    // Bad deflate data: a protocol error.
    let mut v = RawWs::connect(&t, &room, "", Some(BROWSER_OFFER)).await;
    v.send_frame(0xC1, &[0xff; 8]).await;
    let end = loop {
        match v.next(WAIT).await {
            Some(Incoming::Json(_)) => {}
            other => break other,
        }
    };
    assert!(matches!(end, Some(Incoming::Close(1002))), "{end:?}");

    // Without the extension, RSV1 is a protocol error as before.
    let mut v = RawWs::connect(&t, &room, "", None).await;
    v.send_frame(0xC1, &deflate(br#"{"type":"ping"}"#)).await;
    let end = loop {
        match v.next(WAIT).await {
            Some(Incoming::Json(_)) => {}
            other => break other,
        }
    };
    assert!(matches!(end, Some(Incoming::Close(1002))), "{end:?}");
}
