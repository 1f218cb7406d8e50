//! The scenarios, one module each, and what they share: finding the server,
//! the bounds of a run, the client context, starting viewers and publishers.

pub mod fanout;
pub mod idle;
pub mod mix;
pub mod platform;
pub mod poll;
pub mod snapshot;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::churn::Churn;
use crate::cli::{Common, LoadArgs, MAX_CONNECTIONS, MAX_RUN};
use crate::net::Target;
use crate::procfs::{self, ProcSample};
use crate::publisher::{self, PubConfig, PubResult, PublishKind};
use crate::report::{loadavg, tally};
use crate::scrape::{http_get, metrics};
use crate::stats::Hist;
use crate::viewer::{self, Ctx, PollMode, Transport, ViewerResult};

/// What a run under load starts from: the server found healthy, its pid, the
/// shared context, publisher tokens, and the figures before any load.
pub struct Setup {
    pub load_start: String,
    pub nofile: u64,
    pub target: Target,
    pub rooms: Vec<Arc<str>>,
    pub pid: Option<u32>,
    pub ctx: Arc<Ctx>,
    pub run_id: String,
    pub tokens: Vec<String>,
    pub metrics_before: BTreeMap<String, f64>,
    pub baseline: Option<ProcSample>,
}

/// Checks the bounds for `connections` besides the publishers, finds the
/// server, and gets the publisher tokens.
/// `churn`: what the run's WebSocket viewers do besides reading.
pub async fn setup(
    common: &Common,
    load: &LoadArgs,
    connections: usize,
    churn: Churn,
) -> anyhow::Result<Setup> {
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
    let mut ctx = new_ctx(common, target.clone(), load.latency_every);
    Arc::get_mut(&mut ctx).expect("a new context").churn = churn;
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

pub fn room_names(room: &str, rooms: usize) -> anyhow::Result<Vec<Arc<str>>> {
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
pub fn check_files(connections: usize) -> anyhow::Result<u64> {
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

pub async fn server_pid(common: &Common, target: &Target) -> Option<u32> {
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

pub fn new_ctx(common: &Common, target: Target, latency_every: usize) -> Arc<Ctx> {
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
        compress: common.compress,
        churn: Churn::default(),
    })
}

pub fn spawn_viewer(
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
pub async fn await_connections(ctx: &Ctx, n: usize, bound: Duration) -> Duration {
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

/// The publisher tasks of a run (none with `--publishers 0`).
pub struct Publishers {
    tasks: Vec<tokio::task::JoinHandle<PubResult>>,
    stop: CancellationToken,
}

impl Publishers {
    /// Starts one task per token, together at `load.rate`, spread over one period.
    pub fn start(
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
                realistic_text: load.realistic_text,
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

    pub async fn stop(self) -> Vec<PubResult> {
        self.stop.cancel();
        let mut results = Vec::new();
        for p in self.tasks {
            results.push(p.await.unwrap_or_default());
        }
        results
    }
}

/// Each room's highest seq seen by any connected viewer: where every viewer
/// of the room must get to (lost = what it did not get on the way).
pub fn room_max(results: &[ViewerResult]) -> HashMap<usize, u64> {
    let mut max: HashMap<usize, u64> = HashMap::new();
    for r in results.iter().filter(|r| r.connected) {
        let m = max.entry(r.room).or_default();
        *m = (*m).max(r.track.last);
    }
    max
}

/// The viewers' connect errors and early ends, by reason.
pub struct Ends {
    pub connect_errors: BTreeMap<String, u64>,
    pub ended: BTreeMap<String, u64>,
}

pub fn ends(results: &[ViewerResult]) -> Ends {
    let mut e = Ends {
        connect_errors: BTreeMap::new(),
        ended: BTreeMap::new(),
    };
    for r in results {
        if let Some(why) = &r.connect_error {
            tally(&mut e.connect_errors, why);
        } else if let Some(why) = &r.ended {
            tally(&mut e.ended, why);
        }
    }
    e
}
