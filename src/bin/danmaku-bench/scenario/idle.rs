//! `idle`: opens N viewer streams and holds them, answering pings: the
//! server's RSS per connection and its CPU while the connections are idle.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use parking_lot::Mutex;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{await_connections, check_files, new_ctx, room_names, server_pid, spawn_viewer};
use crate::cli::{IdleArgs, MAX_RUN};
use crate::net::Target;
use crate::procfs;
use crate::report::{loadavg, machine, print_idle, tally};
use crate::sampler::{load_progress, spawn_sampler};
use crate::scrape::{http_get, metrics};
use crate::viewer::{PollMode, Transport};

pub async fn run(a: &IdleArgs, threads: usize) -> anyhow::Result<serde_json::Value> {
    if a.hold > MAX_RUN || a.settle > MAX_RUN {
        bail!("--hold and --settle are bounded to 1 h");
    }
    if a.transport == Transport::Poll {
        bail!("idle holds streams: --transport ws or sse");
    }
    let load_start = loadavg();
    let nofile = check_files(a.viewers)?;
    let common = &a.common;
    let target = Target::parse(&common.url, common.source_ips).await?;
    let rooms = room_names(&a.room, a.rooms)?;
    match http_get(&target, "/healthz").await {
        Ok((200, _)) => {}
        Ok((s, _)) => bail!("{}/healthz answered {s}", common.url),
        Err(e) => bail!("{} is not reachable: {e}", common.url),
    }
    let pid = server_pid(common, &target).await;
    let Some(pid) = pid else {
        bail!("idle measures the server's RSS: pass --server-pid");
    };
    // Small buffers: idle viewers receive a hello and pings only.
    let mut common_small = common.clone();
    common_small.read_buf = common.read_buf.min(1024);
    let ctx = new_ctx(&common_small, target.clone(), 1);
    let baseline = procfs::sample(pid)?;
    eprintln!(
        "idle: {} {:?} connections in {} room(s); server baseline RSS {} KB",
        a.viewers,
        a.transport,
        rooms.len(),
        baseline.rss_kb
    );
    let series = Arc::new(Mutex::new(Vec::new()));
    let stop_sampler = CancellationToken::new();
    let sampler = spawn_sampler(
        ctx.clone(),
        Some(pid),
        common.quiet,
        load_progress,
        series.clone(),
        stop_sampler.clone(),
    );
    let mut viewers = Vec::with_capacity(a.viewers);
    for i in 0..a.viewers {
        let r = i % rooms.len();
        viewers.push(spawn_viewer(
            &ctx,
            a.transport,
            PollMode::Follow,
            0,
            i,
            r,
            rooms[r].clone(),
        ));
    }
    let bound = common.connect_timeout + Duration::from_secs_f64(a.viewers as f64 / 500.0);
    let connect_time = await_connections(&ctx, a.viewers, bound).await;
    let connected = ctx.counters.connected.load(Relaxed);
    eprintln!(
        "connected {connected}/{} in {:.1}s",
        a.viewers,
        connect_time.as_secs_f64()
    );
    tokio::time::sleep(a.settle).await;
    let settled = procfs::sample(pid)?;
    tokio::time::sleep(a.hold).await;
    let held = procfs::sample(pid)?;
    let metrics_now = metrics(&target).await;
    let still = connected - ctx.counters.dropped.load(Relaxed);
    ctx.stop_viewers.cancel();
    let mut ended: BTreeMap<String, u64> = BTreeMap::new();
    let mut connect_errors: BTreeMap<String, u64> = BTreeMap::new();
    for v in viewers {
        if let Ok(r) = v.await {
            if let Some(e) = &r.connect_error {
                tally(&mut connect_errors, e);
            }
            if let Some(e) = &r.ended {
                tally(&mut ended, e);
            }
        }
    }
    stop_sampler.cancel();
    let _ = sampler.await;
    let n = connected.max(1) as f64;
    let delta_kb = settled.rss_kb as f64 - baseline.rss_kb as f64;
    let held_delta_kb = held.rss_kb as f64 - baseline.rss_kb as f64;
    let hold_s = held.at.duration_since(settled.at).as_secs_f64();
    let online: f64 = metrics_now
        .iter()
        .filter(|(k, _)| k.starts_with("danmaku_connections"))
        .map(|(_, v)| v)
        .sum();
    let report = json!({
        "scenario": "idle",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": machine(),
        "tool": {"threads": threads, "cpus": procfs::affinity_of(0), "open_files": nofile},
        "server": {"pid": pid, "cpus": procfs::affinity_of(pid)},
        "transport": format!("{:?}", a.transport).to_lowercase(),
        "rooms": rooms.len(),
        "clients": a.viewers,
        "connected": connected,
        "connect_errors": connect_errors,
        "connect_seconds": connect_time.as_secs_f64(),
        "server_connections_gauge": online,
        "still_open_after_hold": still,
        "server_rss_kb": {
            "baseline": baseline.rss_kb,
            "connected": settled.rss_kb,
            "after_hold": held.rss_kb,
            "peak": held.hwm_kb,
        },
        "server_rss_kb_per_connection": delta_kb / n,
        "server_rss_kb_per_connection_after_hold": held_delta_kb / n,
        "server_threads": held.threads,
        "loadavg_at_start": load_start,
        "server_cpu_util_during_hold": (held.cpu_s - settled.cpu_s) / hold_s,
        "server_cpu_seconds_connecting": settled.cpu_s - baseline.cpu_s,
        "ended_early": ended,
    });
    print_idle(&report, ctx.counters.connect_errors.load(Relaxed), hold_s);
    Ok(report)
}
