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

pub mod process;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
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
    pub fn new() -> Self {
        let registry = Registry::new();
        registry
            .register(Box::new(process::ProcessCollector::new()))
            .expect("process metric names are unique");
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            r.register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        }
        let buckets_fast = vec![
            0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
        ];
        let buckets_delay = vec![
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        Metrics {
            connections: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new("danmaku_connections", "Open viewer connections"),
                    &["transport"],
                )
                .unwrap(),
            ),
            ingested: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("danmaku_messages_ingested_total", "Messages acknowledged"),
                    &["kind"],
                )
                .unwrap(),
            ),
            rejections: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("danmaku_ingest_rejections_total", "Ingest refusals"),
                    &["reason"],
                )
                .unwrap(),
            ),
            stored: reg(
                &registry,
                IntCounter::new("danmaku_messages_stored_total", "Messages stored").unwrap(),
            ),
            store_duplicates: reg(
                &registry,
                IntCounter::new(
                    "danmaku_store_duplicates_total",
                    "Redelivered messages not stored again",
                )
                .unwrap(),
            ),
            store_errors: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("danmaku_store_errors_total", "Live store errors"),
                    &["op"],
                )
                .unwrap(),
            ),
            store_append_seconds: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new("danmaku_store_append_seconds", "Store append latency")
                        .buckets(buckets_fast.clone()),
                )
                .unwrap(),
            ),
            delivered: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "danmaku_messages_delivered_total",
                        "Message copies handed to viewers",
                    ),
                    &["transport"],
                )
                .unwrap(),
            ),
            frames_encoded: reg(
                &registry,
                IntCounter::new("danmaku_frames_encoded_total", "Frames encoded by hubs").unwrap(),
            ),
            frames_sent: reg(
                &registry,
                IntCounter::new(
                    "danmaku_frames_sent_total",
                    "Frame copies handed to viewers",
                )
                .unwrap(),
            ),
            hubs: reg(
                &registry,
                IntGauge::new("danmaku_hubs", "Rooms with a running hub on this node").unwrap(),
            ),
            hub_tick_seconds: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new("danmaku_hub_tick_seconds", "Hub tick duration")
                        .buckets(buckets_fast.clone()),
                )
                .unwrap(),
            ),
            slow_consumer_disconnects: reg(
                &registry,
                IntCounter::new(
                    "danmaku_slow_consumer_disconnects_total",
                    "Viewers cut for falling too far behind",
                )
                .unwrap(),
            ),
            ration_delivered: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "danmaku_ration_selected_total",
                        "Messages selected for a room's frame, by bucket",
                    ),
                    &["bucket"],
                )
                .unwrap(),
            ),
            ration_dropped: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "danmaku_ration_dropped_total",
                        "Messages dropped by rationing, by bucket and reason",
                    ),
                    &["bucket", "reason"],
                )
                .unwrap(),
            ),
            queue_low_dropped: reg(
                &registry,
                IntCounter::new(
                    "danmaku_queue_low_dropped_total",
                    "Low messages not sent to connections that fell behind",
                )
                .unwrap(),
            ),
            store_reads: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("danmaku_store_reads_total", "Live store range reads"),
                    &["source"],
                )
                .unwrap(),
            ),
            gift_combos: reg(
                &registry,
                IntCounter::new(
                    "danmaku_gift_combos_total",
                    "Gift combos (two or more events merged) sent to viewers",
                )
                .unwrap(),
            ),
            gift_combo_merged: reg(
                &registry,
                IntCounter::new(
                    "danmaku_gift_combo_merged_total",
                    "Gift events merged into an earlier event of their combo",
                )
                .unwrap(),
            ),
            snapshot_builds: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "danmaku_snapshot_builds_total",
                        "Room snapshot computations by source",
                    ),
                    &["source"],
                )
                .unwrap(),
            ),
            snapshot_responses: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "danmaku_snapshot_responses_total",
                        "Room snapshot responses by result",
                    ),
                    &["result"],
                )
                .unwrap(),
            ),
            http_gzip: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "danmaku_http_gzip_total",
                        "HTTP answers (snapshot, long-poll) wanting gzip, by outcome",
                    ),
                    &["outcome"],
                )
                .unwrap(),
            ),
            cache_reads: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "danmaku_cache_reads_total",
                        "Big-room reads served from the local cache",
                    ),
                    &["result"],
                )
                .unwrap(),
            ),
            top_room_online: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "danmaku_top_room_online",
                        format!(
                            "Viewers over all fronts of this node's {TOP_ROOMS} biggest big rooms"
                        ),
                    ),
                    &["room"],
                )
                .unwrap(),
            ),
            gear: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new("danmaku_gear", "Gear of (room, kind)s above gear 1"),
                    &["room", "kind"],
                )
                .unwrap(),
            ),
            geared: Default::default(),
            gear_shifts: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("danmaku_gear_shifts_total", "Gear shifts by direction"),
                    &["direction"],
                )
                .unwrap(),
            ),
            clock_correction_ms: reg(
                &registry,
                IntGauge::new(
                    "danmaku_clock_correction_ms",
                    "Correction added to this host's clock to agree with the store's (ms)",
                )
                .unwrap(),
            ),
            clock_ts_ahead: reg(
                &registry,
                IntCounter::new(
                    "danmaku_clock_ts_ahead_total",
                    "Messages stamped ahead of the processor's clock (delay counted as 0)",
                )
                .unwrap(),
            ),
            bus_pending: reg(
                &registry,
                IntGauge::new(
                    "danmaku_bus_pending",
                    "Messages on the bus not yet processed",
                )
                .unwrap(),
            ),
            process_delay_seconds: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "danmaku_process_delay_seconds",
                        "Delay from front timestamp to store write, by kind",
                    )
                    .buckets(buckets_delay),
                    &["kind"],
                )
                .unwrap(),
            ),
            http_connections_open: reg(
                &registry,
                IntGauge::new("danmaku_http_connections", "Open client TCP connections").unwrap(),
            ),
            http_connections_refused: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "danmaku_http_connections_refused_total",
                        "Connections refused at accept, by cap",
                    ),
                    &["cap"],
                )
                .unwrap(),
            ),
            http_connection_errors: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "danmaku_http_connection_errors_total",
                        "Connections ended by an error, by kind",
                    ),
                    &["kind"],
                )
                .unwrap(),
            ),
            direct_writes: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "danmaku_direct_writes_total",
                        "Frames hubs wrote to WebSocket viewers themselves",
                    ),
                    &["result"],
                )
                .unwrap(),
            ),
            direct_detached: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "danmaku_direct_detached_total",
                        "Viewers handed back from hub writes to their own task",
                    ),
                    &["reason"],
                )
                .unwrap(),
            ),
            direct_viewer_shards: reg(
                &registry,
                IntGauge::new(
                    "danmaku_direct_viewer_shards",
                    "Most shards a room's direct writes are split into on this node",
                )
                .unwrap(),
            ),
            direct_frame_shards: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "danmaku_direct_frame_shards",
                        "Shards a frame's direct writes were split into",
                    )
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
                )
                .unwrap(),
            ),
            direct_shard_write_seconds: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "danmaku_direct_shard_write_seconds",
                        "Time one shard took to write a frame to its viewers",
                    )
                    .buckets(buckets_fast),
                )
                .unwrap(),
            ),
            hub_reads_deferred: reg(
                &registry,
                IntCounter::new(
                    "danmaku_hub_reads_deferred_total",
                    "Hub reads put off while the previous frame was still being written",
                )
                .unwrap(),
            ),
            hubs_evicted: reg(
                &registry,
                IntCounter::new(
                    "danmaku_hubs_evicted_total",
                    "Unwatched hubs stopped to open another room at fanout.max_rooms",
                )
                .unwrap(),
            ),
            viewer_key_reloads: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "danmaku_viewer_key_reloads_total",
                        "Reads of auth.viewer_keys_file by result (failed: previous keys kept)",
                    ),
                    &["result"],
                )
                .unwrap(),
            ),
            notice_messages: reg(
                &registry,
                IntCounter::new(
                    "danmaku_notice_messages_total",
                    "Messages hubs took from the notices that carried them, without a store read",
                )
                .unwrap(),
            ),
            notice_gap_fills: reg(
                &registry,
                IntCounter::new(
                    "danmaku_notice_gap_fills_total",
                    "Hub store reads made to fill a seq hole the notices left (lost or late)",
                )
                .unwrap(),
            ),
            http_accept_errors: reg(
                &registry,
                IntCounter::new("danmaku_http_accept_errors_total", "Failed accepts").unwrap(),
            ),
            control_notices: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "danmaku_control_notices_total",
                        "Control notices applied, by kind",
                    ),
                    &["kind"],
                )
                .unwrap(),
            ),
            control_catchups: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "danmaku_control_catchups_total",
                        "Catch-ups with the control change log, by result",
                    ),
                    &["result"],
                )
                .unwrap(),
            ),
            moderation_actions: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "danmaku_moderation_actions_total",
                        "Moderation actions, by action",
                    ),
                    &["action"],
                )
                .unwrap(),
            ),
            ws_bytes: {
                let by_encoding = reg(
                    &registry,
                    IntCounterVec::new(
                        Opts::new(
                            "danmaku_ws_bytes_total",
                            "Bytes of frames written to WebSocket viewers, by encoding",
                        ),
                        &["encoding"],
                    )
                    .unwrap(),
                );
                WS_ENCODINGS.map(|e| by_encoding.with_label_values(&[e]))
            },
            registry,
        }
    }

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
