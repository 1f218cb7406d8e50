//! What quiet rooms cost: hubs read the live store on "room updated"
//! notices only, so rooms where nothing is posted cost no Redis reads, and
//! the node-wide rounds (presence, control catch-up) cost O(1) commands per
//! node per second, not per room (docs/architecture.md, "Fan-out").

mod common;

use std::time::Duration;

use common::pair::Pair;
use common::procs::{require_programs, OwnRedis};
use common::*;
use reqwest::StatusCode;

/// Rooms per node, one WebSocket viewer each.
const ROOMS_PER_NODE: usize = 150;

/// Calls per command so far (`INFO commandstats`), without INFO itself.
async fn command_calls(conn: &mut redis::aio::MultiplexedConnection) -> Vec<(String, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            (name != "info").then(|| (name.to_string(), calls))
        })
        .collect()
}

fn delta(before: &[(String, u64)], after: &[(String, u64)]) -> Vec<(String, u64)> {
    after
        .iter()
        .map(|(name, n)| {
            let was = before.iter().find(|(b, _)| b == name).map_or(0, |b| b.1);
            (name.clone(), n - was)
        })
        .filter(|(_, d)| *d > 0)
        .collect()
}

/// Two fronts on one Redis, 300 rooms with one WebSocket viewer each,
/// nothing posted: at most 20 Redis commands per second in all, and no
/// range read at all. A post then still reaches its viewer at once, also
/// right after the nodes lost their notice subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_rooms_cost_no_reads() {
    if require_programs(&["redis-server"]).is_none() {
        return;
    }
    // Its own Redis: the count is this test's traffic only.
    let redis = OwnRedis::start();
    let pair = Pair::start(
        &redis.url(),
        &[
            ("DANMAKU_SERVER__MAX_VIEWER_CONNECTIONS_PER_IP", "100000"),
            ("DANMAKU_FANOUT__TICK_MS", "100"),
        ],
    )
    .await;
    let ns = now_ms();
    let mut viewers = Vec::new();
    for (n, node) in [&pair.a, &pair.b].into_iter().enumerate() {
        for i in 0..ROOMS_PER_NODE {
            let room = format!("quiet-{ns}-{n}-{i}");
            let url = format!("{}/v1/rooms/{room}/ws", node.base().replace("http", "ws"));
            viewers.push((room, WsViewer::connect(&url).await));
        }
    }
    // Past each hub's first read and a few presence rounds.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let window = Duration::from_secs(10);
    let before = command_calls(&mut conn).await;
    tokio::time::sleep(window).await;
    let spent = delta(&before, &command_calls(&mut conn).await);
    let total: u64 = spent.iter().map(|(_, n)| n).sum();
    let per_s = total as f64 / window.as_secs_f64();
    eprintln!("quiet rooms: {per_s:.1} Redis commands/s: {spent:?}");
    let reads: u64 = spent
        .iter()
        .filter(|(name, _)| name == "zrangebyscore" || name == "multi")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(reads, 0, "no range read for quiet rooms: {spent:?}");
    assert!(
        per_s <= 20.0,
        "2 fronts, 300 quiet rooms: {per_s:.1} commands/s > 20: {spent:?}"
    );

    // A post still reaches its viewer within a tick or two (by notice).
    let (room, viewer) = &mut viewers[ROOMS_PER_NODE + 7];
    let posted = pair.post(&pair.a, room, "u1", "q1").await;
    assert_eq!(posted.0, StatusCode::ACCEPTED, "{posted:?}");
    let got = viewer.collect(1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "the viewer on the other node got the post");

    // Notices lost: both nodes resubscribe and read every room once; a post
    // made meanwhile is not lost.
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(killed >= 2, "both nodes' subscribers were cut");
    let (room, viewer) = &mut viewers[3];
    let posted = pair.post(&pair.b, room, "u1", "q2").await;
    assert_eq!(posted.0, StatusCode::ACCEPTED, "{posted:?}");
    let got = viewer.collect(1, Duration::from_secs(10)).await;
    assert_eq!(
        got.len(),
        1,
        "the post made while notices were down arrived"
    );
    drop(viewers);
}
