//! The archive and replay section of the configuration (`[archive]`).

use serde::Deserialize;

/// Archive of ended lives and replay reads (`docs/architecture.md`, "Replay";
/// docs/replay.md).
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// `sqlite::memory:`, `sqlite://path?mode=rwc` or `mysql://…` (`DANMAKU_ARCHIVE_URL`).
    pub url: String,
    /// `serve` runs the archiver role (archives lives from the stored log) too
    /// (was `copier`; the old name is still read).
    pub run_archiver: bool,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
    /// Records taken from the stored log per poll (and rows per archive
    /// transaction at most).
    pub batch_size: usize,
    /// Pause after a full batch (throttle; 0 = none).
    pub batch_pause_ms: u64,
    /// Longest wait for the stored log in one poll.
    pub poll_interval_ms: u64,
    /// A message is archived no sooner than this after its `ts`: a live
    /// started or ended at a time `t` (on any node, its row written a moment
    /// later) is known to the archiver by `t + settle_ms`.
    pub settle_ms: u64,
    /// `live/end` answers 200 once the live is archived, or 202 after this.
    pub end_wait_ms: u64,
    /// Replay reads are served in aligned windows of this many ms.
    pub replay_window_ms: u64,
    /// Longest `to_ms - from_ms` of one replay request.
    pub replay_max_span_ms: u64,
    /// Front replay cache: most messages held (over all windows).
    pub replay_cache_messages: u64,
    /// Replay Redis: how long a filled live stays (seconds).
    pub replay_redis_ttl_s: u64,
    /// `Cache-Control` of replay responses.
    pub replay_cache_control: String,
    /// A replay window read by this many requests on a front within one
    /// window's length is hot: the front loads the next window(s) into its
    /// cache ahead of the viewers (0 = no prefetch).
    pub prefetch_viewers: u32,
    /// Most windows loaded ahead (one more per `prefetch_viewers` readers).
    pub prefetch_max_windows: u32,
    /// Lives ended more than this many days ago are deleted with their
    /// messages (0 = kept forever).
    pub retain_days: u64,
    /// How often a node sweeps for expired lives (only when `retain_days` > 0).
    pub retain_sweep_ms: u64,
}
