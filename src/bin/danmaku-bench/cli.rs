//! The command line: one subcommand per scenario, the options every scenario
//! shares (`Common`), the load options of the scenarios with publishers
//! (`LoadArgs`), and the bounds every run keeps.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::publisher::PublishKind;
use crate::viewer::{PollMode, Transport};

#[derive(Parser)]
#[command(
    name = "danmaku-bench",
    version,
    about = "Load tool for a local danmaku server (loopback only; bounded in time and count)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Clone)]
pub enum Command {
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
    /// A platform's mix on several fronts sharing one Redis: a top room and a
    /// Zipf tail, message rates by room size; per front CPU and RSS, Redis
    /// commands/s, deliveries/s, latency by room-size class, losses.
    Platform(PlatformArgs),
}

impl Command {
    /// The options every scenario shares.
    pub fn common(&self) -> &Common {
        match self {
            Command::Fanout(a) => &a.common,
            Command::Idle(a) => &a.common,
            Command::Poll(a) => &a.common,
            Command::Snapshot(a) => &a.common,
            Command::Platform(a) => &a.common,
        }
    }

    pub fn common_mut(&mut self) -> &mut Common {
        match self {
            Command::Fanout(a) => &mut a.common,
            Command::Idle(a) => &mut a.common,
            Command::Poll(a) => &mut a.common,
            Command::Snapshot(a) => &mut a.common,
            Command::Platform(a) => &mut a.common,
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct Common {
    /// Server base URL; must resolve to loopback.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The server's pid for CPU and RSS (default: whoever listens on the URL's port).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Runtime worker threads (0 = the CPUs this process may run on; 1 = current-thread runtime).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Bound on opening one connection (TCP + upgrade).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Spread connections over 127.0.0.1..=127.0.0.N (more ephemeral ports).
    #[arg(long, default_value_t = 1)]
    pub source_ips: usize,
    /// Initial read buffer per connection (bytes; grows to fit a frame).
    #[arg(long, default_value_t = 8192)]
    pub read_buf: usize,
    /// WebSocket viewers offer permessage-deflate (as browsers do) and
    /// inflate compressed frames; bytes/s and bytes/delivery are wire bytes.
    #[arg(long)]
    pub compress: bool,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No per-second progress lines.
    #[arg(long)]
    pub quiet: bool,
    /// Run the scenario this many times and report medians (with --spawn, on a
    /// fresh server each time).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Start this server binary for each run (`PATH serve --listen <URL's address>`;
    /// `platform`: `PATH processor` on --processor and `PATH front` on each
    /// --front), pinned to --server-cpus, and stop it afterwards.
    #[arg(long)]
    pub spawn: Option<PathBuf>,
    /// CPUs for the spawned server (e.g. "0").
    #[arg(long, default_value = "0")]
    pub server_cpus: String,
    /// --config for the spawned server.
    #[arg(long)]
    pub server_config: Option<PathBuf>,
    /// Environment for the spawned server, KEY=VALUE (repeatable).
    #[arg(long = "server-env")]
    pub server_env: Vec<String>,
}

#[derive(Args, Clone, Debug)]
pub struct LoadArgs {
    /// Room name (with --rooms > 1: the prefix of <room>-0, <room>-1, …).
    #[arg(long, default_value = "r1")]
    pub room: String,
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Publisher connections (each posts at rate / publishers).
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Messages per second over all publishers (spread over the rooms).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// What publishers send: viewer danmaku (token) or signed events.
    #[arg(long, value_enum, default_value = "danmaku")]
    pub publish: PublishKind,
    /// Extra characters of text per message (the stamp is ~25).
    #[arg(long, default_value_t = 0)]
    pub text_pad: usize,
    /// Text after the stamp: a realistic mixed Chinese/English danmaku line
    /// from a fixed corpus (publisher.rs `CORPUS`) instead of `x` padding.
    #[arg(long)]
    pub realistic_text: bool,
    /// Measured window (after warm-up).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before measuring (publishers running, nothing recorded).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// After publishers stop: time for the last frames to arrive before the loss check.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Record message latency for every n-th viewer only (1 = every viewer).
    #[arg(long, default_value_t = 1)]
    pub latency_every: usize,
    /// Mint viewer tokens locally with this secret (default: POST /v1/demo/token).
    #[arg(long)]
    pub jwt_secret: Option<String>,
    /// Gift backend secret for --publish gift|system.
    #[arg(long, default_value = danmaku::config::DEV_GIFT_SECRET)]
    pub gift_secret: String,
}

#[derive(Args, Clone, Debug)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Viewer connections (over all rooms).
    #[arg(long, default_value_t = 1000)]
    pub viewers: usize,
    #[arg(long, value_enum, default_value = "ws")]
    pub transport: Transport,
    /// Long-poll hold (transport poll).
    #[arg(long, default_value_t = 30_000)]
    pub wait_ms: u64,
    /// The first N WebSocket viewers read as on a bad link: a 4 KiB receive
    /// buffer, a second of reading, then --slow-stall of none. The server cuts
    /// them (docs/protocol.md §5) and they resume by cursor; their cuts are
    /// reported apart (`cuts_of_slow_viewers`) and they must lose nothing.
    #[arg(long, default_value_t = 0)]
    pub slow_viewers: usize,
    #[arg(long, default_value = "12s", value_parser = parse_duration)]
    pub slow_stall: Duration,
    /// Every WebSocket viewer leaves (close 1000) and resumes by cursor this
    /// often while measuring, staggered over the viewers (0s: never).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub resume_every: Duration,
}

#[derive(Args, Clone, Debug)]
pub struct PollArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Long-poll clients (keep-alive connections).
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    #[arg(long, value_enum, default_value = "follow")]
    pub mode: PollMode,
    #[arg(long, default_value_t = 30_000)]
    pub wait_ms: u64,
    /// Also hold this many WebSocket viewers in each room (not measured): with
    /// hammering clients few polls are held at any instant, so the room counts
    /// few viewers; WebSocket viewers keep it big (see fanout.big_room_threshold).
    #[arg(long, default_value_t = 0)]
    pub hold_ws: usize,
}

#[derive(Args, Clone, Debug)]
// A static room by default (every revalidation a 304); --drain and
// --latency-every concern viewers, which this scenario has none of.
#[command(
    mut_arg("publishers", |a| a.default_value("0")),
    mut_arg("drain", |a| a.hide(true)),
    mut_arg("latency_every", |a| a.hide(true))
)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Revalidating clients (keep-alive connections, one request in flight each).
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
}

#[derive(Args, Clone, Debug)]
// Publishers follow the mix: one per front per size class that posts, at the
// class's rate (--rate-big, --rate-medium, --rate-small).
#[command(
    mut_arg("room", |a| a.default_value("plat")),
    mut_arg("rooms", |a| a.default_value("50").help("Rooms of the Zipf mix (quiet rooms come on top)")),
    mut_arg("publishers", |a| a.hide(true)),
    mut_arg("rate", |a| a.hide(true))
)]
pub struct PlatformArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Front base URLs (repeatable or comma-separated; default --url): viewers
    /// and publishers are spread over them round-robin, as a load balancer does.
    #[arg(long = "front", value_delimiter = ',')]
    pub fronts: Vec<String>,
    /// The processor's base URL: started there with --spawn; its CPU and RSS are reported.
    #[arg(long)]
    pub processor: Option<String>,
    /// Redis of the live store: commands/s by command (INFO commandstats) and
    /// its CPU over the measured window.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Viewer connections of the Zipf rooms (over all fronts).
    #[arg(long, default_value_t = 2000)]
    pub viewers: usize,
    /// Share of the viewers in the top room (0 = plain Zipf over all rooms).
    #[arg(long, default_value_t = 0.4)]
    pub top_share: f64,
    /// Zipf exponent of the other rooms (viewers of rank r ∝ 1/r^s).
    #[arg(long, default_value_t = 1.0)]
    pub zipf_s: f64,
    /// Class the rooms (so their rates) as they are with this many viewers
    /// (default --viewers): more viewers in the same rooms at the same rates.
    #[arg(long)]
    pub classes_at: Option<usize>,
    /// Extra rooms with --quiet-viewers viewers each and nothing posted.
    #[arg(long, default_value_t = 0)]
    pub quiet_rooms: usize,
    #[arg(long, default_value_t = 2)]
    pub quiet_viewers: usize,
    /// Rooms with at least this many viewers are big (match the server's
    /// fanout.big_room_threshold to see its big-room reads).
    #[arg(long, default_value_t = 100)]
    pub big_min: usize,
    /// Rooms with at least this many viewers (and below --big-min) are medium; the rest small.
    #[arg(long, default_value_t = 10)]
    pub medium_min: usize,
    /// Messages per second into each big room.
    #[arg(long, default_value_t = 20.0)]
    pub rate_big: f64,
    /// Messages per second into each medium room.
    #[arg(long, default_value_t = 2.0)]
    pub rate_medium: f64,
    /// Messages per second into each small room.
    #[arg(long, default_value_t = 0.5)]
    pub rate_small: f64,
    #[arg(long, value_enum, default_value = "ws")]
    pub transport: Transport,
    /// Long-poll hold (transport poll).
    #[arg(long, default_value_t = 30_000)]
    pub wait_ms: u64,
    /// Pids of the fronts (in --front order) and of the processor, set by --spawn
    /// (otherwise found by the port they listen on).
    #[arg(skip)]
    pub front_pids: Vec<u32>,
    #[arg(skip)]
    pub processor_pid: Option<u32>,
}

impl PlatformArgs {
    /// The fronts' URLs: --front, else --url.
    pub fn front_urls(&self) -> Vec<String> {
        if self.fronts.is_empty() {
            vec![self.common.url.clone()]
        } else {
            self.fronts.clone()
        }
    }
}

impl Command {
    /// The processes `--spawn` starts for a run, in start order: (role, URL).
    pub fn servers(&self) -> Vec<(&'static str, String)> {
        match self {
            Command::Platform(a) => a
                .processor
                .iter()
                .map(|u| ("processor", u.clone()))
                .chain(a.front_urls().into_iter().map(|u| ("front", u)))
                .collect(),
            other => vec![("serve", other.common().url.clone())],
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value = "r1")]
    pub room: String,
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    #[arg(long, default_value_t = 15_000)]
    pub viewers: usize,
    #[arg(long, value_enum, default_value = "ws")]
    pub transport: Transport,
    /// Wait after the last connection before reading RSS.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Hold the connections this long (answering pings) while sampling.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub hold: Duration,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
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

pub const MAX_RUN: Duration = Duration::from_secs(3600);
pub const MAX_CONNECTIONS: usize = 100_000;

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
        assert_eq!(crate::spawn::parse_cpus("0").unwrap(), vec![0]);
        assert_eq!(crate::spawn::parse_cpus("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert!(crate::spawn::parse_cpus("").is_err());
    }
}
