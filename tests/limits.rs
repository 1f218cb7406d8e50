//! Limits that protect a front: connections per node and per address,
//! viewer connections per address, request head and body deadlines
//! (slowloris), head size, WebSocket message size, open rooms per node and
//! the Origin allow-list of the stream transports. Each is crossed and
//! answered with its documented error (README, "Limits").

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

#[tokio::test]
async fn viewer_connections_per_address_are_capped() {
    let t = TestServer::start_with(|c| c.server.max_viewer_connections_per_ip = 3).await;
    let room = t.room("cap");
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(t.ws(&room, &[]).await);
    }
    match tokio_tungstenite::connect_async(t.ws_url(&room, &[])).await {
        Err(WsError::Http(res)) => {
            assert_eq!(res.status().as_u16(), 429);
            let body: serde_json::Value =
                serde_json::from_slice(res.body().as_deref().unwrap_or(b"{}")).unwrap();
            assert_eq!(body["error"]["code"], "too_many_connections");
        }
        other => panic!("a 4th stream from one address must be refused: {other:?}"),
    }
    // Long-polls count too.
    let (s, b) = t.poll(&room, None, None, 0).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{b}");
    // Closing one frees its slot.
    open.pop().unwrap().close().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if tokio_tungstenite::connect_async(t.ws_url(&room, &[]))
            .await
            .is_ok()
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot not freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn stream_origins_outside_the_allow_list_are_refused() {
    let t = TestServer::start_with(|c| {
        c.server.allowed_origins = vec!["https://live.example".into()];
    })
    .await;
    let room = t.room("origin");
    let mut req = t.ws_url(&room, &[]).into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(WsError::Http(res)) => assert_eq!(res.status().as_u16(), 403),
        other => panic!("foreign origin must be refused: {other:?}"),
    }
    let mut req = t.ws_url(&room, &[]).into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "https://live.example".parse().unwrap());
    assert!(
        tokio_tungstenite::connect_async(req).await.is_ok(),
        "allowed origin"
    );
    let res = t
        .stream_http
        .get(t.url(&format!("/v1/rooms/{room}/sse")))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    let (s, body, _) = into_parts(res).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "origin_not_allowed");
}

fn server_addr(t: &TestServer) -> SocketAddr {
    t.url("").trim_start_matches("http://").parse().unwrap()
}

/// A raw connection to the server from `from` (any 127.0.0.0/8 address).
async fn connect_from(t: &TestServer, from: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{from}:0").parse().unwrap())
        .expect("bind a loopback source address");
    socket.connect(server_addr(t)).await.expect("connect")
}

/// What the server sends until it closes the connection or `within` passes
/// (then `closed` is false).
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status and JSON error code of a raw HTTP/1.1 answer.
fn status_and_code(answer: &str) -> (u16, String) {
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let code = serde_json::from_str::<serde_json::Value>(body)
        .map(|v| v["error"]["code"].as_str().unwrap_or("").to_string())
        .unwrap_or_default();
    (status, code)
}

#[tokio::test]
async fn request_heads_sent_byte_by_byte_are_cut_at_the_deadline() {
    let t = TestServer::start_with(|c| c.server.header_read_timeout_ms = 500).await;
    let stream = connect_from(&t, "127.0.0.1").await;
    let (mut rd, mut wr) = stream.into_split();
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        started.elapsed()
    });
    // A slowloris: a header line every 100 ms, the head never finished.
    let _ = wr.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n").await;
    while !reader.is_finished() && started.elapsed() < Duration::from_secs(5) {
        let _ = wr.write_all(b"x-trickle: 1\r\n").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reader.is_finished(),
        "a trickled head must not hold the connection"
    );
    let closed_after = reader.await.unwrap();
    assert!(
        closed_after >= Duration::from_millis(400) && closed_after < Duration::from_secs(3),
        "closed after {closed_after:?}, deadline 500 ms"
    );
    t.healthz_ok().await;
    assert!(
        t.metric("danmaku_http_connection_errors_total{kind=\"header_timeout\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let t = TestServer::start_with(|c| c.server.header_read_timeout_ms = 500).await;
    let mut stream = connect_from(&t, "127.0.0.1").await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let answered = Instant::now();
    let (_, closed) = read_to_close(&mut stream, Duration::from_secs(5)).await;
    let idle = answered.elapsed();
    assert!(closed, "an idle keep-alive connection must be closed");
    assert!(
        idle >= Duration::from_millis(400) && idle < Duration::from_secs(3),
        "closed after {idle:?} idle, deadline 500 ms"
    );
}

#[tokio::test]
async fn oversized_request_heads_get_431() {
    let t = TestServer::start_with(|c| c.server.max_header_bytes = 2048).await;
    let mut stream = connect_from(&t, "127.0.0.1").await;
    let big = "a".repeat(4000);
    stream
        .write_all(format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (answer, closed) = read_to_close(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert!(closed);
    // A head within the limit is served.
    t.healthz_ok().await;
}

#[tokio::test]
async fn connections_past_the_node_cap_get_503() {
    let t = TestServer::start_with(|c| c.server.max_connections = 3).await;
    let mut held = Vec::new();
    let refused = loop {
        let mut stream = connect_from(&t, "127.0.0.1").await;
        // An accepted connection waits for a request: nothing to read.
        let (answer, closed) = read_to_close(&mut stream, Duration::from_millis(300)).await;
        if closed {
            break answer;
        }
        held.push(stream);
        assert!(held.len() <= 3, "a 4th connection must be refused");
    };
    assert_eq!(held.len(), 3, "the cap is 3 connections");
    assert_eq!(
        status_and_code(&refused),
        (503, "too_many_connections".into()),
        "{refused}"
    );
    // A freed slot is usable again.
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (s, _, _) = t.get("/healthz").await;
        if s == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "slot not freed: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
    assert!(
        t.metric("danmaku_http_connections_refused_total{cap=\"node\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn connections_past_the_address_cap_get_429() {
    let t = TestServer::start_with(|c| c.server.max_connections_per_ip = 2).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect_from(&t, "127.0.0.3").await;
        let (answer, closed) = read_to_close(&mut stream, Duration::from_millis(300)).await;
        assert!(!closed, "within the cap: {answer:?}");
        held.push(stream);
    }
    let mut third = connect_from(&t, "127.0.0.3").await;
    let (answer, closed) = read_to_close(&mut third, Duration::from_secs(5)).await;
    assert!(closed);
    assert_eq!(
        status_and_code(&answer),
        (429, "too_many_connections".into()),
        "{answer}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("retry-after:"),
        "{answer}"
    );
    // Another address is not affected.
    let mut other = connect_from(&t, "127.0.0.4").await;
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_to_close(&mut other, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}

#[tokio::test]
async fn trickled_request_bodies_get_408() {
    let t = TestServer::start_with(|c| c.server.body_read_timeout_ms = 500).await;
    let room = t.room("slowbody");
    let token = t.token("u1", "slow");
    let mut stream = connect_from(&t, "127.0.0.1").await;
    let head = format!(
        "POST /v1/rooms/{room}/danmaku HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: 60\r\n\r\n{{\"text\""
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (answer, _) = read_to_close(&mut stream, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        status_and_code(&answer),
        (408, "body_timeout".into()),
        "{answer}"
    );
    assert!(t.read_all(&room).await.is_empty(), "nothing stored");
}

#[tokio::test]
async fn websocket_messages_over_the_size_limit_close_with_1009() {
    let t = TestServer::start().await;
    let room = t.room("bigmsg");
    let token = t.token("u1", "big");
    let mut v = t.ws(&room, &[("token", &token)]).await;
    let text = "x".repeat(5000);
    v.send_json(&json!({"type": "send", "client_msg_id": "big-1", "text": text}))
        .await;
    let (end, _) = v.until_closed(Duration::from_secs(5)).await;
    match end {
        WsEnd::Closed(Some((1009, reason))) => assert!(reason.contains("4096"), "{reason}"),
        other => panic!("expected close 1009, got {other:?}"),
    }
    assert!(t.read_all(&room).await.is_empty(), "nothing stored");
}

#[tokio::test]
async fn open_rooms_per_node_are_capped() {
    let t = TestServer::start_with(|c| c.fanout.max_rooms = 2).await;
    let _a = t.ws(&t.room("a"), &[]).await;
    let _b = t.ws(&t.room("b"), &[]).await;
    match tokio_tungstenite::connect_async(t.ws_url(&t.room("c"), &[])).await {
        Err(WsError::Http(res)) => {
            assert_eq!(res.status().as_u16(), 503);
            let body: serde_json::Value =
                serde_json::from_slice(res.body().as_deref().unwrap_or(b"{}")).unwrap();
            assert_eq!(body["error"]["code"], "too_many_rooms");
        }
        other => panic!("a 3rd room must be refused: {other:?}"),
    }
    // Rooms already open still take viewers.
    let _a2 = t.ws(&t.room("a"), &[]).await;
}

#[tokio::test]
async fn long_poll_holds_are_capped_at_max_wait() {
    let t = TestServer::start_with(|c| c.poll.max_wait_ms = 500).await;
    let room = t.room("pollcap");
    let started = Instant::now();
    // Asks for 20 s; the node holds at most 500 ms, then answers empty.
    let (s, body) = t.poll(&room, Some(0), None, 20_000).await;
    let held = started.elapsed();
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(0), "{body}");
    assert!(
        held >= Duration::from_millis(450) && held < Duration::from_secs(5),
        "held {held:?}, cap 500 ms"
    );
}
