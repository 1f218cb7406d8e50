//! The measured window and the per-second series: a sampler task records the
//! client counters and the server's and the tool's CPU and RSS once a second
//! (and prints a progress line), and the figures of a run are taken between
//! two of these samples.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::cli::LoadArgs;
use crate::procfs::{self, ProcSample};
use crate::report::si;
use crate::stats::Snapshot;
use crate::viewer::Ctx;

/// One point of the per-second series.
#[derive(Clone, Copy)]
pub struct Tick {
    pub at: Instant,
    pub counters: Snapshot,
    pub server: Option<ProcSample>,
    pub client: Option<ProcSample>,
    pub connected: u64,
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
pub type Progress = fn(prev: &Snapshot, now: &Snapshot, rate: &dyn Fn(u64, u64) -> f64) -> String;

pub fn load_progress(p: &Snapshot, t: &Snapshot, rate: &dyn Fn(u64, u64) -> f64) -> String {
    format!(
        "deliv/s {:>9} frames/s {:>8} MB/s {:>6.1} resp/s {:>7} pub/s {:>5}",
        si(rate(p.deliveries, t.deliveries)),
        si(rate(p.frames, t.frames)),
        rate(p.bytes, t.bytes) / 1e6,
        si(rate(p.responses, t.responses)),
        si(rate(p.accepted, t.accepted)),
    )
}

pub fn snapshot_progress(p: &Snapshot, t: &Snapshot, rate: &dyn Fn(u64, u64) -> f64) -> String {
    format!(
        "304/s {:>8} 200/s {:>6} err/s {:>5} MB/s {:>6.1} pub/s {:>5}",
        si(rate(p.not_modified, t.not_modified)),
        si(rate(p.snapshot_ok, t.snapshot_ok)),
        si(rate(p.request_errors, t.request_errors)),
        rate(p.bytes, t.bytes) / 1e6,
        si(rate(p.accepted, t.accepted)),
    )
}

pub fn spawn_sampler(
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

/// Warm-up, then the measured window: histograms are reset at its start and
/// only record while `measuring`. Returns the window's first and last ticks.
pub async fn measure(ctx: &Ctx, pid: Option<u32>, load: &LoadArgs) -> (Tick, Tick) {
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
pub fn cpu_between(a: &Tick, b: &Tick) -> (Option<(f64, f64, f64)>, Option<f64>) {
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
pub fn per_second(
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
