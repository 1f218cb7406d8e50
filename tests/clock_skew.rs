//! Clock skew (issue 23), on real processes: two fronts whose clocks are 2 s
//! behind and 2 s ahead (`server.clock_offset_ms`, a test-only setting) and
//! a processor with a true clock, on a Redis and an Apache Kafka of the
//! test's own, under a steady load below capacity (the fault suite's
//! publisher, round robin over both fronts, and two viewers per front).
//!
//! Every node corrects its clock towards the store's (`src/clock.rs`,
//! docs/architecture.md "Gears"), so after the warm-up:
//! - each front's `danmaku_clock_correction_ms` undoes its offset (±50 ms);
//! - at most one gear shift per minute (a front 2 s behind would otherwise
//!   read as 2 s of delay: gear 3 and shedding for as long as it lasts);
//! - the processing delay stays under 1 s for ≥ 99 % of messages (without
//!   the correction half of them, the lagging front's, would show ≥ 2 s);
//! - messages stamped ahead of the processor's clock (the skew left over,
//!   counted as delay 0, never negative) are at most 1 % (without the
//!   correction, half of them: the leading front's);
//! - nothing lost, nothing twice (the fault suite's `check`).
//!
//! `DANMAKU_CLOCK_SKEW_S` sets the steady phase (60 s by default; the long
//! version: `DANMAKU_CLOCK_SKEW_S=600 cargo test --test clock_skew --
//! --nocapture`). Prints `chaos clock_skew: …` (BENCHMARKS.md, "Fault suite").

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::fault::*;
use common::procs::{Kafka, Node};
use common::{metric_sum, metric_value, now_ms};

/// The fronts' clock offsets (ms).
const OFFSETS: [i64; 2] = [-2000, 2000];
/// Gear thresholds above what a loaded test machine's hiccups add to the
/// delay, below the 2 s a skewed clock would add (so without the correction
/// the room would shift to gear 3).
const UP_MS: &str = "1500,1900,3000";
/// How far outside its request a message's `ts` may lie (the correction's
/// error: half a round trip to Redis, at most 10 ms, on each side).
const TS_SLACK_MS: i64 = 25;
/// Load before the measured window (partition assignment, first reads).
const WARM_UP: Duration = Duration::from_secs(5);

fn steady() -> Duration {
    let s = std::env::var("DANMAKU_CLOCK_SKEW_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(s)
}

/// What the window is measured by, on the processor.
#[derive(Debug, Clone, Copy)]
struct ProcessorFigures {
    shifts: f64,
    ts_ahead: f64,
    delays: f64,
    delays_within_1s: f64,
}

async fn processor_figures(rig: &Rig, p: &Node) -> ProcessorFigures {
    let text = rig.metrics(p).await;
    let v = |s: &str| metric_value(&text, s).unwrap_or(0.0);
    ProcessorFigures {
        shifts: metric_sum(&text, "danmaku_gear_shifts_total"),
        ts_ahead: v("danmaku_clock_ts_ahead_total"),
        delays: v("danmaku_process_delay_seconds_count{kind=\"danmaku\"}"),
        delays_within_1s: v("danmaku_process_delay_seconds_bucket{kind=\"danmaku\",le=\"1\"}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fronts_two_seconds_apart_shift_no_gears_and_lose_nothing() {
    let Some(()) = programs(&[]) else { return };
    let kafka = tokio::task::block_in_place(Kafka::start);
    let mut rig = Rig::start_with(
        "skew",
        kafka,
        1,
        0,
        &[("DANMAKU_GEARS__UP_MS", UP_MS.into())],
    )
    .await;
    for offset in OFFSETS {
        let mut env = rig.env.clone();
        env.push(("DANMAKU_SERVER__CLOCK_OFFSET_MS".into(), offset.to_string()));
        let front = Node::spawn("front", &env);
        front.ready(&rig.http).await;
        rig.addrs.lock().unwrap().push(front.addr());
        rig.fronts.push(front);
    }
    for (front, offset) in rig.fronts.iter().zip(OFFSETS) {
        let correction = rig.metric(front, "danmaku_clock_correction_ms").await;
        assert!(
            (correction + offset as f64).abs() <= 50.0,
            "a front {offset} ms off corrects by {correction} ms"
        );
    }
    let correction = rig
        .metric(&rig.processors[0], "danmaku_clock_correction_ms")
        .await;
    assert!(correction.abs() <= 50.0, "processor: {correction} ms");

    let room = format!("skew-{}", now_ms());
    let viewers = Viewers::start(&rig, &room).await;
    let load = Load::start(&rig, &room, "s");
    tokio::time::sleep(WARM_UP).await;
    let before = processor_figures(&rig, &rig.processors[0]).await;
    let window = Instant::now();
    tokio::time::sleep(steady()).await;
    let after = processor_figures(&rig, &rig.processors[0]).await;
    let window = window.elapsed();

    let ledger = load.stop().await;
    let stored = settled_store(&rig, &room, &ledger, Duration::from_secs(30)).await;
    let logs = viewers.finish(stored.len()).await;
    let f = check("clock_skew", &ledger, &stored, &logs, &HashSet::new());
    // Both fronts stamp by the one clock: each `ts` lies between the test
    // sending the post and its answer (the test's clock is the host's true
    // one), up to the correction's error.
    let wall = ledger.acked_wall.lock().unwrap().clone();
    let mut off_stamps = Vec::new();
    let mut worst_ms = 0i64;
    for m in &stored {
        let ts = m["ts"].as_u64().expect("ts") as i64;
        let Some(&(sent, answered)) = wall.get(text_of(m)) else {
            continue;
        };
        let off = (sent as i64 - ts).max(ts - answered as i64).max(0);
        worst_ms = worst_ms.max(off);
        if off > TS_SLACK_MS {
            off_stamps.push(format!(
                "{} ts={ts} sent={sent} answered={answered}",
                text_of(m)
            ));
        }
    }
    let shifts = after.shifts - before.shifts;
    let ahead = after.ts_ahead - before.ts_ahead;
    let delays = after.delays - before.delays;
    let within = after.delays_within_1s - before.delays_within_1s;
    let minutes = window.as_secs_f64() / 60.0;
    eprintln!(
        "{}",
        figure_line(
            "clock_skew",
            &f,
            Duration::ZERO,
            &format!(
                "offsets_ms={OFFSETS:?} window_s={:.0} gear_shifts={shifts} \
                 delays_measured={delays} delay_within_1s={within} ts_ahead={ahead} \
                 ts_outside_request_ms_max={worst_ms} ts_outside_request={}",
                window.as_secs_f64(),
                off_stamps.len()
            )
        )
    );
    assert!(
        off_stamps.is_empty(),
        "clock_skew: {} messages stamped outside their request (± {TS_SLACK_MS} ms), e.g. {:?}",
        off_stamps.len(),
        &off_stamps[..off_stamps.len().min(5)]
    );
    assert!(delays > 0.0, "the processor measured delays in the window");
    assert!(
        shifts <= minutes.ceil().max(1.0),
        "clock_skew: {shifts} gear shifts in {minutes:.1} min"
    );
    assert!(
        within >= 0.99 * delays,
        "clock_skew: only {within} of {delays} delays under 1 s"
    );
    assert!(
        ahead <= 0.01 * delays,
        "clock_skew: {ahead} of {delays} messages stamped ahead of the processor's clock"
    );
    assert_eq!(f.refused, 0, "clock_skew: every post acknowledged");
}
