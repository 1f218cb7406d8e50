//! Posting danmaku: bad bodies get their 4xx code and store nothing, the user
//! rate limit answers 429 with `Retry-After`, a retried `client_msg_id` or
//! `Idempotency-Key` is stored once, and a WebSocket viewer with a token sends,
//! gets its ack and sees its message (without a token it cannot send).

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_danmaku_bodies_get_their_4xx_code_and_store_nothing() {
    let ts = TestServer::start().await;
    let room = ts.room("r1");
    let room = room.as_str();
    let tok = ts.token("u1", "Alice");
    let auth = format!("Bearer {tok}");
    let post = |body: Vec<u8>| ts.post_danmaku_raw(room, Some(&auth), body);

    let big =
        json!({"client_msg_id": "big", "text": "x".repeat(ts.config.server.max_body_bytes + 10)});
    let got = post(big.to_string().into_bytes()).await;
    assert_error(
        "oversized body",
        &got,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    );

    let got = post(b"{\"client_msg_id\": \"c1\", \"text\": ".to_vec()).await;
    assert_error(
        "truncated JSON",
        &got,
        StatusCode::BAD_REQUEST,
        "malformed_json",
    );
    let got = post(b"not json at all".to_vec()).await;
    assert_error("not JSON", &got, StatusCode::BAD_REQUEST, "malformed_json");
    let got = post(
        json!({"client_msg_id": 5, "text": "hi"})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_error("wrong type", &got, StatusCode::BAD_REQUEST, "invalid_body");
    let got = post(
        json!({"client_msg_id": "c1", "text": "hi", "colour": "red"})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_error(
        "unknown field",
        &got,
        StatusCode::BAD_REQUEST,
        "invalid_body",
    );
    let got = post(json!({"text": "hi"}).to_string().into_bytes()).await;
    assert_error(
        "missing field",
        &got,
        StatusCode::BAD_REQUEST,
        "invalid_body",
    );

    let cases: [(&str, String, &str); 6] = [
        ("empty text", String::new(), "empty_text"),
        ("blank text", "   ".into(), "empty_text"),
        (
            "too long text",
            "x".repeat(ts.config.ingest.max_text_chars + 1),
            "text_too_long",
        ),
        ("newline", "line\nbreak".into(), "control_characters"),
        ("bell", "ding\u{7}".into(), "control_characters"),
        ("escape", "\u{1b}[31mred".into(), "control_characters"),
    ];
    for (i, (what, text, code)) in cases.iter().enumerate() {
        let got = ts.post_danmaku(room, &tok, &format!("bad-{i}"), text).await;
        assert_error(what, &got, StatusCode::BAD_REQUEST, code);
    }
    let got = ts.post_danmaku(room, &tok, "", "hi").await;
    assert_error(
        "empty client_msg_id",
        &got,
        StatusCode::BAD_REQUEST,
        "bad_id",
    );
    let got = post(
        json!({"client_msg_id": "c9", "text": "hi", "style": {"color": "red"}})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_error(
        "bad style color",
        &got,
        StatusCode::BAD_REQUEST,
        "bad_style",
    );

    for room in ["bad.room", "a%20b", &"x".repeat(65)] {
        let got = ts.post_danmaku(room, &tok, "c1", "hi").await;
        assert_error(
            &format!("room {room:?}"),
            &got,
            StatusCode::BAD_REQUEST,
            "bad_room",
        );
    }
    let (status, body) = ts.poll("bad.room", None, None, 0).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "bad_room");
    let res = ts
        .http
        .get(ts.url(&format!("/v1/rooms/{room}/poll?cursor=abc")))
        .send()
        .await
        .unwrap();
    assert_error(
        "bad poll query",
        &into_parts(res).await,
        StatusCode::BAD_REQUEST,
        "bad_query",
    );

    let got = ts.get("/v1/no/such/route").await;
    assert_error("unknown route", &got, StatusCode::NOT_FOUND, "not_found");
    let got = ts.get(&format!("/v1/rooms/{room}/danmaku")).await;
    assert_error(
        "wrong method",
        &got,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );

    let m = ts.metrics().await;
    for reason in [
        "malformed_json",
        "invalid_body",
        "empty_text",
        "text_too_long",
        "control_characters",
    ] {
        let v = metric_value(
            &m,
            &format!("danmaku_ingest_rejections_total{{reason=\"{reason}\"}}"),
        );
        assert!(v.unwrap_or(0.0) >= 1.0, "rejection {reason} counted");
    }
    assert_eq!(
        metric_sum(&m, "danmaku_messages_ingested_total"),
        0.0,
        "nothing was acknowledged"
    );

    // 200 characters (multi-byte) is the limit, not 200 bytes.
    let ok = ts
        .post_danmaku(
            room,
            &tok,
            "max-len",
            &"弹".repeat(ts.config.ingest.max_text_chars),
        )
        .await;
    assert_eq!(ok.0, StatusCode::ACCEPTED, "{}", ok.1);
    let all = ts.wait_stored(room, 1).await;
    assert_eq!(all.len(), 1);
    assert_eq!(ids(&all), vec![ok.1["id"].as_str().unwrap().to_string()]);
    ts.healthz_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_past_the_user_rate_limit_gets_429_with_retry_after() {
    let ts = TestServer::start_with(|c| {
        c.ingest.user_burst = 3.0;
        c.ingest.user_rate_per_s = 0.2;
    })
    .await;
    let room = ts.room("r1");
    let room = room.as_str();
    let tok = ts.token("flooder", "Flood");
    for i in 1..=3 {
        let r = ts
            .post_danmaku(room, &tok, &format!("c{i}"), &format!("m{i}"))
            .await;
        assert_eq!(r.0, StatusCode::ACCEPTED, "within the burst: {}", r.1);
    }
    let got = ts.post_danmaku(room, &tok, "c4", "one too many").await;
    assert_error(
        "past the burst",
        &got,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    );
    let retry: u64 = got
        .2
        .get("retry-after")
        .expect("Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is seconds");
    assert!((1..=10).contains(&retry), "Retry-After {retry}");

    // The limit is per user: someone else still gets through.
    let other = ts.token("calm", "Calm");
    let r = ts.post_danmaku(room, &other, "c1", "calm message").await;
    assert_eq!(r.0, StatusCode::ACCEPTED, "{}", r.1);

    let all = ts.wait_stored(room, 4).await;
    let got_texts = texts(&all);
    assert_eq!(all.len(), 4, "{got_texts:?}");
    assert!(!got_texts.contains(&"one too many".to_string()));
    assert_eq!(ts.metric("danmaku_messages_stored_total").await, 4.0);
    ts.healthz_ok().await;
}

// ---- Idempotency -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_client_msg_id_and_idempotency_key_are_stored_once() {
    let ts = TestServer::start().await;
    let room = ts.room("r1");
    let room = room.as_str();
    let tok = ts.token("u1", "Alice");

    let a = ts.post_danmaku(room, &tok, "m-1", "hello").await;
    assert_eq!(a.0, StatusCode::ACCEPTED, "{}", a.1);
    assert!(a.2.get("idempotent-replayed").is_none());
    let b = ts.post_danmaku(room, &tok, "m-1", "hello").await;
    assert_eq!(b.0, StatusCode::ACCEPTED, "{}", b.1);
    assert_eq!(b.1["id"], a.1["id"], "a retry gets the first answer");
    assert_eq!(
        b.2.get("idempotent-replayed").map(|v| v.to_str().unwrap()),
        Some("true")
    );
    let c = ts.post_danmaku(room, &tok, "m-1", "something else").await;
    assert_error(
        "client_msg_id reused for other text",
        &c,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    );
    // Client ids are per user.
    let other = ts.token("u2", "Bob");
    let d = ts.post_danmaku(room, &other, "m-1", "hello").await;
    assert_eq!(d.0, StatusCode::ACCEPTED);
    assert_ne!(d.1["id"], a.1["id"]);

    let body = gift_body("g1", "Carol", "rocket", 1, 5000);
    let e1 = ts.post_event(room, "order-77", &body).await;
    assert_eq!(e1.0, StatusCode::ACCEPTED, "{}", e1.1);
    assert!(e1.2.get("idempotent-replayed").is_none());
    let e2 = ts.post_event(room, "order-77", &body).await;
    assert_eq!(e2.0, StatusCode::ACCEPTED, "{}", e2.1);
    assert_eq!(e2.1, e1.1, "a retry gets the first answer");
    assert_eq!(
        e2.2.get("idempotent-replayed").map(|v| v.to_str().unwrap()),
        Some("true")
    );
    let e3 = ts
        .post_event(
            room,
            "order-77",
            &gift_body("g1", "Carol", "rocket", 2, 5000),
        )
        .await;
    assert_error(
        "Idempotency-Key reused for another body",
        &e3,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    );

    let sentinel_id = sentinel(&ts, room).await;
    let mut expected: Vec<String> = [&a.1, &d.1, &e1.1]
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    expected.push(sentinel_id);
    // The sentinel is a danmaku and the event a gift: on Kafka they travel
    // on their own (room, kind) partitions, so the sentinel being stored does
    // not mean the gift is; wait for the count, then compare the ids.
    let all = ts.wait_stored(room, expected.len()).await;
    let mut got = ids(&all);
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "each accepted message stored exactly once");
    assert_strictly_increasing("room", &all);
    assert_eq!(ts.metric("danmaku_messages_stored_total").await, 4.0);
}

// ---- WebSocket send path ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_viewer_with_token_sends_gets_ack_and_sees_its_message() {
    let ts = TestServer::start().await;
    let room = ts.room("r1");
    let room = room.as_str();
    let tok = ts.token("u1", "Alice");
    let mut v = ts.ws(room, &[("token", &tok)]).await;
    v.send_json(&json!({"type": "send", "client_msg_id": "x", "text": "hi"}))
        .await;
    let (ack, early) = v.until_other(WAIT, |m| m["type"] != "batch").await;
    let ack = ack.expect("a reply to send");
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["client_msg_id"], "x");
    let id = ack["id"].as_str().expect("ack id").to_string();
    assert!(!id.is_empty());
    assert!(early.is_empty(), "nothing else was posted: {early:?}");

    let msgs = v.collect(1, WAIT).await;
    assert_eq!(msgs.len(), 1, "the viewer sees its own message");
    assert_eq!(msgs[0]["id"], id.as_str());
    assert_eq!(msgs[0]["text"], "hi");
    assert_eq!(msgs[0]["user"], json!({"id": "u1", "name": "Alice"}));
    assert_eq!(msgs[0]["kind"], "danmaku");

    // A retried send is acknowledged with the same id and stored once.
    v.send_json(&json!({"type": "send", "client_msg_id": "x", "text": "hi"}))
        .await;
    let (ack2, _) = v.until_other(WAIT, |m| m["type"] != "batch").await;
    let ack2 = ack2.expect("second ack");
    assert_eq!(ack2["type"], "ack", "{ack2}");
    assert_eq!(ack2["id"], id.as_str());

    // Bad input over the socket is an error message, not a dropped socket.
    v.send_json(&json!({"type": "send", "client_msg_id": "y", "text": ""}))
        .await;
    let (err, _) = v.until_other(WAIT, |m| m["type"] != "batch").await;
    let err = err.expect("error reply");
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "empty_text");
    assert_eq!(err["client_msg_id"], "y");

    let sentinel_id = sentinel(&ts, room).await;
    let all = ts.read_all(room).await;
    assert_eq!(ids(&all), vec![id, sentinel_id]);
    v.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_viewer_without_token_cannot_send() {
    let ts = TestServer::start().await;
    let room = ts.room("r1");
    let room = room.as_str();
    let mut v = ts.ws(room, &[]).await;
    v.send_json(&json!({"type": "send", "client_msg_id": "x", "text": "hi"}))
        .await;
    let (err, _) = v.until_other(WAIT, |m| m["type"] != "batch").await;
    let err = err.expect("a reply to send");
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "missing_token");
    assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
    // Still connected: a ping is answered.
    v.send_json(&json!({"type": "ping"})).await;
    let (pong, _) = v.until_other(WAIT, |m| m["type"] == "pong").await;
    assert!(pong.is_some(), "socket still open after the error");

    // A bad token on the upgrade is refused with the JSON 401.
    let res = ts
        .http
        .get(ts.url(&format!("/v1/rooms/{room}/ws?token=bogus")))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    let got = into_parts(res).await;
    assert_error(
        "bad ws token",
        &got,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );

    assert_only_sentinel_stored(&ts, room).await;
    v.close().await;
}
