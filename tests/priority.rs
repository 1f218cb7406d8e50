//! Priority buckets, per-viewer rationing, slow consumers, shedding.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

const ADMIN: &str = "test-admin-token-0123456789";

async fn put_settings(t: &TestServer, room: &str, body: Value) -> (StatusCode, Value) {
    let res = t
        .http
        .put(t.url(&format!("/v1/admin/rooms/{room}/settings")))
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(body.to_string())
        .send()
        .await
        .expect("PUT settings");
    let (s, v, _) = into_parts(res).await;
    (s, v)
}

fn expect_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "status (body {body})");
    assert_eq!(body["error"]["code"], code, "error code in {body}");
}

fn gift(i: usize) -> Value {
    json!({"kind": "gift", "user": {"id": format!("g{i}"), "name": "Gifter"},
           "gift": {"gift_id": "rose", "count": 1, "value": 10}})
}

fn notice(i: usize) -> Value {
    json!({"kind": "system", "user": {"id": "sys", "name": "System"}, "text": format!("notice {i}")})
}

/// 500 viewers; 5000 low + 60 high + 10 whitelist in a flood; budget 30/s with
/// high share 2/3. Everyone gets all whitelist and all high, low within the
/// budget, and every viewer's frames are identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_is_rationed_identically_for_500_viewers() {
    let t = Arc::new(
        TestServer::start_with(|c| {
            c.auth.admin_token = ADMIN.into();
            c.fanout.tick_ms = 100;
            c.ingest.user_rate_per_s = 100_000.0;
            c.ingest.user_burst = 100_000.0;
        })
        .await,
    );
    let room = &t.room("flood");
    let (s, v) = put_settings(&t, room, json!({"budget_per_s": 30, "high_share": 0.6667})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["effective"]["high_budget_per_s"], 20);
    assert_eq!(v["effective"]["low_budget_per_s"], 10);

    // 500 viewers, opened 50 at a time.
    let mut viewers = Vec::new();
    for chunk in 0..10 {
        let opens = (0..50).map(|_| {
            let t = t.clone();
            async move { t.ws(room, &[]).await }
        });
        viewers.extend(futures_util::future::join_all(opens).await);
        let _ = chunk;
    }
    let start_ms = now_ms();
    // Each viewer collects batches until it has all whitelist and high, then
    // until the room is quiet for 1.5 s.
    let collectors: Vec<_> = viewers
        .into_iter()
        .map(|mut v| {
            tokio::spawn(async move {
                let mut batches: Vec<Value> = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(60);
                let (mut wl, mut high) = (0, 0);
                loop {
                    let quiet = if wl >= 10 && high >= 60 {
                        Duration::from_millis(1500)
                    } else {
                        deadline.saturating_duration_since(Instant::now())
                    };
                    match v.next_json(quiet).await {
                        Ok(b) if b["type"] == "batch" => {
                            for m in b["messages"].as_array().unwrap() {
                                match m["priority"].as_str().unwrap() {
                                    "whitelist" => wl += 1,
                                    "high" => high += 1,
                                    _ => {}
                                }
                            }
                            batches.push(b);
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                (batches, now_ms())
            })
        })
        .collect();

    // The flood: 5000 low from 50 users, 60 gifts, 10 notices, interleaved.
    let tokens: Vec<String> = (0..50).map(|i| t.token(&format!("u{i}"), "Fan")).collect();
    // Whitelist at 250, 750, …; gifts at 30, 114, …: 10 + 60 among 5070.
    let kind = |i: usize| {
        if i % 500 == 250 {
            0
        } else if i % 84 == 30 && i < 84 * 60 {
            1
        } else {
            2
        }
    };
    let posts = futures_util::stream::iter(0..5070usize)
        .map(|i| {
            let t = t.clone();
            let token = tokens[i % 50].clone();
            async move {
                let status = match kind(i) {
                    0 => t.post_event(room, &format!("n{i}"), &notice(i)).await.0,
                    1 => t.post_event(room, &format!("g{i}"), &gift(i)).await.0,
                    _ => {
                        t.post_danmaku(room, &token, &format!("c{i}"), "flood text")
                            .await
                            .0
                    }
                };
                assert_eq!(status, StatusCode::ACCEPTED);
            }
        })
        .buffer_unordered(32);
    posts.collect::<Vec<_>>().await;
    let posted_ms = now_ms();
    let stored = t.wait_stored(room, 5070).await;
    let wl_posted = stored
        .iter()
        .filter(|m| m["priority"] == "whitelist")
        .count();
    let high_posted = stored.iter().filter(|m| m["priority"] == "high").count();
    assert_eq!((wl_posted, high_posted), (10, 60), "the flood's make-up");

    let mut results = Vec::new();
    for c in collectors {
        results.push(c.await.expect("collector"));
    }
    let end_ms = results.iter().map(|r| r.1).max().unwrap();
    let windows = end_ms / 1000 - start_ms / 1000 + 1;
    let reference = &results[0].0;
    for (i, (batches, _)) in results.iter().enumerate() {
        assert_eq!(batches, reference, "viewer {i} saw different frames");
    }
    let delivered: Vec<&Value> = reference
        .iter()
        .flat_map(|b| b["messages"].as_array().unwrap())
        .collect();
    let ids: HashSet<&str> = delivered
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), delivered.len(), "no message delivered twice");
    let count = |p: &str| delivered.iter().filter(|m| m["priority"] == p).count() as u64;
    assert_eq!(count("whitelist"), 10, "every whitelist message");
    assert_eq!(count("high"), 60, "every high message (some late)");
    let low = count("low");
    assert!(
        low <= 30 * windows,
        "low {low} exceeds the budget over {windows} one-second windows"
    );
    assert!(low >= 10, "low still gets its share: {low}");
    // Order in each batch: whitelist, high, low.
    let rank = |m: &Value| match m["priority"].as_str().unwrap() {
        "whitelist" => 0,
        "high" => 1,
        _ => 2,
    };
    for b in reference {
        let ranks: Vec<i32> = b["messages"].as_array().unwrap().iter().map(rank).collect();
        assert!(
            ranks.windows(2).all(|w| w[0] <= w[1]),
            "batch order: {ranks:?}"
        );
    }
    let dropped_high = t
        .metric(r#"danmaku_ration_dropped_total{bucket="high",reason="lag_expired"}"#)
        .await;
    assert_eq!(dropped_high, 0.0);
    let rationed = t
        .metric(r#"danmaku_ration_dropped_total{bucket="low",reason="rationed"}"#)
        .await;
    assert_eq!(
        rationed as u64 + low,
        5000,
        "every low is either sent or counted as rationed"
    );
    eprintln!(
        "flood: posted in {} ms, {windows} windows, low delivered {low}",
        posted_ms - start_ms
    );
}

/// Shedding goes by how far behind the message's own (room, kind) is: with
/// the processor paused for 1.2 s the room's danmaku and gifts are measured
/// ~1.2 s behind once it resumes, past the low threshold (300 ms) but not the
/// high one (3 s): low is refused (429), high and whitelist go, and another
/// room is not affected. With the processor paused again, the bus guard
/// refuses low and high of every room (503 bus_full) but not whitelist.
/// Nothing refused is stored; all accepted is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_is_shed_before_high_and_whitelist_never() {
    let t = TestServer::start_with(|c| {
        c.ingest.shed_low_delay_ms = 300;
        c.ingest.shed_high_delay_ms = 3000;
        c.ingest.bus_full_pending = 20;
        c.ingest.user_burst = 1000.0;
    })
    .await;
    let (room, other) = (&t.room("shed"), &t.room("calm"));
    let token = t.token("u1", "Fan");
    t.server.pause_processor(true).await;
    for i in 0..5 {
        let (s, b, _) = t.post_danmaku(room, &token, &format!("l{i}"), "hi").await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
        let (s, b, _) = t.post_event(room, &format!("g{i}"), &gift(i)).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    }
    let mut accepted = 10;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    t.server.pause_processor(false).await;
    t.wait_stored(room, accepted).await;

    let (s, body, headers) = t.post_danmaku(room, &token, "l-over", "hi").await;
    expect_error(s, &body, StatusCode::TOO_MANY_REQUESTS, "overloaded");
    assert!(headers.get("retry-after").is_some());
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ms behind"),
        "names the delay: {body}"
    );
    let (s, b, _) = t.post_event(room, "g-late", &gift(98)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "high rides out a low shed: {b}");
    let (s, b, _) = t.post_event(room, "n1", &notice(1)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let (s, b, _) = t.post_danmaku(other, &token, "calm-1", "hi").await;
    assert_eq!(s, StatusCode::ACCEPTED, "another room is not behind: {b}");
    accepted += 2;
    assert!(
        t.metric(r#"danmaku_ingest_rejections_total{reason="overloaded"}"#)
            .await
            >= 1.0
    );

    // The last guard: 20 waiting on the bus (any rooms).
    t.server.pause_processor(true).await;
    let mut waiting = 0;
    for i in 0..20 {
        let r = t.room(&format!("fill{}", i % 4));
        let (s, b, _) = t.post_danmaku(&r, &token, &format!("f{i}"), "hi").await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
        waiting += 1;
    }
    let (s, body, headers) = t.post_danmaku(other, &token, "calm-2", "hi").await;
    expect_error(s, &body, StatusCode::SERVICE_UNAVAILABLE, "bus_full");
    assert!(headers.get("retry-after").is_some());
    let (s, body, _) = t.post_event(other, "g-full", &gift(99)).await;
    expect_error(s, &body, StatusCode::SERVICE_UNAVAILABLE, "bus_full");
    let (s, b, _) = t.post_event(other, "n2", &notice(2)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "whitelist is exempt: {b}");
    assert_eq!(
        t.metric(r#"danmaku_ingest_rejections_total{reason="bus_full"}"#)
            .await,
        2.0
    );
    t.server.pause_processor(false).await;
    let stored = t.wait_stored(room, accepted).await;
    assert_eq!(stored.len(), accepted, "exactly the accepted are stored");
    let stored = t.wait_stored(other, 2).await;
    assert_eq!(
        texts(&stored),
        vec!["hi", "notice 2"],
        "calm: accepted ones only"
    );
    let mut filled = 0;
    for i in 0..4 {
        filled += t.wait_stored(&t.room(&format!("fill{i}")), 5).await.len();
    }
    assert_eq!(filled, waiting);
}

/// A viewer token's `vip` level, mapped to high by the room's
/// `vip_high_level`, is delivered as high under rationing: every VIP
/// message reaches the viewer while plain viewers' low is rationed to its
/// budget. A level below the room's is low; a malformed claim is 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vip_danmaku_is_high_under_rationing_and_bad_vip_claims_are_refused() {
    let t = TestServer::start_with(|c| {
        c.auth.admin_token = ADMIN.into();
        c.fanout.tick_ms = 100;
        c.ingest.user_rate_per_s = 100_000.0;
        c.ingest.user_burst = 100_000.0;
    })
    .await;
    let room = &t.room("vip");
    let (s, v) = put_settings(
        &t,
        room,
        json!({"budget_per_s": 20, "high_share": 0.5, "vip_high_level": 2}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["settings"]["vip_high_level"], 2, "the view shows it: {v}");
    let (s, b) = put_settings(&t, room, json!({"vip_high_level": "2"})).await;
    expect_error(s, &b, StatusCode::BAD_REQUEST, "invalid_body");
    let (s, b) = put_settings(&t, room, json!({"vip_high_level": 1001})).await;
    expect_error(s, &b, StatusCode::BAD_REQUEST, "invalid_settings");

    let mut viewer = t.ws(room, &[]).await;
    let started = Instant::now();
    // Collects until it has the 20 VIP messages and the room is quiet.
    let collector = tokio::spawn(async move {
        let mut delivered: Vec<Value> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let vips = delivered.iter().filter(|m| m["user"]["id"] == "v1").count();
            let wait = if vips >= 20 {
                Duration::from_millis(1500)
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            match viewer.next_json(wait).await {
                Ok(f) if f["type"] == "batch" => {
                    delivered.extend(f["messages"].as_array().unwrap().iter().cloned())
                }
                Ok(_) => {}
                Err(_) => return delivered,
            }
        }
    });
    let auth = danmaku::auth::Authenticator::new(&t.config.auth);
    let vip = auth.issue_with_vip("v1", "Patron", 3600, Some(2));
    let minor = auth.issue_with_vip("v0", "Member", 3600, Some(1));
    let plain: Vec<String> = (0..20).map(|i| t.token(&format!("p{i}"), "Fan")).collect();
    // 400 plain lows with 20 VIP posts among them, as fast as they go.
    for i in 0..420usize {
        let (token, id) = if i % 21 == 10 {
            (&vip, format!("vip{i}"))
        } else {
            (&plain[i % 20], format!("p{i}"))
        };
        let (s, b, _) = t.post_danmaku(room, token, &id, "text").await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    }
    let (s, b, _) = t.post_danmaku(room, &minor, "minor", "text").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let stored = t.wait_stored(room, 421).await;
    let stored_as = |p: &str| stored.iter().filter(|m| m["priority"] == p).count();
    assert_eq!(
        (stored_as("high"), stored_as("low")),
        (20, 401),
        "vip 1 < 2 is low"
    );

    let delivered = collector.await.unwrap();
    let windows = started.elapsed().as_secs() + 1;
    let vip_delivered: Vec<&Value> = delivered
        .iter()
        .filter(|m| m["user"]["id"] == "v1")
        .collect();
    assert_eq!(vip_delivered.len(), 20, "every VIP message is delivered");
    assert!(vip_delivered.iter().all(|m| m["priority"] == "high"));
    let low = delivered.iter().filter(|m| m["priority"] == "low").count() as u64;
    assert!(low >= 10, "low still gets its share: {low}");
    // Low gets its 10/s and whatever high leaves unused: at most the 20/s.
    assert!(
        low <= 20 * windows,
        "low {low} is rationed within the budget over {windows} one-second windows"
    );
    assert!(low < 200, "most of the 401 lows are rationed: {low}");
    let rationed = t
        .metric(r#"danmaku_ration_dropped_total{bucket="low",reason="rationed"}"#)
        .await;
    assert_eq!(
        rationed as u64 + low,
        401,
        "every low is sent or counted rationed"
    );

    // The demo issuer mints a vip level too (development secret only).
    let res = t
        .http
        .post(t.url("/v1/demo/token"))
        .body(json!({"name": "Demo", "vip": 2}).to_string())
        .send()
        .await
        .unwrap();
    let (s, demo, _) = into_parts(res).await;
    assert_eq!(s, StatusCode::OK, "{demo}");
    let demo_room = &t.room("vip-demo");
    let token = demo["token"].as_str().unwrap();
    let (s, b, _) = t.post_danmaku(demo_room, token, "d1", "text").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    assert_eq!(t.wait_stored(demo_room, 1).await[0]["priority"], "high");

    // A vip claim that is not an integer level: the token is invalid.
    let secret = jsonwebtoken::EncodingKey::from_secret(t.config.auth.jwt_secret.as_bytes());
    for bad in [json!("gold"), json!(1.5), json!(-1)] {
        let claims = json!({"sub": "v9", "name": "N", "exp": unix_now() + 600, "vip": bad});
        let token =
            jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &secret).unwrap();
        let (s, b, _) = t.post_danmaku(room, &token, "bad", "text").await;
        expect_error(s, &b, StatusCode::UNAUTHORIZED, "invalid_token");
    }
}

/// Room settings need the admin token, validate, and apply without restart.
#[tokio::test]
async fn room_settings_admin_api() {
    let t = TestServer::start_with(|c| c.auth.admin_token = ADMIN.into()).await;
    let (r1, r2) = (t.room("r1"), t.room("r2"));
    let res = t
        .http
        .put(t.url("/v1/admin/rooms/r1/settings"))
        .header("authorization", "Bearer wrong")
        .body("{}")
        .send()
        .await
        .unwrap();
    let (s, b, _) = into_parts(res).await;
    expect_error(s, &b, StatusCode::UNAUTHORIZED, "invalid_admin_token");
    let (s, b) = put_settings(&t, &r1, json!({"high_share": 3})).await;
    expect_error(s, &b, StatusCode::BAD_REQUEST, "invalid_settings");
    let (s, b) = put_settings(&t, &r1, json!({"blocked_words": ["Spoiler"]})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let token = t.token("u1", "Fan");
    let (s, b, _) = t.post_danmaku(&r1, &token, "a", "no SPOILERS please").await;
    expect_error(s, &b, StatusCode::BAD_REQUEST, "blocked_content");
    // Other rooms are not affected.
    let (s, _, _) = t.post_danmaku(&r2, &token, "b", "no SPOILERS please").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    // Whitelisted user's danmaku goes to the whitelist bucket.
    put_settings(&t, &r1, json!({"whitelist_users": ["vip"]})).await;
    let vip = t.token("vip", "VIP");
    let (s, _, _) = t.post_danmaku(&r1, &vip, "c", "hello all").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let stored = t.wait_stored(&r1, 1).await;
    assert_eq!(stored[0]["priority"], "whitelist");
}

/// Without an admin token configured, admin routes do not exist.
#[tokio::test]
async fn admin_routes_are_off_without_a_token() {
    let t = TestServer::start().await;
    let (s, b, _) = t.get("/v1/admin/rooms/r1/settings").await;
    expect_error(s, &b, StatusCode::NOT_FOUND, "not_found");
}
