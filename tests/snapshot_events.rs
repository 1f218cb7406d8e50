//! Gift backend events (rotation, whitelist requests, batches),
//! gift combos, and the CDN room snapshot (ETag, 304, single flight).
//! The single-event signature failures and the replayed key are covered by
//! tests/auth_failures.rs and tests/ingest_api.rs; this suite adds what those
//! do not.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use danmaku::auth::sign_gift_request;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn gift(user: &str, gift_id: &str, count: u32) -> Value {
    json!({
        "kind": "gift",
        "user": {"id": user, "name": "Gifter"},
        "gift": {"gift_id": gift_id, "count": count, "value": 100},
    })
}

fn notice(text: &str) -> Value {
    json!({"kind": "system", "user": {"id": "sys", "name": "System"}, "text": text})
}

/// `POST /v1/rooms/{room}/events:batch` signed with `secret`.
async fn post_batch_with(
    ts: &TestServer,
    room: &str,
    secret: &str,
    body: &Value,
) -> (StatusCode, Value, HeaderMap) {
    let body = body.to_string().into_bytes();
    let now = unix_now().to_string();
    let sig = TestServer::sign_batch(secret, room, &now, &body);
    let res = ts
        .http
        .post(ts.url(&format!("/v1/rooms/{room}/events:batch")))
        .header("content-type", "application/json")
        .header("x-timestamp", &now)
        .header("x-signature", sig)
        .body(body)
        .send()
        .await
        .expect("POST events:batch");
    into_parts(res).await
}

async fn post_batch(ts: &TestServer, room: &str, body: &Value) -> (StatusCode, Value, HeaderMap) {
    post_batch_with(ts, room, ts.gift_secret(), body).await
}

/// `GET /v1/rooms/{room}/snapshot` with an optional `If-None-Match`:
/// (status, headers, raw body).
async fn snapshot(
    ts: &TestServer,
    room: &str,
    if_none_match: Option<&str>,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut req = ts.http.get(ts.url(&format!("/v1/rooms/{room}/snapshot")));
    if let Some(tag) = if_none_match {
        req = req.header("if-none-match", tag);
    }
    let res = req.send().await.expect("GET snapshot");
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.bytes().await.expect("snapshot body").to_vec();
    (status, headers, body)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("header {name} missing in {h:?}"))
}

fn bucket_ids(snap: &Value, bucket: &str) -> Vec<String> {
    ids(snap["buckets"][bucket].as_array().expect("bucket array"))
}

// ---- gift backend ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_rotated_secrets_are_accepted_over_http_and_others_are_not() {
    let ts = TestServer::start_with(|c| {
        c.auth.gift_secrets = vec![
            "old-gift-secret-0123456789".into(),
            "new-gift-secret-0123456789".into(),
        ];
    })
    .await;
    let room = ts.room("rot");
    let room = room.as_str();
    let mut accepted = Vec::new();
    for (i, secret) in ["old-gift-secret-0123456789", "new-gift-secret-0123456789"]
        .iter()
        .enumerate()
    {
        let body = gift("g1", "rose", 1).to_string().into_bytes();
        let now = unix_now().to_string();
        let key = format!("k{i}");
        let path = format!("/v1/rooms/{room}/events");
        let sig = sign_gift_request(secret, &now, "POST", &path, &key, &body);
        let got = ts
            .post_event_raw(room, Some(&now), Some(&sig), Some(&key), body)
            .await;
        assert_eq!(got.0, StatusCode::ACCEPTED, "secret {i}: {}", got.1);
        accepted.push(got.1["id"].as_str().unwrap().to_string());
    }
    let body = gift("g1", "rose", 1).to_string().into_bytes();
    let now = unix_now().to_string();
    let path = format!("/v1/rooms/{room}/events");
    let sig = sign_gift_request(
        "retired-gift-secret-000000",
        &now,
        "POST",
        &path,
        "k9",
        &body,
    );
    let got = ts
        .post_event_raw(room, Some(&now), Some(&sig), Some("k9"), body)
        .await;
    assert_error(
        "retired secret",
        &got,
        StatusCode::UNAUTHORIZED,
        "bad_signature",
    );
    // The batch endpoint takes either secret too, and no other.
    let batch = json!({"events": [{"idempotency_key": "b1", "kind": "gift",
        "user": {"id": "g2", "name": "G"}, "gift": {"gift_id": "rose", "count": 1}}]});
    let got = post_batch_with(&ts, room, "new-gift-secret-0123456789", &batch).await;
    assert_eq!(got.0, StatusCode::MULTI_STATUS, "{}", got.1);
    accepted.push(got.1["results"][0]["id"].as_str().unwrap().to_string());
    let got = post_batch_with(&ts, room, "retired-gift-secret-000000", &batch).await;
    assert_error(
        "batch, retired secret",
        &got,
        StatusCode::UNAUTHORIZED,
        "bad_signature",
    );

    let stored = ts.wait_stored(room, 3).await;
    let mut got = ids(&stored);
    got.sort();
    accepted.sort();
    assert_eq!(got, accepted, "exactly the accepted events are stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_whitelist_is_honoured_only_when_allowed_and_gifts_are_validated() {
    for allowed in [true, false] {
        let ts = TestServer::start_with(|c| c.ingest.events_may_request_whitelist = allowed).await;
        let room = ts.room("wl");
        let room = room.as_str();
        let mut body = gift("g1", "rocket", 1);
        body["priority"] = "whitelist".into();
        let got = ts.post_event(room, "w1", &body).await;
        assert_eq!(got.0, StatusCode::ACCEPTED, "{}", got.1);
        let plain = ts.post_event(room, "w2", &gift("g1", "rose", 1)).await;
        assert_eq!(plain.0, StatusCode::ACCEPTED, "{}", plain.1);

        for (i, (what, bad, code)) in [
            ("count 0", gift("g1", "rose", 0), "bad_gift_count"),
            (
                "count too big",
                gift("g1", "rose", 1_000_001),
                "bad_gift_count",
            ),
            (
                "value too big",
                json!({"kind": "gift", "user": {"id": "g1", "name": "G"},
                       "gift": {"gift_id": "rose", "count": 1, "value": 1u64 << 60}}),
                "bad_gift_value",
            ),
            (
                "empty gift id",
                json!({"kind": "gift", "user": {"id": "g1", "name": "G"},
                       "gift": {"gift_id": "", "count": 1}}),
                "bad_id",
            ),
            (
                "negative value",
                json!({"kind": "gift", "user": {"id": "g1", "name": "G"},
                       "gift": {"gift_id": "rose", "count": 1, "value": -5}}),
                "invalid_body",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let got = ts.post_event(room, &format!("bad-{i}"), &bad).await;
            assert_error(what, &got, StatusCode::BAD_REQUEST, code);
        }

        let stored = ts.wait_stored(room, 2).await;
        assert_eq!(stored.len(), 2, "only the two good gifts: {stored:?}");
        let by_id = |id: &Value| stored.iter().find(|m| m["id"] == *id).unwrap().clone();
        let want = if allowed { "whitelist" } else { "high" };
        assert_eq!(by_id(&got.1["id"])["priority"], want, "allowed={allowed}");
        assert_eq!(by_id(&plain.1["id"])["priority"], "high");
        ts.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_gets_a_result_per_event_and_a_retried_batch_stores_nothing_twice() {
    let ts = TestServer::start().await;
    let room = ts.room("batch");
    let room = room.as_str();
    let ev = |key: &str, mut body: Value| {
        body["idempotency_key"] = key.into();
        body
    };
    // An event first sent on its own: the batch's copy of it is a retry.
    let single = ts
        .post_event(room, "k-single", &gift("g0", "rose", 2))
        .await;
    assert_eq!(single.0, StatusCode::ACCEPTED, "{}", single.1);

    let batch = json!({"events": [
        ev("k1", gift("g1", "rose", 1)),
        ev("k2", notice("welcome")),
        ev("k3", gift("g1", "rose", 0)),                     // invalid count
        json!({"kind": "gift", "user": {"id": "g1", "name": "G"}}),  // no key
        ev("k1", gift("g1", "rose", 1)),                     // same key, same event
        ev("k2", notice("something else")),                  // same key, other event
        ev("k-single", gift("g0", "rose", 2)),               // retry of the single post
        ev("k4", json!({"kind": "danmaku", "user": {"id": "u", "name": "U"}, "text": "x"})),
        "not an object",
    ]});
    let (status, body, _) = post_batch(&ts, room, &batch).await;
    assert_eq!(status, StatusCode::MULTI_STATUS, "{body}");
    let r = body["results"].as_array().expect("results").clone();
    assert_eq!(r.len(), 9, "{body}");
    for (i, x) in r.iter().enumerate() {
        assert_eq!(x["index"], i, "{x}");
    }
    let code = |i: usize| r[i]["error"]["code"].as_str().unwrap_or("").to_string();
    assert_eq!(r[0]["status"], 202);
    assert!(
        r[0]["id"].is_string() && r[0].get("replayed").is_none(),
        "{}",
        r[0]
    );
    assert_eq!(r[1]["status"], 202);
    assert_eq!(
        (r[2]["status"].clone(), code(2)),
        (json!(400), "bad_gift_count".into())
    );
    assert_eq!(
        (r[3]["status"].clone(), code(3)),
        (json!(400), "missing_idempotency_key".into())
    );
    assert_eq!(r[4]["status"], 202);
    assert_eq!(
        r[4]["id"], r[0]["id"],
        "a key repeated in a batch is one event"
    );
    assert_eq!(r[4]["replayed"], true);
    assert_eq!(
        (r[5]["status"].clone(), code(5)),
        (json!(422), "idempotency_key_reused".into())
    );
    assert_eq!(r[6]["status"], 202);
    assert_eq!(
        r[6]["id"], single.1["id"],
        "same event, single then batched"
    );
    assert_eq!(r[6]["replayed"], true);
    assert_eq!(
        (r[7]["status"].clone(), code(7)),
        (json!(400), "bad_kind".into())
    );
    assert_eq!(
        (r[8]["status"].clone(), code(8)),
        (json!(400), "invalid_body".into())
    );
    for i in [2, 3, 5, 7, 8] {
        assert!(
            r[i]["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}",
            r[i]
        );
    }

    // The whole batch again (a retry after a lost answer): the same ids.
    let (status, again, _) = post_batch(&ts, room, &batch).await;
    assert_eq!(status, StatusCode::MULTI_STATUS, "{again}");
    for i in [0, 1, 4, 6] {
        assert_eq!(again["results"][i]["id"], r[i]["id"], "event {i}");
        assert_eq!(again["results"][i]["replayed"], true, "event {i}");
    }
    // Whitespace and key order do not make a retry a different request.
    let reordered = r#"{"gift":{"value":100,"count":1,"gift_id":"rose"},
        "user":{"name":"Gifter","id":"g1"}, "kind":"gift"}"#;
    let body = reordered.as_bytes().to_vec();
    let now = unix_now().to_string();
    let sig = ts.sign_event(room, &now, "k1", &body);
    let got = ts
        .post_event_raw(room, Some(&now), Some(&sig), Some("k1"), body)
        .await;
    assert_eq!(got.0, StatusCode::ACCEPTED, "{}", got.1);
    assert_eq!(got.1["id"], r[0]["id"]);

    // Too many, none, or not a batch at all.
    let max = ts.config.ingest.max_batch_events;
    let many: Vec<Value> = (0..=max)
        .map(|i| ev(&format!("m{i}"), gift("g9", "rose", 1)))
        .collect();
    let got = post_batch(&ts, room, &json!({ "events": many })).await;
    assert_error(
        "101 events",
        &got,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_many_events",
    );
    let got = post_batch(&ts, room, &json!({"events": []})).await;
    assert_error("no events", &got, StatusCode::BAD_REQUEST, "empty_batch");
    let got = post_batch(&ts, room, &json!({"event": []})).await;
    assert_error("wrong shape", &got, StatusCode::BAD_REQUEST, "invalid_body");
    let got = ts
        .http
        .post(ts.url(&format!("/v1/rooms/{room}/events:batch")))
        .body(batch.to_string())
        .send()
        .await
        .expect("unsigned batch");
    let got = into_parts(got).await;
    assert_error(
        "unsigned batch",
        &got,
        StatusCode::UNAUTHORIZED,
        "missing_signature",
    );

    // A full batch of the maximum size is accepted (its body is larger than
    // one event's body limit).
    let full: Vec<Value> = (0..max)
        .map(|i| {
            let mut g = ev(&format!("full-{i}"), gift(&format!("g{i}"), "rose", 1));
            g["text"] = "x".repeat(150).into();
            g
        })
        .collect();
    let full = json!({ "events": full });
    assert!(full.to_string().len() > ts.config.server.max_body_bytes);
    let (status, fb, _) = post_batch(&ts, room, &full).await;
    assert_eq!(status, StatusCode::MULTI_STATUS, "{fb}");
    let fr = fb["results"].as_array().unwrap();
    assert!(fr.iter().all(|x| x["status"] == 202), "{fb}");

    // Stored: single + k1 + k2 + the full batch, each once.
    let want = 3 + max;
    let stored = ts.wait_stored(room, want).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stored_again = ts.read_all(room).await;
    assert_eq!(stored_again.len(), stored.len());
    assert_eq!(stored.len(), want, "nothing stored twice or wrongly");
    let unique: HashSet<String> = ids(&stored).into_iter().collect();
    assert_eq!(unique.len(), want);
    assert_strictly_increasing("room", &stored);
}

// ---- gift combos --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_identical_gifts_in_a_second_reach_viewers_as_one_message_with_count_ten() {
    let ts = TestServer::start_with(|c| c.fanout.combo_window_ms = 3000).await;
    let room = ts.room("combo");
    let room = room.as_str();
    let mut v = ts.ws(room, &[]).await;
    let start = Instant::now();
    let mut posted = Vec::new();
    for i in 0..10 {
        let got = ts
            .post_event(room, &format!("c{i}"), &gift("fan", "rose", 1))
            .await;
        assert_eq!(got.0, StatusCode::ACCEPTED, "{}", got.1);
        posted.push(got.1["id"].as_str().unwrap().to_string());
    }
    // Another user's rose is its own message.
    let other = ts.post_event(room, "o1", &gift("fan2", "rose", 5)).await;
    assert_eq!(other.0, StatusCode::ACCEPTED, "{}", other.1);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "the ten gifts were posted within a second"
    );

    let stored = ts.wait_stored(room, 11).await;
    assert_eq!(stored.len(), 11, "every event is stored");
    assert!(
        stored
            .iter()
            .filter(|m| m["user"]["id"] == "fan")
            .all(|m| m["gift"]["count"] == 1 && m.get("combo").is_none()),
        "the store keeps the events as sent"
    );

    let got = v.collect(2, WAIT).await;
    let extra = v.collect(1, Duration::from_millis(1000)).await;
    assert!(extra.is_empty(), "nothing more: {extra:?}");
    assert_eq!(got.len(), 2, "one combo and one single gift: {got:?}");
    let combo = got
        .iter()
        .find(|m| m["user"]["id"] == "fan")
        .expect("combo");
    assert_eq!(combo["gift"]["count"], 10, "{combo}");
    assert_eq!(combo["gift"]["gift_id"], "rose");
    assert_eq!(combo["gift"]["value"], 100);
    assert_eq!(combo["combo"]["events"], 10, "{combo}");
    assert_eq!(combo["id"], posted[0].as_str(), "the first event's id");
    assert_eq!(combo["kind"], "gift");
    assert_eq!(combo["priority"], "high");
    let single = got
        .iter()
        .find(|m| m["user"]["id"] == "fan2")
        .expect("single");
    assert_eq!(single["gift"]["count"], 5);
    assert!(
        single.get("combo").is_none(),
        "a lone gift is sent as stored"
    );
    assert_eq!(
        Some(single),
        stored.iter().find(|m| m["id"] == single["id"]),
        "byte for byte the stored message"
    );
    for b in &v.batches {
        assert_batch_order(b);
    }
    assert_eq!(ts.metric("danmaku_gift_combos_total").await, 1.0);
    assert_eq!(ts.metric("danmaku_gift_combo_merged_total").await, 9.0);
    assert_eq!(ts.metric("danmaku_messages_stored_total").await, 11.0);
    assert_eq!(
        ts.metric(r#"danmaku_messages_ingested_total{kind="gift"}"#)
            .await,
        11.0
    );

    // A viewer joining later and resuming from 0 catches up from the store:
    // it gets the events themselves, each once.
    let mut late = ts.ws(room, &[("cursor", "0")]).await;
    let caught = late.collect(11, WAIT).await;
    assert_eq!(caught.len(), 11, "{caught:?}");
    v.close().await;
    late.close().await;
}

/// The viewers' cursors pass the held gifts (a danmaku goes out meanwhile);
/// the combo then comes in a frame that does not move the cursor, and both
/// stream transports still deliver it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_combo_emitted_after_the_cursor_passed_it_still_reaches_streams() {
    let ts = TestServer::start_with(|c| c.fanout.combo_window_ms = 1500).await;
    let room = ts.room("combo-late");
    let room = room.as_str();
    let mut ws = ts.ws(room, &[]).await;
    let mut sse = ts.sse(room, None).await;
    let hello = sse.next_event(WAIT).await.expect("SSE hello");
    assert_eq!(hello.event.as_deref(), Some("hello"));
    for i in 0..4 {
        let got = ts
            .post_event(room, &format!("c{i}"), &gift("fan", "rose", 1))
            .await;
        assert_eq!(got.0, StatusCode::ACCEPTED, "{}", got.1);
    }
    ts.wait_stored(room, 4).await;
    let tok = ts.token("u1", "Alice");
    let dm = ts
        .post_danmaku(room, &tok, "after", "after the gifts")
        .await;
    assert_eq!(dm.0, StatusCode::ACCEPTED);
    let first = ws.collect(1, WAIT).await;
    assert_eq!(
        ids(&first),
        vec![dm.1["id"].as_str().unwrap()],
        "danmaku first"
    );
    assert_eq!(ws.cursor, 5, "the cursor is past the held gifts");
    let combo = ws.collect(1, WAIT).await;
    assert_eq!(combo.len(), 1, "the combo arrives");
    assert_eq!(combo[0]["gift"]["count"], 4);
    assert_eq!(combo[0]["seq"], 1);
    assert_eq!(ws.cursor, 5);
    let (msgs, _) = sse.collect(2, WAIT).await;
    assert_eq!(msgs.len(), 2, "SSE: {msgs:?}");
    assert_eq!(msgs[0]["kind"], "danmaku");
    assert_eq!(msgs[1]["combo"]["events"], 4);
    ws.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_gifts_go_out_before_the_shutdown_close() {
    let ts = TestServer::start_with(|c| c.fanout.combo_window_ms = 60_000).await;
    let room = ts.room("combo-stop");
    let room = room.as_str();
    let mut v = ts.ws(room, &[]).await;
    for i in 0..3 {
        let got = ts
            .post_event(room, &format!("s{i}"), &gift("fan", "car", 2))
            .await;
        assert_eq!(got.0, StatusCode::ACCEPTED, "{}", got.1);
    }
    ts.wait_stored(room, 3).await;
    // Held (the window is a minute): nothing yet.
    let early = v.collect(1, Duration::from_millis(500)).await;
    assert!(early.is_empty(), "{early:?}");
    let stopping = tokio::spawn(ts.shutdown());
    let (end, msgs) = v.until_closed(Duration::from_secs(20)).await;
    stopping.await.expect("shutdown");
    assert!(matches!(end, WsEnd::Closed(Some((1001, _)))), "{end:?}");
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["gift"]["count"], 6);
    assert_eq!(msgs[0]["combo"]["events"], 3);
}

// ---- snapshot -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_snapshot_requests_on_a_cold_room_read_the_store_once() {
    let ts = Arc::new(TestServer::start().await);
    let room = ts.room("cold");
    // Some content first, so the read has something to return.
    let tok = ts.token("u1", "Alice");
    let dm = ts.post_danmaku(&room, &tok, "m1", "hello").await;
    assert_eq!(dm.0, StatusCode::ACCEPTED);
    ts.wait_stored(&room, 1).await;
    let reads = r#"danmaku_store_reads_total{source="snapshot"}"#;
    assert_eq!(ts.metric(reads).await, 0.0);

    let gets = (0..100).map(|_| {
        let ts = ts.clone();
        let room = room.clone();
        tokio::spawn(async move { snapshot(&ts, &room, None).await })
    });
    let answers = futures_util::future::join_all(gets).await;
    let first = answers[0].as_ref().expect("task");
    for a in &answers {
        let (status, headers, body) = a.as_ref().expect("task");
        assert_eq!(*status, StatusCode::OK);
        assert_eq!(header(headers, "etag"), header(&first.1, "etag"));
        assert_eq!(*body, first.2, "every request got the same bytes");
    }
    assert_eq!(
        ts.metric(reads).await,
        1.0,
        "one store read for 100 requests"
    );
    assert_eq!(
        ts.metric(r#"danmaku_snapshot_builds_total{source="store"}"#)
            .await,
        1.0
    );
    let v: Value = serde_json::from_slice(&first.2).unwrap();
    assert_eq!(v["room"], room.as_str());
    assert_eq!(v["cursor"], 1);
    assert_eq!(bucket_ids(&v, "low"), vec![dm.1["id"].as_str().unwrap()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_headers_etag_304_and_change_on_a_new_message() {
    let ts = TestServer::start_with(|c| c.snapshot.per_bucket = 3).await;
    let room = ts.room("snap");
    let room = room.as_str();
    let max_age = Duration::from_millis(ts.config.snapshot.max_age_ms);
    let tok = ts.token("u1", "Alice");
    let mut low = Vec::new();
    for i in 0..5 {
        let r = ts
            .post_danmaku(room, &tok, &format!("d{i}"), &format!("hi {i}"))
            .await;
        low.push(r.1["id"].as_str().unwrap().to_string());
    }
    let mut wl = Vec::new();
    for i in 0..2 {
        let r = ts
            .post_event(room, &format!("n{i}"), &notice("hello"))
            .await;
        wl.push(r.1["id"].as_str().unwrap().to_string());
    }
    let mut high = Vec::new();
    for i in 0..4 {
        let r = ts
            .post_event(room, &format!("g{i}"), &gift(&format!("g{i}"), "rose", 1))
            .await;
        high.push(r.1["id"].as_str().unwrap().to_string());
    }
    let stored = ts.wait_stored(room, 11).await;
    let in_seq = |want: &[String]| -> Vec<String> {
        ids(&stored)
            .into_iter()
            .filter(|id| want.contains(id))
            .collect()
    };

    let before = now_ms();
    let (status, h, body) = snapshot(&ts, room, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        header(&h, "cache-control"),
        "public, max-age=1, stale-while-revalidate=2"
    );
    assert!(header(&h, "content-type").starts_with("application/json"));
    let etag = header(&h, "etag").to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
        "strong ETag: {etag}"
    );
    let modified = httpdate::parse_http_date(header(&h, "last-modified")).expect("HTTP date");
    let modified_ms = modified
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(modified_ms / 1000 <= now_ms() / 1000 && modified_ms / 1000 + 5 >= before / 1000);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["room"], room);
    assert_eq!(v["cursor"], 11);
    assert_eq!(v["online"], 0);
    assert!(v["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(v["generated_at"].as_u64().unwrap() >= before);
    assert_eq!(bucket_ids(&v, "whitelist"), in_seq(&wl), "both notices");
    assert_eq!(bucket_ids(&v, "high"), in_seq(&high)[1..], "latest 3 gifts");
    assert_eq!(bucket_ids(&v, "low"), in_seq(&low)[2..], "latest 3 danmaku");

    // Revalidation: the current ETag (plain, weak, in a list, *) → 304, no body.
    for inm in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"other\", {etag}"),
        "*".to_string(),
    ] {
        let (status, h304, body) = snapshot(&ts, room, Some(&inm)).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED, "If-None-Match: {inm}");
        assert!(body.is_empty(), "304 has no body");
        assert_eq!(header(&h304, "etag"), etag);
        assert!(h304.get("cache-control").is_some());
    }
    let (status, _, _) = snapshot(&ts, room, Some("\"not-it\"")).await;
    assert_eq!(status, StatusCode::OK);

    // The room does not change: after max-age the same ETag and bytes.
    tokio::time::sleep(max_age + Duration::from_millis(100)).await;
    let (status, h2, body2) = snapshot(&ts, room, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&h2, "etag"), etag, "unchanged room, unchanged ETag");
    assert_eq!(body2, body, "and the very same body");
    assert_eq!(header(&h2, "last-modified"), header(&h, "last-modified"));

    // A new message: a new ETag (once max-age passed), the old one → 200.
    let r = ts.post_danmaku(room, &tok, "d-new", "new one").await;
    let new_id = r.1["id"].as_str().unwrap().to_string();
    ts.wait_stored(room, 12).await;
    tokio::time::sleep(max_age + Duration::from_millis(100)).await;
    let (status, h3, body3) = snapshot(&ts, room, Some(&etag)).await;
    assert_eq!(status, StatusCode::OK, "the old ETag no longer matches");
    let etag3 = header(&h3, "etag");
    assert_ne!(etag3, etag, "a new message changes the ETag");
    let v3: Value = serde_json::from_slice(&body3).unwrap();
    assert_eq!(v3["cursor"], 12);
    assert_eq!(bucket_ids(&v3, "low").last(), Some(&new_id));
    let (status, _, body) = snapshot(&ts, room, Some(etag3)).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert!(
        ts.metric(r#"danmaku_snapshot_responses_total{result="not_modified"}"#)
            .await
            >= 5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_room_snapshot_comes_from_the_local_cache_not_the_store() {
    let ts = TestServer::start_with(|c| {
        c.fanout.big_room_threshold = 1;
        c.fanout.presence_interval_ms = 100;
        c.fanout.combo_window_ms = 200;
    })
    .await;
    let room = ts.room("big");
    let room = room.as_str();
    let mut v = ts.ws(room, &[]).await;
    ts.wait_metric(
        &format!(r#"danmaku_top_room_online{{room="{room}"}}"#),
        1.0,
        WAIT,
    )
    .await;
    let tok = ts.token("u1", "Alice");
    let dm = ts.post_danmaku(room, &tok, "m1", "in a big room").await;
    for i in 0..3 {
        let got = ts
            .post_event(room, &format!("c{i}"), &gift("fan", "rose", 1))
            .await;
        assert_eq!(got.0, StatusCode::ACCEPTED);
    }
    let got = v.collect(2, WAIT).await;
    assert_eq!(got.len(), 2, "{got:?}");

    let (status, _, body) = snapshot(&ts, room, None).await;
    assert_eq!(status, StatusCode::OK);
    let s: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(s["online"], 1);
    assert_eq!(bucket_ids(&s, "low"), vec![dm.1["id"].as_str().unwrap()]);
    let high = s["buckets"]["high"].as_array().unwrap();
    assert_eq!(high.len(), 1, "the combo, as viewers saw it: {s}");
    assert_eq!(high[0]["gift"]["count"], 3);
    assert_eq!(s["cursor"], 4);
    assert_eq!(
        ts.metric(r#"danmaku_store_reads_total{source="snapshot"}"#)
            .await,
        0.0
    );
    assert!(
        ts.metric(r#"danmaku_snapshot_builds_total{source="cache"}"#)
            .await
            >= 1.0
    );
    v.close().await;
}
