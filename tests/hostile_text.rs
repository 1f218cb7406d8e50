//! Hostile input, text and token tricks (issue 24): dodges of a blocked word
//! (invisible characters, fullwidth, look-alikes, mathematical letters,
//! accents), invisible-only and bidi-override text, dedup keys that two
//! users could share, duplicate JSON keys in events, and viewer tokens with
//! control characters, a `crit` header or no `Bearer` scheme. Every refused
//! request stores nothing (a sentinel post ends each test), and the requests
//! that look alike but are fine still pass.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const ADMIN: &str = "test-admin-token-0123456789";

async fn hostile_server() -> TestServer {
    TestServer::start_with(|c| {
        c.ingest.blocked_words = vec!["spam".into(), "istanbul".into()];
        c.auth.admin_token = ADMIN.into();
    })
    .await
}

fn body(client_msg_id: &str, text: &str) -> Vec<u8> {
    json!({"client_msg_id": client_msg_id, "text": text})
        .to_string()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dodges_of_blocked_words_invisible_and_bidi_text_are_refused() {
    let ts = hostile_server().await;
    let room = ts.room("r1");
    let room = room.as_str();
    // A room's own word folds the same way as the configured ones.
    let res = ts
        .http
        .put(ts.url(&format!("/v1/admin/rooms/{room}/settings")))
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(json!({"blocked_words": ["Spoiler"]}).to_string())
        .send()
        .await
        .expect("PUT settings");
    assert_eq!(res.status(), StatusCode::OK);
    let auth = format!("Bearer {}", ts.token("u1", "Alice"));

    let cases: &[(&str, &str, &str)] = &[
        ("zero-width space", "buy s\u{200b}pam", "blocked_content"),
        (
            "zero-width joiners",
            "s\u{200c}p\u{200d}am",
            "blocked_content",
        ),
        ("soft hyphen", "s\u{ad}pam", "blocked_content"),
        ("word joiner", "sp\u{2060}am", "blocked_content"),
        ("variation selector", "spa\u{fe0f}m", "blocked_content"),
        ("fullwidth", "ｓｐａｍ", "blocked_content"),
        ("fullwidth capitals", "ＳＰＡＭ", "blocked_content"),
        ("Cyrillic look-alikes", "ѕраm", "blocked_content"),
        ("Greek rho", "ѕρam", "blocked_content"),
        ("mathematical bold", "𝐬𝐩𝐚𝐦", "blocked_content"),
        ("mathematical script", "𝓈𝓅𝒶𝓂", "blocked_content"),
        ("circled letters", "ⓢⓟⓐⓜ", "blocked_content"),
        ("combining accents", "s\u{301}pa\u{308}m", "blocked_content"),
        ("dotted capital I", "İstanbul", "blocked_content"),
        ("room word in Cyrillic", "ѕроilеr alert", "blocked_content"),
        ("zero-width only", "\u{200b}\u{200b}", "empty_text"),
        ("Hangul filler", "\u{3164}", "empty_text"),
        ("halfwidth Hangul filler", "\u{ffa0}", "empty_text"),
        ("Hangul jamo fillers", "\u{115f}\u{1160}", "empty_text"),
        ("braille blank", "\u{2800}\u{2800}\u{2800}", "empty_text"),
        (
            "mixed invisible",
            " \u{200b}\u{3000}\u{feff}\u{2800} ",
            "empty_text",
        ),
        ("right-to-left override", "\u{202e}olleh", "bad_text"),
        ("left-to-right embedding", "a\u{202a}b\u{202c}", "bad_text"),
        ("isolate", "a\u{2067}b\u{2069}", "bad_text"),
        ("override alone", "\u{202d}", "bad_text"),
    ];
    for (i, (what, text, code)) in cases.iter().enumerate() {
        let got = ts
            .post_danmaku_raw(room, Some(&auth), body(&format!("c{i}"), text))
            .await;
        assert_error(what, &got, StatusCode::BAD_REQUEST, code);
    }
    assert_only_sentinel_stored(&ts, room).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_text_in_any_script_is_stored_as_sent() {
    let ts = hostile_server().await;
    let room = ts.room("r1");
    let room = room.as_str();
    let tok = ts.token("u1", "Alice");
    let texts = [
        "弹幕来了 666",
        "日本語のコメント、ありがとう！",
        "한국어 채팅 바봉",
        "🎉🎉 gg 👍🏽",
        "👨\u{200d}👩\u{200d}👧 ❤\u{fe0f}",
        "Straße café naïve",
        "שלום \u{200f}123",
        "Привет всем",
        "a spa market",
        "x\u{200b}y",
    ];
    for (i, text) in texts.iter().enumerate() {
        let (status, body, _) = ts.post_danmaku(room, &tok, &format!("c{i}"), text).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{text:?}: {body}");
    }
    // Folding is only for matching: the text is stored as it was sent.
    let stored = ts.wait_stored(room, texts.len()).await;
    assert_eq!(texts_of(&stored), texts.map(String::from).to_vec());
}

fn texts_of(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["text"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_keys_of_two_users_do_not_collide() {
    let ts = TestServer::start().await;
    let room = ts.room("r1");
    let room = room.as_str();
    // `alice:x` + `m1` and `alice` + `x:m1` used to be one key: the second
    // post was answered as a retry of the first and never stored.
    let first = ts
        .post_danmaku(room, &ts.token("alice:x", "A"), "m1", "hello")
        .await;
    let second = ts
        .post_danmaku(room, &ts.token("alice", "B"), "x:m1", "hello")
        .await;
    assert_eq!(first.0, StatusCode::ACCEPTED, "{}", first.1);
    assert_eq!(second.0, StatusCode::ACCEPTED, "{}", second.1);
    assert!(
        second.2.get("idempotent-replayed").is_none(),
        "not a replay"
    );
    let (a, b) = (first.1["id"].as_str(), second.1["id"].as_str());
    assert!(a.is_some() && a != b, "two messages: {a:?} {b:?}");
    let stored = ts.wait_stored(room, 2).await;
    let users: Vec<&str> = stored
        .iter()
        .map(|m| m["user"]["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids(&stored), vec![a.unwrap(), b.unwrap()]);
    assert_eq!(users, vec!["alice:x", "alice"]);
}

/// A signed single event with the raw `body` (legacy signature form of
/// today's main; with signature v2 this is `ts.sign_event(room, …)`).
async fn post_raw_event(ts: &TestServer, room: &str, key: &str, body: &str) -> Response {
    let t = unix_now().to_string();
    let sig = ts.sign_event(room, &t, key, body.as_bytes());
    ts.post_event_raw(room, Some(&t), Some(&sig), Some(key), body.into())
        .await
}

/// A signed `events:batch` with the raw `body` (see [`post_raw_event`]).
async fn post_raw_batch(ts: &TestServer, room: &str, body: &str) -> Response {
    let t = unix_now().to_string();
    let sig = TestServer::sign_batch(ts.gift_secret(), room, &t, body.as_bytes());
    let res = ts
        .http
        .post(ts.url(&format!("/v1/rooms/{room}/events:batch")))
        .header("content-type", "application/json")
        .header("x-timestamp", t)
        .header("x-signature", sig)
        .body(body.to_string())
        .send()
        .await
        .expect("POST batch");
    into_parts(res).await
}

type Response = (StatusCode, Value, reqwest::header::HeaderMap);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_with_duplicate_keys_are_refused() {
    let ts = TestServer::start().await;
    let room = ts.room("r1");
    let room = room.as_str();
    let user = r#""user":{"id":"shop","name":"Shop"}"#;
    // Last-wins would store a whitelist system notice.
    let body = format!(r#"{{"kind":"gift","kind":"system",{user},"text":"free gifts!"}}"#);
    let got = post_raw_event(&ts, room, "k1", &body).await;
    assert_error("kind twice", &got, StatusCode::BAD_REQUEST, "invalid_body");
    let message = got.1["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains(r#"duplicate key "kind""#), "{message}");
    for (i, body) in [
        // The same key spelled with an escape.
        format!(r#"{{"kind":"gift","\u006bind":"system",{user},"text":"x"}}"#),
        // Deeper down.
        r#"{"kind":"gift","user":{"id":"shop","id":"admin","name":"S"},"gift":{"gift_id":"rose","count":1,"value":1}}"#
            .to_string(),
        format!(
            r#"{{"kind":"gift",{user},"gift":{{"gift_id":"rose","count":1,"count":1000,"value":1}}}}"#
        ),
    ]
    .iter()
    .enumerate()
    {
        let got = post_raw_event(&ts, room, &format!("k{}", i + 2), body).await;
        assert_error(body, &got, StatusCode::BAD_REQUEST, "invalid_body");
    }
    let batch = format!(
        r#"{{"events":[{{"idempotency_key":"b1","kind":"gift","kind":"system",{user},"text":"x"}}]}}"#
    );
    let got = post_raw_batch(&ts, room, &batch).await;
    assert_error("batch item", &got, StatusCode::BAD_REQUEST, "invalid_body");
    let got = post_raw_batch(
        &ts,
        room,
        &format!(r#"{{"events":[],"events":[{{{user}}}]}}"#),
    )
    .await;
    assert_error(
        "events twice",
        &got,
        StatusCode::BAD_REQUEST,
        "invalid_body",
    );
    assert_only_sentinel_stored(&ts, room).await;
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token signed with the server's secret, with any header and claims.
fn token_with(ts: &TestServer, header: &Value, claims: &Value) -> String {
    let head = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let key = jsonwebtoken::EncodingKey::from_secret(ts.config.auth.jwt_secret.as_bytes());
    let sig =
        jsonwebtoken::crypto::sign(head.as_bytes(), &key, jsonwebtoken::Algorithm::HS256).unwrap();
    format!("{head}.{sig}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loose_viewer_tokens_are_401_and_store_nothing() {
    let ts = TestServer::start().await;
    let room = ts.room("r1");
    let room = room.as_str();
    let exp = unix_now() + 600;
    let hs256 = json!({"alg": "HS256", "typ": "JWT"});
    let claims = |sub: &str, name: &str| json!({"sub": sub, "name": name, "exp": exp});
    let cases = [
        (
            "bell in name",
            token_with(&ts, &hs256, &claims("u1", "a\u{7}b")),
        ),
        (
            "escape in name",
            token_with(&ts, &hs256, &claims("u1", "\u{1b}[31mred")),
        ),
        (
            "RLO in name",
            token_with(&ts, &hs256, &claims("u1", "\u{202e}nimda")),
        ),
        (
            "isolate in name",
            token_with(&ts, &hs256, &claims("u1", "a\u{2066}b")),
        ),
        (
            "newline in sub",
            token_with(&ts, &hs256, &claims("u1\nu2", "A")),
        ),
        (
            "RLO in sub",
            token_with(&ts, &hs256, &claims("u\u{202e}1", "A")),
        ),
        (
            "crit header",
            token_with(
                &ts,
                &json!({"alg": "HS256", "typ": "JWT", "crit": ["http://example.com/must"], "http://example.com/must": true}),
                &claims("u1", "A"),
            ),
        ),
    ];
    for (what, token) in &cases {
        let got = ts
            .post_danmaku_raw(room, Some(&format!("Bearer {token}")), body("c1", "hi"))
            .await;
        assert_error(what, &got, StatusCode::UNAUTHORIZED, "invalid_token");
    }
    // The right token without the scheme, or under another scheme.
    let good = ts.token("u1", "Alice");
    for header in [
        good.clone(),
        format!("Token {good}"),
        format!("Bearer{good}"),
    ] {
        let got = ts
            .post_danmaku_raw(room, Some(&header), body("c1", "hi"))
            .await;
        assert_error(&header, &got, StatusCode::UNAUTHORIZED, "invalid_token");
    }
    // A WebSocket's Authorization header must say Bearer too.
    let res = ts
        .http
        .get(ts.url(&format!("/v1/rooms/{room}/ws")))
        .header("authorization", &good)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .expect("GET ws");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_only_sentinel_stored(&ts, room).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_in_any_case_and_bare_tokens_where_they_belong_still_work() {
    let ts = TestServer::start().await;
    let room = ts.room("r1");
    let room = room.as_str();
    let tok = ts.token("u1", "安娜 🌸");
    for (i, scheme) in ["Bearer", "bearer", "BEARER"].iter().enumerate() {
        let got = ts
            .post_danmaku_raw(
                room,
                Some(&format!("{scheme} {tok}")),
                body(&format!("h{i}"), "hi"),
            )
            .await;
        assert_eq!(got.0, StatusCode::ACCEPTED, "{scheme}: {}", got.1);
    }
    // `?token=` carries the bare token; the `auth` message too.
    let mut v = ts.ws(room, &[("token", &tok)]).await;
    v.send_json(&json!({"type": "send", "client_msg_id": "w1", "text": "hi"}))
        .await;
    let (ack, _) = v.until_other(WAIT, is_reply).await;
    assert_eq!(ack.expect("a reply")["type"], "ack");
    let mut v = ts.ws(room, &[]).await;
    v.send_json(&json!({"type": "auth", "token": tok})).await;
    let (ok, _) = v.until_other(WAIT, is_reply).await;
    assert_eq!(ok.expect("a reply")["type"], "auth_ok");
    v.send_json(&json!({"type": "send", "client_msg_id": "w2", "text": "hi"}))
        .await;
    let (ack, _) = v.until_other(WAIT, is_reply).await;
    assert_eq!(ack.expect("a reply")["type"], "ack");
    ts.wait_stored(room, 5).await;
}

/// An answer to a `send` or an `auth` (not a batch, hello or online count).
fn is_reply(m: &Value) -> bool {
    ["ack", "auth_ok", "error"].contains(&m["type"].as_str().unwrap_or(""))
}
