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
//!
//! Every run is bounded in time and connection count. See BENCHMARKS.md.

#![recursion_limit = "256"]

#[path = "danmaku_bench/net.rs"]
mod net;
#[path = "danmaku_bench/procfs.rs"]
mod procfs;
#[path = "danmaku_bench/publisher.rs"]
mod publisher;
#[path = "danmaku_bench/snapshot.rs"]
mod snapshot;
#[path = "danmaku_bench/spawn.rs"]
mod spawn;
#[path = "danmaku_bench/stats.rs"]
mod stats;
#[path = "danmaku_bench/viewer.rs"]
mod viewer;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use net::{Body, Conn, Target};
use procfs::ProcSample;
use publisher::{PubConfig, PubResult, PublishKind};
use stats::{Hist, Snapshot};
use viewer::{Ctx, PollMode, Transport, ViewerResult};

#[derive(Parser)]
#[command(
    name = "danmaku-bench",
    version,
    about = "Load tool for a local danmaku server (loopback only; bounded in time and count)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Viewers in one or many rooms and publishers at a fixed rate: deliveries/s,
    /// latency, losses, server CPU and RSS.
    Fanout(FanoutArgs),
    /// Opens N connections and holds them: server RSS per connection.
    Idle(IdleArgs),
    /// Long-poll clients on a room (follow the stream, or hammer the cache).
    Poll(PollArgs),
    /// Keep-alive clients revalidating a room's snapshot with If-None-Match,
    /// as CDN edges do: 304s/s, 200s/s, request latency, server CPU and RSS.
    Snapshot(SnapshotArgs),
}

#[derive(Args, Clone, Debug)]
struct Common {
    /// Server base URL; must resolve to loopback.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The server's pid for CPU and RSS (default: whoever listens on the URL's port).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Runtime worker threads (0 = the CPUs this process may run on; 1 = current-thread runtime).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Bound on opening one connection (TCP + upgrade).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Spread connections over 127.0.0.1..=127.0.0.N (more ephemeral ports).
    #[arg(long, default_value_t = 1)]
    source_ips: usize,
    /// Initial read buffer per connection (bytes; grows to fit a frame).
    #[arg(long, default_value_t = 8192)]
    read_buf: usize,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No per-second progress lines.
    #[arg(long)]
    quiet: bool,
    /// Run the scenario this many times and report medians (with --spawn, on a
    /// fresh server each time).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Start this server binary for each run (`PATH serve --listen <URL's address>`),
    /// pinned to --server-cpus, and stop it afterwards.
    #[arg(long)]
    spawn: Option<PathBuf>,
    /// CPUs for the spawned server (e.g. "0").
    #[arg(long, default_value = "0")]
    server_cpus: String,
    /// --config for the spawned server.
    #[arg(long)]
    server_config: Option<PathBuf>,
    /// Environment for the spawned server, KEY=VALUE (repeatable).
    #[arg(long = "server-env")]
    server_env: Vec<String>,
}

#[derive(Args, Clone, Debug)]
struct LoadArgs {
    /// Room name (with --rooms > 1: the prefix of <room>-0, <room>-1, …).
    #[arg(long, default_value = "r1")]
    room: String,
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Publisher connections (each posts at rate / publishers).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Messages per second over all publishers (spread over the rooms).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// What publishers send: viewer danmaku (token) or signed events.
    #[arg(long, value_enum, default_value = "danmaku")]
    publish: PublishKind,
    /// Extra characters of text per message (the stamp is ~25).
    #[arg(long, default_value_t = 0)]
    text_pad: usize,
    /// Measured window (after warm-up).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before measuring (publishers running, nothing recorded).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    /// After publishers stop: time for the last frames to arrive before the loss check.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    drain: Duration,
    /// Record message latency for every n-th viewer only (1 = every viewer).
    #[arg(long, default_value_t = 1)]
    latency_every: usize,
    /// Mint viewer tokens locally with this secret (default: POST /v1/demo/token).
    #[arg(long)]
    jwt_secret: Option<String>,
    /// Gift backend secret for --publish gift|system.
    #[arg(long, default_value = danmaku::config::DEV_GIFT_SECRET)]
    gift_secret: String,
}

#[derive(Args, Clone, Debug)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    load: LoadArgs,
    /// Viewer connections (over all rooms).
    #[arg(long, default_value_t = 1000)]
    viewers: usize,
    #[arg(long, value_enum, default_value = "ws")]
    transport: Transport,
    /// Long-poll hold (transport poll).
    #[arg(long, default_value_t = 30_000)]
    wait_ms: u64,
}

#[derive(Args, Clone, Debug)]
struct PollArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    load: LoadArgs,
    /// Long-poll clients (keep-alive connections).
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    #[arg(long, value_enum, default_value = "follow")]
    mode: PollMode,
    #[arg(long, default_value_t = 30_000)]
    wait_ms: u64,
    /// Also hold this many WebSocket viewers in each room (not measured): with
    /// hammering clients few polls are held at any instant, so the room counts
    /// few viewers; WebSocket viewers keep it big (see fanout.big_room_threshold).
    #[arg(long, default_value_t = 0)]
    hold_ws: usize,
}

#[derive(Args, Clone, Debug)]
// A static room by default (every revalidation a 304); --drain and
// --latency-every concern viewers, which this scenario has none of.
#[command(
    mut_arg("publishers", |a| a.default_value("0")),
    mut_arg("drain", |a| a.hide(true)),
    mut_arg("latency_every", |a| a.hide(true))
)]
struct SnapshotArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    load: LoadArgs,
    /// Revalidating clients (keep-alive connections, one request in flight each).
    #[arg(long, default_value_t = 1000)]
    clients: usize,
}

#[derive(Args, Clone, Debug)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value = "r1")]
    room: String,
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    #[arg(long, default_value_t = 15_000)]
    viewers: usize,
    #[arg(long, value_enum, default_value = "ws")]
    transport: Transport,
    /// Wait after the last connection before reading RSS.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    settle: Duration,
    /// Hold the connections this long (answering pings) while sampling.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    hold: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" | "min" => v * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

const MAX_RUN: Duration = Duration::from_secs(3600);
const MAX_CONNECTIONS: usize = 100_000;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let common = match &cli.command {
        Command::Fanout(a) => a.common.clone(),
        Command::Idle(a) => a.common.clone(),
        Command::Poll(a) => a.common.clone(),
        Command::Snapshot(a) => a.common.clone(),
    };
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
        let mut spawned = None;
        let mut command = cli_command_for(&cli.command);
        if let Some(path) = &common.spawn {
            let target = runtime.block_on(Target::parse(&common.url, 1))?;
            let mut s = spawn::start(
                path,
                &target.addr.to_string(),
                common.server_config.as_deref(),
                &common.server_env,
                &server_cpus,
                run,
            )?;
            let ready = runtime.block_on(wait_healthy(&target, Duration::from_secs(15)));
            if !ready || !spawn::running(&mut s) {
                let log = std::fs::read_to_string(&s.log).unwrap_or_default();
                spawn::stop(s, Duration::from_secs(2));
                bail!("the spawned server did not become healthy:\n{log}");
            }
            eprintln!(
                "run {}/{}: spawned {} (pid {}, CPUs {}, log {})",
                run + 1,
                common.repeat,
                path.display(),
                s.pid(),
                common.server_cpus,
                s.log.display()
            );
            set_server_pid(&mut command, s.pid());
            spawned = Some(s);
        } else if common.repeat > 1 {
            eprintln!("run {}/{}", run + 1, common.repeat);
        }
        let report = runtime.block_on(async {
            match command {
                Command::Fanout(a) => {
                    let spec = LoadSpec {
                        hold_ws: 0,
                        clients: a.viewers,
                        transport: a.transport,
                        mode: PollMode::Follow,
                        wait_ms: a.wait_ms,
                    };
                    run_load("fanout", &a.common, &a.load, spec, threads).await
                }
                Command::Poll(a) => {
                    let spec = LoadSpec {
                        hold_ws: a.hold_ws,
                        clients: a.clients,
                        transport: Transport::Poll,
                        mode: a.mode,
                        wait_ms: a.wait_ms,
                    };
                    run_load("poll", &a.common, &a.load, spec, threads).await
                }
                Command::Snapshot(a) => run_snapshot(&a, threads).await,
                Command::Idle(a) => run_idle(&a, threads).await,
            }
        });
        if let Some(s) = spawned {
            spawn::stop(s, Duration::from_secs(10));
        }
        let mut report = report?;
        report["run"] = json!(run + 1);
        reports.push(report);
        if run + 1 < common.repeat {
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    let out = if reports.len() == 1 {
        reports.pop().expect("one report")
    } else {
        let medians = medians(&reports);
        print_medians(&medians, reports.len());
        json!({"runs": reports, "median": medians})
    };
    if let Some(path) = &common.json {
        std::fs::write(path, serde_json::to_string_pretty(&out)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    // Many sockets: leaving them to process exit is faster than dropping them one by one.
    std::process::exit(0);
}

fn cli_command_for(c: &Command) -> Command {
    match c {
        Command::Fanout(a) => Command::Fanout(a.clone()),
        Command::Idle(a) => Command::Idle(a.clone()),
        Command::Poll(a) => Command::Poll(a.clone()),
        Command::Snapshot(a) => Command::Snapshot(a.clone()),
    }
}

fn set_server_pid(c: &mut Command, pid: u32) {
    let common = match c {
        Command::Fanout(a) => &mut a.common,
        Command::Idle(a) => &mut a.common,
        Command::Poll(a) => &mut a.common,
        Command::Snapshot(a) => &mut a.common,
    };
    common.server_pid = Some(pid);
}

async fn wait_healthy(target: &Target, bound: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < bound {
        if let Ok((200, _)) = http_get(target, "/healthz").await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The figures whose median over runs is reported (JSON pointers).
const MEDIAN_FIELDS: &[&str] = &[
    "/deliveries_per_s",
    "/deliveries_per_s_min_1s",
    "/deliveries_per_server_cpu_s",
    "/ratio_vs_bare_2_5M_per_cpu_s",
    "/messages_per_frame",
    "/frames_per_s",
    "/bytes_per_s",
    "/server_cpu_util",
    "/tool_cpu_util",
    "/poll_responses_per_s",
    "/poll_responses_per_server_cpu_s",
    "/latency_ms/p50_ms",
    "/latency_ms/p99_ms",
    "/latency_ms/p999_ms",
    "/poll_rtt_ms/p50_ms",
    "/poll_rtt_ms/p99_ms",
    "/not_modified_per_s",
    "/not_modified_per_s_min_1s",
    "/not_modified_per_server_cpu_s",
    "/ok_per_s",
    "/request_errors",
    "/request_rtt_ms/p50_ms",
    "/request_rtt_ms/p99_ms",
    "/publish/accepted_per_s",
    "/lost",
    "/viewers_with_loss",
    "/duplicates",
    "/dropped",
    "/connected",
    "/server_rss_kb/baseline",
    "/server_rss_kb/after_connect",
    "/server_rss_kb/connected",
    "/server_rss_kb/end",
    "/server_rss_kb/peak",
    "/server_rss_kb_per_connection",
    "/server_rss_kb_per_connection_after_hold",
    "/server_cpu_util_during_hold",
];

fn medians(reports: &[serde_json::Value]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for field in MEDIAN_FIELDS {
        let mut v: Vec<f64> = reports
            .iter()
            .filter_map(|r| r.pointer(field).and_then(|x| x.as_f64()))
            .collect();
        if v.is_empty() {
            continue;
        }
        v.sort_by(f64::total_cmp);
        let median = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        out.insert(
            field.trim_start_matches('/').replace('/', "."),
            json!({"median": median, "min": v[0], "max": v[v.len() - 1], "runs": v}),
        );
    }
    serde_json::Value::Object(out)
}

fn print_medians(m: &serde_json::Value, runs: usize) {
    println!("== median of {runs} runs ==");
    if let Some(map) = m.as_object() {
        for (k, v) in map {
            let fmt = |x: f64| {
                if x.abs() >= 1e4 {
                    si(x)
                } else if x.fract() == 0.0 {
                    format!("{x:.0}")
                } else {
                    format!("{x:.3}")
                }
            };
            let runs: Vec<String> = v["runs"]
                .as_array()
                .map(|a| a.iter().map(|x| fmt(f(x))).collect())
                .unwrap_or_default();
            println!(
                "{k:<42} {:>10}   [{}]",
                fmt(f(&v["median"])),
                runs.join(", ")
            );
        }
    }
}

struct LoadSpec {
    /// WebSocket viewers held per room besides the measured clients.
    hold_ws: usize,
    clients: usize,
    transport: Transport,
    mode: PollMode,
    wait_ms: u64,
}

fn room_names(room: &str, rooms: usize) -> anyhow::Result<Vec<Arc<str>>> {
    if rooms == 0 {
        bail!("--rooms must be at least 1");
    }
    let names: Vec<Arc<str>> = if rooms == 1 {
        vec![Arc::from(room)]
    } else {
        (0..rooms)
            .map(|i| Arc::from(format!("{room}-{i}")))
            .collect()
    };
    if let Some(bad) = names.iter().find(|n| !danmaku::message::valid_room(n)) {
        bail!("room name {bad:?} is not valid (1-64 of [A-Za-z0-9_-])");
    }
    Ok(names)
}

/// Checks the connection count against the open-files limit (raised to the hard limit).
fn check_files(connections: usize) -> anyhow::Result<u64> {
    let nofile = procfs::raise_nofile();
    if connections > MAX_CONNECTIONS {
        bail!("at most {MAX_CONNECTIONS} connections per run");
    }
    if connections as u64 + 64 > nofile {
        bail!(
            "{connections} connections need more open files than this process may have ({nofile}); \
             raise `ulimit -n` (hard limit) or lower the count"
        );
    }
    Ok(nofile)
}

async fn server_pid(common: &Common, target: &Target) -> Option<u32> {
    if let Some(p) = common.server_pid {
        return Some(p);
    }
    let port = target.addr.port();
    let pid = tokio::task::spawn_blocking(move || procfs::find_listener(port))
        .await
        .ok()
        .flatten();
    match pid {
        Some(p) => eprintln!("server pid {p} (listens on port {port})"),
        None => eprintln!(
            "no server pid found for port {port}: no server CPU/RSS figures (pass --server-pid)"
        ),
    }
    pid
}

/// A plain GET; returns (status, body).
async fn http_get(target: &Target, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut conn = Conn::connect(target, 0, 64 * 1024).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        target.host
    );
    conn.write_all(req.as_bytes()).await?;
    let head = conn.read_head().await?;
    let body = match conn.read_body(&head).await? {
        Body::InBuffer(n) => conn.data()[..n].to_vec(),
        Body::Owned(v) => v,
    };
    Ok((head.status, body))
}

/// `name{labels}` → value of every sample in the server's /metrics.
async fn metrics(target: &Target) -> BTreeMap<String, f64> {
    let Ok((200, body)) = http_get(target, "/metrics").await else {
        return BTreeMap::new();
    };
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

const METRICS_OF_INTEREST: &[&str] = &[
    "danmaku_messages_ingested_total",
    "danmaku_ingest_rejections_total",
    "danmaku_messages_stored_total",
    "danmaku_frames_encoded_total",
    "danmaku_frames_sent_total",
    "danmaku_messages_delivered_total",
    "danmaku_slow_consumer_disconnects_total",
    "danmaku_ration_dropped_total",
    "danmaku_queue_low_dropped_total",
    "danmaku_store_reads_total",
    "danmaku_cache_reads_total",
    "danmaku_room_online",
    "danmaku_room_budget",
    "danmaku_hub_tick_seconds_sum",
    "danmaku_hub_tick_seconds_count",
    "danmaku_snapshot_builds_total",
    "danmaku_snapshot_responses_total",
];

fn metrics_delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter(|(k, _)| {
            METRICS_OF_INTEREST
                .iter()
                .any(|m| k.split('{').next() == Some(*m))
        })
        .filter_map(|(k, v)| {
            let gauge = k.starts_with("danmaku_room_");
            let d = if gauge {
                *v
            } else {
                v - before.get(k).copied().unwrap_or(0.0)
            };
            (d != 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

/// One point of the per-second series.
#[derive(Clone, Copy)]
struct Tick {
    at: Instant,
    counters: Snapshot,
    server: Option<ProcSample>,
    client: Option<ProcSample>,
    connected: u64,
}

fn tick_now(ctx: &Ctx, pid: Option<u32>) -> Tick {
    Tick {
        at: Instant::now(),
        counters: ctx.counters.snapshot(),
        server: pid.and_then(|p| procfs::sample(p).ok()),
        client: procfs::sample(0).ok(),
        connected: ctx.counters.connected.load(Relaxed),
    }
}

/// The counter columns of a progress line: per-second rates between two snapshots.
type Progress = fn(prev: &Snapshot, now: &Snapshot, rate: &dyn Fn(u64, u64) -> f64) -> String;

fn load_progress(p: &Snapshot, t: &Snapshot, rate: &dyn Fn(u64, u64) -> f64) -> String {
    format!(
        "deliv/s {:>9} frames/s {:>8} MB/s {:>6.1} resp/s {:>7} pub/s {:>5}",
        si(rate(p.deliveries, t.deliveries)),
        si(rate(p.frames, t.frames)),
        rate(p.bytes, t.bytes) / 1e6,
        si(rate(p.responses, t.responses)),
        si(rate(p.accepted, t.accepted)),
    )
}

fn snapshot_progress(p: &Snapshot, t: &Snapshot, rate: &dyn Fn(u64, u64) -> f64) -> String {
    format!(
        "304/s {:>8} 200/s {:>6} err/s {:>5} MB/s {:>6.1} pub/s {:>5}",
        si(rate(p.not_modified, t.not_modified)),
        si(rate(p.snapshot_ok, t.snapshot_ok)),
        si(rate(p.request_errors, t.request_errors)),
        rate(p.bytes, t.bytes) / 1e6,
        si(rate(p.accepted, t.accepted)),
    )
}

fn spawn_sampler(
    ctx: Arc<Ctx>,
    pid: Option<u32>,
    quiet: bool,
    progress: Progress,
    series: Arc<Mutex<Vec<Tick>>>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut prev = tick_now(&ctx, pid);
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            let t = tick_now(&ctx, pid);
            if !quiet {
                let dt = t.at.duration_since(prev.at).as_secs_f64();
                let rate = |a: u64, b: u64| (b - a) as f64 / dt;
                let cpu = |a: Option<ProcSample>, b: Option<ProcSample>| match (a, b) {
                    (Some(a), Some(b)) => format!("{:.0}%", 100.0 * (b.cpu_s - a.cpu_s) / dt),
                    _ => "-".into(),
                };
                eprintln!(
                    "[{:>4.0}s] conn {:>6} {} | srv cpu {:>4} rss {:>6} MB | tool cpu {:>4}",
                    started.elapsed().as_secs_f64(),
                    t.connected,
                    progress(&prev.counters, &t.counters, &rate),
                    cpu(prev.server, t.server),
                    t.server.map_or(0, |s| s.rss_kb / 1024),
                    cpu(prev.client, t.client),
                );
            }
            series.lock().push(t);
            prev = t;
        }
    })
}

fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn new_ctx(common: &Common, target: Target, latency_every: usize) -> Arc<Ctx> {
    Arc::new(Ctx {
        target,
        counters: Default::default(),
        latency: Hist::default(),
        publish_rtt: Hist::default(),
        poll_rtt: Hist::default(),
        measuring: Default::default(),
        latency_every: latency_every.max(1),
        connect_limit: Semaphore::new(common.connect_concurrency.max(1)),
        connect_timeout: common.connect_timeout,
        stop_viewers: CancellationToken::new(),
        read_buf: common.read_buf,
    })
}

fn spawn_viewer(
    ctx: &Arc<Ctx>,
    transport: Transport,
    mode: PollMode,
    wait_ms: u64,
    i: usize,
    room_idx: usize,
    room: Arc<str>,
) -> tokio::task::JoinHandle<ViewerResult> {
    let ctx = ctx.clone();
    match transport {
        Transport::Ws => tokio::spawn(viewer::ws_viewer(ctx, i, room_idx, room)),
        Transport::Sse => tokio::spawn(viewer::sse_viewer(ctx, i, room_idx, room)),
        Transport::Poll => tokio::spawn(viewer::poll_viewer(ctx, i, room_idx, room, mode, wait_ms)),
    }
}

/// Waits until every viewer connected or failed (bounded).
async fn await_connections(ctx: &Ctx, n: usize, bound: Duration) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < bound {
        let c = ctx.counters.connected.load(Relaxed) + ctx.counters.connect_errors.load(Relaxed);
        if c as usize >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed()
}

fn quantiles(h: &Hist) -> serde_json::Value {
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "count": h.count(),
        "p50_ms": ms(h.quantile(0.50)),
        "p90_ms": ms(h.quantile(0.90)),
        "p99_ms": ms(h.quantile(0.99)),
        "p999_ms": ms(h.quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let cpus = std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    json!({"cpu": cpu, "cpus": cpus, "kernel": kernel})
}

/// What a run under load starts from: the server found healthy, its pid, the
/// shared context, publisher tokens, and the figures before any load.
struct Setup {
    load_start: String,
    nofile: u64,
    target: Target,
    rooms: Vec<Arc<str>>,
    pid: Option<u32>,
    ctx: Arc<Ctx>,
    run_id: String,
    tokens: Vec<String>,
    metrics_before: BTreeMap<String, f64>,
    baseline: Option<ProcSample>,
}

/// Checks the bounds for `connections` besides the publishers, finds the
/// server, and gets the publisher tokens.
async fn setup(common: &Common, load: &LoadArgs, connections: usize) -> anyhow::Result<Setup> {
    if load.duration > MAX_RUN || load.warmup > MAX_RUN || load.drain > Duration::from_secs(60) {
        bail!("--duration and --warmup are bounded to 1 h, --drain to 60 s");
    }
    if !(load.rate > 0.0 && load.rate <= 1_000_000.0) && load.publishers > 0 {
        bail!("--rate must be within (0, 1000000]");
    }
    let load_start = loadavg();
    let nofile = check_files(connections + load.publishers)?;
    let target = Target::parse(&common.url, common.source_ips).await?;
    let rooms = room_names(&load.room, load.rooms)?;
    match http_get(&target, "/healthz").await {
        Ok((200, _)) => {}
        Ok((s, _)) => bail!("{}/healthz answered {s}", common.url),
        Err(e) => bail!("{} is not reachable: {e}", common.url),
    }
    let pid = server_pid(common, &target).await;
    let ctx = new_ctx(common, target.clone(), load.latency_every);
    let run_id = format!("{:08x}", rand::random::<u32>());

    // Publisher tokens first (a failure here should not cost a connection phase).
    let mut tokens = Vec::new();
    if load.publish == PublishKind::Danmaku {
        for p in 0..load.publishers {
            tokens.push(publisher::token(&ctx, p, &run_id, load.jwt_secret.as_deref()).await?);
        }
    } else {
        tokens.resize(load.publishers, String::new());
    }
    let metrics_before = metrics(&target).await;
    let baseline = pid.and_then(|p| procfs::sample(p).ok());
    Ok(Setup {
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
    })
}

/// The publisher tasks of a run (none with `--publishers 0`).
struct Publishers {
    tasks: Vec<tokio::task::JoinHandle<PubResult>>,
    stop: CancellationToken,
}

impl Publishers {
    /// Starts one task per token, together at `load.rate`, spread over one period.
    fn start(
        ctx: &Arc<Ctx>,
        load: &LoadArgs,
        rooms: &[Arc<str>],
        run_id: &str,
        tokens: Vec<String>,
    ) -> Publishers {
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        if load.publishers > 0 {
            let period = Duration::from_secs_f64(load.publishers as f64 / load.rate);
            let cfg = Arc::new(PubConfig {
                kind: load.publish,
                period,
                rooms: rooms.to_vec(),
                gift_secret: load.gift_secret.clone(),
                text_pad: load.text_pad,
                run_id: run_id.to_string(),
            });
            for (p, token) in tokens.into_iter().enumerate() {
                let offset = period.mul_f64(p as f64 / load.publishers as f64);
                tasks.push(tokio::spawn(publisher::publisher(
                    ctx.clone(),
                    cfg.clone(),
                    p,
                    token,
                    offset,
                    stop.clone(),
                )));
            }
        }
        Publishers { tasks, stop }
    }

    async fn stop(self) -> Vec<PubResult> {
        self.stop.cancel();
        let mut results = Vec::new();
        for p in self.tasks {
            results.push(p.await.unwrap_or_default());
        }
        results
    }
}

/// Warm-up, then the measured window: histograms are reset at its start and
/// only record while `measuring`. Returns the window's first and last ticks.
async fn measure(ctx: &Ctx, pid: Option<u32>, load: &LoadArgs) -> (Tick, Tick) {
    tokio::time::sleep(load.warmup).await;
    ctx.latency.reset();
    ctx.poll_rtt.reset();
    ctx.publish_rtt.reset();
    ctx.measuring.store(true, Relaxed);
    let a = tick_now(ctx, pid);
    tokio::time::sleep(load.duration).await;
    let b = tick_now(ctx, pid);
    ctx.measuring.store(false, Relaxed);
    (a, b)
}

/// Server CPU seconds (total, user, system) and the tool's, between two ticks.
fn cpu_between(a: &Tick, b: &Tick) -> (Option<(f64, f64, f64)>, Option<f64>) {
    let server = match (a.server, b.server) {
        (Some(x), Some(y)) => Some((
            y.cpu_s - x.cpu_s,
            y.utime_s - x.utime_s,
            y.stime_s - x.stime_s,
        )),
        _ => None,
    };
    let client = match (a.client, b.client) {
        (Some(x), Some(y)) => Some(y.cpu_s - x.cpu_s),
        _ => None,
    };
    (server, client)
}

/// The lowest and the median 1-s rate of a counter inside the window `a..b`:
/// the sustained rate, which the window's mean can hide.
fn per_second(
    series: &[Tick],
    a: &Tick,
    b: &Tick,
    counter: fn(&Snapshot) -> u64,
) -> (Option<f64>, Option<f64>) {
    let mut rates: Vec<f64> = series
        .windows(2)
        .filter(|w| w[0].at >= a.at && w[1].at <= b.at)
        .map(|w| {
            (counter(&w[1].counters) - counter(&w[0].counters)) as f64
                / w[1].at.duration_since(w[0].at).as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    let median = (!rates.is_empty()).then(|| rates[rates.len() / 2]);
    (rates.first().copied(), median)
}

/// Counts one reason (cut to 80 characters, so that similar ones group).
fn tally(reasons: &mut BTreeMap<String, u64>, reason: &str) {
    *reasons
        .entry(reason.chars().take(80).collect())
        .or_default() += 1;
}

/// The publishers' figures for the report.
fn publish_report(
    load: &LoadArgs,
    ctx: &Ctx,
    results: &[PubResult],
    accepted_per_s: f64,
) -> serde_json::Value {
    let mut refused: BTreeMap<u16, u64> = BTreeMap::new();
    let mut last_refusal = None;
    let mut total = PubResult::default();
    for p in results {
        total.sent += p.sent;
        total.accepted += p.accepted;
        total.errors += p.errors;
        total.late += p.late;
        for (k, v) in &p.refused {
            *refused.entry(*k).or_default() += v;
        }
        if p.last_refusal.is_some() {
            last_refusal = p.last_refusal.clone();
        }
    }
    json!({
        "kind": format!("{:?}", load.publish).to_lowercase(),
        "publishers": load.publishers,
        "rate_target": if load.publishers > 0 { load.rate } else { 0.0 },
        "accepted_per_s": accepted_per_s,
        "sent": total.sent,
        "accepted": total.accepted,
        "refused": refused,
        "last_refusal": last_refusal,
        "errors": total.errors,
        "late": total.late,
        "rtt_ms": quantiles(&ctx.publish_rtt),
    })
}

async fn run_load(
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
    } = setup(common, load, spec.clients + spec.hold_ws * load.rooms).await?;
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
    let mut room_max: HashMap<usize, u64> = HashMap::new();
    for r in results.iter().filter(|r| r.connected) {
        let m = room_max.entry(r.room).or_default();
        *m = (*m).max(r.track.last);
    }
    let (mut lost, mut dups, mut late, mut with_loss, mut with_dups, mut max_lost) =
        (0, 0, 0, 0, 0, 0);
    let mut ended: BTreeMap<String, u64> = BTreeMap::new();
    let mut connect_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut resets = 0;
    let mut poll_errors = 0;
    for r in &results {
        if let Some(e) = &r.connect_error {
            tally(&mut connect_errors, e);
            continue;
        }
        if let Some(e) = &r.ended {
            tally(&mut ended, e);
        }
        resets += r.resets;
        poll_errors += r.poll_errors;
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
        "poll_errors": poll_errors,
        "ended_early": ended,
        "dropped": ctx.counters.dropped.load(Relaxed),
        "server_metrics_delta": metrics_delta(&metrics_before, &metrics_after),
    });
    print_load(&report);
    Ok(report)
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn print_run(r: &serde_json::Value) {
    println!("command          {}", r["command"].as_str().unwrap_or(""));
    println!(
        "clients          {} connected / {} (connect errors: {}) in {:.1} s; {} room(s)",
        r["connected"],
        r["clients"],
        r["connect_errors"],
        f(&r["connect_seconds"]),
        r["rooms"]
    );
    println!(
        "window           {:.1} s; published {:.1}/s accepted (target {}), refused {}, errors {}",
        f(&r["window_seconds"]),
        f(&r["publish"]["accepted_per_s"]),
        r["publish"]["rate_target"],
        r["publish"]["refused"],
        r["publish"]["errors"]
    );
}

fn print_rss(r: &serde_json::Value) {
    let rss = &r["server_rss_kb"];
    println!(
        "server RSS       baseline {} MB, after connect {} MB, end {} MB, peak {} MB; tool CPU {:.1}%",
        rss["baseline"].as_u64().unwrap_or(0) / 1024,
        rss["after_connect"].as_u64().unwrap_or(0) / 1024,
        rss["end"].as_u64().unwrap_or(0) / 1024,
        rss["peak"].as_u64().unwrap_or(0) / 1024,
        100.0 * f(&r["tool_cpu_util"])
    );
}

fn print_load(r: &serde_json::Value) {
    let l = &r["latency_ms"];
    println!(
        "== {} ({}) ==",
        r["scenario"].as_str().unwrap_or(""),
        r["transport"].as_str().unwrap_or("")
    );
    print_run(r);
    println!(
        "deliveries/s     {} (1-s min {}, median {}); expected {}",
        si(f(&r["deliveries_per_s"])),
        si(f(&r["deliveries_per_s_min_1s"])),
        si(f(&r["deliveries_per_s_median_1s"])),
        si(f(&r["expected_deliveries"]) / f(&r["window_seconds"]))
    );
    println!(
        "frames/s         {} ({:.1} messages/frame)   bytes/s {:.1} MB/s",
        si(f(&r["frames_per_s"])),
        f(&r["messages_per_frame"]),
        f(&r["bytes_per_s"]) / 1e6
    );
    if !r["poll_responses_per_s"].is_null() {
        println!(
            "poll answers/s   {} ({} per server CPU-s); rtt p50 {:.2} ms p99 {:.2} ms",
            si(f(&r["poll_responses_per_s"])),
            si(f(&r["poll_responses_per_server_cpu_s"])),
            f(&r["poll_rtt_ms"]["p50_ms"]),
            f(&r["poll_rtt_ms"]["p99_ms"])
        );
    }
    println!(
        "server CPU       {:.1}% of a core (user {:.2} s, sys {:.2} s); deliveries per server CPU-s {} ({:.2}x the 2.5M bare reference)",
        100.0 * f(&r["server_cpu_util"]),
        f(&r["server_cpu_user_seconds"]),
        f(&r["server_cpu_system_seconds"]),
        si(f(&r["deliveries_per_server_cpu_s"])),
        f(&r["ratio_vs_bare_2_5M_per_cpu_s"])
    );
    print_rss(r);
    println!(
        "latency          p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  p999 {:.1} ms  max {:.1} ms  ({} samples)",
        f(&l["p50_ms"]), f(&l["p90_ms"]), f(&l["p99_ms"]), f(&l["p999_ms"]), f(&l["max_ms"]), l["count"]
    );
    println!(
        "publish rtt      p50 {:.2} ms  p99 {:.2} ms",
        f(&r["publish"]["rtt_ms"]["p50_ms"]),
        f(&r["publish"]["rtt_ms"]["p99_ms"])
    );
    if r["seq_check"].as_bool() == Some(true) {
        println!(
            "loss             {} lost ({} viewers, max {} per viewer); {} duplicates ({} viewers); {} late; {} resets",
            r["lost"], r["viewers_with_loss"], r["max_lost_per_viewer"], r["duplicates"],
            r["viewers_with_duplicates"], r["late_out_of_order"], r["resets"]
        );
    }
    println!("ended early      {} {}", r["dropped"], r["ended_early"]);
    println!("server metrics   {}", r["server_metrics_delta"]);
    if r["publish"]["last_refusal"].is_string() {
        println!("last refusal     {}", r["publish"]["last_refusal"]);
    }
}

async fn run_snapshot(a: &SnapshotArgs, threads: usize) -> anyhow::Result<serde_json::Value> {
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
    } = setup(common, load, a.clients).await?;
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
        clients.push(tokio::spawn(snapshot::snapshot_client(
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

fn print_snapshot(r: &serde_json::Value) {
    println!("== snapshot ==");
    print_run(r);
    println!(
        "304/s            {} (1-s min {}, median {}); 200/s {:.1}; errors {:.0} ({:.1}/s)",
        si(f(&r["not_modified_per_s"])),
        si(f(&r["not_modified_per_s_min_1s"])),
        si(f(&r["not_modified_per_s_median_1s"])),
        f(&r["ok_per_s"]),
        f(&r["request_errors"]),
        f(&r["request_errors_per_s"])
    );
    let l = &r["request_rtt_ms"];
    println!(
        "request rtt      p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms  max {:.2} ms  ({} samples); {:.1} MB/s",
        f(&l["p50_ms"]), f(&l["p90_ms"]), f(&l["p99_ms"]), f(&l["p999_ms"]), f(&l["max_ms"]), l["count"],
        f(&r["bytes_per_s"]) / 1e6
    );
    println!(
        "server CPU       {:.1}% of a core (user {:.2} s, sys {:.2} s); 304s per server CPU-s {}",
        100.0 * f(&r["server_cpu_util"]),
        f(&r["server_cpu_user_seconds"]),
        f(&r["server_cpu_system_seconds"]),
        si(f(&r["not_modified_per_server_cpu_s"]))
    );
    print_rss(r);
    if r["publish"]["publishers"].as_u64() > Some(0) {
        println!(
            "publish rtt      p50 {:.2} ms  p99 {:.2} ms",
            f(&r["publish"]["rtt_ms"]["p50_ms"]),
            f(&r["publish"]["rtt_ms"]["p99_ms"])
        );
    }
    println!("ended early      {} {}", r["dropped"], r["ended_early"]);
    println!("server metrics   {}", r["server_metrics_delta"]);
}

async fn run_idle(a: &IdleArgs, threads: usize) -> anyhow::Result<serde_json::Value> {
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
    println!(
        "== idle ({}) ==",
        report["transport"].as_str().unwrap_or("")
    );
    println!(
        "command          {}",
        report["command"].as_str().unwrap_or("")
    );
    println!(
        "connections      {connected}/{} in {:.1} s ({} errors {}); server gauge {online}; {} still open after the hold",
        a.viewers,
        connect_time.as_secs_f64(),
        ctx.counters.connect_errors.load(Relaxed),
        report["connect_errors"],
        still
    );
    println!(
        "server RSS       baseline {} KB, connected {} KB, after {:.0} s hold {} KB, peak {} KB",
        baseline.rss_kb, settled.rss_kb, hold_s, held.rss_kb, held.hwm_kb
    );
    println!(
        "per connection   {:.2} KB (after hold {:.2} KB); server CPU while idle {:.2}% of a core",
        delta_kb / n,
        held_delta_kb / n,
        100.0 * f(&report["server_cpu_util_during_hold"]),
    );
    println!("ended early      {}", report["ended_early"]);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_cpu_lists() {
        assert_eq!(parse_duration("20s").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3h").is_err());
        assert_eq!(spawn::parse_cpus("0").unwrap(), vec![0]);
        assert_eq!(spawn::parse_cpus("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert!(spawn::parse_cpus("").is_err());
    }

    #[test]
    fn medians_of_runs() {
        let runs = vec![
            json!({"deliveries_per_s": 3.0, "latency_ms": {"p99_ms": 10.0}}),
            json!({"deliveries_per_s": 1.0, "latency_ms": {"p99_ms": 30.0}}),
            json!({"deliveries_per_s": 2.0, "latency_ms": {"p99_ms": 20.0}}),
        ];
        let m = medians(&runs);
        assert_eq!(m["deliveries_per_s"]["median"], 2.0);
        assert_eq!(m["latency_ms.p99_ms"]["median"], 20.0);
        assert_eq!(m["latency_ms.p99_ms"]["max"], 30.0);
    }

    #[tokio::test]
    async fn only_loopback_urls() {
        assert!(Target::parse("http://127.0.0.1:8080", 1).await.is_ok());
        assert!(Target::parse("http://localhost:8080", 1).await.is_ok());
        assert!(Target::parse("http://[::1]:8080", 1).await.is_ok());
        assert!(Target::parse("http://10.1.2.3:8080", 1).await.is_err());
        assert!(Target::parse("https://127.0.0.1:8080", 1).await.is_err());
        assert!(Target::parse("http://127.0.0.1:8080/v1", 1).await.is_err());
        let t = Target::parse("http://127.0.0.1:8080", 3).await.unwrap();
        assert_eq!(t.sources.len(), 3);
    }
}
