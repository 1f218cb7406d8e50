//! `fanout`: viewers (WebSocket, SSE or long-poll) in one or many rooms and
//! publishers at a fixed rate. Reports deliveries/s, frames/s, bytes/s,
//! end-to-end latency, losses and duplicates by seq per viewer, and the
//! server's CPU and RSS. `poll` runs the same measurement with long-poll
//! clients (`run_load`).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{
    await_connections, ends, new_ctx, room_max, setup, spawn_viewer, Ends, Publishers, Setup,
};
use crate::churn::Churn;
use crate::cli::{Common, FanoutArgs, LoadArgs};
use crate::procfs;
use crate::report::{machine, print_load, publish_report, quantiles};
use crate::sampler::{cpu_between, load_progress, measure, per_second, spawn_sampler};
use crate::scrape::{metrics, metrics_delta};
use crate::stats::Snapshot;
use crate::viewer::{PollMode, Transport};

pub async fn run(a: &FanoutArgs, threads: usize) -> anyhow::Result<serde_json::Value> {
    let spec = LoadSpec {
        hold_ws: 0,
        clients: a.viewers,
        transport: a.transport,
        mode: PollMode::Follow,
        wait_ms: a.wait_ms,
        churn: Churn {
            slow_viewers: a.slow_viewers,
            slow_stall: a.slow_stall,
            resume_every: (!a.resume_every.is_zero()).then_some(a.resume_every),
        },
    };
    run_load("fanout", &a.common, &a.load, spec, threads).await
}

pub struct LoadSpec {
    /// WebSocket viewers held per room besides the measured clients.
    pub hold_ws: usize,
    pub clients: usize,
    pub transport: Transport,
    pub mode: PollMode,
    pub wait_ms: u64,
    /// Slow readers and resumes among the measured WebSocket viewers.
    pub churn: Churn,
}

pub async fn run_load(
    scenario: &str,
    common: &Common,
    load: &LoadArgs,
    spec: LoadSpec,
    threads: usize,
) -> anyhow::Result<serde_json::Value> {
    let Setup {
        load_start,
        nofile,
        target,
        rooms,
        pid,
        ctx,
        run_id,
        tokens,
        metrics_before,
        baseline,
    } = setup(
        common,
        load,
        spec.clients + spec.hold_ws * load.rooms,
        spec.churn,
    )
    .await?;
    eprintln!(
        "{scenario}: {} {:?} clients in {} room(s), {} publisher(s) at {}/s ({:?}), tool threads {threads} on CPUs {}",
        spec.clients,
        spec.transport,
        rooms.len(),
        load.publishers,
        load.rate,
        load.publish,
        procfs::affinity_of(0)
    );
    // Held WebSocket viewers: their own context, so they count in no figure.
    let held = new_ctx(common, target.clone(), 1);
    let mut held_tasks = Vec::new();
    for (r, room) in rooms.iter().enumerate() {
        for i in 0..spec.hold_ws {
            held_tasks.push(spawn_viewer(
                &held,
                Transport::Ws,
                PollMode::Follow,
                0,
                i,
                r,
                room.clone(),
            ));
        }
    }
    if spec.hold_ws > 0 {
        let n = spec.hold_ws * rooms.len();
        await_connections(&held, n, common.connect_timeout).await;
        eprintln!(
            "holding {} WebSocket viewers ({} failed); waiting for presence to count them",
            held.counters.connected.load(Relaxed),
            held.counters.connect_errors.load(Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    let series = Arc::new(Mutex::new(Vec::new()));
    let stop_sampler = CancellationToken::new();
    let sampler = spawn_sampler(
        ctx.clone(),
        pid,
        common.quiet,
        load_progress,
        series.clone(),
        stop_sampler.clone(),
    );

    let mut viewers = Vec::with_capacity(spec.clients);
    for i in 0..spec.clients {
        let r = i % rooms.len();
        viewers.push(spawn_viewer(
            &ctx,
            spec.transport,
            spec.mode,
            spec.wait_ms,
            i,
            r,
            rooms[r].clone(),
        ));
    }
    let bound = common.connect_timeout + Duration::from_secs_f64(spec.clients as f64 / 500.0);
    let connect_time = await_connections(&ctx, spec.clients, bound).await;
    let connected = ctx.counters.connected.load(Relaxed);
    eprintln!(
        "connected {connected}/{} in {:.1}s ({} errors)",
        spec.clients,
        connect_time.as_secs_f64(),
        ctx.counters.connect_errors.load(Relaxed)
    );
    // Let subscriptions settle (hubs started, hello sent, presence exchanged).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after_connect = pid.and_then(|p| procfs::sample(p).ok());

    let pubs = Publishers::start(&ctx, load, &rooms, &run_id, tokens);
    let (a, b) = measure(&ctx, pid, load).await;
    let pub_results = pubs.stop().await;
    tokio::time::sleep(load.drain).await;
    ctx.stop_viewers.cancel();
    let mut results = Vec::with_capacity(viewers.len());
    for v in viewers {
        if let Ok(r) = v.await {
            results.push(r);
        }
    }
    stop_sampler.cancel();
    let _ = sampler.await;
    let metrics_after = metrics(&target).await;
    held.stop_viewers.cancel();
    for t in held_tasks {
        let _ = t.await;
    }

    // ---- figures
    let secs = b.at.duration_since(a.at).as_secs_f64();
    let d = |f: fn(&Snapshot) -> u64| (f(&b.counters) - f(&a.counters)) as f64;
    let deliveries = d(|s| s.deliveries);
    let frames = d(|s| s.frames);
    let bytes = d(|s| s.bytes);
    let responses = d(|s| s.responses);
    let accepted = d(|s| s.accepted);
    let (server_cpu, client_cpu) = cpu_between(&a, &b);
    let per_cpu = |n: f64| server_cpu.and_then(|(c, _, _)| (c > 0.0).then(|| n / c));
    // Per-second deliveries inside the window: the sustained (minimum) rate.
    let (min_per_s, median_per_s) = per_second(&series.lock(), &a, &b, |s| s.deliveries);

    // Losses: every viewer must have every seq from where it joined to its room's last.
    let check = spec.transport != Transport::Poll || spec.mode == PollMode::Follow;
    let room_max = room_max(&results);
    let Ends {
        connect_errors,
        ended,
    } = ends(&results);
    let (mut lost, mut dups, mut late, mut with_loss, mut with_dups, mut max_lost) =
        (0, 0, 0, 0, 0, 0);
    let mut resets = 0;
    let mut poll_errors = 0;
    let (mut resumes, mut slow_cuts, mut other_cuts) = (0, 0, 0);
    for r in results.iter().filter(|r| r.connect_error.is_none()) {
        resets += r.resets;
        poll_errors += r.poll_errors;
        resumes += r.resumes;
        if r.slow {
            slow_cuts += r.cuts;
        } else {
            other_cuts += r.cuts;
        }
        if !check {
            continue;
        }
        let l = r.track.lost(room_max[&r.room]);
        lost += l;
        dups += r.track.dups;
        late += r.track.late;
        with_loss += (l > 0) as u64;
        with_dups += (r.track.dups > 0) as u64;
        max_lost = max_lost.max(l);
    }
    let viewers_per_room = connected as f64 / rooms.len() as f64;
    let expected = accepted * viewers_per_room;
    let report = json!({
        "scenario": scenario,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": machine(),
        "tool": {"threads": threads, "cpus": procfs::affinity_of(0), "open_files": nofile},
        "server": {"pid": pid, "cpus": pid.map(procfs::affinity_of)},
        "transport": format!("{:?}", spec.transport).to_lowercase(),
        "poll_mode": (spec.transport == Transport::Poll).then(|| format!("{:?}", spec.mode).to_lowercase()),
        "rooms": rooms.len(),
        "clients": spec.clients,
        "held_ws_viewers": held.counters.connected.load(Relaxed),
        "connected": connected,
        "connect_errors": connect_errors,
        "connect_seconds": connect_time.as_secs_f64(),
        "window_seconds": secs,
        "deliveries": deliveries,
        "deliveries_per_s": deliveries / secs,
        "deliveries_per_s_min_1s": min_per_s,
        "deliveries_per_s_median_1s": median_per_s,
        "expected_deliveries": expected,
        "frames_per_s": frames / secs,
        "messages_per_frame": (frames > 0.0).then(|| deliveries / frames),
        "bytes_per_s": bytes / secs,
        "bytes_per_delivery": (deliveries > 0.0).then(|| bytes / deliveries),
        "compress": ctx.compress,
        "poll_responses_per_s": (spec.transport == Transport::Poll).then(|| responses / secs),
        "server_cpu_seconds": server_cpu.map(|c| c.0),
        "server_cpu_user_seconds": server_cpu.map(|c| c.1),
        "server_cpu_system_seconds": server_cpu.map(|c| c.2),
        "server_cpu_util": server_cpu.map(|c| c.0 / secs),
        "deliveries_per_server_cpu_s": per_cpu(deliveries),
        "frames_per_server_cpu_s": per_cpu(frames),
        "poll_responses_per_server_cpu_s": (spec.transport == Transport::Poll).then(|| per_cpu(responses)).flatten(),
        "ratio_vs_bare_2_5M_per_cpu_s": per_cpu(deliveries).map(|v| v / 2.5e6),
        "server_rss_kb": {
            "baseline": baseline.map(|s| s.rss_kb),
            "after_connect": after_connect.map(|s| s.rss_kb),
            "end": b.server.map(|s| s.rss_kb),
            "peak": b.server.map(|s| s.hwm_kb),
        },
        "server_threads": b.server.map(|s| s.threads),
        "loadavg_at_start": load_start,
        "tool_cpu_util": client_cpu.map(|c| c / secs),
        "latency_ms": quantiles(&ctx.latency),
        "poll_rtt_ms": (spec.transport == Transport::Poll).then(|| quantiles(&ctx.poll_rtt)),
        "publish": publish_report(load, &ctx, &pub_results, accepted / secs),
        "seq_check": check,
        "lost": lost,
        "viewers_with_loss": with_loss,
        "max_lost_per_viewer": max_lost,
        "duplicates": dups,
        "viewers_with_duplicates": with_dups,
        "late_out_of_order": late,
        "resets": resets,
        "slow_viewers": spec.churn.slow_viewers.min(spec.clients),
        "resumes": resumes,
        "cuts_of_slow_viewers": slow_cuts,
        "cuts_of_other_viewers": other_cuts,
        "poll_errors": poll_errors,
        "ended_early": ended,
        "dropped": ctx.counters.dropped.load(Relaxed),
        "server_metrics_delta": metrics_delta(&metrics_before, &metrics_after),
    });
    print_load(&report);
    Ok(report)
}
