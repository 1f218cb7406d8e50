//! Every metric's Prometheus name, help text, labels and buckets, registered
//! in one place (what each is for is on its field in `Metrics`).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use super::{allocator, process, Metrics, TOP_ROOMS, WS_ENCODINGS};

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        registry
            .register(Box::new(process::ProcessCollector::new()))
            .expect("process metric names are unique");
        registry
            .register(Box::new(allocator::AllocatorCollector::new()))
            .expect("allocator metric names are unique");
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
            store_unreachable: reg(
                &registry,
                IntGauge::new(
                    "danmaku_store_unreachable",
                    "1 while the live store is unreachable and its calls fail at once",
                )
                .unwrap(),
            ),
            store_unreachable_trips: reg(
                &registry,
                IntCounter::new(
                    "danmaku_store_unreachable_trips_total",
                    "Times the live store was found unreachable (timeouts, lost connections)",
                )
                .unwrap(),
            ),
            idempotency_takeovers: reg(
                &registry,
                IntCounter::new(
                    "danmaku_idempotency_takeovers_total",
                    "Pending idempotency claims taken over by a retry (their node died mid-publish)",
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
            redis_primary_switches: reg(
                &registry,
                IntCounter::new(
                    "danmaku_redis_primary_switches_total",
                    "Switches to a new live-store Redis primary named by the sentinels",
                )
                .unwrap(),
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
}
