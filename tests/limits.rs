//! Limits that protect a front: viewer connections per address and the
//! Origin allow-list of the stream transports. Each is crossed and answered
//! with its documented error.

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

#[tokio::test]
async fn viewer_connections_per_address_are_capped() {
    let t = TestServer::start_with(|c| c.server.max_viewer_connections_per_ip = 3).await;
    let room = t.room("cap");
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(t.ws(&room, &[]).await);
    }
    match tokio_tungstenite::connect_async(t.ws_url(&room, &[])).await {
        Err(WsError::Http(res)) => {
            assert_eq!(res.status().as_u16(), 429);
            let body: serde_json::Value =
                serde_json::from_slice(res.body().as_deref().unwrap_or(b"{}")).unwrap();
            assert_eq!(body["error"]["code"], "too_many_connections");
        }
        other => panic!("a 4th stream from one address must be refused: {other:?}"),
    }
    // Long-polls count too.
    let (s, b) = t.poll(&room, None, None, 0).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{b}");
    // Closing one frees its slot.
    open.pop().unwrap().close().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if tokio_tungstenite::connect_async(t.ws_url(&room, &[]))
            .await
            .is_ok()
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot not freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn stream_origins_outside_the_allow_list_are_refused() {
    let t = TestServer::start_with(|c| {
        c.server.allowed_origins = vec!["https://live.example".into()];
    })
    .await;
    let room = t.room("origin");
    let mut req = t.ws_url(&room, &[]).into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(WsError::Http(res)) => assert_eq!(res.status().as_u16(), 403),
        other => panic!("foreign origin must be refused: {other:?}"),
    }
    let mut req = t.ws_url(&room, &[]).into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "https://live.example".parse().unwrap());
    assert!(
        tokio_tungstenite::connect_async(req).await.is_ok(),
        "allowed origin"
    );
    let res = t
        .stream_http
        .get(t.url(&format!("/v1/rooms/{room}/sse")))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    let (s, body, _) = into_parts(res).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "origin_not_allowed");
}
