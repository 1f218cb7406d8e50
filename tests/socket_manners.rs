//! WebSocket manners (issue 24): a send is refused once the token expired
//! (the socket stays open, `auth` renews it).

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

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
