//! Prometheus metrics of every role, rendered at `GET /metrics`.
//!
//! # The label rule (docs/architecture.md, "Metrics")
//!
//! No label may take values that grow with users or rooms. Every label here
//! takes its values from a fixed set the code names (transport, kind, reason,
//! bucket, op, source, result, cap, direction, action), so the number of series stays
//! the same however many viewers and rooms a node serves.
//!
//! Per-room figures go elsewhere: every room's online count and budget to the
//! admin API (`fanout::HubRegistry::room_stats`), and at most a bounded top-N
//! as a metric: `danmaku_top_room_online{room}` holds the biggest
//! [`TOP_ROOMS`] big rooms of this node, refilled each presence round (see
//! `presence::TopRooms`). A new per-room metric follows the same pattern or
//! does not exist.

pub mod allocator;
mod names;
pub mod process;

use prometheus::{
    Encoder, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
    TextEncoder,
};

/// The `encoding` label of `danmaku_ws_bytes_total`, in the order of
/// `fanout::deflate::WsEncoding`.
pub const WS_ENCODINGS: [&str; 2] = ["plain", "deflate"];

/// Series a bounded top-N metric holds at most (`danmaku_top_room_online`).
pub const TOP_ROOMS: usize = 10;

pub struct Metrics {
    registry: Registry,
    /// Open viewer connections by transport (ws, sse, poll = requests held).
    pub connections: IntGaugeVec,
    /// Messages accepted by ingest (acknowledged to the client), by kind.
    pub ingested: IntCounterVec,
    /// Ingest refusals by reason (the error code).
    pub rejections: IntCounterVec,
    /// Messages written to the live store by processors.
    pub stored: IntCounter,
    /// Redeliveries the store recognised and did not write again.
    pub store_duplicates: IntCounter,
    pub store_errors: IntCounterVec,
    pub store_append_seconds: Histogram,
    /// 1 while the live store's health gate fails calls at once (Redis
    /// unreachable), else 0; sampled at each scrape.
    pub store_unreachable: IntGauge,
    /// Times the live store was found unreachable.
    pub store_unreachable_trips: IntCounter,
    /// Pending idempotency claims a retry took over (their node died
    /// mid-publish: src/ingest/idempotency.rs).
    pub idempotency_takeovers: IntCounter,
    /// Message copies handed to viewer connections (messages × viewers).
    pub delivered: IntCounterVec,
    /// Frames encoded by hubs (one per room per tick with news).
    pub frames_encoded: IntCounter,
    /// Frame copies handed to viewer connections.
    pub frames_sent: IntCounter,
    pub hubs: IntGauge,
    pub hub_tick_seconds: Histogram,
    /// Hub reads put off because the previous frame's fan-out was not half
    /// done (its messages join the next frame).
    pub hub_reads_deferred: IntCounter,
    /// Hubs stopped early at `fanout.max_rooms` because no one watched them.
    pub hubs_evicted: IntCounter,
    /// Reads of `auth.viewer_keys_file`, by result ("ok", "failed": the
    /// previous keys stayed).
    pub viewer_key_reloads: IntCounterVec,
    /// Messages hubs took from notices (no store read); see `store_reads`.
    pub notice_messages: IntCounter,
    /// Hub store reads made to fill a seq hole (a lost or late notice).
    pub notice_gap_fills: IntCounter,
    pub slow_consumer_disconnects: IntCounter,
    /// Frames hubs wrote to WebSocket viewers themselves, by what the socket
    /// did ("written" at once, "queued" behind earlier bytes).
    pub direct_writes: IntCounterVec,
    /// Viewers handed back from the hub's writes to their own task, by why.
    pub direct_detached: IntCounterVec,
    /// Most shards one room's direct writes split into (`fanout.viewer_shards`
    /// resolved); shards each frame was written in; one shard's write time.
    pub direct_viewer_shards: IntGauge,
    pub direct_frame_shards: Histogram,
    pub direct_shard_write_seconds: Histogram,
    /// Rationing per tick: delivered by bucket, dropped by bucket and reason.
    pub ration_delivered: IntCounterVec,
    pub ration_dropped: IntCounterVec,
    /// Low messages not sent to connections that were behind.
    pub queue_low_dropped: IntCounter,
    pub bus_pending: IntGauge,
    /// Current gear of (room, kind)s above gear 1, at most [`TOP_ROOMS`]
    /// series (the highest gears): set through [`Metrics::set_gear`].
    pub gear: IntGaugeVec,
    /// Every (room, kind) above gear 1 and its gear; `gear` shows the top.
    geared: parking_lot::Mutex<std::collections::BTreeMap<(String, &'static str), i64>>,
    pub gear_shifts: IntCounterVec,
    /// Added to this host's clock to agree with the store's (store − host,
    /// ms; `crate::clock`): the clock skew this node sees.
    pub clock_correction_ms: IntGauge,
    /// Messages a processor found stamped after its own now (clock skew
    /// left over); their delay counts as 0.
    pub clock_ts_ahead: IntCounter,
    /// Live-store range reads by who asked (hub, poll, catch_up, snapshot).
    pub store_reads: IntCounterVec,
    /// Gift combos of two or more events sent to viewers.
    pub gift_combos: IntCounter,
    /// Gift events folded into an earlier event of their combo.
    pub gift_combo_merged: IntCounter,
    /// Snapshot computations by source (store, cache, unchanged = the room
    /// had not changed and the previous body was kept).
    pub snapshot_builds: IntCounterVec,
    /// Snapshot responses by result (ok, not_modified, stale = the previous
    /// snapshot served because a new one could not be computed).
    pub snapshot_responses: IntCounterVec,
    /// HTTP answers sent gzipped by outcome: compressed (this answer made
    /// the body's gzip form), shared (served one made before), not_smaller
    /// (gzip saved nothing: sent plain). See `fanout::gzip`.
    pub http_gzip: IntCounterVec,
    /// Big-room reads served by a front's local cache (hit, gap).
    pub cache_reads: IntCounterVec,
    /// Viewers over all fronts of the biggest big rooms with a hub on this
    /// node: at most [`TOP_ROOMS`] series (see `presence::TopRooms`).
    pub top_room_online: IntGaugeVec,
    /// Processing delay: store write time minus the front's timestamp, by
    /// kind (the gears and shedding act per kind).
    pub process_delay_seconds: HistogramVec,
    /// Open client TCP connections (any route, upgraded ones included).
    pub http_connections_open: IntGauge,
    /// Connections refused at accept, by cap (node, address).
    pub http_connections_refused: IntCounterVec,
    /// Connections ended by an error, by kind (header_timeout,
    /// header_too_large, malformed, io; with the PROXY protocol on,
    /// proxy_header and proxy_untrusted).
    pub http_connection_errors: IntCounterVec,
    /// Failed accepts (e.g. out of file descriptors).
    pub http_accept_errors: IntCounter,
    /// Switches of the live store's Redis primary this node followed (a
    /// Sentinel failover; always 0 without `redis+sentinel://`).
    pub redis_primary_switches: IntCounter,
    /// Control notices applied by this node, by kind.
    pub control_notices: IntCounterVec,
    /// Catch-ups with the control change log, by result (`applied` = missed
    /// notices read from the log, `reset` = the log no longer reached back,
    /// every cached room dropped, `failed`).
    pub control_catchups: IntCounterVec,
    /// Moderation actions (mute, unmute, ban, retract) on this node.
    pub moderation_actions: IntCounterVec,
    /// Bytes of batch and retract frames written to WebSocket viewers, by
    /// encoding (`danmaku_ws_bytes_total{encoding="plain"|"deflate"}`),
    /// indexed as [`WS_ENCODINGS`] (`fanout::deflate::WsEncoding`): wire bytes per delivered message are this
    /// over `danmaku_delivered_total{transport="stream"}` for WebSocket-only
    /// rooms.
    pub ws_bytes: [IntCounter; 2],
}

impl Metrics {
    pub fn render(&self) -> String {
        render_registry(&self.registry)
    }

    /// Records a (room, kind)'s gear and refills `danmaku_gear` with the
    /// [`TOP_ROOMS`] highest (label rule: the series stay bounded however
    /// many rooms shift).
    pub fn set_gear(&self, room: &str, kind: &'static str, gear: i64) {
        let mut geared = self.geared.lock();
        if gear > 1 {
            geared.insert((room.to_string(), kind), gear);
        } else {
            geared.remove(&(room.to_string(), kind));
        }
        let mut top: Vec<_> = geared.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        self.gear.reset();
        for ((room, kind), gear) in top.into_iter().take(TOP_ROOMS) {
            self.gear
                .with_label_values(&[room.as_str(), kind])
                .set(*gear);
        }
    }

    /// Samples the live store's health gate (`store::StoreHealth`):
    /// `unreachable` now, and its `trips` so far (a count that only grows).
    pub fn set_store_health(&self, unreachable: bool, trips: u64) {
        self.store_unreachable.set(i64::from(unreachable));
        let counted = self.store_unreachable_trips.get();
        if trips > counted {
            self.store_unreachable_trips.inc_by(trips - counted);
        }
    }

    pub fn reject(&self, reason: &str) {
        self.rejections.with_label_values(&[reason]).inc();
    }
}

/// A registry in Prometheus text format (the main one and the archive's).
pub fn render_registry(registry: &Registry) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .expect("text encoding");
    String::from_utf8(buf).unwrap_or_default()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod gear_tests {
    use super::*;

    #[test]
    fn gear_series_stay_bounded_and_show_the_highest() {
        let m = Metrics::new();
        for i in 0..(TOP_ROOMS + 5) {
            m.set_gear(&format!("r{i:02}"), "danmaku", 2);
        }
        m.set_gear("hot", "danmaku", 4);
        let text = m.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("danmaku_gear{"))
            .count();
        assert_eq!(series, TOP_ROOMS);
        assert!(text.contains(r#"danmaku_gear{kind="danmaku",room="hot"} 4"#));
        // Back to gear 1: the room leaves the table.
        m.set_gear("hot", "danmaku", 1);
        assert!(!m.render().contains(r#"room="hot""#));
    }
}
