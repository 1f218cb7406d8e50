//! Criterion bench of viewer shards (issue 21, "Shards"): the wall time of
//! one room's direct fan-out of a frame — the hub's non-blocking write of
//! the shared bytes to every in-step WebSocket viewer — written by 1 and by
//! 2 shards on a 2-worker runtime (the "server" given both cores), to real
//! loopback TCP sockets. The smaller rooms find where a second shard starts
//! to pay (`fanout.shard_min_viewers`). Run with
//! `CARGO_BUILD_JOBS=1 cargo bench --bench shards` (BENCHMARKS.md, "Viewer shards").
//!
//! Only the fan-out is timed; encoding the frame and draining the clients'
//! sockets (so no write ever queues) happen outside the timed part.

use std::io::Read;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use danmaku::fanout::direct::shards::{fan_out_sharded, Members};
use danmaku::fanout::direct::socket::SharedSocket;
use danmaku::fanout::direct::{DirectList, DirectViewer};
use danmaku::fanout::frame::Frame;
use danmaku::message::{Kind, Message, Priority, StoredMessage, UserRef};
use danmaku::metrics::Metrics;

/// Viewers of the biggest room (two sockets each; the hard limit here is
/// 20 000 descriptors).
const MAX_VIEWERS: usize = 8000;
const ROOMS: [usize; 5] = [250, 500, 1000, 2000, MAX_VIEWERS];
const EPOCH: &str = "bench-epoch";
/// Messages per frame (~200 bytes of JSON each, like the load tool's).
const PER_FRAME: u64 = 5;

struct Room {
    viewers: Vec<Arc<DirectViewer>>,
    /// The other ends, drained between frames.
    clients: Vec<std::net::TcpStream>,
    /// Where every viewer stands (each frame moves it by one).
    cursor: u64,
    frame_no: u64,
    gone: Arc<AtomicUsize>,
    metrics: Metrics,
}

fn message(seq: u64) -> StoredMessage {
    Message {
        id: format!("0193{seq:028x}"),
        seq: 0,
        room: "bench".into(),
        kind: Kind::Danmaku,
        priority: Priority::Low,
        user: UserRef {
            id: format!("demo-{:08x}", seq * 2654435761 % 0xffff_ffff),
            name: "viewer".into(),
        },
        text: format!("bench:{seq} 弹幕 hello, a danmaku of ordinary length"),
        ts: 1_700_000_000_000,
        offset_ms: None,
        gift: None,
        style: None,
    }
    .into_stored(seq)
}

/// `MAX_VIEWERS` loopback connections, every one attached to a hub's
/// direct list (in step at cursor 0).
async fn open_room() -> Room {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut list = DirectList::default();
    let epoch: Arc<str> = Arc::from(EPOCH);
    let mut viewers = Vec::with_capacity(MAX_VIEWERS);
    let mut clients = Vec::with_capacity(MAX_VIEWERS);
    for _ in 0..MAX_VIEWERS {
        let (accepted, client) =
            tokio::join!(listener.accept(), tokio::net::TcpStream::connect(addr));
        let client = client.unwrap().into_std().unwrap();
        client.set_nonblocking(true).unwrap();
        clients.push(client);
        let socket = SharedSocket::new(accepted.unwrap().0, 1 << 20);
        socket.enable_pushes();
        let viewer = Arc::new(DirectViewer::new(socket, None, epoch.clone(), 0, 0));
        assert!(viewer.mark_wanting());
        list.request(viewer.clone());
        viewers.push(viewer);
    }
    let (members, joined) = list.prepare(EPOCH, 0, 0);
    assert_eq!(joined, MAX_VIEWERS, "every viewer attached");
    let members = members.unwrap();
    assert_eq!(members.viewers.len(), MAX_VIEWERS);
    Room {
        viewers: members.viewers.to_vec(),
        clients,
        cursor: 0,
        frame_no: 0,
        gone: list.gone_counter(),
        metrics: Metrics::new(),
    }
}

impl Room {
    /// Writes `iters` frames to the first `n` viewers in `shards` shards;
    /// the summed wall time of the fan-outs alone.
    async fn fan_out(&mut self, n: usize, shards: usize, iters: u64) -> Duration {
        // The first `n` viewers continue from wherever the room stands.
        for v in &self.viewers[..n] {
            let mut st = v.lock();
            st.cursor = self.cursor;
            st.frame_no = self.frame_no;
        }
        let members = Members {
            viewers: self.viewers[..n].to_vec().into(),
            deflate: None,
        };
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let to = self.cursor + PER_FRAME;
            let messages: Vec<StoredMessage> = (self.cursor + 1..=to).map(message).collect();
            let mut frame = Frame::encode("bench", Arc::from(EPOCH), self.cursor, to, &messages);
            self.frame_no += 1;
            frame.no = self.frame_no;
            let frame = Arc::new(frame);
            let started = Instant::now();
            let stats = fan_out_sharded(
                &frame,
                &members,
                &self.gone,
                shards,
                &self.metrics.direct_shard_write_seconds,
            )
            .await;
            total += started.elapsed();
            assert_eq!(
                (stats.written, stats.detached),
                (n as u64, [0; 3]),
                "every viewer written at once, none handed back"
            );
            self.cursor = to;
            self.drain(n);
        }
        total
    }

    /// Reads what the first `n` clients were sent (outside the timing).
    fn drain(&mut self, n: usize) {
        let mut buf = [0u8; 16 << 10];
        for c in &mut self.clients[..n] {
            loop {
                match c.read(&mut buf) {
                    Ok(0) => panic!("a viewer's connection closed"),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("drain: {e}"),
                }
            }
        }
    }
}

fn shards(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let room = Arc::new(tokio::sync::Mutex::new(rt.block_on(open_room())));
    let mut group = c.benchmark_group("direct_fanout");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(4));
    for viewers in ROOMS {
        group.throughput(Throughput::Elements(viewers as u64));
        for shards in [1usize, 2] {
            group.bench_with_input(
                BenchmarkId::new(format!("{shards}_shards"), viewers),
                &viewers,
                |b, &viewers| {
                    b.iter_custom(|iters| {
                        let room = room.clone();
                        // The hub is a task on the runtime, as in a server.
                        rt.block_on(async move {
                            tokio::spawn(async move {
                                room.lock().await.fan_out(viewers, shards, iters).await
                            })
                            .await
                            .unwrap()
                        })
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, shards);
criterion_main!(benches);
