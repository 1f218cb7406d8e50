//! The API contract (DESIGN §4) end to end against an in-process node with
//! the embedded engines: transports, ingest checks, idempotency, shutdown,
//! health and metrics.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn gift_body(user: &str, name: &str, gift_id: &str, count: u32, value: u64) -> Value {
    json!({
        "kind": "gift",
        "user": {"id": user, "name": name},
        "text": "sent a gift",
        "gift": {"gift_id": gift_id, "count": count, "value": value},
    })
}

/// Posts a fresh message as a "sentinel" and waits until the room holds it:
/// anything wrongly accepted before it would be stored by then too.
async fn sentinel(ts: &TestServer, room: &str) -> String {
    let tok = ts.token("sentinel-user", "Sentinel");
    let r = ts.post_danmaku(room, &tok, "sentinel", "sentinel").await;
    assert_eq!(r.0, StatusCode::ACCEPTED, "sentinel post: {}", r.1);
    let id = r.1["id"].as_str().expect("id").to_string();
    let deadline = Instant::now() + WAIT;
    loop {
        if ids(&ts.read_all(room).await).contains(&id) {
            return id;
        }
        assert!(Instant::now() < deadline, "sentinel never stored");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// After a series of refused requests: only the sentinel is stored, the
/// stored counter agrees, and the node still answers.
async fn assert_only_sentinel_stored(ts: &TestServer, room: &str) {
    let id = sentinel(ts, room).await;
    let all = ts.read_all(room).await;
    assert_eq!(ids(&all), vec![id], "only the sentinel is stored: {all:?}");
    assert_eq!(ts.metric("danmaku_messages_stored_total").await, 1.0);
    ts.healthz_ok().await;
}

// ---- 1. WebSocket: hello, then batches with contract fields ------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_viewer_gets_hello_then_danmaku_and_gift_with_contract_fields() {
    let ts = TestServer::start().await;
    let room = ts.room("r1");
    let room = room.as_str();
    let mut v = ts.ws(room, &[]).await;
    let h = &v.hello;
    assert_eq!(h["type"], "hello");
    assert_eq!(h["room"], room);
    assert!(
        h["epoch"].as_str().is_some_and(|e| !e.is_empty()),
        "epoch: {h}"
    );
    assert_eq!(h["cursor"], 0, "empty room starts at cursor 0: {h}");
    assert_eq!(h["online"], 1, "this viewer is online: {h}");
    assert_eq!(h["tick_ms"], ts.config.fanout.tick_ms, "{h}");
    assert!(h.get("reset").is_none_or(|r| r == false), "{h}");

    let before = now_ms();
    let tok = ts.token("u1", "Alice");
    let dm = ts.post_danmaku(room, &tok, "c-1", "hello room").await;
    assert_eq!(dm.0, StatusCode::ACCEPTED, "danmaku: {}", dm.1);
    let dm_id = dm.1["id"].as_str().expect("danmaku id").to_string();
    let gift = ts
        .post_event(room, "gift-1", &gift_body("g1", "Bob", "rose", 3, 100))
        .await;
    assert_eq!(gift.0, StatusCode::ACCEPTED, "gift: {}", gift.1);
    let gift_id = gift.1["id"].as_str().expect("gift id").to_string();
    assert_ne!(dm_id, gift_id);

    let msgs = v.collect(2, WAIT).await;
    let after = now_ms();
    assert_eq!(msgs.len(), 2, "both messages arrive once: {msgs:?}");
    let got: HashSet<String> = ids(&msgs).into_iter().collect();
    assert_eq!(got, HashSet::from([dm_id.clone(), gift_id.clone()]));
    let mut s = seqs(&msgs);
    s.sort();
    assert_eq!(s, vec![1, 2], "the room's first two seqs: {msgs:?}");

    // Within a live batch: whitelist, high, low, then seq (DESIGN §3.5).
    for b in &v.batches {
        assert_eq!(b["type"], "batch");
        assert_eq!(b["room"], room);
        assert!(b["epoch"] == v.hello["epoch"], "{b}");
        assert!(b["cursor"].is_u64(), "{b}");
        assert_batch_order(b);
    }
    assert_eq!(v.cursor, 2, "batch cursor is the highest seq seen");

    let by_id = |id: &str| msgs.iter().find(|m| m["id"] == id).unwrap().clone();
    let d = by_id(&dm_id);
    assert_eq!(d["room"], room);
    assert_eq!(d["kind"], "danmaku");
    assert_eq!(d["priority"], "low");
    assert_eq!(d["user"], json!({"id": "u1", "name": "Alice"}));
    assert_eq!(d["text"], "hello room");
    let t = d["ts"].as_u64().expect("ts");
    assert!(
        before <= t && t <= after,
        "ts {t} within [{before}, {after}]"
    );
    assert!(d.get("gift").is_none(), "danmaku has no gift: {d}");

    let g = by_id(&gift_id);
    assert_eq!(g["room"], room);
    assert_eq!(g["kind"], "gift");
    assert_eq!(g["priority"], "high");
    assert_eq!(g["user"], json!({"id": "g1", "name": "Bob"}));
    assert_eq!(g["text"], "sent a gift");
    assert_eq!(
        g["gift"],
        json!({"gift_id": "rose", "count": 3, "value": 100})
    );
    let t = g["ts"].as_u64().expect("ts");
    assert!(
        before <= t && t <= after,
        "ts {t} within [{before}, {after}]"
    );

    // Read by cursor, the room is the same two messages in seq order.
    let stored = ts.read_all(room).await;
    assert_eq!(seqs(&stored), vec![1, 2]);
    for m in &stored {
        assert_eq!(Some(m), msgs.iter().find(|x| x["id"] == m["id"]));
    }
    v.close().await;
}

// ---- 2. Long-poll ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_answers_at_once_when_there_is_data_after_the_cursor() {
    let ts = TestServer::start().await;
    let room = ts.room("r1");
    let room = room.as_str();
    let tok = ts.token("u1", "Alice");
    for i in 1..=3 {
        let r = ts
            .post_danmaku(room, &tok, &format!("c{i}"), &format!("m{i}"))
            .await;
        assert_eq!(r.0, StatusCode::ACCEPTED);
    }
    let all = ts.wait_stored(room, 3).await;
    assert_eq!(texts(&all), vec!["m1", "m2", "m3"]);

    let started = Instant::now();
    let (status, body) = ts.poll(room, Some(1), None, 20_000).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        took < Duration::from_secs(5),
        "a poll with data after its cursor answers at once, took {took:?}"
    );
    assert_eq!(body["room"], room);
    assert!(body["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(body["cursor"], 3);
    let msgs = body["messages"].as_array().unwrap();
    assert_eq!(
        seqs(msgs),
        vec![2, 3],
        "exactly the messages after cursor 1"
    );
    assert_eq!(texts(msgs), vec!["m2", "m3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_holds_up_to_wait_ms_when_nothing_is_new() {
    let ts = TestServer::start().await;
    let room = ts.room("r1");
    let room = room.as_str();
    let tok = ts.token("u1", "Alice");
    assert_eq!(
        ts.post_danmaku(room, &tok, "c1", "m1").await.0,
        StatusCode::ACCEPTED
    );
    ts.wait_stored(room, 1).await;

    let wait_ms = 700;
    let started = Instant::now();
    let (status, body) = ts.poll(room, Some(1), None, wait_ms).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        took >= Duration::from_millis(wait_ms - 30),
        "held for {took:?}, expected about {wait_ms} ms"
    );
    assert!(
        took < Duration::from_millis(wait_ms + 5000),
        "took {took:?}"
    );
    assert_eq!(body["messages"], json!([]), "{body}");
    assert_eq!(body["cursor"], 1, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_a_message_that_arrives_during_the_wait() {
    let ts = TestServer::start().await;
    let room = ts.room("r1");
    let room = room.as_str();
    let tok = ts.token("u1", "Alice");
    assert_eq!(
        ts.post_danmaku(room, &tok, "c1", "before").await.0,
        StatusCode::ACCEPTED
    );
    ts.wait_stored(room, 1).await;

    let wait_ms = 20_000;
    let http = ts.http.clone();
    let url = ts.url(&format!("/v1/rooms/{room}/poll?cursor=1&wait_ms={wait_ms}"));
    let held = tokio::spawn(async move {
        let started = Instant::now();
        let res = http.get(url).send().await.expect("poll");
        let (status, body, _) = into_parts(res).await;
        (status, body, started.elapsed())
    });
    // The poll is held once the server counts it.
    ts.wait_metric("danmaku_connections{transport=\"poll\"}", 1.0, WAIT)
        .await;
    let r = ts.post_danmaku(room, &tok, "c2", "during").await;
    assert_eq!(r.0, StatusCode::ACCEPTED);
    let (status, body, took) = tokio::time::timeout(WAIT, held)
        .await
        .expect("held poll answered")
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        took < Duration::from_millis(wait_ms / 2),
        "the held poll returns when the message arrives, took {took:?}"
    );
    let msgs = body["messages"].as_array().unwrap();
    assert_eq!(texts(msgs), vec!["during"], "{body}");
    assert_eq!(ids(msgs), vec![r.1["id"].as_str().unwrap().to_string()]);
    assert_eq!(seqs(msgs), vec![2]);
    assert_eq!(body["cursor"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_with_a_wrong_epoch_is_reset_and_starts_over() {
    let ts = TestServer::start().await;
    let room = ts.room("r1");
    let room = room.as_str();
    let tok = ts.token("u1", "Alice");
    for i in 1..=2 {
        ts.post_danmaku(room, &tok, &format!("c{i}"), &format!("m{i}"))
            .await;
    }
    ts.wait_stored(room, 2).await;
    let (status, body) = ts.poll(room, Some(2), Some("0000dead0000beef"), 0).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["reset"], true, "{body}");
    assert_eq!(seqs(body["messages"].as_array().unwrap()), vec![1, 2]);
}

// ---- 3. SSE -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_event_ids_are_cursors_and_last_event_id_resumes_exactly() {
    let ts = TestServer::start().await;
    let room = ts.room("r1");
    let room = room.as_str();
    let mut sse = ts.sse(room, None).await;
    let hello = sse.next_event(WAIT).await.expect("hello event");
    assert_eq!(hello.event.as_deref(), Some("hello"), "{hello:?}");
    let hj = hello.json();
    assert_eq!(hj["type"], "hello");
    assert_eq!(hj["room"], room);
    assert_eq!(hello.id.as_deref(), Some("0"), "hello id is the cursor");
    assert_eq!(hj["cursor"], 0);

    let tok = ts.token("u1", "Alice");
    let mut posted = Vec::new();
    for i in 1..=5 {
        let r = ts
            .post_danmaku(room, &tok, &format!("c{i}"), &format!("m{i}"))
            .await;
        assert_eq!(r.0, StatusCode::ACCEPTED);
        posted.push(r.1["id"].as_str().unwrap().to_string());
    }
    let (msgs, events) = sse.collect(5, WAIT).await;
    assert_eq!(msgs.len(), 5, "all five arrive over SSE: {msgs:?}");
    assert_eq!(seqs(&msgs), vec![1, 2, 3, 4, 5]);
    assert_eq!(
        ids(&msgs).into_iter().collect::<HashSet<_>>(),
        posted.iter().cloned().collect::<HashSet<_>>()
    );
    for ev in &events {
        let data = ev.json();
        assert_eq!(data["type"], "batch");
        let id: u64 = ev
            .id
            .as_deref()
            .expect("batch event has an id")
            .parse()
            .expect("id is a cursor");
        assert_eq!(data["cursor"], id, "event id = cursor: {ev:?}");
        let last = data["messages"].as_array().unwrap().last().cloned();
        if let Some(m) = last {
            assert_eq!(m["seq"], id, "cursor is the last seq delivered");
        }
    }
    drop(sse);

    // Reconnect as a browser would: Last-Event-ID = N.
    let n = msgs[1]["seq"].as_u64().unwrap();
    let mut again = ts.sse(room, Some(&n.to_string())).await;
    let hello = again.next_event(WAIT).await.expect("hello on resume");
    assert_eq!(hello.event.as_deref(), Some("hello"));
    assert_eq!(hello.id.as_deref(), Some(n.to_string().as_str()));
    assert!(hello.json().get("reset").is_none_or(|r| r == false));
    let r = ts.post_danmaku(room, &tok, "c6", "m6").await;
    assert_eq!(r.0, StatusCode::ACCEPTED);
    let (resumed, _) = again.collect(4, WAIT).await;
    assert_eq!(
        seqs(&resumed),
        vec![3, 4, 5, 6],
        "exactly the messages with seq > {n}, then the new one: {resumed:?}"
    );
    assert_eq!(texts(&resumed), vec!["m3", "m4", "m5", "m6"]);
    // Nothing more is pending (no duplicates trailing behind).
    let (extra, _) = again.collect(1, Duration::from_millis(300)).await;
    assert!(extra.is_empty(), "unexpected extra messages {extra:?}");

    // A Last-Event-ID that is not a cursor is refused with the JSON error.
    let res = ts
        .http
        .get(ts.url(&format!("/v1/rooms/{room}/sse")))
        .header("last-event-id", "abc")
        .send()
        .await
        .unwrap();
    let got = into_parts(res).await;
    assert_error(
        "bad Last-Event-ID",
        &got,
        StatusCode::BAD_REQUEST,
        "bad_last_event_id",
    );
}

// ---- 4. WebSocket resume ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_reconnect_with_cursor_gets_exactly_what_it_missed() {
    let ts = TestServer::start().await;
    let room = ts.room("r1");
    let room = room.as_str();
    let tok = ts.token("u1", "Alice");
    let mut v = ts.ws(room, &[]).await;
    for i in 1..=3 {
        let r = ts
            .post_danmaku(room, &tok, &format!("c{i}"), &format!("m{i}"))
            .await;
        assert_eq!(r.0, StatusCode::ACCEPTED);
    }
    let first = v.collect(3, WAIT).await;
    assert_eq!(texts(&first), vec!["m1", "m2", "m3"]);
    let (cursor, epoch) = (v.cursor, v.epoch.clone());
    assert_eq!(cursor, 3);
    v.close().await;

    // Missed while away.
    for i in 4..=7 {
        let r = ts
            .post_danmaku(room, &tok, &format!("c{i}"), &format!("m{i}"))
            .await;
        assert_eq!(r.0, StatusCode::ACCEPTED);
    }
    ts.wait_stored(room, 7).await;

    let cursor_s = cursor.to_string();
    let mut v = ts
        .ws(room, &[("cursor", &cursor_s), ("epoch", &epoch)])
        .await;
    assert_eq!(
        v.hello["cursor"], cursor,
        "hello resumes at the client's cursor"
    );
    assert_eq!(v.hello["epoch"], epoch.as_str());
    assert!(
        v.hello.get("reset").is_none_or(|r| r == false),
        "{}",
        v.hello
    );
    // One more after the reconnect, so the live path is covered too.
    let r = ts.post_danmaku(room, &tok, "c8", "m8").await;
    assert_eq!(r.0, StatusCode::ACCEPTED);
    let resumed = v.collect(5, WAIT).await;
    assert_eq!(
        texts(&resumed),
        vec!["m4", "m5", "m6", "m7", "m8"],
        "no loss, no duplicates, in order"
    );
    assert_eq!(seqs(&resumed), vec![4, 5, 6, 7, 8]);
    let extra = v.collect(1, Duration::from_millis(300)).await;
    assert!(extra.is_empty(), "unexpected extra messages {extra:?}");
    v.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_reconnect_with_a_wrong_epoch_is_told_reset() {
    let ts = TestServer::start().await;
    let room = ts.room("r1");
    let room = room.as_str();
    let tok = ts.token("u1", "Alice");
    for i in 1..=3 {
        ts.post_danmaku(room, &tok, &format!("c{i}"), &format!("m{i}"))
            .await;
    }
    ts.wait_stored(room, 3).await;
    let mut v = ts
        .ws(room, &[("cursor", "2"), ("epoch", "0123456789abcdef")])
        .await;
    assert_eq!(v.hello["reset"], true, "{}", v.hello);
    assert_ne!(v.hello["epoch"], "0123456789abcdef");
    assert_eq!(
        v.hello["cursor"], 0,
        "the old cursor is meaningless: {}",
        v.hello
    );
    // It starts the current stream over from the beginning.
    let msgs = v.collect(3, WAIT).await;
    assert_eq!(texts(&msgs), vec!["m1", "m2", "m3"]);
    v.close().await;
}

// ---- 5. Bad input ------------------------------------------------------------------

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
    let good_sig = danmaku::auth::sign_gift_request(ts.gift_secret(), &now, &body);

    let wrong = danmaku::auth::sign_gift_request("not-the-secret", &now, &body);
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
            Some("sha256=zz-not-hex"),
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
        let sig = danmaku::auth::sign_gift_request(ts.gift_secret(), &t, &body);
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
    let sig = danmaku::auth::sign_gift_request(ts.gift_secret(), "soon", &body);
    let got = ts
        .post_event_raw(room, Some("soon"), Some(&sig), Some("k1"), body.clone())
        .await;
    assert_error(
        "non-numeric timestamp",
        &got,
        StatusCode::UNAUTHORIZED,
        "bad_timestamp",
    );

    // Correctly signed but otherwise wrong.
    let got = ts
        .post_event_raw(room, Some(&now), Some(&good_sig), None, body.clone())
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
    let sig = danmaku::auth::sign_gift_request(ts.gift_secret(), &now, &raw);
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

// ---- 6. Idempotency -----------------------------------------------------------------

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
    let all = ts.read_all(room).await;
    let mut expected: Vec<String> = [&a.1, &d.1, &e1.1]
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    expected.push(sentinel_id);
    let mut got = ids(&all);
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "each accepted message stored exactly once");
    assert_strictly_increasing("room", &all);
    assert_eq!(ts.metric("danmaku_messages_stored_total").await, 4.0);
}

// ---- 7. WebSocket send path ----------------------------------------------------------

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

// ---- 8. Graceful shutdown -----------------------------------------------------------------

/// Viewers connected at shutdown: every one gets what was acknowledged before
/// the shutdown, then a close 1001 with a reason. Several viewers, because
/// each session races the shutdown on its own.
async fn shutdown_delivers_then_closes(ts: TestServer, viewers: usize) {
    let room = ts.room("r1");
    let room = room.as_str();
    let mut vs = Vec::new();
    for _ in 0..viewers {
        vs.push(ts.ws(room, &[]).await);
    }
    let tok = ts.token("u1", "Alice");
    let r = ts.post_danmaku(room, &tok, "last", "last words").await;
    assert_eq!(r.0, StatusCode::ACCEPTED, "{}", r.1);
    let id = r.1["id"].as_str().unwrap().to_string();

    let state = ts.server.state().clone();
    let frames_before = state.metrics.frames_sent.get();
    let stopping = tokio::spawn(ts.shutdown());
    let ends = futures_util::future::join_all(
        vs.iter_mut()
            .map(|v| v.until_closed(Duration::from_secs(20))),
    )
    .await;
    tokio::time::timeout(Duration::from_secs(30), stopping)
        .await
        .expect("shutdown returned")
        .expect("shutdown task");
    let frames_handed = state.metrics.frames_sent.get() - frames_before;
    let mut missed = 0;
    for (end, msgs) in ends {
        match end {
            WsEnd::Closed(Some((code, reason))) => {
                assert_eq!(code, 1001, "going away: {reason}");
                assert!(!reason.is_empty(), "the close carries a reason");
            }
            other => panic!("expected a close frame 1001, got {other:?}"),
        }
        match ids(&msgs).as_slice() {
            [] => missed += 1,
            [one] => assert_eq!(*one, id),
            more => panic!("unexpected messages {more:?}"),
        }
    }
    assert_eq!(
        missed, 0,
        "{missed} of {viewers} viewers were closed without the acknowledged message \
         ({frames_handed} frame copies were handed to connections during shutdown)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_viewers_with_1001_after_delivering_acknowledged_messages() {
    shutdown_delivers_then_closes(TestServer::start().await, 10).await;
}

/// Same, with a tick long enough that only shutdown's final hub flush can
/// deliver the message (the path `Server::shutdown` documents: "drain the
/// bus into the store, flush hubs, then close viewer sessions").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flush_delivers_before_close_with_a_slow_tick() {
    shutdown_delivers_then_closes(
        TestServer::start_with(|c| c.fanout.tick_ms = 5000).await,
        10,
    )
    .await;
}

/// SSE viewers are owed the same: what was flushed at shutdown comes before
/// the `close` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_shutdown_flush_delivers_before_the_close_event_with_a_slow_tick() {
    const VIEWERS: usize = 10;
    let ts = TestServer::start_with(|c| c.fanout.tick_ms = 5000).await;
    let room = ts.room("r1");
    let room = room.as_str();
    let mut readers = Vec::new();
    for _ in 0..VIEWERS {
        let mut sse = ts.sse(room, None).await;
        let hello = sse.next_event(WAIT).await.expect("hello");
        assert_eq!(hello.event.as_deref(), Some("hello"));
        readers.push(sse);
    }
    let tok = ts.token("u1", "Alice");
    let r = ts.post_danmaku(room, &tok, "last", "last words").await;
    assert_eq!(r.0, StatusCode::ACCEPTED, "{}", r.1);
    let id = r.1["id"].as_str().unwrap().to_string();

    let stopping = tokio::spawn(ts.shutdown());
    let ends = futures_util::future::join_all(readers.iter_mut().map(|sse| async move {
        let mut delivered = Vec::new();
        while let Some(ev) = sse.next_event(Duration::from_secs(20)).await {
            match ev.event.as_deref() {
                Some("batch") => delivered.extend(ids(ev.json()["messages"].as_array().unwrap())),
                Some("close") => return (delivered, Some(ev.json())),
                _ => {}
            }
        }
        (delivered, None)
    }))
    .await;
    tokio::time::timeout(Duration::from_secs(30), stopping)
        .await
        .expect("shutdown returned")
        .expect("shutdown task");
    let mut missed = 0;
    for (delivered, closed) in ends {
        let closed = closed.expect("a close event");
        assert!(
            closed["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "the close event has a reason: {closed}"
        );
        match delivered.as_slice() {
            [] => missed += 1,
            [one] => assert_eq!(*one, id),
            more => panic!("unexpected messages {more:?}"),
        }
    }
    assert_eq!(
        missed, 0,
        "{missed} of {VIEWERS} SSE viewers got the close event without the acknowledged message"
    );
}

// ---- 9. Health, readiness, metrics --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let ts = TestServer::start().await;
    let room = ts.room("r1");
    let room = room.as_str();
    let (status, body, _) = ts.get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body, _) = ts.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready", "{body}");
    for dependency in ["store", "bus", "accepting", "archive"] {
        assert_eq!(body["checks"][dependency], true, "{dependency}: {body}");
    }

    // Some traffic so every family has samples.
    let mut v = ts.ws(room, &[]).await;
    let tok = ts.token("u1", "Alice");
    assert_eq!(
        ts.post_danmaku(room, &tok, "c1", "hi").await.0,
        StatusCode::ACCEPTED
    );
    let refused = ts.post_danmaku_raw(room, None, b"{}".to_vec()).await;
    assert_eq!(refused.0, StatusCode::UNAUTHORIZED);
    assert_eq!(v.collect(1, WAIT).await.len(), 1);

    let (status, text) = ts.get_text("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for family in [
        "danmaku_connections",
        "danmaku_messages_ingested_total",
        "danmaku_messages_delivered_total",
        "danmaku_frames_sent_total",
        "danmaku_ingest_rejections_total",
        "danmaku_messages_stored_total",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(family)),
            "/metrics has {family}:\n{text}"
        );
    }
    assert_eq!(
        metric_value(&text, "danmaku_connections{transport=\"ws\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&text, "danmaku_messages_ingested_total{kind=\"danmaku\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &text,
            "danmaku_ingest_rejections_total{reason=\"missing_token\"}"
        ),
        Some(1.0)
    );
    assert!(metric_value(&text, "danmaku_frames_sent_total").unwrap_or(0.0) >= 1.0);
    assert!(metric_sum(&text, "danmaku_messages_delivered_total") >= 1.0);
    v.close().await;

    // The viewer's departure is reflected.
    let deadline = Instant::now() + WAIT;
    while ts.metric("danmaku_connections{transport=\"ws\"}").await != 0.0 {
        assert!(
            Instant::now() < deadline,
            "ws connection gauge never dropped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
