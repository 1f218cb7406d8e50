//! Gift-backend signature v2 (DESIGN.md §4, issue 24): the MAC covers the
//! timestamp, method, request path (so the room), Idempotency-Key and body,
//! so a captured request cannot be replayed into another room or under
//! another key; the legacy `sha256=` form is refused unless
//! `auth.accept_legacy_signatures` is set. The shared test vectors
//! (`tests/vectors/gift_signature_v2.json`, made with Python's hmac) pin the
//! signer and the verifier.

mod common;

use common::*;
use danmaku::auth::{
    gift_canonical_v2, sign_gift_request, sign_gift_request_legacy, AuthFailure, Authenticator,
    GiftRequest,
};
use danmaku::config::Config;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};

const VECTORS: &str = include_str!("vectors/gift_signature_v2.json");

/// A signed request as a gift backend (or an attacker replaying it) sends it.
async fn send(
    ts: &TestServer,
    path: &str,
    timestamp: &str,
    signature: &str,
    key: Option<&str>,
    body: &[u8],
) -> (StatusCode, Value, HeaderMap) {
    let mut req = ts
        .http
        .post(ts.url(path))
        .header("content-type", "application/json")
        .header("x-timestamp", timestamp)
        .header("x-signature", signature)
        .body(body.to_vec());
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    into_parts(req.send().await.expect("POST")).await
}

/// After the refusals: a sentinel reaches `room`, and the room holds exactly
/// `expected` before it (so nothing refused was stored).
async fn assert_room_holds(ts: &TestServer, room: &str, expected: &[String]) {
    let sentinel = sentinel(ts, room).await;
    let mut want = expected.to_vec();
    want.push(sentinel);
    let got = ids(&ts.read_all(room).await);
    assert_eq!(got, want, "room {room}");
}

#[test]
fn vectors_match_the_server_signer_and_verifier() {
    let doc: Value = serde_json::from_str(VECTORS).expect("vectors are JSON");
    let cases = doc["cases"].as_array().expect("cases");
    assert!(cases.len() >= 4);
    for c in cases {
        let s = |k: &str| c[k].as_str().unwrap_or_else(|| panic!("{k}"));
        let name = s("name");
        let (ts, method, path, key, body) = (
            s("timestamp"),
            s("method"),
            s("path"),
            s("idempotency_key"),
            s("body").as_bytes(),
        );
        assert_eq!(
            gift_canonical_v2(ts, method, path, key, body),
            s("canonical").as_bytes(),
            "{name}: canonical"
        );
        let sig = sign_gift_request(s("secret"), ts, method, path, key, body);
        assert_eq!(sig, s("signature"), "{name}: signature");

        let mut config = Config::embedded().auth;
        config.gift_secrets = vec!["another-secret".into(), s("secret").into()];
        let auth = Authenticator::new(&config);
        let now: u64 = ts.parse().unwrap();
        let req = GiftRequest {
            timestamp: Some(ts),
            signature: Some(s("signature")),
            method,
            path,
            idempotency_key: key,
            body,
        };
        assert_eq!(auth.gift_signature(&req, now), Ok(()), "{name}");
        // Upper-case hex is the same MAC.
        let upper = format!("v2={}", s("signature")[3..].to_uppercase());
        let req_upper = GiftRequest {
            signature: Some(&upper),
            ..req
        };
        assert_eq!(auth.gift_signature(&req_upper, now), Ok(()), "{name}");
        let other_room = path.replacen("/rooms/", "/rooms/x", 1);
        for (what, other) in [
            (
                "room",
                GiftRequest {
                    path: &other_room,
                    ..req
                },
            ),
            (
                "key",
                GiftRequest {
                    idempotency_key: "other",
                    ..req
                },
            ),
            (
                "method",
                GiftRequest {
                    method: "PUT",
                    ..req
                },
            ),
            ("body", GiftRequest { body: b"{}", ..req }),
        ] {
            assert_eq!(
                auth.gift_signature(&other, now),
                Err(AuthFailure::BadSignature),
                "{name}: another {what}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_signed_gift_is_accepted_and_the_query_string_is_not_signed() {
    let ts = TestServer::start().await;
    let room = ts.room("r1");
    let body = gift_body("u9", "Bob", "rocket", 3, 100)
        .to_string()
        .into_bytes();
    let now = unix_now().to_string();
    let sig = ts.sign_event(&room, &now, "order-1", &body);
    let path = format!("/v1/rooms/{room}/events");
    let got = send(&ts, &path, &now, &sig, Some("order-1"), &body).await;
    assert_eq!(got.0, StatusCode::ACCEPTED, "{}", got.1);
    let first = got.1["id"].as_str().expect("id").to_string();
    // The path signed is the path without the query string.
    let sig = ts.sign_event(&room, &now, "order-2", &body);
    let got = send(
        &ts,
        &format!("{path}?via=proxy"),
        &now,
        &sig,
        Some("order-2"),
        &body,
    )
    .await;
    assert_eq!(got.0, StatusCode::ACCEPTED, "{}", got.1);
    let second = got.1["id"].as_str().expect("id").to_string();
    let stored = ts.wait_stored(&room, 2).await;
    assert_eq!(ids(&stored), vec![first, second]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_gift_replayed_into_another_room_is_refused() {
    let ts = TestServer::start().await;
    let (a, b) = (ts.room("a"), ts.room("b"));
    let body = gift_body("u9", "Bob", "rocket", 3, 100)
        .to_string()
        .into_bytes();
    let now = unix_now().to_string();
    let sig = ts.sign_event(&a, &now, "order-1", &body);
    let got = send(
        &ts,
        &format!("/v1/rooms/{a}/events"),
        &now,
        &sig,
        Some("order-1"),
        &body,
    )
    .await;
    assert_eq!(got.0, StatusCode::ACCEPTED, "{}", got.1);
    let id = got.1["id"].as_str().expect("id").to_string();

    // The same bytes, headers and key, sent to room b.
    let got = send(
        &ts,
        &format!("/v1/rooms/{b}/events"),
        &now,
        &sig,
        Some("order-1"),
        &body,
    )
    .await;
    assert_error(
        "replay into room b",
        &got,
        StatusCode::UNAUTHORIZED,
        "bad_signature",
    );
    assert_room_holds(&ts, &b, &[]).await;
    assert_room_holds(&ts, &a, &[id]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_gift_under_another_idempotency_key_is_refused() {
    let ts = TestServer::start().await;
    let room = ts.room("r1");
    let path = format!("/v1/rooms/{room}/events");
    let body = gift_body("u9", "Bob", "rocket", 3, 100)
        .to_string()
        .into_bytes();
    let now = unix_now().to_string();
    let sig = ts.sign_event(&room, &now, "order-1", &body);
    let got = send(&ts, &path, &now, &sig, Some("order-1"), &body).await;
    assert_eq!(got.0, StatusCode::ACCEPTED, "{}", got.1);
    let id = got.1["id"].as_str().expect("id").to_string();

    for other in ["order-2", "ORDER-1", "order-1x"] {
        let got = send(&ts, &path, &now, &sig, Some(other), &body).await;
        assert_error(other, &got, StatusCode::UNAUTHORIZED, "bad_signature");
    }
    // The genuine retry is still a replay of the first answer.
    let got = send(&ts, &path, &now, &sig, Some("order-1"), &body).await;
    assert_eq!(got.0, StatusCode::ACCEPTED, "{}", got.1);
    assert_eq!(got.1["id"].as_str(), Some(id.as_str()));
    assert_room_holds(&ts, &room, &[id]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_signature_is_refused_by_default() {
    let ts = TestServer::start().await;
    assert!(!ts.config.auth.accept_legacy_signatures);
    let room = ts.room("r1");
    let body = gift_body("u9", "Bob", "rocket", 3, 100)
        .to_string()
        .into_bytes();
    let now = unix_now().to_string();
    let legacy = sign_gift_request_legacy(ts.gift_secret(), &now, &body);
    let path = format!("/v1/rooms/{room}/events");
    let got = send(&ts, &path, &now, &legacy, Some("order-1"), &body).await;
    assert_error("legacy", &got, StatusCode::UNAUTHORIZED, "bad_signature");
    let message = got.1["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("legacy"), "{message}");
    assert_room_holds(&ts, &room, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_signature_is_accepted_when_configured() {
    let ts = TestServer::start_with(|c| c.auth.accept_legacy_signatures = true).await;
    let room = ts.room("r1");
    let path = format!("/v1/rooms/{room}/events");
    let body = gift_body("u9", "Bob", "rocket", 3, 100)
        .to_string()
        .into_bytes();
    let now = unix_now().to_string();
    let legacy = sign_gift_request_legacy(ts.gift_secret(), &now, &body);
    let got = send(&ts, &path, &now, &legacy, Some("order-1"), &body).await;
    assert_eq!(got.0, StatusCode::ACCEPTED, "{}", got.1);
    // v2 still works beside it; a wrong legacy secret does not.
    let v2 = ts.sign_event(&room, &now, "order-2", &body);
    let got = send(&ts, &path, &now, &v2, Some("order-2"), &body).await;
    assert_eq!(got.0, StatusCode::ACCEPTED, "{}", got.1);
    let wrong = sign_gift_request_legacy("not-the-secret", &now, &body);
    let got = send(&ts, &path, &now, &wrong, Some("order-3"), &body).await;
    assert_error(
        "wrong legacy",
        &got,
        StatusCode::UNAUTHORIZED,
        "bad_signature",
    );
    assert_eq!(ts.wait_stored(&room, 2).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_batch_is_accepted_and_cannot_be_replayed_into_another_room() {
    let ts = TestServer::start().await;
    let (a, b) = (ts.room("a"), ts.room("b"));
    let mut e1 = gift_body("u1", "A", "heart", 1, 1);
    e1["idempotency_key"] = json!("b1");
    let mut e2 = gift_body("u2", "B", "rose", 2, 10);
    e2["idempotency_key"] = json!("b2");
    let body = json!({ "events": [e1, e2] }).to_string().into_bytes();
    let now = unix_now().to_string();
    let sig = TestServer::sign_batch(ts.gift_secret(), &a, &now, &body);
    let got = send(
        &ts,
        &format!("/v1/rooms/{a}/events:batch"),
        &now,
        &sig,
        None,
        &body,
    )
    .await;
    assert_eq!(got.0, StatusCode::MULTI_STATUS, "{}", got.1);
    let ids_a: Vec<String> = (0..2)
        .map(|i| {
            assert_eq!(got.1["results"][i]["status"], 202, "{}", got.1);
            got.1["results"][i]["id"].as_str().expect("id").to_string()
        })
        .collect();

    let got = send(
        &ts,
        &format!("/v1/rooms/{b}/events:batch"),
        &now,
        &sig,
        None,
        &body,
    )
    .await;
    assert_error(
        "batch into room b",
        &got,
        StatusCode::UNAUTHORIZED,
        "bad_signature",
    );
    // Nor does the batch signature pass as a single event's (key line empty).
    let got = send(
        &ts,
        &format!("/v1/rooms/{a}/events"),
        &now,
        &sig,
        Some(""),
        &body,
    )
    .await;
    assert_eq!(got.0, StatusCode::UNAUTHORIZED, "{}", got.1);
    assert_room_holds(&ts, &b, &[]).await;
    assert_room_holds(&ts, &a, &ids_a).await;
}
