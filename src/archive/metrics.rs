//! Archive and replay metrics, in their own registry (appended to `/metrics`).

use std::sync::atomic::AtomicBool;

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

pub struct ArchiveMetrics {
    registry: Registry,
    /// Replay windows served, by the tier that had them: cache, redis, archive.
    pub replay_reads: IntCounterVec,
    /// Queries the replay path sent to the archive (windows and live look-ups).
    pub replay_archive_queries: IntCounter,
    /// Replay Redis calls that failed (the read fell through to the archive).
    pub replay_redis_errors: IntCounter,
    /// This process runs the archiver (its lag is in `/readyz`).
    pub archiver_running: AtomicBool,
    /// Age of the oldest message the archiver has taken from the stored log
    /// and not archived, beyond the settle time every message waits (0 when
    /// caught up).
    pub archiver_lag_seconds: Gauge,
    /// The archivers' lag on the stored log (records), less the messages
    /// only waiting to settle.
    pub archiver_lag_messages: IntGauge,
    /// Messages per archived batch.
    pub archive_batch_messages: Histogram,
    pub archive_rows: IntCounter,
    pub archive_lives_done: IntCounter,
    /// Archiver failures by step (list: which lives; write: rows; finish:
    /// end markers).
    pub archive_errors: IntCounterVec,
    /// Replay window reads that waited for another read's load of the same
    /// window (single flight) instead of loading it themselves.
    pub replay_coalesced: IntCounter,
    /// Windows a front loaded ahead of a hot replay's viewers.
    pub replay_prefetched: IntCounter,
    /// Window reads served from the front cache by a prefetched window.
    pub replay_prefetch_hits: IntCounter,
    /// Messages a window leaves out by density control (per-viewer budget).
    pub replay_rationed: IntCounter,
    /// Lives deleted (retention sweep or the admin route), and their messages.
    pub archive_deleted_lives: IntCounter,
    pub archive_deleted_messages: IntCounter,
}

impl Default for ArchiveMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ArchiveMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            r.register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        }
        ArchiveMetrics {
            replay_reads: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("danmaku_replay_reads_total", "Replay windows read, by tier"),
                    &["tier"],
                )
                .unwrap(),
            ),
            replay_archive_queries: reg(
                &registry,
                IntCounter::new(
                    "danmaku_replay_archive_queries_total",
                    "Archive queries made by replay reads",
                )
                .unwrap(),
            ),
            replay_redis_errors: reg(
                &registry,
                IntCounter::new(
                    "danmaku_replay_redis_errors_total",
                    "Replay Redis calls that failed",
                )
                .unwrap(),
            ),
            archiver_running: AtomicBool::new(false),
            archiver_lag_seconds: reg(
                &registry,
                Gauge::new(
                    "danmaku_archiver_lag_seconds",
                    "Age of the oldest stored message not yet archived, beyond archive.settle_ms",
                )
                .unwrap(),
            ),
            archiver_lag_messages: reg(
                &registry,
                IntGauge::new(
                    "danmaku_archiver_lag_messages",
                    "Records of the stored log the archivers have not archived",
                )
                .unwrap(),
            ),
            archive_batch_messages: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "danmaku_archive_batch_messages",
                        "Messages per archived batch",
                    )
                    .buckets(vec![
                        0.0, 1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
                    ]),
                )
                .unwrap(),
            ),
            archive_rows: reg(
                &registry,
                IntCounter::new(
                    "danmaku_archive_rows_total",
                    "Messages written to the archive",
                )
                .unwrap(),
            ),
            archive_lives_done: reg(
                &registry,
                IntCounter::new("danmaku_archive_lives_total", "Lives archived").unwrap(),
            ),
            archive_errors: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("danmaku_archive_errors_total", "Archiver errors"),
                    &["op"],
                )
                .unwrap(),
            ),
            replay_coalesced: reg(
                &registry,
                IntCounter::new(
                    "danmaku_replay_coalesced_total",
                    "Replay window reads that shared another read's load",
                )
                .unwrap(),
            ),
            replay_prefetched: reg(
                &registry,
                IntCounter::new(
                    "danmaku_replay_prefetched_total",
                    "Replay windows loaded ahead of a hot replay's viewers",
                )
                .unwrap(),
            ),
            replay_prefetch_hits: reg(
                &registry,
                IntCounter::new(
                    "danmaku_replay_prefetch_hits_total",
                    "Replay window reads served by a prefetched window",
                )
                .unwrap(),
            ),
            replay_rationed: reg(
                &registry,
                IntCounter::new(
                    "danmaku_replay_rationed_total",
                    "Messages left out of replay windows by density control",
                )
                .unwrap(),
            ),
            archive_deleted_lives: reg(
                &registry,
                IntCounter::new(
                    "danmaku_archive_deleted_lives_total",
                    "Lives deleted from the archive (retention or admin)",
                )
                .unwrap(),
            ),
            archive_deleted_messages: reg(
                &registry,
                IntCounter::new(
                    "danmaku_archive_deleted_messages_total",
                    "Messages deleted from the archive with their lives",
                )
                .unwrap(),
            ),
            registry,
        }
    }

    pub fn render(&self) -> String {
        crate::metrics::render_registry(&self.registry)
    }
}
