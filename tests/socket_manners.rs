//! WebSocket manners (issue 24): a send is refused once the token expired
//! (the socket stays open, `auth` renews it), a client's Close is answered
//! with a Close, and protocol errors close with 1002 / 1007 / 1009 instead of
//! a bare TCP close. Run with the hub's direct writes on (the default) and off.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A viewer token for `sub` signed with the server's secret, expiring at `exp`.
fn token_expiring_at(t: &TestServer, sub: &str, exp: u64) -> String {
    let claims = json!({"sub": sub, "name": "Late", "exp": exp});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(t.config.auth.jwt_secret.as_bytes()),
    )
    .expect("HS256 encodes")
}

fn send(id: &str, text: &str) -> Value {
    json!({"type": "send", "client_msg_id": id, "text": text})
}

/// The next reply to a send or an auth (batches skipped).
async fn reply(v: &mut WsViewer) -> Value {
    let (reply, _) = v
        .until_other(WAIT, |m| {
            matches!(m["type"].as_str(), Some("ack" | "error" | "auth_ok"))
        })
        .await;
    reply.unwrap_or_else(|| panic!("no reply; ended: {:?}", v.ended))
}

#[tokio::test]
async fn a_send_after_the_token_expired_is_refused_until_auth_renews_it() {
    let t = TestServer::start_with(|c| c.auth.jwt_leeway_s = 0).await;
    let room = t.room("late");
    let exp = unix_now() + 1;
    let token = token_expiring_at(&t, "u-late", exp);
    let mut v = t.ws(&room, &[("token", &token)]).await;
    while unix_now() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    v.send_json(&send("late-1", "after exp")).await;
    let r = reply(&mut v).await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["code"], "token_expired", "{r}");
    assert_eq!(r["client_msg_id"], "late-1", "{r}");
    // The HTTP path says the same about the same token.
    let got = t.post_danmaku(&room, &token, "late-http", "x").await;
    assert_error("HTTP post", &got, StatusCode::UNAUTHORIZED, "token_expired");
    assert_only_sentinel_stored(&t, &room).await;

    // The session is still open: renew, then the same send goes through.
    let fresh = t.token("u-late", "Late");
    v.send_json(&json!({"type": "auth", "token": fresh})).await;
    let r = reply(&mut v).await;
    assert_eq!(r["type"], "auth_ok", "{r}");
    v.send_json(&send("late-1", "after renewal")).await;
    let r = reply(&mut v).await;
    assert_eq!(r["type"], "ack", "{r}");
    let all = t.wait_stored(&room, 2).await;
    assert_eq!(texts(&all), vec!["sentinel", "after renewal"]);
}

#[tokio::test]
async fn sends_keep_the_http_leeway_after_exp() {
    // Expired 5 s ago, within the default 30 s leeway: accepted at connect
    // and on send, as an HTTP post would be.
    let t = TestServer::start().await;
    assert!(t.config.auth.jwt_leeway_s >= 10);
    let room = t.room("leeway");
    let token = token_expiring_at(&t, "u-skew", unix_now() - 5);
    let mut v = t.ws(&room, &[("token", &token)]).await;
    v.send_json(&send("skew-1", "within leeway")).await;
    let r = reply(&mut v).await;
    assert_eq!(r["type"], "ack", "{r}");
}

// ---- the close handshake and protocol errors ----------------------------------

async fn server(direct_writes: bool) -> TestServer {
    TestServer::start_with(|c| c.fanout.direct_writes = direct_writes).await
}

/// Connects and reads the hello.
async fn connect(t: &TestServer, room: &str) -> Ws {
    let url = t.ws_url(room, &[]);
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("WebSocket handshake");
    match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => assert!(t.as_str().contains("\"hello\""), "{t}"),
        other => panic!("no hello: {other:?}"),
    }
    ws
}

/// Reads until the server's close: its code and reason, or how the stream
/// ended without one (a client would see 1006). Text frames before it are
/// whole JSON.
async fn server_close(ws: &mut Ws) -> Result<Option<(u16, String)>, String> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Err(_) => return Err("no close in time".into()),
            Ok(Some(Ok(Message::Close(f)))) => {
                return Ok(f.map(|f| (u16::from(f.code), f.reason.to_string())))
            }
            Ok(Some(Ok(Message::Text(t)))) => {
                serde_json::from_str::<Value>(t.as_str()).expect("whole JSON frames");
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => return Err("stream ended".into()),
        }
    }
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close() {
    for direct_writes in [true, false] {
        let t = server(direct_writes).await;
        let room = t.room("bye");
        for code in [1000u16, 4001] {
            let mut ws = connect(&t, &room).await;
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: "bye".into(),
            };
            ws.close(Some(frame)).await.expect("close sent");
            let end = server_close(&mut ws).await;
            assert_eq!(
                end,
                Ok(Some((code, "bye".into()))),
                "direct_writes={direct_writes}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_while_the_hub_writes_is_the_last_frame() {
    let t = server(true).await;
    let room = t.room("busy");
    let token = t.token("u1", "Busy");
    let mut ws = connect(&t, &room).await;
    let posts = {
        let (http, url) = (t.http.clone(), t.url(&format!("/v1/rooms/{room}/danmaku")));
        tokio::spawn(async move {
            for i in 0..200 {
                let body = json!({"client_msg_id": format!("b{i}"), "text": "busy"});
                let _ = http.post(&url).bearer_auth(&token).json(&body).send().await;
            }
        })
    };
    // Wait until frames flow, then close in the middle of them.
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("\"batch\"") => break,
            Ok(Some(Ok(_))) => {}
            other => panic!("no batch: {other:?}"),
        }
    }
    ws.close(None).await.expect("close sent");
    // An empty close is echoed empty (RFC 6455 §5.5.1); then nothing more.
    assert_eq!(server_close(&mut ws).await, Ok(None));
    match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(None) | Ok(Some(Err(_))) => {}
        other => panic!("something after the close: {other:?}"),
    }
    posts.abort();
}

/// A masked client frame: FIN, `opcode` (with `rsv` bits), `payload`.
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut out = vec![first, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Writes `bytes` on a fresh session's socket; returns how the server ended it.
async fn after_raw(t: &TestServer, bytes: &[u8]) -> Result<Option<(u16, String)>, String> {
    let mut ws = connect(t, &t.room("raw")).await;
    let tcp = match ws.get_mut() {
        MaybeTlsStream::Plain(tcp) => tcp,
        _ => unreachable!("plain ws://"),
    };
    tcp.write_all(bytes).await.expect("raw write");
    server_close(&mut ws).await
}

fn code_of(end: &Result<Option<(u16, String)>, String>) -> Option<u16> {
    end.as_ref().ok().cloned().flatten().map(|(code, _)| code)
}

#[tokio::test]
async fn protocol_errors_close_with_1002_and_bad_utf8_with_1007() {
    let ping = br#"{"type":"ping"}"#;
    let unmasked = [&[0x81u8, ping.len() as u8][..], ping].concat();
    let cases: [(&str, Vec<u8>, u16); 6] = [
        ("reserved bit", client_frame(0x80 | 0x40 | 0x1, ping), 1002),
        ("unmasked client frame", unmasked, 1002),
        ("reserved opcode", client_frame(0x80 | 0x3, ping), 1002),
        (
            "continuation without a start",
            client_frame(0x80, ping),
            1002,
        ),
        (
            "invalid UTF-8 text",
            client_frame(0x81, b"{\"x\":\"\xff\xfe\"}"),
            1007,
        ),
        // A frame header past the reader's limit (64 KiB), no payload sent.
        (
            "oversized frame",
            [&[0x81u8, 0xFF][..], &(70_000u64).to_be_bytes(), &[0; 4]].concat(),
            1009,
        ),
    ];
    for direct_writes in [true, false] {
        let t = server(direct_writes).await;
        for (what, bytes, code) in &cases {
            let end = after_raw(&t, bytes).await;
            assert_eq!(
                code_of(&end),
                Some(*code),
                "{what} (direct_writes={direct_writes}): {end:?}"
            );
        }
        // The server is fine and still answers a well-formed session.
        let mut ws = connect(&t, &t.room("after")).await;
        ws.send(Message::Text(r#"{"type":"ping"}"#.into()))
            .await
            .unwrap();
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), r#"{"type":"pong"}"#),
            other => panic!("no pong: {other:?}"),
        }
    }
}
