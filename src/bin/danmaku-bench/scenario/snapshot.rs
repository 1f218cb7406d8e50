//! `snapshot`: keep-alive clients revalidating a room's snapshot with
//! `If-None-Match`, as CDN edges do: 304s/s, 200s/s, request latency, and
//! the server's CPU and RSS (the client itself is `crate::snapshot`).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{await_connections, setup, Publishers, Setup};
use crate::churn::Churn;
use crate::cli::SnapshotArgs;
use crate::procfs;
use crate::report::{machine, print_snapshot, publish_report, quantiles, tally};
use crate::sampler::{cpu_between, measure, per_second, snapshot_progress, spawn_sampler};
use crate::scrape::{metrics, metrics_delta};
use crate::stats::Snapshot;

pub async fn run(a: &SnapshotArgs, threads: usize) -> anyhow::Result<serde_json::Value> {
    let (common, load) = (&a.common, &a.load);
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
    } = setup(common, load, a.clients, Churn::default()).await?;
    eprintln!(
        "snapshot: {} clients in {} room(s), {} publisher(s) at {}/s ({:?}), tool threads {threads} on CPUs {}",
        a.clients,
        rooms.len(),
        load.publishers,
        load.rate,
        load.publish,
        procfs::affinity_of(0)
    );
    let series = Arc::new(Mutex::new(Vec::new()));
    let stop_sampler = CancellationToken::new();
    let sampler = spawn_sampler(
        ctx.clone(),
        pid,
        common.quiet,
        snapshot_progress,
        series.clone(),
        stop_sampler.clone(),
    );
    let mut clients = Vec::with_capacity(a.clients);
    for i in 0..a.clients {
        let r = i % rooms.len();
        clients.push(tokio::spawn(crate::snapshot::snapshot_client(
            ctx.clone(),
            i,
            r,
            rooms[r].clone(),
        )));
    }
    let bound = common.connect_timeout + Duration::from_secs_f64(a.clients as f64 / 500.0);
    let connect_time = await_connections(&ctx, a.clients, bound).await;
    let connected = ctx.counters.connected.load(Relaxed);
    eprintln!(
        "connected {connected}/{} in {:.1}s ({} errors)",
        a.clients,
        connect_time.as_secs_f64(),
        ctx.counters.connect_errors.load(Relaxed)
    );
    let after_connect = pid.and_then(|p| procfs::sample(p).ok());
    let pubs = Publishers::start(&ctx, load, &rooms, &run_id, tokens);
    let (t0, t1) = measure(&ctx, pid, load).await;
    let pub_results = pubs.stop().await;
    ctx.stop_viewers.cancel();
    let mut ended: BTreeMap<String, u64> = BTreeMap::new();
    let mut connect_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut error_answers = 0;
    for c in clients {
        if let Ok(r) = c.await {
            if let Some(e) = &r.connect_error {
                tally(&mut connect_errors, e);
            }
            if let Some(e) = &r.ended {
                tally(&mut ended, e);
            }
            error_answers += r.poll_errors;
        }
    }
    stop_sampler.cancel();
    let _ = sampler.await;
    let metrics_after = metrics(&target).await;

    let secs = t1.at.duration_since(t0.at).as_secs_f64();
    let d = |f: fn(&Snapshot) -> u64| (f(&t1.counters) - f(&t0.counters)) as f64;
    let not_modified = d(|s| s.not_modified);
    let ok = d(|s| s.snapshot_ok);
    let errors = d(|s| s.request_errors);
    let (server_cpu, client_cpu) = cpu_between(&t0, &t1);
    let per_cpu = |n: f64| server_cpu.and_then(|(c, _, _)| (c > 0.0).then(|| n / c));
    let (min_per_s, median_per_s) = per_second(&series.lock(), &t0, &t1, |s| s.not_modified);
    let report = json!({
        "scenario": "snapshot",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": machine(),
        "tool": {"threads": threads, "cpus": procfs::affinity_of(0), "open_files": nofile},
        "server": {"pid": pid, "cpus": pid.map(procfs::affinity_of)},
        "rooms": rooms.len(),
        "clients": a.clients,
        "connected": connected,
        "connect_errors": connect_errors,
        "connect_seconds": connect_time.as_secs_f64(),
        "window_seconds": secs,
        "requests_per_s": (not_modified + ok + errors) / secs,
        "not_modified_per_s": not_modified / secs,
        "not_modified_per_s_min_1s": min_per_s,
        "not_modified_per_s_median_1s": median_per_s,
        "ok_per_s": ok / secs,
        "request_errors": errors,
        "request_errors_per_s": errors / secs,
        "bytes_per_s": d(|s| s.bytes) / secs,
        "server_cpu_seconds": server_cpu.map(|c| c.0),
        "server_cpu_user_seconds": server_cpu.map(|c| c.1),
        "server_cpu_system_seconds": server_cpu.map(|c| c.2),
        "server_cpu_util": server_cpu.map(|c| c.0 / secs),
        "not_modified_per_server_cpu_s": per_cpu(not_modified),
        "server_rss_kb": {
            "baseline": baseline.map(|s| s.rss_kb),
            "after_connect": after_connect.map(|s| s.rss_kb),
            "end": t1.server.map(|s| s.rss_kb),
            "peak": t1.server.map(|s| s.hwm_kb),
        },
        "server_threads": t1.server.map(|s| s.threads),
        "loadavg_at_start": load_start,
        "tool_cpu_util": client_cpu.map(|c| c / secs),
        "request_rtt_ms": quantiles(&ctx.poll_rtt),
        "publish": publish_report(load, &ctx, &pub_results, d(|s| s.accepted) / secs),
        "error_answers": error_answers,
        "ended_early": ended,
        "dropped": ctx.counters.dropped.load(Relaxed),
        "server_metrics_delta": metrics_delta(&metrics_before, &metrics_after),
    });
    print_snapshot(&report);
    Ok(report)
}
