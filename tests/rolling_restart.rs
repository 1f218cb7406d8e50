//! Rolling restart (issue 23), on real processes: three fronts and a
//! processor on a Redis and an Apache Kafka of the test's own, WebSocket
//! viewers spread over the fronts, a publisher posting round robin (each
//! post retried on another front when refused). Each front in turn is
//! restarted the way a deploy does it:
//!
//! 1. SIGTERM; `/readyz` answers 503 at once (`server.drain_ms`) while the
//!    node still serves, and the "load balancer" (the test's list of front
//!    ports) takes it out;
//! 2. after the drain it stops taking work and closes its viewers with
//!    `1001 server shutting down; retry_after_ms=N`, `N` random per viewer
//!    in `[0, server.reconnect_spread_ms]`;
//! 3. each viewer waits `N` ms and resumes with its cursor and epoch on a
//!    front in the load balancer (docs/protocol.md, §7);
//! 4. the process exits 0; a new one starts (a new port) and joins once
//!    ready.
//!
//! Holds the fault suite's invariants (tests/common/fault.rs, `check`):
//! every acknowledged message stored once and delivered to every viewer
//! exactly once, none reset; plus: no post refused in the end, every
//! connection that ended did so with that 1001 and a hint, the hints are
//! spread, and resuming (close → `hello` on the new front, the wait
//! included) takes at most the spread plus 2 s at p99. Prints
//! `chaos rolling_restart: …` with the figures (BENCHMARKS.md, "Fault
//! suite").

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::fault::*;
use common::procs::Kafka;
use common::{now_ms, WsEnd};

/// How long a stopping front answers `/readyz` 503 before it stops.
const DRAIN_MS: u64 = 2000;
/// The spread of the viewers' reconnect waits.
const SPREAD_MS: u64 = 1000;
const FRONTS: usize = 3;
const VIEWERS_PER_FRONT: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_every_front_loses_and_repeats_nothing() {
    let Some(()) = programs(&[]) else { return };
    let kafka = tokio::task::block_in_place(Kafka::start);
    let mut rig = Rig::start_with(
        "rolling",
        kafka,
        1,
        FRONTS,
        &[
            ("DANMAKU_SERVER__DRAIN_MS", DRAIN_MS.to_string()),
            ("DANMAKU_SERVER__RECONNECT_SPREAD_MS", SPREAD_MS.to_string()),
        ],
    )
    .await;
    let room = format!("rolling-{}", now_ms());
    let viewers = Viewers::start_n(&rig, &room, VIEWERS_PER_FRONT).await;
    let load = Load::start(&rig, &room, "rr");
    tokio::time::sleep(STEADY).await;

    let mut unready_in = Vec::new();
    let mut exited_in = Vec::new();
    let mut ready_in = Vec::new();
    for k in 0..FRONTS {
        let port = rig.fronts[k].port;
        let t = Instant::now();
        rig.fronts[k].sigterm();
        // Draining: out of the load balancer, yet still serving.
        while rig.fronts[k].is_ready(&rig.http).await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        unready_in.push(t.elapsed());
        assert_within(
            "rolling_restart",
            "/readyz 503 after SIGTERM",
            t.elapsed(),
            Duration::from_millis(DRAIN_MS / 2),
        );
        let serving = rig
            .http
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await;
        assert!(
            serving.is_ok_and(|r| r.status().is_success()),
            "front {k}: stopped serving while draining"
        );
        rig.addrs.lock().unwrap().retain(|a| a.port() != port);
        let status = rig.fronts[k]
            .exited(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("front {k} did not exit within 30 s of SIGTERM"));
        assert!(status.success(), "front {k} exited with {status}");
        exited_in.push(t.elapsed());
        rig.fronts[k].restart();
        let t = Instant::now();
        rig.all_ready(&[&rig.fronts[k]], Duration::from_secs(30), "rolling")
            .await;
        ready_in.push(t.elapsed());
        rig.addrs.lock().unwrap().push(rig.fronts[k].addr());
        tokio::time::sleep(STEADY).await;
    }

    let ledger = load.stop().await;
    let stored = settled_store(&rig, &room, &ledger, Duration::from_secs(30)).await;
    let logs = viewers.finish(stored.len()).await;
    let f = check("rolling_restart", &ledger, &stored, &logs, &HashSet::new());

    let mut hints = HashSet::new();
    let mut bad_ends = Vec::new();
    for (k, log) in logs.iter().enumerate() {
        assert!(
            !log.ends.is_empty(),
            "viewer {k}: its front was restarted, yet its connection never ended"
        );
        for (c, end) in log.ends.iter().enumerate() {
            match end {
                WsEnd::Closed(Some((1001, reason))) if reason.contains("retry_after_ms=") => {
                    hints.insert(retry_after(end));
                }
                other => bad_ends.push(format!("viewer {k} connection {c}: {other:?}")),
            }
        }
        assert_eq!(
            log.resumed_in.len(),
            log.ends.len(),
            "viewer {k}: every ended connection was resumed"
        );
    }
    assert!(
        bad_ends.is_empty(),
        "connections that did not end with 1001 and a hint: {bad_ends:#?}"
    );
    assert!(
        hints.len() > 1,
        "the reconnect hints are spread, not one value: {hints:?}"
    );
    assert!(
        hints.iter().all(|h| *h <= Duration::from_millis(SPREAD_MS)),
        "every hint within server.reconnect_spread_ms: {hints:?}"
    );
    let mut resumes: Vec<Duration> = logs.iter().flat_map(|l| l.resumed_in.clone()).collect();
    resumes.sort();
    let pct =
        |p: f64| resumes[((resumes.len() as f64 * p).ceil() as usize).clamp(1, resumes.len()) - 1];
    let (p50, p99) = (pct(0.50), pct(0.99));
    let slowest = |d: &[Duration]| d.iter().max().copied().unwrap_or_default();
    eprintln!(
        "{}",
        figure_line(
            "rolling_restart",
            &f,
            slowest(&ready_in),
            &format!(
                "fronts_restarted={FRONTS} viewers={} resumes={} resume_p50_s={:.2} resume_p99_s={:.2} \
                 resume_max_s={:.2} readyz_503_after_s={:.2} exited_after_s={:.1} drain_ms={DRAIN_MS} \
                 spread_ms={SPREAD_MS} answers={:?}",
                logs.len(),
                resumes.len(),
                p50.as_secs_f64(),
                p99.as_secs_f64(),
                slowest(&resumes).as_secs_f64(),
                slowest(&unready_in).as_secs_f64(),
                slowest(&exited_in).as_secs_f64(),
                ledger.answers.lock().unwrap()
            )
        )
    );
    assert_eq!(
        f.refused, 0,
        "rolling_restart: every post was acknowledged in the end"
    );
    assert_within(
        "rolling_restart",
        "p99 resume",
        p99,
        Duration::from_millis(SPREAD_MS) + Duration::from_secs(2),
    );
    assert_within(
        "rolling_restart",
        "a restarted front's readiness",
        slowest(&ready_in),
        Duration::from_secs(15),
    );
}
