//! Graceful shutdown: viewers connected when the node stops (WebSocket and
//! SSE) get every message acknowledged before it, then a close with a reason.

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;

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
