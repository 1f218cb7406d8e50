//! The viewing side's sections of the configuration: `[fanout]` (hubs and
//! their writes), `[ration]` (per-viewer budgets), `[snapshot]` and `[poll]`
//! (the CDN snapshot and long-poll answers).

use serde::Deserialize;

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct FanoutConfig {
    pub tick_ms: u64,
    pub max_batch_messages: usize,
    pub max_lag_frames: usize,
    pub ping_s: u64,
    pub idle_timeout_s: u64,
    pub send_timeout_ms: u64,
    pub hub_idle_s: u64,
    pub max_rooms: usize,
    pub read_interval_ms: u64,
    pub small_min_read_gap_ms: u64,
    pub big_min_read_gap_ms: u64,
    pub big_room_threshold: usize,
    pub big_poll_max_messages: usize,
    pub cache_messages: usize,
    pub presence_interval_ms: u64,
    pub presence_ttl_s: u64,
    /// Gift combos: a user's repeated gift within this window reaches viewers
    /// as one message with the total count (0 = off).
    pub combo_window_ms: u64,
    /// Hubs write each frame to in-step WebSocket viewers themselves, one
    /// non-blocking write per viewer (no per-viewer task woken per frame).
    pub direct_writes: bool,
    /// A room's directly written viewers are split into at most this many
    /// shards, each written by its own task (so one giant room uses every
    /// core); 0 = auto: the runtime's worker threads.
    pub viewer_shards: usize,
    /// Fewest viewers a shard is given: a room with fewer than twice this
    /// many direct viewers is written by its hub task alone (a task wake-up
    /// per frame costs more than writing that few; BENCHMARKS.md, "Viewer shards").
    pub shard_min_viewers: usize,
    /// Bytes a WebSocket may queue for a slow reader; past it the hub stops
    /// writing to it and the viewer's own task takes over (lite frames, cut).
    pub push_backlog_bytes: usize,
    /// WebSocket viewers that offer permessage-deflate (RFC 7692) get it:
    /// each frame is compressed once per room and the bytes shared.
    pub ws_compression: bool,
    /// Frames whose JSON is shorter go out uncompressed.
    pub ws_compression_min_bytes: usize,
    /// zlib level, 1 (fastest) to 9 (smallest).
    pub ws_compression_level: u32,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct RationConfig {
    /// `[online_at_least, budget_per_s]` pairs: bigger rooms, smaller budgets.
    pub budget_tiers: Vec<(u64, u32)>,
    pub high_share: f64,
    pub high_max_lag_ms: u64,
    /// A connection this many frames behind gets frames without low.
    pub lite_after_ms: u64,
}

impl RationConfig {
    pub fn budget_for(&self, online: usize) -> u32 {
        self.budget_tiers
            .iter()
            .filter(|(at_least, _)| online as u64 >= *at_least)
            .max_by_key(|(at_least, _)| *at_least)
            .map_or(u32::MAX, |(_, b)| *b)
    }
}

/// `GET /v1/rooms/{room}/snapshot` (the CDN edge's view of a room).
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// How long a front reuses a computed snapshot before it looks again.
    pub max_age_ms: u64,
    /// Latest messages per bucket in a snapshot.
    pub per_bucket: usize,
    /// Small rooms: how many of the newest messages one store read scans
    /// for the latest `per_bucket` of each bucket.
    pub scan_messages: usize,
    /// `Cache-Control` of snapshot responses (and of their 304s).
    pub cache_control: String,
    /// A snapshot that cannot be computed within this answers 503 (or the
    /// previous snapshot, if there is one).
    pub compute_timeout_ms: u64,
    /// Gzip the body once per snapshot for clients that accept it.
    pub gzip: bool,
    /// Bodies smaller than this go plain.
    pub gzip_min_bytes: usize,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    pub max_wait_ms: u64,
    pub default_wait_ms: u64,
    pub max_messages: usize,
    /// Gzip big rooms' cache answers once for the clients that accept it.
    pub gzip: bool,
    /// Answers smaller than this go plain.
    pub gzip_min_bytes: usize,
}
