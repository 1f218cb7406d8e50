//! Configuration: the embedded `config/default.toml`, an optional file on top,
//! then environment overrides (the fixed names of the README and the generic
//! `DANMAKU_<SECTION>__<KEY>` form). Secrets can come from files.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

mod archive;
mod cidr;
mod engine;
mod env;
pub mod show;
mod viewing;

pub use archive::ArchiveConfig;
pub use cidr::{any_contains, BadCidr, Cidr};
pub use engine::{BusEngine, StoreEngine};
use env::{apply_env, merge, rename_legacy_keys};
pub use viewing::{FanoutConfig, PollConfig, RationConfig, SnapshotConfig};

pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Development secrets used only when none are configured; loud in the log and
/// refused on non-loopback addresses.
pub const DEV_JWT_SECRET: &str = "danmaku-dev-jwt-secret-not-for-production";
pub const DEV_GIFT_SECRET: &str = "danmaku-dev-gift-secret-not-for-production";

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub ingest: IngestConfig,
    pub bus: BusConfig,
    pub store: StoreConfig,
    pub processor: ProcessorConfig,
    pub gears: GearConfig,
    pub fanout: FanoutConfig,
    pub ration: RationConfig,
    pub poll: PollConfig,
    pub snapshot: SnapshotConfig,
    pub archive: ArchiveConfig,
    pub log: LogConfig,
}

/// Logs (stdout); the filter is `DANMAKU_LOG` (`info`, `danmaku=debug`, …).
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `"text"` (human-readable lines) or `"json"` (one JSON object a line).
    pub format: String,
    /// One `danmaku::access` line per HTTP request (`http/access_log.rs`).
    pub access: bool,
}

impl LogConfig {
    pub fn json(&self) -> bool {
        self.format == "json"
    }
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    /// When set, `/metrics`, `/readyz` and every `/v1/admin/` route are
    /// served on this address only (a port the load balancer does not
    /// expose); empty: everything on `listen`.
    pub internal_listen: String,
    /// Browser origins (exact, or `*`) allowed to open WebSocket / SSE
    /// streams (empty: any) and answered with CORS headers (empty: none).
    pub allowed_origins: Vec<String>,
    /// Peers whose `Forwarded` / `X-Forwarded-For` (and PROXY header) name
    /// the client; everyone else is keyed by its socket address.
    pub trusted_proxies: Vec<Cidr>,
    /// Every connection starts with a PROXY protocol v1/v2 header (from a
    /// trusted proxy; others are closed).
    pub proxy_protocol: bool,
    /// Open viewer connections (streams + held polls) per client address.
    pub max_viewer_connections_per_ip: usize,
    pub node_id: String,
    pub max_body_bytes: usize,
    pub shutdown_grace_ms: u64,
    /// On shutdown, `/readyz` answers 503 this long before work stops.
    pub drain_ms: u64,
    /// Shutdown closes tell each viewer a random wait up to this (ms).
    pub reconnect_spread_ms: u64,
    /// Tests only: this host's clock is off by this much (ms; `crate::clock`).
    pub clock_offset_ms: i64,
    /// Deadline for a request head, and for a keep-alive connection's next one.
    pub header_read_timeout_ms: u64,
    /// Deadline for a whole request body once its head has arrived.
    pub body_read_timeout_ms: u64,
    pub max_header_bytes: usize,
    /// Open TCP connections on this node (0: the open-file limit less 512).
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// `SO_SNDBUF` of every accepted socket (0: the kernel's autotuning). A
    /// bound on the kernel memory a viewer that stops reading holds, and on
    /// how long it takes to notice it: autotuned loopback or LAN buffers hold
    /// megabytes, minutes of a quiet room.
    pub socket_send_buffer_bytes: usize,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub jwt_secret: String,
    pub jwt_secret_file: String,
    pub jwt_leeway_s: u64,
    /// The platform's public keys for RS/ES viewer tokens (a JWKS or PEM
    /// file, `auth::keys`); empty: HS256 tokens only. Re-read when it changes.
    pub viewer_keys_file: String,
    pub gift_secrets: Vec<String>,
    pub gift_secrets_file: String,
    pub signature_window_s: u64,
    /// Also accept the old `sha256=` gift signature (not bound to the room or
    /// the Idempotency-Key, so replayable); a warning is logged when on.
    pub accept_legacy_signatures: bool,
    pub admin_token: String,
    pub demo_tokens: bool,
}

// Secrets never reach logs, even through `{:?}`.
impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("jwt_secret", &"<redacted>")
            .field(
                "gift_secrets",
                &format!("<{} redacted>", self.gift_secrets.len()),
            )
            .field("admin_token", &"<redacted>")
            .field("jwt_leeway_s", &self.jwt_leeway_s)
            .field("viewer_keys_file", &self.viewer_keys_file)
            .field("signature_window_s", &self.signature_window_s)
            .field("accept_legacy_signatures", &self.accept_legacy_signatures)
            .field("demo_tokens", &self.demo_tokens)
            .finish()
    }
}

impl AuthConfig {
    pub fn uses_dev_jwt_secret(&self) -> bool {
        self.jwt_secret == DEV_JWT_SECRET
    }
    pub fn uses_dev_gift_secret(&self) -> bool {
        self.gift_secrets.iter().any(|s| s == DEV_GIFT_SECRET)
    }
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    pub max_text_chars: usize,
    pub blocked_words: Vec<String>,
    pub whitelist_users: Vec<String>,
    pub user_rate_per_s: f64,
    pub user_burst: f64,
    pub ip_rate_per_s: f64,
    pub ip_burst: f64,
    pub dedup_ttl_s: u64,
    pub idempotency_ttl_s: u64,
    /// Low messages of a (room, kind) are refused (`429 overloaded`) while
    /// the processor measures that (room, kind) this far behind (ms).
    pub shed_low_delay_ms: u64,
    /// The same for high messages; whitelist is never shed by delay.
    pub shed_high_delay_ms: u64,
    /// Last guard: with this many messages waiting on the bus (all rooms),
    /// low and high are refused (`503 bus_full`); whitelist still goes
    /// until the bus itself is full (`bus.capacity`, Kafka's producer queue).
    pub bus_full_pending: u64,
    /// Viewers whose token's `vip` claim is at least this post as high
    /// (a room's `vip_high_level` setting overrides it); 0: VIPs are not ranked.
    pub vip_high_level: u32,
    /// A gift event may ask for the whitelist bucket; when false such a gift is high.
    pub events_may_request_whitelist: bool,
    /// Most events in one `POST /v1/rooms/{room}/events:batch`.
    pub max_batch_events: usize,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// `"memory"` (embedded) or `"kafka"` (needs `kafka_brokers`).
    pub engine: BusEngine,
    pub partitions: u32,
    pub capacity: usize,
    /// Kafka bootstrap servers, `host:port[,host:port…]` (`DANMAKU_KAFKA_BROKERS`).
    #[serde(default)]
    pub kafka_brokers: String,
    /// Kafka topic of the ingest stream; created with `partitions` if missing.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Kafka consumer group of the processors.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Replication factor used when the topic is created (-1: broker default).
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// A publish not acknowledged by Kafka within this fails (the client gets 503).
    #[serde(default = "default_publish_timeout_ms")]
    pub publish_timeout_ms: u64,
    /// Kafka idempotent producer (`enable.idempotence`): retries never
    /// duplicate or reorder a partition. Off only for brokers without it.
    #[serde(default = "default_idempotence")]
    pub idempotence: bool,
    /// Kafka topic of the stored log (processor → archiver, docs/replay.md);
    /// empty: derived from `topic` ([`BusConfig::stored`]).
    #[serde(default)]
    pub stored_topic: String,
    /// Kafka consumer group of the archivers on the stored log; empty:
    /// derived from `group_id`.
    #[serde(default)]
    pub archiver_group_id: String,
}

impl BusConfig {
    /// The stored log's bus: the same brokers and partition count, its own
    /// topic and consumer group. Unless set, `danmaku-ingest` →
    /// `danmaku-stored` and `danmaku-processor` → `danmaku-archiver` (any
    /// other name gets `-stored` / `-archiver` appended), so that a test's
    /// own topic gets its own stored topic too.
    pub fn stored(&self) -> BusConfig {
        fn derive(name: &str, tail: &str, with: &str) -> String {
            match name.strip_suffix(tail) {
                Some(head) => format!("{head}{with}"),
                None => format!("{name}-{with}"),
            }
        }
        let mut c = self.clone();
        c.topic = if self.stored_topic.trim().is_empty() {
            derive(&self.topic, "ingest", "stored")
        } else {
            self.stored_topic.trim().to_string()
        };
        c.group_id = if self.archiver_group_id.trim().is_empty() {
            derive(&self.group_id, "processor", "archiver")
        } else {
            self.archiver_group_id.trim().to_string()
        };
        c
    }
}

fn default_topic() -> String {
    "danmaku-ingest".into()
}
fn default_group_id() -> String {
    "danmaku-processor".into()
}
fn default_replication_factor() -> i32 {
    1
}
fn default_publish_timeout_ms() -> u64 {
    5000
}
fn default_idempotence() -> bool {
    true
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `"memory"` (embedded) or `"redis"` (needs `redis_url`).
    pub engine: StoreEngine,
    /// Redis URL for `engine = "redis"` (`DANMAKU_REDIS_URL`).
    #[serde(default)]
    pub redis_url: String,
    /// Replay cache tier (`docs/architecture.md`, "Replay"): a Redis instance separate from the
    /// live one (`DANMAKU_REPLAY_REDIS_URL`); empty → no Redis tier.
    #[serde(default)]
    pub replay_redis_url: String,
    pub max_per_bucket: usize,
    pub max_age_s: u64,
    pub dedup_window: usize,
    pub room_ttl_s: u64,
    /// How often a node checks the control change log for notices it missed
    /// (one command while nothing changed; `docs/architecture.md`, "Control plane").
    pub control_catch_up_ms: u64,
    /// Most bytes of message JSON one "room updated" notice carries; rooms
    /// past it are notified by name and fronts read them (0: names only).
    pub notice_max_bytes: usize,
    /// Redis engine: an append counts as stored only once `WAIT` reports
    /// this many replicas hold it (0: no `WAIT`); else it fails and the
    /// processor retries it, committing nothing (`docs/architecture.md`,
    /// "Failover").
    #[serde(default)]
    pub redis_wait_replicas: usize,
    /// How long one `WAIT` waits for those replicas (1..=4000 ms).
    #[serde(default = "default_redis_wait_timeout_ms")]
    pub redis_wait_timeout_ms: u64,
    /// Test fault: every nth notice is dropped on purpose (0: never).
    pub fault_drop_notice_every: u64,
}

fn default_redis_wait_timeout_ms() -> u64 {
    500
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    pub batch_max: usize,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct GearConfig {
    /// Delay (ms) past which a (room, kind) shifts up into gear 2, 3, 4;
    /// it shifts down only below half of the threshold that raised it.
    pub up_ms: [u64; 3],
    /// Least time between two shifts of one (room, kind).
    pub min_dwell_ms: u64,
    /// Partitions one (room, kind) spreads over in gears 2 and 4 (0 = all).
    pub spread_partitions: u32,
    /// Parallel writers per (room, kind[, partition]) in gears 3 and 4.
    pub workers: usize,
    /// How long a published gear stays valid for fronts without a refresh.
    pub share_ttl_s: u64,
}

impl Config {
    /// Defaults, then `file` (if any), then `env`, then secrets from files.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        Ok(Config::load_effective(file, env)?.0)
    }

    /// [`Config::load`], also returning the effective table (defaults, file
    /// and environment layered; secrets files not read into it): what
    /// `danmaku check` prints, redacted ([`show::redacted_toml`]).
    pub fn load_effective(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<(Config, toml::Table)> {
        let mut table: toml::Table = DEFAULT_TOML.parse().context("embedded default.toml")?;
        // `<section>.engine` keys the operator named: the embedded default's
        // "memory" does not count as a choice (engine::select_implied).
        let mut named: Vec<String> = Vec::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config {}", path.display()))?;
            let mut over: toml::Table = text
                .parse()
                .with_context(|| format!("parsing config {}", path.display()))?;
            rename_legacy_keys(&mut over);
            show::check_shape(&table, &over)
                .with_context(|| format!("config {}", path.display()))?;
            for (section, value) in &over {
                if value.as_table().is_some_and(|t| t.contains_key("engine")) {
                    named.push(format!("{section}.engine"));
                }
            }
            merge(&mut table, over);
        }
        for (name, value) in env {
            if let Some(path) = apply_env(&mut table, &name, &value)? {
                named.push(path);
            }
        }
        engine::select_implied(&mut table, |section| {
            named.iter().any(|p| *p == format!("{section}.engine"))
        })
        .map_err(anyhow::Error::msg)?;
        let mut config: Config = toml::Value::Table(table.clone())
            .try_into()
            .context("invalid configuration")?;
        config.resolve_secrets()?;
        config.check()?;
        Ok((config, table))
    }

    /// The embedded defaults alone (tests start from this).
    pub fn embedded() -> Config {
        Config::load(None, std::iter::empty()).expect("embedded defaults are valid")
    }

    fn resolve_secrets(&mut self) -> anyhow::Result<()> {
        let auth = &mut self.auth;
        if !auth.jwt_secret_file.is_empty() {
            auth.jwt_secret = read_secret_file(&auth.jwt_secret_file)?;
        }
        if !auth.gift_secrets_file.is_empty() {
            auth.gift_secrets = read_secret_file(&auth.gift_secrets_file)?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
        }
        if auth.jwt_secret.is_empty() {
            auth.jwt_secret = DEV_JWT_SECRET.to_string();
        }
        if auth.gift_secrets.is_empty() {
            auth.gift_secrets = vec![DEV_GIFT_SECRET.to_string()];
        }
        Ok(())
    }

    fn check(&self) -> anyhow::Result<()> {
        let addr = self.listen_addr()?;
        self.internal_listen_addr()?;
        let dev = self.auth.uses_dev_jwt_secret() || self.auth.uses_dev_gift_secret();
        if dev && !addr.ip().is_loopback() {
            bail!(
                "refusing to listen on {addr} with development secrets: set DANMAKU_JWT_SECRET and DANMAKU_GIFT_SECRETS"
            );
        }
        if self.auth.jwt_secret.len() < 16 {
            bail!("auth.jwt_secret must be at least 16 bytes");
        }
        let server = &self.server;
        if server.header_read_timeout_ms == 0 || server.body_read_timeout_ms == 0 {
            bail!(
                "server.header_read_timeout_ms and server.body_read_timeout_ms must be at least 1"
            );
        }
        if server.max_header_bytes < 1024 {
            bail!("server.max_header_bytes must be at least 1024");
        }
        if server.socket_send_buffer_bytes != 0
            && !(4096..=16 << 20).contains(&server.socket_send_buffer_bytes)
        {
            bail!("server.socket_send_buffer_bytes must be 0 (the kernel's) or within 4096..=16777216");
        }
        if server.max_connections_per_ip == 0 || server.max_viewer_connections_per_ip == 0 {
            bail!("server.max_connections_per_ip and max_viewer_connections_per_ip must be at least 1");
        }
        if server.proxy_protocol && server.trusted_proxies.is_empty() {
            bail!("server.proxy_protocol needs server.trusted_proxies (the balancers that send the header)");
        }
        if self.fanout.tick_ms == 0 || self.fanout.tick_ms > 10_000 {
            bail!("fanout.tick_ms must be within 1..=10000");
        }
        if !(1..=9).contains(&self.fanout.ws_compression_level) {
            bail!("fanout.ws_compression_level must be within 1..=9");
        }
        if !(0.0..=1.0).contains(&self.ration.high_share) {
            bail!("ration.high_share must be within 0..=1");
        }
        if !(self.gears.up_ms[0] < self.gears.up_ms[1] && self.gears.up_ms[1] < self.gears.up_ms[2])
        {
            bail!("gears.up_ms must be increasing");
        }
        if self.gears.workers == 0 {
            bail!("gears.workers must be at least 1");
        }
        if self.bus.partitions == 0 {
            bail!("bus.partitions must be at least 1");
        }
        if self.ingest.max_text_chars == 0 {
            bail!("ingest.max_text_chars must be at least 1");
        }
        let ingest = &self.ingest;
        if ingest.shed_low_delay_ms > ingest.shed_high_delay_ms {
            bail!("ingest.shed_low_delay_ms must be at most ingest.shed_high_delay_ms");
        }
        // Processors tell fronts a delay only past gears.up_ms[0] (below it a
        // (room, kind) is on time and costs no store write).
        if ingest.shed_low_delay_ms <= self.gears.up_ms[0] {
            bail!("ingest.shed_low_delay_ms must be above gears.up_ms[0] (delays below it are not shared)");
        }
        if ingest.bus_full_pending == 0 {
            bail!("ingest.bus_full_pending must be at least 1");
        }
        if !(1..=1000).contains(&self.ingest.max_batch_events) {
            bail!("ingest.max_batch_events must be within 1..=1000");
        }
        let snap = &self.snapshot;
        if snap.per_bucket == 0 || snap.scan_messages < snap.per_bucket {
            bail!("snapshot.per_bucket must be at least 1 and at most snapshot.scan_messages");
        }
        if snap.max_age_ms == 0 || snap.compute_timeout_ms == 0 {
            bail!("snapshot.max_age_ms and snapshot.compute_timeout_ms must be at least 1");
        }
        if axum::http::HeaderValue::from_str(&snap.cache_control).is_err() {
            bail!("snapshot.cache_control is not a valid header value");
        }
        let archive = &self.archive;
        let url = archive.url.trim();
        if !(url.starts_with("sqlite:") || url.starts_with("mysql:") || url.starts_with("mariadb:"))
        {
            bail!("archive.url must be sqlite:… or mysql://… (or DANMAKU_ARCHIVE_URL)");
        }
        if archive.batch_size == 0 || archive.replay_window_ms == 0 {
            bail!("archive.batch_size and archive.replay_window_ms must be at least 1");
        }
        if archive.replay_max_span_ms < archive.replay_window_ms {
            bail!("archive.replay_max_span_ms must be at least archive.replay_window_ms");
        }
        if archive.retain_days > 0 && archive.retain_sweep_ms == 0 {
            bail!("archive.retain_sweep_ms must be at least 1 when archive.retain_days is set");
        }
        if axum::http::HeaderValue::from_str(&archive.replay_cache_control).is_err() {
            bail!("archive.replay_cache_control is not a valid header value");
        }
        if !["text", "json"].contains(&self.log.format.as_str()) {
            bail!("log.format must be \"text\" or \"json\"");
        }
        let replay = self.store.replay_redis_url.trim();
        if !replay.is_empty() && replay == self.store.redis_url.trim() {
            bail!(
                "store.replay_redis_url must be a Redis separate from the live store's redis_url"
            );
        }
        match self.bus.engine {
            BusEngine::Memory => {}
            BusEngine::Kafka => {
                let bus = &self.bus;
                if bus.kafka_brokers.trim().is_empty() {
                    bail!(
                        "bus.engine \"kafka\" needs bus.kafka_brokers (or DANMAKU_KAFKA_BROKERS)"
                    );
                }
                if bus.topic.trim().is_empty() || bus.group_id.trim().is_empty() {
                    bail!("bus.topic and bus.group_id must not be empty");
                }
                if bus.replication_factor == 0 || bus.replication_factor < -1 {
                    bail!("bus.replication_factor must be at least 1 (or -1: broker default)");
                }
                if !(100..=3_600_000).contains(&bus.publish_timeout_ms) {
                    bail!("bus.publish_timeout_ms must be within 100..=3600000");
                }
            }
        }
        if !(1..=4000).contains(&self.store.redis_wait_timeout_ms) {
            // Below the store's 5 s response timeout, which would cut a WAIT short.
            bail!("store.redis_wait_timeout_ms must be within 1..=4000");
        }
        if self.store.engine == StoreEngine::Redis && self.store.redis_url.trim().is_empty() {
            bail!("store.engine \"redis\" needs store.redis_url (or DANMAKU_REDIS_URL)");
        }
        Ok(())
    }

    /// `server.internal_listen`, when set.
    pub fn internal_listen_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        let text = self.server.internal_listen.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let addr: SocketAddr = text
            .parse()
            .with_context(|| format!("server.internal_listen {text:?} is not an address"))?;
        if addr == self.listen_addr()? && addr.port() != 0 {
            bail!("server.internal_listen {addr} is server.listen too: give it another port");
        }
        Ok(Some(addr))
    }

    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        self.server
            .listen
            .parse()
            .with_context(|| format!("server.listen {:?} is not an address", self.server.listen))
    }
}

fn read_secret_file(path: &str) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading secret file {path}"))?;
    Ok(text.trim().to_string())
}

#[cfg(test)]
mod tests;
