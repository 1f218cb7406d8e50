//! `danmaku-bench`: load tool for a local `danmaku serve` (loopback only).
//!
//! - `fanout`: N viewers (WebSocket, SSE or long-poll) in one or many rooms
//!   and M publishers at a fixed rate; reports deliveries/s, frames/s,
//!   bytes/s, end-to-end latency (publisher stamp → viewer receive), losses
//!   and duplicates by seq per viewer, connect errors, and the server's CPU
//!   (utime + stime from /proc) and RSS — so deliveries per server-CPU-second.
//! - `idle`: opens N connections and holds them: server RSS per connection.
//! - `poll`: M long-poll clients on a room: answers per second.
//! - `snapshot`: M keep-alive clients revalidating a room's snapshot with
//!   `If-None-Match`, as CDN edges do: 304s per second.
//! - `platform`: a platform's mix (a top room, a Zipf tail, quiet rooms) on
//!   several fronts and one Redis: per front CPU and RSS, Redis commands/s,
//!   deliveries/s, latency by room-size class, losses.
//!
//! Every run is bounded in time and connection count. See BENCHMARKS.md.
//!
//! Layout: `cli` (options), `scenario/` (one module per subcommand and what
//! they share), the clients (`viewer`, `publisher`, `snapshot`) over `net`
//! (HTTP/1.1 and WebSocket on raw sockets), `stats` (counters, histograms,
//! seq tracking), `sampler` (per-second series, measured window), `procfs`
//! (server CPU and RSS), `scrape` (`/healthz`, `/metrics`), `spawn`
//! (`--spawn`), `redisinfo` (Redis INFO), `report` (JSON figures, medians, printed text).

#![recursion_limit = "256"]

mod churn;
mod cli;
mod inflate;
mod net;
mod procfs;
mod publisher;
mod redisinfo;
mod report;
mod sampler;
mod scenario;
mod scrape;
mod snapshot;
mod spawn;
mod stats;
mod viewer;

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::json;

use cli::{Cli, Command, Common};
use net::Target;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let common = cli.command.common().clone();
    let threads = if common.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        common.threads
    };
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    let _ = *stats::BASE;
    if common.repeat == 0 || common.repeat > 100 {
        bail!("--repeat must be within 1..=100");
    }
    let server_cpus = spawn::parse_cpus(&common.server_cpus)?;
    procfs::raise_nofile(); // the spawned server inherits the raised limit
    let mut reports = Vec::new();
    for run in 0..common.repeat {
        let mut report = run_once(&runtime, &cli.command, &server_cpus, run, threads)?;
        report["run"] = json!(run + 1);
        reports.push(report);
        if run + 1 < common.repeat {
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    let out = if reports.len() == 1 {
        reports.pop().expect("one report")
    } else {
        let medians = report::medians(&reports);
        report::print_medians(&medians, reports.len());
        json!({"runs": reports, "median": medians})
    };
    if let Some(path) = &common.json {
        std::fs::write(path, serde_json::to_string_pretty(&out)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    // Many sockets: leaving them to process exit is faster than dropping them one by one.
    std::process::exit(0);
}

/// One run of the scenario; with `--spawn`, on a server started for it and
/// stopped afterwards.
fn run_once(
    runtime: &tokio::runtime::Runtime,
    command: &Command,
    server_cpus: &[usize],
    run: usize,
    threads: usize,
) -> anyhow::Result<serde_json::Value> {
    let common: &Common = command.common();
    let mut spawned = Vec::new();
    let mut command = command.clone();
    if let Some(path) = &common.spawn {
        let servers = command.servers();
        let mut pids = Vec::new();
        for (role, url) in &servers {
            let target = runtime.block_on(Target::parse(url, 1))?;
            let s = match spawn::start(
                path,
                role,
                &target.addr.to_string(),
                common.server_config.as_deref(),
                &common.server_env,
                server_cpus,
                run,
            ) {
                Ok(s) => s,
                Err(e) => {
                    for (s, _) in spawned {
                        spawn::stop(s, Duration::from_secs(2));
                    }
                    return Err(e);
                }
            };
            pids.push(s.pid());
            spawned.push((s, target));
        }
        let mut failed = None;
        for ((s, target), (role, _)) in spawned.iter_mut().zip(&servers) {
            // The roles are ready once connected to the bus and the store.
            let path_ok = if *role == "serve" {
                "/healthz"
            } else {
                "/readyz"
            };
            let ready = runtime.block_on(scrape::wait_ok(target, path_ok, Duration::from_secs(30)));
            if !ready || !spawn::running(s) {
                let log = std::fs::read_to_string(&s.log).unwrap_or_default();
                failed = Some(format!("the spawned {role} did not become ready:\n{log}"));
                break;
            }
            eprintln!(
                "run {}/{}: spawned {} {role} (pid {}, CPUs {}, log {})",
                run + 1,
                common.repeat,
                path.display(),
                s.pid(),
                common.server_cpus,
                s.log.display()
            );
        }
        if let Some(why) = failed {
            for (s, _) in spawned {
                spawn::stop(s, Duration::from_secs(2));
            }
            bail!(why);
        }
        match &mut command {
            Command::Platform(a) => {
                let fronts = usize::from(a.processor.is_some());
                a.processor_pid = a.processor.as_ref().map(|_| pids[0]);
                a.front_pids = pids[fronts..].to_vec();
            }
            other => other.common_mut().server_pid = Some(pids[0]),
        }
    } else if common.repeat > 1 {
        eprintln!("run {}/{}", run + 1, common.repeat);
    }
    let report = runtime.block_on(async {
        match command {
            Command::Fanout(a) => scenario::fanout::run(&a, threads).await,
            Command::Poll(a) => scenario::poll::run(&a, threads).await,
            Command::Snapshot(a) => scenario::snapshot::run(&a, threads).await,
            Command::Idle(a) => scenario::idle::run(&a, threads).await,
            Command::Platform(a) => scenario::platform::run(&a, threads).await,
        }
    });
    // Fronts first: the processor still drains what they handed to the bus.
    for (s, _) in spawned.into_iter().rev() {
        spawn::stop(s, Duration::from_secs(10));
    }
    report
}
