//! Viewer shards: one room's direct writes spread over the runtime's worker
//! threads, so one giant room uses every core of a front
//! (docs/architecture.md, "Viewer shards").
//!
//! The hub splits the frame's members into `n` contiguous slices of nearly
//! equal size (`shard_range`) and spawns one task per slice; each writes its
//! viewers exactly as the unsharded hub does (`hub_side::fan_out`: the same
//! shared bytes, the same per-viewer lock). The hub waits for every shard
//! before it publishes the next frame, so a viewer is in exactly one slice
//! per frame and gets frames in order, and the hand-over's invariant (see
//! `super`) reads as before: "the hub" is the hub and its shards for that
//! frame. Small rooms keep one shard, written by the hub task itself
//! (`shard_count`): a task wake-up per frame costs more than a few writes.

use prometheus::Histogram;
use std::ops::Range;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use super::hub_side::fan_out;
use super::viewer::{DirectStats, DirectViewer};
use crate::config::FanoutConfig;
use crate::fanout::deflate::WsDeflate;
use crate::fanout::Frame;

/// How a node splits a room's direct viewers (`fanout.viewer_shards`,
/// `fanout.shard_min_viewers`, resolved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardPlan {
    /// Most shards one room's writes are split into (at least 1).
    pub max_shards: usize,
    /// Fewest viewers a shard is given.
    pub min_viewers: usize,
}

impl ShardPlan {
    /// One shard: the hub task writes every viewer itself.
    pub const SINGLE: ShardPlan = ShardPlan {
        max_shards: 1,
        min_viewers: 1,
    };

    /// The configured plan; `viewer_shards = 0` takes the worker threads of
    /// the runtime this is called on (1 outside a runtime or on a
    /// current-thread one), so a front on one core keeps one shard.
    pub fn from_config(config: &FanoutConfig) -> ShardPlan {
        let max_shards = match config.viewer_shards {
            0 => tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers()),
            n => n,
        };
        ShardPlan {
            max_shards: max_shards.max(1),
            min_viewers: config.shard_min_viewers.max(1),
        }
    }

    /// Shards for a frame to `viewers` direct viewers.
    pub fn shards_for(&self, viewers: usize) -> usize {
        shard_count(viewers, self.max_shards, self.min_viewers)
    }
}

/// How many shards `viewers` viewers are split into: as many as give each
/// at least `min_per_shard`, at most `max_shards`, at least one.
pub fn shard_count(viewers: usize, max_shards: usize, min_per_shard: usize) -> usize {
    (viewers / min_per_shard.max(1)).clamp(1, max_shards.max(1))
}

/// Shard `i` of `n` over `len` members: contiguous, sizes differ by at most
/// one, and the `n` ranges cover `0..len` once.
pub fn shard_range(len: usize, n: usize, i: usize) -> Range<usize> {
    len * i / n..len * (i + 1) / n
}

/// A frame's direct members as the hub published it, and the deflate
/// setting if any of them negotiated permessage-deflate.
#[derive(Clone)]
pub struct Members {
    pub viewers: Arc<[Arc<DirectViewer>]>,
    pub deflate: Option<WsDeflate>,
}

/// Writes `frame` to `members`, split into `shards` tasks (1: on this
/// task); returns what all shards did once every one is done. Each shard's
/// write time goes to `shard_seconds`.
pub async fn fan_out_sharded(
    frame: &Arc<Frame>,
    members: &Members,
    gone: &Arc<AtomicUsize>,
    shards: usize,
    shard_seconds: &Histogram,
) -> DirectStats {
    let shards = shards.max(1);
    if shards == 1 {
        let _timer = shard_seconds.start_timer();
        return fan_out(frame, &members.viewers, gone).await;
    }
    if let Some(cfg) = members.deflate {
        // Compressed once here, not raced for by the shards.
        frame.full.ws_frame_for(Some(cfg));
    }
    let len = members.viewers.len();
    // Spawned all at once: each spawn but the last lands in a worker's
    // queue and wakes an idle worker to steal it; the last runs on this
    // worker while this task waits.
    let tasks: Vec<_> = (0..shards)
        .map(|i| {
            let (frame, viewers, gone) = (frame.clone(), members.viewers.clone(), gone.clone());
            let shard_seconds = shard_seconds.clone();
            tokio::spawn(async move {
                let _timer = shard_seconds.start_timer();
                fan_out(&frame, &viewers[shard_range(len, shards, i)], &gone).await
            })
        })
        .collect();
    let mut all = DirectStats::default();
    for task in tasks {
        match task.await {
            Ok(stats) => all.add(&stats),
            // Only a panic or a runtime shutting down: the shard's viewers
            // keep their recorded cursors, so their tasks carry on from there.
            Err(e) => tracing::warn!(error = %e, "viewer shard task ended early"),
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::direct::socket::SharedSocket;
    use crate::fanout::direct::DirectList;
    use crate::message::{Priority, StoredMessage};
    use tokio::io::AsyncReadExt;

    /// Every viewer of a room split into 3 shards gets each frame's bytes
    /// once and in order, and the stats add up over the shards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_viewer_gets_every_frame_once_in_order_over_shards() {
        const VIEWERS: usize = 61;
        const FRAMES: u64 = 12;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut list = DirectList::default();
        let mut clients = Vec::new();
        for _ in 0..VIEWERS {
            let (accepted, client) =
                tokio::join!(listener.accept(), tokio::net::TcpStream::connect(addr));
            clients.push(client.unwrap());
            let socket = SharedSocket::new(accepted.unwrap().0, 1 << 20);
            let viewer = Arc::new(DirectViewer::new(socket, None, Arc::from("e1"), 0, 0));
            assert!(viewer.mark_wanting());
            list.request(viewer);
        }
        let (members, joined) = list.prepare("e1", 0, 0);
        assert_eq!(joined, VIEWERS);
        let members = members.unwrap();
        let gone = list.gone_counter();
        let timed = Histogram::with_opts(prometheus::HistogramOpts::new("t", "t")).unwrap();
        let mut expected = Vec::new();
        for no in 1..=FRAMES {
            let m = StoredMessage::for_test(no, Priority::Low, 1);
            let mut frame = Frame::encode("r1", Arc::from("e1"), no - 1, no, &[m]);
            frame.no = no;
            let frame = Arc::new(frame);
            let stats = fan_out_sharded(&frame, &members, &gone, 3, &timed).await;
            assert_eq!(stats.written + stats.queued, VIEWERS as u64, "frame {no}");
            assert_eq!(stats.messages, VIEWERS as u64);
            assert_eq!(stats.detached, [0; 3]);
            expected.extend_from_slice(&frame.full.ws_frame);
        }
        assert_eq!(timed.get_sample_count(), 3 * FRAMES, "each shard timed");
        for (i, m) in members.viewers.iter().enumerate() {
            let st = m.lock();
            assert_eq!((st.cursor, st.frame_no), (FRAMES, FRAMES), "viewer {i}");
        }
        // The last owners of the server sockets: the clients read to their end.
        drop((members, list));
        for (i, mut client) in clients.into_iter().enumerate() {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, expected, "viewer {i}: every frame once, in order");
        }
    }

    #[test]
    fn shard_count_table() {
        // (viewers, max_shards, min_per_shard) -> shards
        let table = [
            ((0, 4, 1000), 1),
            ((1999, 4, 1000), 1),
            ((2000, 4, 1000), 2),
            ((3999, 4, 1000), 3),
            ((100_000, 4, 1000), 4),
            ((100_000, 1, 1000), 1),
            ((100_000, 0, 1000), 1),
            ((5, 8, 0), 5),
            ((1, 8, 1), 1),
        ];
        for ((viewers, max, min), want) in table {
            assert_eq!(
                shard_count(viewers, max, min),
                want,
                "{viewers} viewers, at most {max} shards of at least {min}"
            );
        }
    }

    #[test]
    fn shard_ranges_cover_every_member_once_and_evenly() {
        for len in [0, 1, 7, 1000, 10_001] {
            for n in 1..=9 {
                let ranges: Vec<_> = (0..n).map(|i| shard_range(len, n, i)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[n - 1].end, len);
                for w in ranges.windows(2) {
                    assert_eq!(w[0].end, w[1].start, "contiguous: {len} over {n}");
                }
                let sizes: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
                let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(hi - lo <= 1, "even: {sizes:?}");
            }
        }
    }

    #[test]
    fn auto_shards_follow_the_runtime_workers() {
        let mut config = crate::config::Config::embedded().fanout;
        config.viewer_shards = 0;
        config.shard_min_viewers = 0;
        let one = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let plan = one.block_on(async { ShardPlan::from_config(&config) });
        assert_eq!(plan.max_shards, 1, "one core: one shard");
        assert_eq!(plan.min_viewers, 1);
        let three = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(3)
            .build()
            .unwrap();
        let plan = three.block_on(async { ShardPlan::from_config(&config) });
        assert_eq!(plan.max_shards, 3);
        assert_eq!(ShardPlan::from_config(&config).max_shards, 1, "no runtime");
        config.viewer_shards = 5;
        assert_eq!(ShardPlan::from_config(&config).max_shards, 5, "configured");
    }
}
