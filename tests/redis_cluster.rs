//! The live store and presence on a Redis Cluster (3 masters), with real
//! processes: two `front`s and a `processor` on the cluster and Kafka,
//! viewers on both fronts in rooms whose slots sit on different masters
//! (`docs/architecture.md`, "Redis Cluster"; `docs/redis-keys.md`).
//!
//! Needs `DANMAKU_TEST_REDIS_CLUSTER_URL` (the comma-separated nodes of a
//! cluster `scripts/redis-cluster.sh` started) and
//! `DANMAKU_TEST_KAFKA_BROKERS` (scripts/test.sh sets both); the restart test
//! starts a cluster of its own (redis-server and redis-cli on PATH). Without
//! them the tests skip, unless `DANMAKU_REQUIRE_SERVICES=1`, where they fail.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pair::{unique, Pair};
use common::procs::{free_port, require_programs, service_urls, Node, ScratchDir};
use common::WsViewer;
use danmaku::config::Config;
use danmaku::store::redis::{RedisStore, UPDATED_CHANNEL};
use danmaku::store::LiveStore;
use reqwest::StatusCode;
use serde_json::Value;

/// Posts per room in the delivery test.
const POSTS: usize = 20;
/// How long the restarted master stays away (a process restart that takes
/// a while; longer than a `/readyz` check's 1 s bound).
const DOWN_S: u32 = 2;

fn services() -> Option<(String, String)> {
    let urls = service_urls(&[
        "DANMAKU_TEST_REDIS_CLUSTER_URL",
        "DANMAKU_TEST_KAFKA_BROKERS",
    ])?;
    let [cluster, kafka] = <[String; 2]>::try_from(urls).ok()?;
    Some((cluster, kafka))
}

fn node_urls(cluster: &str) -> Vec<String> {
    cluster.split(',').map(|u| u.trim().to_string()).collect()
}

async fn plain(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("a cluster node")
}

/// Slot ranges per master port, from `CLUSTER NODES`.
async fn masters(cluster: &str) -> BTreeMap<u16, Vec<(u16, u16)>> {
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut plain(&node_urls(cluster)[0]).await)
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 || !f[2].contains("master") {
            continue;
        }
        let port: u16 = f[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
        let ranges = f[8..]
            .iter()
            .filter(|r| !r.starts_with('['))
            .map(|r| match r.split_once('-') {
                Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                None => (r.parse().unwrap(), r.parse().unwrap()),
            })
            .collect();
        out.insert(port, ranges);
    }
    out
}

/// One room per master: (room, slot, master port), named `<prefix>-<n>`.
/// The slot is `CLUSTER KEYSLOT` of the room's hash tag.
async fn rooms_on_every_master(cluster: &str, prefix: &str) -> Vec<(String, u16, u16)> {
    let masters = masters(cluster).await;
    assert_eq!(masters.len(), 3, "3 masters: {masters:?}");
    let mut conn = plain(&node_urls(cluster)[0]).await;
    let mut found: BTreeMap<u16, (String, u16)> = BTreeMap::new();
    for n in 0..1000 {
        let room = format!("{prefix}-{n}");
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(format!("dm:{{{room}}}:seq"))
            .query_async(&mut conn)
            .await
            .unwrap();
        let master = masters
            .iter()
            .find(|(_, ranges)| ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|(port, _)| *port)
            .expect("every slot is served");
        found.entry(master).or_insert((room, slot));
        if found.len() == masters.len() {
            break;
        }
    }
    let rooms: Vec<(String, u16, u16)> = found
        .into_iter()
        .map(|(port, (room, slot))| (room, slot, port))
        .collect();
    eprintln!("rooms (room, CLUSTER KEYSLOT, master port): {rooms:?}");
    rooms
}

/// Two fronts and a processor on `cluster` and `kafka`, each test with its
/// own topic and consumer group.
async fn start_roles(cluster: &str, kafka: &str, name: &str) -> (Pair, Node) {
    let unique = unique(name);
    let topic = format!("t-{unique}");
    let group = format!("g-{unique}");
    let env = [
        ("DANMAKU_BUS__ENGINE", "kafka"),
        ("DANMAKU_KAFKA_BROKERS", kafka),
        ("DANMAKU_BUS__PARTITIONS", "4"),
        ("DANMAKU_BUS__PUBLISH_TIMEOUT_MS", "3000"),
        ("DANMAKU_BUS__TOPIC", topic.as_str()),
        ("DANMAKU_BUS__GROUP_ID", group.as_str()),
        ("DANMAKU_FANOUT__PRESENCE_INTERVAL_MS", "200"),
        ("DANMAKU_INGEST__USER_RATE_PER_S", "100000"),
        ("DANMAKU_INGEST__USER_BURST", "100000"),
        // A room behind after a fault sheds its low (tests/shedding.rs):
        // kept out of the way, these tests count every message.
        ("DANMAKU_INGEST__SHED_LOW_DELAY_MS", "600000"),
        ("DANMAKU_INGEST__SHED_HIGH_DELAY_MS", "600000"),
    ];
    let pair = Pair::start_as("front", cluster, &env).await;
    let processor = Node::spawn("processor", &pair.env);
    processor.ready(&pair.http).await;
    (pair, processor)
}

async fn viewer(node: &Node, room: &str) -> WsViewer {
    WsViewer::connect(&format!("ws://127.0.0.1:{}/v1/rooms/{room}/ws", node.port)).await
}

fn texts(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect()
}

/// Reads `ws` (batches included) until its online count is `want`.
async fn until_online(ws: &mut WsViewer, want: u64, within: Duration) -> Option<u64> {
    let deadline = Instant::now() + within;
    while ws.online != Some(want) && Instant::now() < deadline {
        let _ = ws.collect(1, Duration::from_millis(200)).await;
    }
    ws.online
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_viewer_on_both_fronts_gets_every_message_once_in_order_in_rooms_on_every_master() {
    let Some((cluster, kafka)) = services() else {
        return;
    };
    let (p, _processor) = start_roles(&cluster, &kafka, "deliver").await;
    let rooms = rooms_on_every_master(&cluster, &unique("spread")).await;
    let mut viewers = Vec::new();
    for (room, _, _) in &rooms {
        viewers.push((room.clone(), viewer(&p.a, room).await));
        viewers.push((room.clone(), viewer(&p.b, room).await));
    }
    for i in 0..POSTS {
        for (room, _, _) in &rooms {
            let front = if i % 2 == 0 { &p.a } else { &p.b };
            let (s, body) = p.post(front, room, "fan", &format!("m{i}")).await;
            assert_eq!(s, StatusCode::ACCEPTED, "{room}: {body}");
        }
    }
    let want: Vec<String> = (0..POSTS).map(|i| format!("hello m{i}")).collect();
    for (room, ws) in &mut viewers {
        // `collect` fails the test on a seq delivered twice.
        let got = ws.collect(POSTS, Duration::from_secs(30)).await;
        assert_eq!(texts(&got), want, "{room}: every message once, in order");
    }

    // Presence: each room has one viewer per front; both fronts count 2.
    for (room, ws) in &mut viewers {
        let online = until_online(ws, 2, Duration::from_secs(30)).await;
        assert_eq!(
            online,
            Some(2),
            "{room}: online counts add up across fronts"
        );
    }

    // A mute set through front A holds on front B, for a room on each master.
    for (room, _, port) in &rooms {
        let user = unique("loud");
        let (s, body) = p.mute_in_room(&p.a, room, &user, 60).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let refused = p
            .refused_as_muted(&p.b, room, &user, Duration::from_secs(5))
            .await;
        assert!(refused, "{room} (master {port}): muted on A → 403 on B");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_published_on_any_node_reach_a_store_subscribed_through_another() {
    let Some((cluster, _)) = services() else {
        return;
    };
    let nodes = node_urls(&cluster);
    assert!(nodes.len() >= 3, "{cluster}");
    // Listed second-first: the store subscribes through nodes[1].
    let reordered = [&nodes[1], &nodes[0], &nodes[2]]
        .map(String::as_str)
        .join(",");
    let config = Config::embedded().store;
    let store = RedisStore::connect(&reordered, config.clone())
        .await
        .expect("cluster");
    let mut updates = store.updates();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.notices_live() {
        assert!(Instant::now() < deadline, "subscribed in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut subscribers = Vec::new();
    for url in &nodes {
        let numsub: (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(UPDATED_CHANNEL)
            .query_async(&mut plain(url).await)
            .await
            .unwrap();
        subscribers.push(numsub.1);
    }
    assert!(
        subscribers[1] >= 1,
        "subscribed through nodes[1]: {subscribers:?}"
    );

    // Published on the other two nodes (the older payload form: a name).
    let mut want = HashSet::new();
    for i in [0, 2] {
        let room = unique(&format!("via{i}"));
        let _: u64 = redis::cmd("PUBLISH")
            .arg(UPDATED_CHANNEL)
            .arg(&room)
            .query_async(&mut plain(&nodes[i]).await)
            .await
            .unwrap();
        want.insert(room);
    }
    // And by a processor's store (the cluster client picks the node).
    let processor = RedisStore::connect(&cluster, config)
        .await
        .expect("cluster");
    let room = unique("processor");
    processor
        .notify(vec![danmaku::store::RoomNotice::name_only(&room)])
        .await
        .expect("notify");
    want.insert(room);

    let deadline = Instant::now() + Duration::from_secs(10);
    while !want.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, updates.recv()).await {
            Ok(Ok(notice)) => {
                want.remove(&*notice.room);
            }
            Ok(Err(e)) => panic!("updates: {e}"),
            Err(_) => panic!("notices not received through nodes[1]: {want:?}"),
        }
    }
}

/// A Redis Cluster of this test's own (`scripts/redis-cluster.sh`), stopped
/// when dropped.
struct OwnCluster {
    base: u16,
    dir: ScratchDir,
}

impl OwnCluster {
    fn script() -> String {
        format!("{}/scripts/redis-cluster.sh", env!("CARGO_MANIFEST_DIR"))
    }

    fn start() -> OwnCluster {
        // Three free ports in a row whose bus ports (+10000) are free too.
        let base = loop {
            let base = free_port();
            if base > 50_000 {
                continue;
            }
            let free = (0..3).all(|i| {
                [base + i, base + i + 10_000]
                    .iter()
                    .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
            });
            if free {
                break base;
            }
        };
        let cluster = OwnCluster {
            base,
            dir: ScratchDir::new("redis-cluster"),
        };
        let status = Command::new("bash")
            .arg(Self::script())
            .args(["start", &base.to_string()])
            .arg(&cluster.dir.0)
            .status()
            .expect("scripts/redis-cluster.sh");
        assert!(status.success(), "redis cluster started");
        cluster
    }

    fn url(&self) -> String {
        (0..3)
            .map(|i| format!("redis://127.0.0.1:{}", self.base + i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `scripts/redis-cluster.sh restart`: SHUTDOWN SAVE, `down_s` seconds
    /// away, start again on the same port and nodes.conf, wait for
    /// cluster_state:ok.
    fn restart(&self, port: u16, down_s: u32) {
        let status = Command::new("bash")
            .arg(Self::script())
            .arg("restart")
            .arg(port.to_string())
            .arg(&self.dir.0)
            .arg(down_s.to_string())
            .status()
            .expect("scripts/redis-cluster.sh");
        assert!(status.success(), "node {port} restarted");
    }
}

impl OwnCluster {
    /// SIGSTOPs (`STOP`) or SIGCONTs (`CONT`) the node on `port`: stopped,
    /// it keeps its connections open and answers nothing, the shape of a
    /// partition that drops packets.
    fn signal(&self, port: u16, sig: &str) {
        let pid = std::fs::read_to_string(self.dir.0.join(port.to_string()).join("redis.pid"))
            .expect("the node's pid file");
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.trim())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig} node {port}");
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(Self::script())
            .arg("stop")
            .arg(&self.dir.0)
            .status();
    }
}

/// What a room's poster saw: acknowledged texts in order, refusals by status.
#[derive(Default)]
struct Posted {
    acked: Vec<String>,
    refused: BTreeMap<u16, usize>,
    /// Longest time between two acknowledged posts (the room's outage).
    longest_gap: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_one_master_under_load_loses_no_acknowledged_message() {
    let Some((_, kafka)) = services() else {
        return;
    };
    require_programs(&["redis-server", "redis-cli"]).expect("redis-server and redis-cli");
    let cluster = OwnCluster::start();
    let url = cluster.url();
    let (p, _processor) = start_roles(&url, &kafka, "restart").await;
    let p = Arc::new(p);
    let rooms = rooms_on_every_master(&url, &unique("restart")).await;
    // Rooms come sorted by master port: the victim is the first listed node,
    // the one every front's notices subscribe through, so the restart also
    // moves the subscriptions to another node.
    let (victim_room, _, victim_port) = rooms[0].clone();
    assert_eq!(victim_port, cluster.base, "the first listed node");
    let mut viewers = Vec::new();
    for (room, _, _) in &rooms {
        viewers.push((room.clone(), viewer(&p.a, room).await));
        viewers.push((room.clone(), viewer(&p.b, room).await));
    }

    // One poster per room, ~25 posts/s each, for 12 s; the restart at 4 s.
    let posted: Vec<Arc<Mutex<Posted>>> = rooms.iter().map(|_| Arc::default()).collect();
    let started = Instant::now();
    let mut posters = Vec::new();
    for ((room, _, _), out) in rooms.iter().zip(&posted) {
        let (p, room, out) = (p.clone(), room.clone(), out.clone());
        posters.push(tokio::spawn(async move {
            let mut i = 0;
            let mut last_ack = Instant::now();
            while started.elapsed() < Duration::from_secs(12) {
                let front = if i % 2 == 0 { &p.a } else { &p.b };
                let id = format!("r{i}");
                let (s, _) = p.post(front, &room, "fan", &id).await;
                {
                    let mut out = out.lock().unwrap();
                    if s == StatusCode::ACCEPTED {
                        out.acked.push(format!("hello {id}"));
                        out.longest_gap = out.longest_gap.max(last_ack.elapsed());
                        last_ack = Instant::now();
                    } else {
                        *out.refused.entry(s.as_u16()).or_default() += 1;
                    }
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Readiness while one master is away: the other masters still serve
    // their rooms, so the fronts stay in the load balancer.
    let stop_probe = tokio_util::sync::CancellationToken::new();
    let probe = {
        let (p, stop) = (p.clone(), stop_probe.clone());
        tokio::spawn(async move {
            let (mut probes, mut not_ready) = (0, 0);
            while !stop.is_cancelled() {
                probes += 1;
                if !p.a.is_ready(&p.http).await {
                    not_ready += 1;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (probes, not_ready)
        })
    };
    let restart_began = Instant::now();
    let c = &cluster;
    tokio::task::block_in_place(|| c.restart(victim_port, DOWN_S));
    let restart_took = restart_began.elapsed();
    stop_probe.cancel();
    let (probes, not_ready) = probe.await.unwrap();
    eprintln!("/readyz of front A during the restart: {not_ready} of {probes} not ready");
    assert_eq!(not_ready, 0, "fronts stay ready while one master restarts");
    for poster in posters {
        poster.await.unwrap();
    }

    // Every viewer gets every acknowledged message of its room, once, in
    // order; a refused post (not acknowledged) may or may not be stored.
    let mut report = Vec::new();
    for (room, ws) in &mut viewers {
        let i = rooms.iter().position(|(r, _, _)| r == room).unwrap();
        let (want, refused, longest_gap) = {
            let posted = posted[i].lock().unwrap();
            (
                posted.acked.clone(),
                posted.refused.clone(),
                posted.longest_gap,
            )
        };
        let acked: HashSet<&String> = want.iter().collect();
        let delivered_at = Instant::now();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while got.iter().filter(|t| acked.contains(t)).count() < acked.len()
            && Instant::now() < deadline
        {
            got.extend(texts(&ws.collect(1, Duration::from_millis(500)).await));
        }
        let got_acked: Vec<&String> = got.iter().filter(|t| acked.contains(t)).collect();
        let want: Vec<&String> = want.iter().collect();
        assert_eq!(
            got_acked, want,
            "{room}: every acknowledged message, once, in order"
        );
        assert!(ws.hello.get("reset").is_none(), "{room}: same stream");
        assert!(
            refused.keys().all(|s| *s == 503),
            "{room}: a post the store cannot take now is refused with 503, never another status: {refused:?}"
        );
        let resets = ws.others.iter().filter(|v| v["reset"] == true).count();
        report.push(format!(
            "{room}{}: acked {}, refused {:?}, delivered {} (+{} unacknowledged), longest gap between acks {:.2} s, resets {resets}, drained in {:.2} s",
            if *room == victim_room { " (restarted master)" } else { "" },
            want.len(),
            refused,
            got_acked.len(),
            got.len() - got_acked.len(),
            longest_gap.as_secs_f64(),
            delivered_at.elapsed().as_secs_f64(),
        ));
    }
    eprintln!(
        "master {victim_port} restarted (SHUTDOWN SAVE, {DOWN_S} s away, start, cluster_state:ok) in {:.2} s",
        restart_took.as_secs_f64()
    );
    for line in report {
        eprintln!("{line}");
    }
}

/// A store on `cluster` and a room on each master, each read once (the
/// client knows every master's slots).
async fn store_and_rooms(
    cluster: &OwnCluster,
    prefix: &str,
) -> (RedisStore, Vec<(String, u16, u16)>) {
    let url = cluster.url();
    let store = RedisStore::connect(&url, Config::embedded().store)
        .await
        .expect("cluster");
    let rooms = rooms_on_every_master(&url, &unique(prefix)).await;
    for (room, _, _) in &rooms {
        store.head(room).await.expect("every master answers");
    }
    (store, rooms)
}

/// One master frozen (SIGSTOP): calls to its rooms time out, and the store
/// health gate (src/store/redis/health.rs) must not fail the rooms of the
/// other masters with them. On a cluster the gate trips only when no listed
/// node answers `PING`: the other masters' rooms are served at once
/// throughout, the store's `PING` (`/readyz`) answers, and the gate never
/// trips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_frozen_master_does_not_fail_the_rooms_of_the_others() {
    require_programs(&["redis-server", "redis-cli"]).expect("redis-server and redis-cli");
    let cluster = OwnCluster::start();
    let (store, rooms) = store_and_rooms(&cluster, "frozen").await;
    let store = Arc::new(store);
    // The last master: not the first listed node (the seed the client
    // starts from).
    let (victim_room, _, victim_port) = rooms[2].clone();
    cluster.signal(victim_port, "STOP");
    let frozen = Instant::now();
    let victim_call = {
        let (store, room) = (store.clone(), victim_room.clone());
        tokio::spawn(async move {
            let r = store.head(&room).await;
            (r.is_ok(), frozen.elapsed())
        })
    };
    // Through the frozen master's timeouts (5 s each) and beyond.
    let (mut calls, mut slowest) = (0, Duration::ZERO);
    let (mut pings, mut pings_answered) = (0, 0);
    while frozen.elapsed() < Duration::from_secs(8) {
        for (room, _, _) in rooms.iter().filter(|(r, ..)| *r != victim_room) {
            let t = Instant::now();
            store
                .head(room)
                .await
                .unwrap_or_else(|e| panic!("{room}, on a master still up: {e}"));
            slowest = slowest.max(t.elapsed());
            calls += 1;
        }
        // `/readyz`'s check: the other masters answer, so the fronts stay
        // in the load balancer.
        let t = Instant::now();
        if store.ping().await.is_ok() {
            pings_answered += 1;
        }
        slowest = slowest.max(t.elapsed());
        pings += 1;
        assert!(!store.health().unreachable, "the gate tripped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.signal(victim_port, "CONT");
    let (victim_ok, victim_took) = victim_call.await.unwrap();
    eprintln!(
        "master {victim_port} frozen for 8 s: its room's call ok={victim_ok} after {:.1} s; \
         {calls} calls to the other masters' rooms, slowest {:.3} s; store PING answered \
         {pings_answered} of {pings}; gate trips {}",
        victim_took.as_secs_f64(),
        slowest.as_secs_f64(),
        store.health().trips
    );
    assert!(
        slowest < Duration::from_secs(1),
        "the other masters' rooms and PING: slowest {slowest:?}"
    );
    assert_eq!(
        pings_answered, pings,
        "the store's PING while one master is frozen"
    );
    assert_eq!(
        store.health().trips,
        0,
        "a cluster's gate trips only when no master answers"
    );
    // Thawed, its room is served again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.head(&victim_room).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the thawed master's room is served again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The whole cluster frozen (SIGSTOP, every node): once a call has timed out
/// and no listed node answers the gate's `PING`, calls fail at once (not
/// after the 5 s response timeout each); after the thaw the store serves
/// again within 1.5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_cluster_fails_calls_at_once_and_recovers() {
    require_programs(&["redis-server", "redis-cli"]).expect("redis-server and redis-cli");
    let cluster = OwnCluster::start();
    let (store, rooms) = store_and_rooms(&cluster, "all-frozen").await;
    let ports: Vec<u16> = rooms.iter().map(|(_, _, port)| *port).collect();
    for port in &ports {
        cluster.signal(*port, "STOP");
    }
    let frozen = Instant::now();
    // The first call waits out its response timeout; the gate then finds no
    // node answering and trips.
    let first = store.head(&rooms[0].0).await;
    assert!(first.is_err(), "a frozen cluster answered");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !store.health().unreachable {
        assert!(Instant::now() < deadline, "the gate did not trip");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tripped = frozen.elapsed();
    let (mut refused, mut slowest) = (0, Duration::ZERO);
    for (room, _, _) in rooms.iter().cycle().take(9) {
        let t = Instant::now();
        let e = store
            .head(room)
            .await
            .expect_err("refused while unreachable");
        slowest = slowest.max(t.elapsed());
        refused += 1;
        assert!(e.to_string().contains("unreachable since"), "{e}");
    }
    for port in &ports {
        cluster.signal(*port, "CONT");
    }
    let thawed = Instant::now();
    let deadline = thawed + Duration::from_secs(10);
    for (room, _, _) in &rooms {
        while store.head(room).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "{room}: not served after the thaw"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let recovered = thawed.elapsed();
    eprintln!(
        "cluster frozen: tripped after {:.1} s; {refused} calls refused, slowest {:.3} s; \
         every room served {:.2} s after the thaw; trips {}",
        tripped.as_secs_f64(),
        slowest.as_secs_f64(),
        recovered.as_secs_f64(),
        store.health().trips
    );
    assert!(
        slowest < Duration::from_secs(1),
        "refusals took {slowest:?}"
    );
    assert!(
        recovered < Duration::from_millis(1500),
        "served again {recovered:?} after the thaw"
    );
    assert_eq!(store.health().trips, 1);
}
