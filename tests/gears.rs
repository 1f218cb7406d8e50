//! Delay-driven gears (embedded bus). A flood backs the pipeline up,
//! the gear of that (room, kind) shifts up, the backlog drains, and the gear
//! comes back down; nothing is lost or stored twice; quiet rooms keep order.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;

fn gear_sample(room: &str) -> String {
    format!(r#"danmaku_gear{{kind="danmaku",room="{room}"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_shifts_gear_up_then_back_down_without_loss() {
    let t = TestServer::start_with(|c| {
        c.gears.up_ms = [100, 400, 1600];
        c.gears.min_dwell_ms = 200;
        c.processor.batch_max = 50;
        // The backlog is this test's subject: shedding it is tests/shedding.rs's.
        c.ingest.shed_low_delay_ms = 600_000;
        c.ingest.shed_high_delay_ms = 600_000;
        c.ingest.user_rate_per_s = 100_000.0;
        c.ingest.user_burst = 100_000.0;
    })
    .await;
    let room = t.room("burst");
    let token = t.token("u1", "Fan");
    // Back the pipeline up: the processor holds while the flood arrives.
    t.server.pause_processor(true).await;
    let flood = 1500;
    for i in 0..flood {
        let (s, _, _) = t
            .post_danmaku(&room, &token, &format!("f{i}"), "flood")
            .await;
        assert_eq!(s, StatusCode::ACCEPTED);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    t.server.pause_processor(false).await;

    // Watch the gear while the backlog drains, with a trickle afterwards.
    let mut timeline = Vec::new();
    let mut max_gear = 1.0f64;
    let mut trickle = 0;
    loop {
        let metrics = t.metrics().await;
        let gear = metric_value(&metrics, &gear_sample(&room)).unwrap_or(1.0);
        let pending = metric_value(&metrics, "danmaku_bus_pending").unwrap_or(0.0);
        timeline.push((started.elapsed().as_millis(), gear, pending));
        max_gear = max_gear.max(gear);
        let back_down = max_gear >= 2.0 && gear == 1.0;
        if back_down {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "gear did not come back down: {timeline:?}"
        );
        let (s, _, _) = t
            .post_danmaku(&room, &token, &format!("t{trickle}"), "trickle")
            .await;
        assert_eq!(s, StatusCode::ACCEPTED);
        trickle += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("gear timeline (ms, gear, bus pending): {timeline:?}");
    assert!(max_gear >= 2.0, "the flood raised the gear: {timeline:?}");
    assert!(
        t.metric(r#"danmaku_gear_shifts_total{direction="up"}"#)
            .await
            >= 1.0
    );
    assert!(
        t.metric(r#"danmaku_gear_shifts_total{direction="down"}"#)
            .await
            >= 1.0
    );

    // Every acknowledged message stored exactly once.
    let stored = t.wait_stored(&room, flood + trickle).await;
    assert_eq!(stored.len(), flood + trickle);
    let mut ids: Vec<&str> = stored.iter().map(|m| m["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), flood + trickle, "no duplicates");
}

#[tokio::test]
async fn quiet_room_keeps_post_order_in_gear_one() {
    let t = TestServer::start().await;
    let room = t.room("quiet");
    let token = t.token("u1", "Fan");
    for i in 0..50 {
        let (s, _, _) = t
            .post_danmaku(&room, &token, &format!("q{i}"), &format!("m{i}"))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED);
    }
    let stored = t.wait_stored(&room, 50).await;
    let texts: Vec<String> = stored
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, expected, "seq order is post order");
    assert_eq!(
        t.metric(&gear_sample(&room)).await,
        0.0,
        "no gear gauge: gear 1"
    );
}
