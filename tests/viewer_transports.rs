//! Viewer transports end to end against an in-process node (the embedded
//! engines, or the engine `DANMAKU_TEST_ENGINE` names): the WebSocket hello
//! and batches with the contract's fields, long-poll (answers at once, holds,
//! wakes, resets on a wrong epoch), SSE (event ids are cursors,
//! `Last-Event-ID` resumes), and WebSocket resume by cursor and epoch.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::json;

// ---- WebSocket: hello, then batches with contract fields ------------------

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

    // Within a live batch: whitelist, high, low, then seq (docs/architecture.md,
    // "Rationing is deterministic").
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

// ---- Long-poll ---------------------------------------------------------------

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

// ---- SSE -----------------------------------------------------------------------

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

// ---- WebSocket resume ---------------------------------------------------------

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
