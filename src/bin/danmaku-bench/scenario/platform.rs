//! `platform`: a platform's mix on several fronts sharing one Redis (and,
//! with separate roles, a bus and a processor). Viewers of a top room and a
//! Zipf tail (`mix`), plus quiet rooms, are spread over the fronts
//! round-robin as a load balancer would; publishers post at each size
//! class's rate through every front. Reports per front CPU, RSS and
//! deliveries, the processor's CPU and RSS, Redis commands/s by command and
//! Redis CPU over the measured window, and per class deliveries, latency
//! (publisher stamp → viewer) and losses (every viewer of a room must get
//! every seq, whichever front it is on).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::mix::{self, Class, MixSpec, Rates};
use super::{check_files, ends, new_ctx, room_max, room_names, server_pid, spawn_viewer, Ends};
use crate::cli::{PlatformArgs, MAX_RUN};
use crate::net::Target;
use crate::procfs::{self, ProcSample};
use crate::publisher::{self, PubConfig, PubResult, PublishKind};
use crate::redisinfo::{self, RedisInfo, RedisProbe};
use crate::report::{loadavg, machine, print_platform, publish_report, quantiles, si};
use crate::scrape::{http_get, metrics, metrics_delta};
use crate::stats::{Hist, Snapshot};
use crate::viewer::{Ctx, PollMode, ViewerResult};

const CLASSES: usize = Class::ALL.len();

/// The clients of one front and one class share a context: its counters and
/// latency are that front's and that class's.
struct Fleet {
    ctxs: Vec<Arc<Ctx>>,
    fronts: usize,
}

impl Fleet {
    fn ctx(&self, front: usize, class: Class) -> &Arc<Ctx> {
        &self.ctxs[front * CLASSES + class.index()]
    }

    fn sum(&self, pick: impl Fn(usize, Class) -> bool, f: fn(&Ctx) -> u64) -> u64 {
        let mut n = 0;
        for front in 0..self.fronts {
            for c in Class::ALL {
                if pick(front, c) {
                    n += f(self.ctx(front, c));
                }
            }
        }
        n
    }

    fn connected(&self) -> u64 {
        self.sum(|_, _| true, |c| c.counters.connected.load(Relaxed))
    }

    fn settled(&self) -> u64 {
        self.sum(
            |_, _| true,
            |c| c.counters.connected.load(Relaxed) + c.counters.connect_errors.load(Relaxed),
        )
    }

    fn set_measuring(&self, on: bool) {
        for c in &self.ctxs {
            if on {
                c.latency.reset();
                c.publish_rtt.reset();
                c.poll_rtt.reset();
            }
            c.measuring.store(on, Relaxed);
        }
    }

    /// One histogram of `pick`'s contexts.
    fn merged(&self, pick: impl Fn(usize, Class) -> bool, h: fn(&Ctx) -> &Hist) -> Hist {
        let out = Hist::default();
        for front in 0..self.fronts {
            for c in Class::ALL {
                if pick(front, c) {
                    out.add(h(self.ctx(front, c)));
                }
            }
        }
        out
    }
}

/// The figures at one edge of the measured window.
struct Point {
    at: Instant,
    counters: Vec<Snapshot>,
    fronts: Vec<Option<ProcSample>>,
    processor: Option<ProcSample>,
    redis: Option<RedisInfo>,
}

async fn point(
    fleet: &Fleet,
    front_pids: &[Option<u32>],
    processor: Option<u32>,
    redis: &mut Option<RedisProbe>,
) -> anyhow::Result<Point> {
    let redis = match redis {
        Some(r) => Some(r.read().await?),
        None => None,
    };
    Ok(Point {
        at: Instant::now(),
        counters: fleet.ctxs.iter().map(|c| c.counters.snapshot()).collect(),
        fronts: front_pids
            .iter()
            .map(|p| p.and_then(|p| procfs::sample(p).ok()))
            .collect(),
        processor: processor.and_then(|p| procfs::sample(p).ok()),
        redis,
    })
}

fn proc_figures(a: Option<ProcSample>, b: Option<ProcSample>, secs: f64) -> Value {
    match (a, b) {
        (Some(a), Some(b)) => json!({
            "cpu_seconds": b.cpu_s - a.cpu_s,
            "cpu_util": (b.cpu_s - a.cpu_s) / secs,
            "rss_kb": b.rss_kb,
            "rss_peak_kb": b.hwm_kb,
            "threads": b.threads,
        }),
        _ => Value::Null,
    }
}

pub async fn run(a: &PlatformArgs, threads: usize) -> anyhow::Result<Value> {
    let (common, load) = (&a.common, &a.load);
    if load.duration > MAX_RUN || load.warmup > MAX_RUN || load.drain > Duration::from_secs(60) {
        bail!("--duration and --warmup are bounded to 1 h, --drain to 60 s");
    }
    let rates = Rates([a.rate_big, a.rate_medium, a.rate_small, 0.0]);
    if rates.0.iter().any(|r| !(0.0..=100_000.0).contains(r)) {
        bail!("--rate-big, --rate-medium and --rate-small must be within [0, 100000]");
    }
    let plan = mix::plan(&MixSpec {
        viewers: a.viewers,
        classes_at: a.classes_at,
        rooms: load.rooms,
        zipf_s: a.zipf_s,
        top_share: a.top_share,
        quiet_rooms: a.quiet_rooms,
        quiet_viewers: a.quiet_viewers,
        big_min: a.big_min,
        medium_min: a.medium_min,
    })?;
    let names = room_names(&load.room, plan.viewers.len())?;
    let urls = a.front_urls();
    if urls.len() > 64 {
        bail!("at most 64 fronts");
    }
    let posting: Vec<Class> = [Class::Big, Class::Medium, Class::Small]
        .into_iter()
        .filter(|&c| rates.per_room(c) > 0.0 && !plan.rooms_of(c).is_empty())
        .collect();
    let total_viewers: usize = plan.viewers.iter().sum();
    let n_pubs = posting.len() * urls.len();
    let load_start = loadavg();
    let nofile = check_files(total_viewers + n_pubs)?;

    let mut targets = Vec::new();
    for u in &urls {
        let t = Target::parse(u, common.source_ips).await?;
        match http_get(&t, "/healthz").await {
            Ok((200, _)) => {}
            Ok((s, _)) => bail!("{u}/healthz answered {s}"),
            Err(e) => bail!("{u} is not reachable: {e}"),
        }
        targets.push(t);
    }
    let mut lookup = common.clone();
    lookup.server_pid = None;
    let mut front_pids = Vec::new();
    for (f, t) in targets.iter().enumerate() {
        front_pids.push(match a.front_pids.get(f) {
            Some(&p) => Some(p),
            None => server_pid(&lookup, t).await,
        });
    }
    let processor_pid = match (&a.processor, a.processor_pid) {
        (_, Some(p)) => Some(p),
        (Some(u), None) => server_pid(&lookup, &Target::parse(u, 1).await?).await,
        (None, None) => None,
    };
    let mut redis = match &a.redis_url {
        Some(u) => Some(RedisProbe::connect(u).await?),
        None => None,
    };

    let fleet = Fleet {
        ctxs: targets
            .iter()
            .flat_map(|t| Class::ALL.map(|_| new_ctx(common, t.clone(), load.latency_every)))
            .collect(),
        fronts: targets.len(),
    };
    let run_id = format!("{:08x}", rand::random::<u32>());
    let mut tokens = Vec::new();
    for p in 0..n_pubs {
        tokens.push(if load.publish == PublishKind::Danmaku {
            let ctx = fleet.ctx(p % urls.len(), Class::Big);
            publisher::token(ctx, p, &run_id, load.jwt_secret.as_deref()).await?
        } else {
            String::new()
        });
    }
    let mut metrics_before = Vec::new();
    for t in &targets {
        metrics_before.push(metrics(t).await);
    }
    eprintln!(
        "platform: {total_viewers} {:?} viewers in {} rooms ({} big, {} medium, {} small, {} quiet; top room {}) on {} front(s); {n_pubs} publisher(s); tool threads {threads}",
        a.transport,
        names.len(),
        plan.rooms_of(Class::Big).len(),
        plan.rooms_of(Class::Medium).len(),
        plan.rooms_of(Class::Small).len(),
        plan.rooms_of(Class::Quiet).len(),
        plan.viewers[0],
        urls.len(),
    );

    // Viewers: round-robin over the fronts, room by room.
    let mut viewers = Vec::with_capacity(total_viewers);
    let mut i = 0;
    for (r, &n) in plan.viewers.iter().enumerate() {
        for _ in 0..n {
            let ctx = fleet.ctx(i % urls.len(), plan.classes[r]);
            let room = names[r].clone();
            viewers.push(spawn_viewer(
                ctx,
                a.transport,
                PollMode::Follow,
                a.wait_ms,
                i,
                r,
                room,
            ));
            i += 1;
        }
    }
    let bound = common.connect_timeout + Duration::from_secs_f64(total_viewers as f64 / 500.0);
    let t0 = Instant::now();
    while (fleet.settled() as usize) < total_viewers && t0.elapsed() < bound {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_s = t0.elapsed().as_secs_f64();
    eprintln!(
        "connected {}/{total_viewers} in {connect_s:.1}s",
        fleet.connected()
    );
    // Hubs started, presence exchanged (a room is big by its viewers over all fronts).
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // Publishers: one per front per posting class, at the class's rate over its rooms.
    let stop_pubs = CancellationToken::new();
    let mut pubs = Vec::new();
    let mut p = 0;
    for &c in &posting {
        let rooms = plan.rooms_of(c);
        let class_rate = rates.per_room(c) * rooms.len() as f64;
        let period = Duration::from_secs_f64(urls.len() as f64 / class_rate);
        let cfg = Arc::new(PubConfig {
            kind: load.publish,
            period,
            rooms: rooms.iter().map(|&r| names[r].clone()).collect(),
            gift_secret: load.gift_secret.clone(),
            text_pad: load.text_pad,
            realistic_text: load.realistic_text,
            run_id: run_id.clone(),
        });
        for f in 0..urls.len() {
            let offset = period.mul_f64(f as f64 / urls.len() as f64);
            pubs.push(tokio::spawn(publisher::publisher(
                fleet.ctx(f, c).clone(),
                cfg.clone(),
                p,
                tokens[p].clone(),
                offset,
                stop_pubs.clone(),
            )));
            p += 1;
        }
    }
    let progress = (!common.quiet).then(|| {
        let ctxs = fleet.ctxs.clone();
        tokio::spawn(async move {
            let mut prev = (Instant::now(), 0u64, 0u64);
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let d: u64 = ctxs
                    .iter()
                    .map(|c| c.counters.deliveries.load(Relaxed))
                    .sum();
                let acc: u64 = ctxs.iter().map(|c| c.counters.accepted.load(Relaxed)).sum();
                let dt = prev.0.elapsed().as_secs_f64();
                eprintln!(
                    "deliv/s {:>9} pub/s {:>6}",
                    si((d - prev.1) as f64 / dt),
                    si((acc - prev.2) as f64 / dt)
                );
                prev = (Instant::now(), d, acc);
            }
        })
    });

    tokio::time::sleep(load.warmup).await;
    fleet.set_measuring(true);
    let pa = point(&fleet, &front_pids, processor_pid, &mut redis).await?;
    tokio::time::sleep(load.duration).await;
    let pb = point(&fleet, &front_pids, processor_pid, &mut redis).await?;
    fleet.set_measuring(false);
    stop_pubs.cancel();
    let mut pub_results: Vec<PubResult> = Vec::new();
    for t in pubs {
        pub_results.push(t.await.unwrap_or_default());
    }
    tokio::time::sleep(load.drain).await;
    for c in &fleet.ctxs {
        c.stop_viewers.cancel();
    }
    let mut results: Vec<ViewerResult> = Vec::with_capacity(viewers.len());
    for v in viewers {
        if let Ok(r) = v.await {
            results.push(r);
        }
    }
    if let Some(t) = progress {
        t.abort();
    }
    let mut metrics_after = Vec::new();
    for t in &targets {
        metrics_after.push(metrics(t).await);
    }

    // ---- figures
    let secs = pb.at.duration_since(pa.at).as_secs_f64();
    let delta = |front: usize, c: Class, f: fn(&Snapshot) -> u64| -> f64 {
        let k = front * CLASSES + c.index();
        (f(&pb.counters[k]) - f(&pa.counters[k])) as f64
    };
    let fronts_json: Vec<Value> = (0..urls.len())
        .map(|f| {
            let sum = |g: fn(&Snapshot) -> u64| Class::ALL.iter().map(|&c| delta(f, c, g)).sum::<f64>();
            let deliveries = sum(|s| s.deliveries);
            let frames = sum(|s| s.frames);
            let cpu = proc_figures(pa.fronts[f], pb.fronts[f], secs);
            let per_cpu_s = |n: f64| cpu["cpu_seconds"].as_f64().filter(|&c| c > 0.0).map(|c| n / c);
            json!({
                "url": urls[f],
                "pid": front_pids[f],
                "connected": fleet.sum(|front, _| front == f, |c| c.counters.connected.load(Relaxed)),
                "deliveries_per_s": deliveries / secs,
                "frames_per_s": frames / secs,
                "bytes_per_s": sum(|s| s.bytes) / secs,
                "accepted_per_s": sum(|s| s.accepted) / secs,
                "deliveries_per_cpu_s": per_cpu_s(deliveries),
                "frames_per_cpu_s": per_cpu_s(frames),
                "process": cpu,
                "server_metrics_delta": metrics_delta(&metrics_before[f], &metrics_after[f]),
            })
        })
        .collect();

    // Losses: per room, every viewer (on any front) must reach the room's last seq.
    let room_max = room_max(&results);
    let Ends {
        connect_errors,
        ended,
    } = ends(&results);
    let mut lost = [0u64; CLASSES];
    let mut dups = [0u64; CLASSES];
    let mut with_loss = [0u64; CLASSES];
    for r in results.iter().filter(|r| r.connect_error.is_none()) {
        let k = plan.classes[r.room].index();
        let l = r.track.lost(room_max.get(&r.room).copied().unwrap_or(0));
        lost[k] += l;
        with_loss[k] += (l > 0) as u64;
        dups[k] += r.track.dups;
    }
    let mut classes = serde_json::Map::new();
    for c in Class::ALL {
        let rooms = plan.rooms_of(c).len();
        if rooms == 0 {
            continue;
        }
        let sum = |g: fn(&Snapshot) -> u64| (0..urls.len()).map(|f| delta(f, c, g)).sum::<f64>();
        let accepted = sum(|s| s.accepted) / secs;
        let latency = fleet.merged(|_, k| k == c, |x| &x.latency);
        classes.insert(
            c.name().into(),
            json!({
                "rooms": rooms,
                "viewers": plan.viewers_of(c),
                "rate_per_room": rates.per_room(c),
                "accepted_per_s": accepted,
                "deliveries_per_s": sum(|s| s.deliveries) / secs,
                "frames_per_s": sum(|s| s.frames) / secs,
                "expected_deliveries_per_s": accepted * plan.viewers_of(c) as f64 / rooms as f64,
                "latency_ms": quantiles(&latency),
                "lost": lost[c.index()],
                "viewers_with_loss": with_loss[c.index()],
                "duplicates": dups[c.index()],
            }),
        );
    }
    let redis_json = match (&pa.redis, &pb.redis) {
        (Some(x), Some(y)) => {
            let (by, total) = redisinfo::rates(x, y, secs);
            json!({
                "commands_per_s": total,
                "by_command_per_s": by,
                "cpu_util": (y.cpu_s - x.cpu_s) / secs,
            })
        }
        _ => Value::Null,
    };
    let deliveries: f64 = (0..urls.len())
        .flat_map(|f| Class::ALL.map(|c| delta(f, c, |s| s.deliveries)))
        .sum();
    let accepted: f64 = (0..urls.len())
        .flat_map(|f| Class::ALL.map(|c| delta(f, c, |s| s.accepted)))
        .sum();
    let mut publish = publish_report(
        load,
        fleet.ctx(0, Class::Big),
        &pub_results,
        accepted / secs,
    );
    publish["publishers"] = json!(n_pubs);
    publish["rate_target"] = json!(posting
        .iter()
        .map(|&c| rates.per_room(c) * plan.rooms_of(c).len() as f64)
        .sum::<f64>());
    publish["rtt_ms"] = quantiles(&fleet.merged(|_, _| true, |x| &x.publish_rtt));
    let report = json!({
        "scenario": "platform",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": machine(),
        "tool": {"threads": threads, "cpus": procfs::affinity_of(0), "open_files": nofile},
        "transport": format!("{:?}", a.transport).to_lowercase(),
        "mix": {
            "rooms": names.len(),
            "zipf_rooms": load.rooms,
            "quiet_rooms": a.quiet_rooms,
            "top_share": a.top_share,
            "zipf_s": a.zipf_s,
            "big_min": a.big_min,
            "medium_min": a.medium_min,
            "classes_at": a.classes_at,
            "top_room_viewers": plan.viewers[0],
        },
        "clients": total_viewers,
        "connected": fleet.connected(),
        "connect_errors": connect_errors,
        "connect_seconds": connect_s,
        "window_seconds": secs,
        "deliveries_per_s": deliveries / secs,
        "fronts": fronts_json,
        "processor": {"url": a.processor, "pid": processor_pid, "process": proc_figures(pa.processor, pb.processor, secs)},
        "redis": redis_json,
        "classes": classes,
        "publish": publish,
        "lost": lost.iter().sum::<u64>(),
        "viewers_with_loss": with_loss.iter().sum::<u64>(),
        "duplicates": dups.iter().sum::<u64>(),
        "dropped": fleet.sum(|_, _| true, |c| c.counters.dropped.load(Relaxed)),
        "ended_early": ended,
        "loadavg_at_start": load_start,
    });
    print_platform(&report);
    Ok(report)
}
