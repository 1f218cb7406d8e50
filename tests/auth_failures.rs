//! Refused credentials store nothing: viewer tokens that are missing,
//! expired, forged, signed with another secret or `alg=none` get 401, and
//! gift-backend requests with a wrong, malformed, missing or tampered
//! signature or a stale timestamp are refused (so are correctly signed ones
//! that are otherwise wrong). Every test ends with a sentinel post: only it
//! is stored, and the node still answers.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_token_failures_are_401_and_store_nothing() {
    let ts = TestServer::start().await;
    let room = ts.room("r1");
    let room = room.as_str();
    let body = || {
        json!({"client_msg_id": "c1", "text": "hi"})
            .to_string()
            .into_bytes()
    };

    let got = ts.post_danmaku_raw(room, None, body()).await;
    assert_error("no token", &got, StatusCode::UNAUTHORIZED, "missing_token");

    // Expired an hour ago (beyond any leeway), signed with the right secret.
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "u1", "name": "Alice", "exp": unix_now() - 3600}),
        &jsonwebtoken::EncodingKey::from_secret(ts.config.auth.jwt_secret.as_bytes()),
    )
    .unwrap();
    let got = ts
        .post_danmaku_raw(room, Some(&format!("Bearer {expired}")), body())
        .await;
    assert_error(
        "expired token",
        &got,
        StatusCode::UNAUTHORIZED,
        "token_expired",
    );

    // Forged: a valid token's payload swapped for another user's.
    let good = ts.token("u1", "Alice");
    let other = ts.token("admin", "Admin");
    let g: Vec<&str> = good.split('.').collect();
    let o: Vec<&str> = other.split('.').collect();
    let forged = format!("{}.{}.{}", g[0], o[1], g[2]);
    let got = ts
        .post_danmaku_raw(room, Some(&format!("Bearer {forged}")), body())
        .await;
    assert_error(
        "forged token",
        &got,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );

    // Signed with another secret.
    let mut other_auth = ts.config.auth.clone();
    other_auth.jwt_secret = "a-completely-different-secret".into();
    let foreign = danmaku::auth::Authenticator::new(&other_auth).issue("u1", "Alice", 3600);
    let got = ts
        .post_danmaku_raw(room, Some(&format!("Bearer {foreign}")), body())
        .await;
    assert_error(
        "foreign token",
        &got,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );

    // alg=none.
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(format!(r#"{{"sub":"u1","name":"A","exp":{}}}"#, unix_now() + 600).as_bytes())
    );
    let got = ts
        .post_danmaku_raw(room, Some(&format!("Bearer {none}")), body())
        .await;
    assert_error(
        "alg none token",
        &got,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );

    let got = ts
        .post_danmaku_raw(room, Some("Bearer not.a.jwt"), body())
        .await;
    assert_error(
        "garbage token",
        &got,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );

    let m = ts.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "danmaku_ingest_rejections_total{reason=\"missing_token\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &m,
            "danmaku_ingest_rejections_total{reason=\"invalid_token\"}"
        ),
        Some(4.0)
    );
    assert_only_sentinel_stored(&ts, room).await;
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gift_signature_failures_are_refused_and_store_nothing() {
    let ts = TestServer::start().await;
    let room = ts.room("r1");
    let room = room.as_str();
    let body = gift_body("g1", "Bob", "rose", 1, 10)
        .to_string()
        .into_bytes();
    let now = unix_now().to_string();
    let good_sig = ts.sign_event(room, &now, "k1", &body);

    let path = format!("/v1/rooms/{room}/events");
    let wrong =
        danmaku::auth::sign_gift_request("not-the-secret", &now, "POST", &path, "k1", &body);
    let got = ts
        .post_event_raw(room, Some(&now), Some(&wrong), Some("k1"), body.clone())
        .await;
    assert_error(
        "wrong secret",
        &got,
        StatusCode::UNAUTHORIZED,
        "bad_signature",
    );

    // A good signature over another body (tampered in transit).
    let tampered = gift_body("g1", "Bob", "rose", 999, 10)
        .to_string()
        .into_bytes();
    let got = ts
        .post_event_raw(room, Some(&now), Some(&good_sig), Some("k1"), tampered)
        .await;
    assert_error(
        "tampered body",
        &got,
        StatusCode::UNAUTHORIZED,
        "bad_signature",
    );

    let got = ts
        .post_event_raw(
            room,
            Some(&now),
            Some("v2=zz-not-hex"),
            Some("k1"),
            body.clone(),
        )
        .await;
    assert_error(
        "non-hex signature",
        &got,
        StatusCode::UNAUTHORIZED,
        "bad_signature",
    );

    for (what, ts_s) in [
        ("stale timestamp", unix_now() - 1000),
        ("future timestamp", unix_now() + 1000),
    ] {
        let t = ts_s.to_string();
        let sig = ts.sign_event(room, &t, "k1", &body);
        let got = ts
            .post_event_raw(room, Some(&t), Some(&sig), Some("k1"), body.clone())
            .await;
        assert_error(what, &got, StatusCode::UNAUTHORIZED, "stale_timestamp");
    }

    let got = ts
        .post_event_raw(room, None, None, Some("k1"), body.clone())
        .await;
    assert_error(
        "no signature headers",
        &got,
        StatusCode::UNAUTHORIZED,
        "missing_signature",
    );
    let got = ts
        .post_event_raw(room, Some(&now), None, Some("k1"), body.clone())
        .await;
    assert_error(
        "no X-Signature",
        &got,
        StatusCode::UNAUTHORIZED,
        "missing_signature",
    );
    let got = ts
        .post_event_raw(room, None, Some(&good_sig), Some("k1"), body.clone())
        .await;
    assert_error(
        "no X-Timestamp",
        &got,
        StatusCode::UNAUTHORIZED,
        "missing_signature",
    );
    let sig = ts.sign_event(room, "soon", "k1", &body);
    let got = ts
        .post_event_raw(room, Some("soon"), Some(&sig), Some("k1"), body.clone())
        .await;
    assert_error(
        "non-numeric timestamp",
        &got,
        StatusCode::UNAUTHORIZED,
        "bad_timestamp",
    );

    // Correctly signed but otherwise wrong (no key: an empty key line).
    let no_key_sig = ts.sign_event(room, &now, "", &body);
    let got = ts
        .post_event_raw(room, Some(&now), Some(&no_key_sig), None, body.clone())
        .await;
    assert_error(
        "no Idempotency-Key",
        &got,
        StatusCode::BAD_REQUEST,
        "missing_idempotency_key",
    );
    let got = ts
        .post_event(
            room,
            "k2",
            &json!({"kind": "danmaku", "user": {"id": "g1", "name": "Bob"}, "text": "hi"}),
        )
        .await;
    assert_error(
        "event of kind danmaku",
        &got,
        StatusCode::BAD_REQUEST,
        "bad_kind",
    );
    let got = ts
        .post_event(
            room,
            "k3",
            &json!({"kind": "gift", "user": {"id": "g1", "name": "Bob"}}),
        )
        .await;
    assert_error(
        "gift without gift",
        &got,
        StatusCode::BAD_REQUEST,
        "missing_gift",
    );
    let raw = b"{\"kind\": \"gift\",".to_vec();
    let sig = ts.sign_event(room, &now, "k4", &raw);
    let got = ts
        .post_event_raw(room, Some(&now), Some(&sig), Some("k4"), raw)
        .await;
    assert_error(
        "signed malformed JSON",
        &got,
        StatusCode::BAD_REQUEST,
        "malformed_json",
    );

    assert_only_sentinel_stored(&ts, room).await;
}
