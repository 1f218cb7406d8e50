//! The Redis live store against a real redis-server.
//!
//! `DANMAKU_TEST_REDIS_URL` (e.g. `redis://127.0.0.1:6390`) points at a
//! server these tests may write to (and, in one test, FLUSHALL). Unset, the
//! tests skip with a notice, or fail when `DANMAKU_REQUIRE_SERVICES=1`.
//!
//! Each test uses its own rooms and keys, so they run in parallel; the one
//! test that flushes the server holds `FLUSH` exclusively.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use danmaku::config::{Config, StoreConfig};
use danmaku::message::{now_ms, Kind, Message, Priority, UserRef};
use danmaku::store::memory::MemoryStore;
use danmaku::store::redis::RedisStore;
use danmaku::store::{
    AppendOutcome, Claim, LiveStore, RoomNotice, StoreError, StoredBatch, StreamRead,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::RwLock;
use tokio::task::JoinHandle;

/// Readers: every test. Writer: the test that runs FLUSHALL.
static FLUSH: RwLock<()> = RwLock::const_new(());

fn redis_url() -> Option<String> {
    common::test_redis_url()
}

/// `let url = need_redis!();` — the test's URL, or return (skip).
macro_rules! need_redis {
    () => {
        match redis_url() {
            Some(url) => url,
            None => return,
        }
    };
}

fn cfg(max_per_bucket: usize) -> StoreConfig {
    StoreConfig {
        max_per_bucket,
        max_age_s: 600,
        dedup_window: 1000,
        room_ttl_s: 3600,
        ..Config::embedded().store
    }
}

/// A room name no other test (or earlier run) uses.
fn room(name: &str) -> String {
    format!("t-{name}-{:012x}", rand::random::<u64>() >> 16)
}

fn msg(id: &str, priority: Priority) -> Message {
    msg_at(id, priority, now_ms())
}

fn msg_at(id: &str, priority: Priority, ts: u64) -> Message {
    Message {
        id: id.into(),
        seq: 0,
        room: "r".into(),
        kind: Kind::Danmaku,
        priority,
        user: UserRef {
            id: "u".into(),
            name: "ü \"quoted\"".into(),
        },
        text: format!("text of {id}"),
        ts,
        offset_ms: None,
        gift: None,
        style: None,
    }
}

async fn store(url: &str, config: StoreConfig) -> RedisStore {
    RedisStore::connect(url, config)
        .await
        .expect("connect to DANMAKU_TEST_REDIS_URL")
}

async fn admin(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn seqs(r: &StreamRead) -> Vec<u64> {
    r.messages.iter().map(|m| m.seq).collect()
}

#[tokio::test]
async fn sequences_span_buckets_and_reads_merge_in_order() {
    let url = need_redis!();
    let _shared = FLUSH.read().await;
    let s = store(&url, cfg(100)).await;
    let r = room("merge");
    let batch = vec![
        msg("a", Priority::Low),
        msg("b", Priority::High),
        msg("c", Priority::Whitelist),
        msg("a", Priority::Low),
        msg("d", Priority::Low),
        msg("e", Priority::Whitelist),
    ];
    let out = s.append(&r, batch.clone()).await.unwrap();
    assert_eq!(
        out,
        vec![
            AppendOutcome::Stored { seq: 1 },
            AppendOutcome::Stored { seq: 2 },
            AppendOutcome::Stored { seq: 3 },
            AppendOutcome::Duplicate { seq: 1 },
            AppendOutcome::Stored { seq: 4 },
            AppendOutcome::Stored { seq: 5 },
        ]
    );
    let read = s.read_range(&r, 0, u64::MAX, 100).await.unwrap();
    assert_eq!(seqs(&read), vec![1, 2, 3, 4, 5]);
    assert_eq!((read.head, read.cursor, read.gap), (5, 5, false));
    // Each stored message is exactly what `into_stored(seq)` produces.
    let expected = [&batch[0], &batch[1], &batch[2], &batch[4], &batch[5]];
    for (got, m) in read.messages.iter().zip(expected) {
        let want = m.clone().into_stored(got.seq);
        assert_eq!(got, &want);
        let v: serde_json::Value = serde_json::from_slice(&got.json).unwrap();
        assert_eq!(v["seq"], got.seq);
    }
    let head = s.head(&r).await.unwrap();
    assert_eq!(head.seq, 5);
    assert_eq!(head.epoch, read.epoch);

    let read = s.read_range(&r, 1, 2, 100).await.unwrap();
    assert_eq!(seqs(&read), vec![2]);
    assert_eq!(read.cursor, 2);
    let read = s.read_range(&r, 2, 4, 100).await.unwrap();
    assert_eq!(seqs(&read), vec![3, 4]);
    assert_eq!(read.cursor, 4);
}

#[tokio::test]
async fn redelivery_stores_nothing_twice() {
    let url = need_redis!();
    let _shared = FLUSH.read().await;
    let s = store(&url, cfg(100)).await;
    let r = room("dup");
    let batch: Vec<Message> = (0..5)
        .map(|i| msg(&format!("m{i}"), Priority::ALL[i % 3]))
        .collect();
    let first = s.append(&r, batch.clone()).await.unwrap();
    let again = s.append(&r, batch.clone()).await.unwrap();
    let seqs_of = |o: &[AppendOutcome]| {
        o.iter()
            .map(|o| match o {
                AppendOutcome::Stored { seq } | AppendOutcome::Duplicate { seq } => *seq,
            })
            .collect::<Vec<_>>()
    };
    assert!(first
        .iter()
        .all(|o| matches!(o, AppendOutcome::Stored { .. })));
    assert!(again
        .iter()
        .all(|o| matches!(o, AppendOutcome::Duplicate { .. })));
    assert_eq!(seqs_of(&first), seqs_of(&again));
    assert_eq!(s.head(&r).await.unwrap().seq, 5);
    let read = s.read_range(&r, 0, u64::MAX, 100).await.unwrap();
    assert_eq!(seqs(&read), vec![1, 2, 3, 4, 5]);

    // Two deliveries racing each other: still one copy of each.
    let (a, b) = tokio::join!(
        s.append(&r, vec![msg("x", Priority::Low), msg("y", Priority::High)]),
        s.append(&r, vec![msg("y", Priority::High), msg("x", Priority::Low)]),
    );
    let stored = a
        .unwrap()
        .into_iter()
        .chain(b.unwrap())
        .filter(|o| matches!(o, AppendOutcome::Stored { .. }))
        .count();
    assert_eq!(stored, 2);
    assert_eq!(s.head(&r).await.unwrap().seq, 7);
}

#[tokio::test]
async fn dedup_window_is_bounded_like_memory() {
    let url = need_redis!();
    let _shared = FLUSH.read().await;
    let config = StoreConfig {
        dedup_window: 2,
        ..cfg(100)
    };
    let s = store(&url, config.clone()).await;
    let m = MemoryStore::new(config);
    let r = room("window");
    let batches = [
        vec!["a", "b", "a"],
        vec!["c"],
        vec!["b", "a"], // b still remembered (window = b, c); a forgotten
        vec!["a", "c", "d", "a"],
    ];
    for ids in batches {
        let batch: Vec<Message> = ids.iter().map(|id| msg(id, Priority::Low)).collect();
        let want = m.append(&r, batch.clone()).await.unwrap();
        let got = s.append(&r, batch).await.unwrap();
        assert_eq!(got, want, "batch {ids:?}");
    }
    let mut admin = admin(&url).await;
    let remembered: u64 = redis::cmd("ZCARD")
        .arg(format!("dm:{{{r}}}:ids"))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(remembered, 2);
}

#[tokio::test]
async fn limit_cuts_cursor_and_trim_reports_gap() {
    let url = need_redis!();
    let _shared = FLUSH.read().await;
    // Mirrors the memory engine's unit test of the same name.
    let s = store(&url, cfg(3)).await;
    let r = room("limit");
    let batch = (0..5)
        .map(|i| msg(&format!("m{i}"), Priority::Low))
        .collect();
    s.append(&r, batch).await.unwrap();
    let read = s.read_range(&r, 0, u64::MAX, 2).await.unwrap();
    assert!(read.gap, "m0, m1 were trimmed");
    assert_eq!(seqs(&read), vec![3, 4]);
    assert_eq!(read.cursor, 4);
    let read = s.read_range(&r, 4, u64::MAX, 2).await.unwrap();
    assert_eq!(read.cursor, 5);
    assert!(!read.gap);
    // A cursor ahead of the head stays at the head; an empty room reads as 0.
    let read = s.read_range(&r, 9, u64::MAX, 2).await.unwrap();
    assert_eq!((read.cursor, read.head, read.messages.len()), (5, 5, 0));
    let empty = s.read_range(&room("empty"), 0, u64::MAX, 10).await.unwrap();
    assert_eq!((empty.cursor, empty.head, empty.gap), (0, 0, false));
    assert!(!empty.epoch.is_empty());
}

#[tokio::test]
async fn trim_by_age_reports_gap() {
    let url = need_redis!();
    let _shared = FLUSH.read().await;
    let s = store(&url, cfg(100)).await;
    let r = room("age");
    let old = now_ms() - 601_000;
    let batch = vec![
        msg_at("old1", Priority::High, old),
        msg_at("old2", Priority::High, old),
        msg("new", Priority::High),
        msg_at("late-old", Priority::High, old), // behind a fresh one: kept
    ];
    s.append(&r, batch).await.unwrap();
    let read = s.read_range(&r, 0, u64::MAX, 100).await.unwrap();
    assert_eq!(seqs(&read), vec![3, 4]);
    assert!(read.gap);
    assert!(!s.read_range(&r, 2, u64::MAX, 100).await.unwrap().gap);
}

/// The same operations on both engines give the same reads for a grid of
/// (after, until, limit).
#[tokio::test]
async fn reads_match_the_memory_engine() {
    let url = need_redis!();
    let _shared = FLUSH.read().await;
    let config = cfg(4);
    let s = store(&url, config.clone()).await;
    let m = MemoryStore::new(config);
    let r = room("diff");
    let old = now_ms() - 700_000;
    let pattern = [2, 1, 2, 2, 0, 2, 1, 1, 2, 0, 2, 2, 1, 2, 2, 0, 2, 2, 2, 1];
    let mut batches: Vec<Vec<Message>> = Vec::new();
    for (chunk_no, chunk) in pattern.chunks(3).enumerate() {
        let mut batch: Vec<Message> = chunk
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let id = format!("c{chunk_no}-{i}");
                if chunk_no == 0 {
                    msg_at(&id, Priority::ALL[*p], old)
                } else {
                    msg(&id, Priority::ALL[*p])
                }
            })
            .collect();
        if chunk_no == 2 {
            batch.push(msg("c0-1", Priority::Low)); // a redelivery
        }
        batches.push(batch);
    }
    for batch in batches {
        let want = m.append(&r, batch.clone()).await.unwrap();
        let got = s.append(&r, batch).await.unwrap();
        assert_eq!(got, want);
    }
    let head = s.head(&r).await.unwrap().seq;
    assert_eq!(head, m.head(&r).await.unwrap().seq);
    let mut checked = 0;
    for after in 0..=head + 1 {
        for until in [
            after,
            after + 1,
            head.saturating_sub(1),
            head,
            head + 3,
            u64::MAX,
        ] {
            for limit in [0, 1, 2, 3, 5, 100] {
                let want = m.read_range(&r, after, until, limit).await.unwrap();
                let got = s.read_range(&r, after, until, limit).await.unwrap();
                let ctx = format!("after={after} until={until} limit={limit}");
                assert_eq!(got.messages, want.messages, "{ctx}");
                assert_eq!(got.cursor, want.cursor, "{ctx}");
                assert_eq!(got.head, want.head, "{ctx}");
                assert_eq!(got.gap, want.gap, "{ctx}");
                checked += 1;
            }
        }
    }
    assert!(checked > 100);
}

/// Retractions (docs/redis-keys.md, "Retractions") answer and read exactly
/// as the embedded engine's: the message leaves every read, the cursor
/// passes its seq without a gap, the id stays known.
#[tokio::test]
async fn retractions_match_the_memory_engine() {
    let url = need_redis!();
    let _shared = FLUSH.read().await;
    let config = cfg(3);
    let s = store(&url, config.clone()).await;
    let m = MemoryStore::new(config);
    let r = room("retract");
    let pattern = [2, 1, 2, 2, 0, 2, 1, 2, 2, 0];
    let batch: Vec<Message> = pattern
        .iter()
        .enumerate()
        .map(|(i, p)| msg(&format!("m{i}"), Priority::ALL[*p]))
        .collect();
    assert_eq!(
        s.append(&r, batch.clone()).await.unwrap(),
        m.append(&r, batch).await.unwrap()
    );
    // m0 was trimmed (low keeps 3): known, nothing left to take out. m3 twice.
    for id in ["m3", "m4", "m0", "m3", "nope", "m9"] {
        let want = m.retract(&r, id).await.unwrap();
        let got = s.retract(&r, id).await.unwrap();
        assert_eq!(got, want, "retract {id}");
    }
    let got = s.retract(&r, "m4").await.unwrap();
    assert_eq!(got.map(|g| (g.seq, g.message.is_none())), Some((5, true)));
    assert_eq!(s.retract(&room("none"), "m1").await.unwrap(), None);
    let head = s.head(&r).await.unwrap().seq;
    for after in 0..=head {
        for until in [after + 1, head, u64::MAX] {
            for limit in [1, 2, 100] {
                let want = m.read_range(&r, after, until, limit).await.unwrap();
                let got = s.read_range(&r, after, until, limit).await.unwrap();
                let ctx = format!("after={after} until={until} limit={limit}");
                assert_eq!(got.messages, want.messages, "{ctx}");
                assert_eq!((got.cursor, got.gap), (want.cursor, want.gap), "{ctx}");
            }
        }
    }
    // After the last trimmed seq (4, low): no gap, though 5 and 10 are gone.
    let all = s.read_range(&r, 4, u64::MAX, 100).await.unwrap();
    let ids: Vec<&str> = all.messages.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, vec!["m5", "m6", "m7", "m8"]);
    assert_eq!(
        (all.cursor, all.gap),
        (10, false),
        "a retraction is not a gap"
    );
    // A redelivery of a retracted message is a duplicate, not stored again.
    let again = s.append(&r, vec![msg("m3", Priority::Low)]).await.unwrap();
    assert_eq!(again, vec![AppendOutcome::Duplicate { seq: 4 }]);
    let mut a = admin(&url).await;
    let recorded: Vec<(String, u64)> = redis::cmd("ZRANGE")
        .arg(format!("dm:{{{r}}}:retracted"))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut a)
        .await
        .unwrap();
    let want: Vec<(String, u64)> = [("m0", 1), ("m3", 4), ("m4", 5), ("m9", 10)]
        .iter()
        .map(|(id, seq)| (id.to_string(), *seq))
        .collect();
    assert_eq!(recorded, want);
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("dm:{{{r}}}:retracted"))
        .query_async(&mut a)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 3600, "expires with the room: {ttl}");
}

#[tokio::test]
async fn room_keys_are_hash_tagged_and_expire() {
    let url = need_redis!();
    let _shared = FLUSH.read().await;
    let config = StoreConfig {
        max_per_bucket: 1,
        ..cfg(1)
    };
    let s = store(&url, config.clone()).await;
    let r = room("keys");
    s.append(
        &r,
        vec![
            msg("a", Priority::Whitelist),
            msg("b", Priority::High),
            msg("c", Priority::Low),
            msg("d", Priority::Low),
        ],
    )
    .await
    .unwrap();
    let mut admin = admin(&url).await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("dm:{{{r}}}:*"))
        .query_async(&mut admin)
        .await
        .unwrap();
    keys.sort();
    let expect: Vec<String> = [
        "b:high",
        "b:low",
        "b:whitelist",
        "epoch",
        "ids",
        "primary",
        "seq",
        "trimmed",
    ]
    .iter()
    .map(|k| format!("dm:{{{r}}}:{k}"))
    .collect();
    assert_eq!(keys, expect);
    for key in &keys {
        let ttl: i64 = redis::cmd("TTL")
            .arg(key)
            .query_async(&mut admin)
            .await
            .unwrap();
        assert!(
            ttl > 0 && ttl <= config.room_ttl_s as i64,
            "{key} ttl {ttl}"
        );
    }
    let trimmed: Option<u64> = redis::cmd("HGET")
        .arg(format!("dm:{{{r}}}:trimmed"))
        .arg("low")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(trimmed, Some(3));
}

/// A room last written by another server keeps its epoch on a primary that
/// was never a replica (a restart: its writes survive only with an fsynced
/// AOF); only a promoted replica starts a new one (tests/redis_failover.rs).
#[tokio::test]
async fn another_writer_on_a_primary_that_was_no_replica_keeps_the_epoch() {
    let url = need_redis!();
    let _shared = FLUSH.read().await;
    let s = store(&url, cfg(100)).await;
    let r = room("writer");
    let first = s
        .append_in_epoch(&r, vec![msg("a", Priority::High)])
        .await
        .unwrap();
    let mut admin = admin(&url).await;
    let key = format!("dm:{{{r}}}:primary");
    let writer: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(writer.len(), 40, "the writer is a run_id: {writer}");
    let () = redis::cmd("SET")
        .arg(&key)
        .arg("0".repeat(40))
        .query_async(&mut admin)
        .await
        .unwrap();
    let second = s
        .append_in_epoch(&r, vec![msg("b", Priority::High)])
        .await
        .unwrap();
    assert_eq!(second.epoch, first.epoch);
    let again: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(again, writer, "the writer is this server again");
}

#[tokio::test]
async fn epoch_is_stable_until_the_store_loses_the_stream() {
    let url = need_redis!();
    let _exclusive = FLUSH.write().await;
    let s = store(&url, cfg(100)).await;
    let r = room("epoch");
    let first = s.head(&r).await.unwrap();
    assert_eq!(first.seq, 0);
    s.append(&r, vec![msg("a", Priority::Low)]).await.unwrap();
    let second = s.head(&r).await.unwrap();
    assert_eq!(second.epoch, first.epoch, "the epoch is written once");
    assert_eq!(second.seq, 1);
    let read = s.read_range(&r, 0, u64::MAX, 10).await.unwrap();
    assert_eq!(read.epoch, first.epoch);

    let mut admin = admin(&url).await;
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut admin)
        .await
        .unwrap();

    let read = s.read_range(&r, 1, u64::MAX, 10).await.unwrap();
    assert_ne!(read.epoch, first.epoch, "a lost stream has a new epoch");
    assert_eq!((read.head, read.cursor), (0, 0));
    let after = s.head(&r).await.unwrap();
    assert_eq!(after.epoch, read.epoch);
    assert_eq!(
        s.append(&r, vec![msg("a", Priority::Low)]).await.unwrap(),
        vec![AppendOutcome::Stored { seq: 1 }]
    );
    assert_eq!(s.head(&r).await.unwrap().epoch, read.epoch);
}

#[tokio::test]
async fn claims_hold_until_released_or_expired() {
    let url = need_redis!();
    let _shared = FLUSH.read().await;
    let s = store(&url, cfg(3)).await;
    let k = format!("dm:{{{}}}:viewer:msg-1", room("claim"));
    let ttl = Duration::from_secs(60);
    assert_eq!(s.claim(&k, "v1", ttl).await.unwrap(), Claim::Won);
    assert_eq!(
        s.claim(&k, "v2", ttl).await.unwrap(),
        Claim::Held("v1".into())
    );
    s.set_claim(&k, "done", ttl).await.unwrap();
    assert_eq!(
        s.claim(&k, "v3", ttl).await.unwrap(),
        Claim::Held("done".into())
    );
    s.release(&k).await.unwrap();
    assert_eq!(s.claim(&k, "v4", ttl).await.unwrap(), Claim::Won);

    // Stored under its own namespace, with the TTL.
    let mut admin = admin(&url).await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("claim:{k}"))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(pttl > 50_000 && pttl <= 60_000, "pttl {pttl}");

    let short = format!("{k}-short");
    let ttl = Duration::from_millis(150);
    assert_eq!(s.claim(&short, "a", ttl).await.unwrap(), Claim::Won);
    assert_eq!(
        s.claim(&short, "b", ttl).await.unwrap(),
        Claim::Held("a".into())
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(s.claim(&short, "c", ttl).await.unwrap(), Claim::Won);
    s.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_gapless_unique_sequences() {
    let url = need_redis!();
    let _shared = FLUSH.read().await;
    let s = Arc::new(store(&url, cfg(10_000)).await);
    let r = room("concurrent");
    const TASKS: usize = 4;
    const BATCHES: usize = 40;
    const PER_BATCH: usize = 5;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let s = s.clone();
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for b in 0..BATCHES {
                let batch = (0..PER_BATCH)
                    .map(|i| msg(&format!("t{t}-b{b}-{i}"), Priority::ALL[(t + i) % 3]))
                    .collect();
                for o in s.append(&r, batch).await.unwrap() {
                    match o {
                        AppendOutcome::Stored { seq } => seqs.push(seq),
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let seqs = t.await.unwrap();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "per task in order");
        all.extend(seqs);
    }
    let n = (TASKS * BATCHES * PER_BATCH) as u64;
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(all.len() as u64, n, "no duplicates");
    assert_eq!(unique, (1..=n).collect(), "no gaps");
    assert_eq!(s.head(&r).await.unwrap().seq, n);
    let read = s.read_range(&r, 0, u64::MAX, n as usize).await.unwrap();
    assert_eq!(seqs(&read), (1..=n).collect::<Vec<_>>());
    assert_eq!(read.cursor, n);
}

/// A TCP proxy in front of Redis that can drop its connections and refuse
/// service, to play a Redis restart or outage without touching the server
/// other tests use.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let up = up.clone();
            let links = links.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        continue;
                    };
                    if !up.load(Ordering::SeqCst) {
                        drop(client); // refused: connected, then closed at once
                        continue;
                    }
                    let target = target.clone();
                    let link = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(&target).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    links.lock().unwrap().push(link);
                }
            })
        };
        Proxy {
            addr,
            up,
            links,
            accept,
        }
    }

    /// Closes every proxied connection (as a Redis restart or CLIENT KILL does).
    fn kill_connections(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            self.kill_connections();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.kill_connections();
    }
}

/// `redis://[auth@]host:port[/db]` → (`host:port`, URL with `replacement`
/// in place of `host:port`).
fn split_url(url: &str, replacement: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("a redis:// URL");
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (auth, hostport) = match authority.rfind('@') {
        Some(i) => (&authority[..=i], &authority[i + 1..]),
        None => ("", authority),
    };
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:6379")
    };
    (hostport, format!("{scheme}://{auth}{replacement}{path}"))
}

/// Polls `f` until it succeeds (bounded).
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("{what}: still failing: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what}: did not recover: {e}"),
        }
    }
}

#[tokio::test]
async fn outage_fails_calls_then_recovers_by_itself() {
    let url = need_redis!();
    let _shared = FLUSH.read().await;
    let (target, _) = split_url(&url, "");
    let proxy = Proxy::start(target).await;
    let (_, proxied) = split_url(&url, &proxy.addr.to_string());
    let s = store(&proxied, cfg(100)).await;
    let r = room("outage");
    s.append(&r, vec![msg("before", Priority::High)])
        .await
        .unwrap();
    let epoch = s.head(&r).await.unwrap().epoch;

    // A restart drops connections: at most a failed call or two, then the
    // same store works again.
    proxy.kill_connections();
    let head = eventually("head after a dropped connection", || s.head(&r)).await;
    assert_eq!((head.seq, head.epoch.as_str()), (1, epoch.as_str()));

    // An outage: every kind of call fails with Unavailable, never panics.
    proxy.set_up(false);
    let down = tokio::time::timeout(Duration::from_secs(20), async {
        let mut errors = Vec::new();
        errors.push(
            s.append(&r, vec![msg("during", Priority::High)])
                .await
                .err(),
        );
        errors.push(s.head(&r).await.err());
        errors.push(s.read_range(&r, 0, u64::MAX, 10).await.err());
        errors.push(s.claim("k", "v", Duration::from_secs(5)).await.err());
        errors.push(s.ping().await.err());
        errors
    })
    .await
    .expect("calls fail promptly while Redis is away");
    for e in down {
        assert!(
            matches!(e, Some(StoreError::Unavailable(_))),
            "expected Unavailable, got {e:?}"
        );
    }

    // Back: the same store recovers without being rebuilt.
    proxy.set_up(true);
    eventually("ping after the outage", || s.ping()).await;
    let out = eventually("append after the outage", || {
        s.append(&r, vec![msg("after", Priority::High)])
    })
    .await;
    assert_eq!(out, vec![AppendOutcome::Stored { seq: 2 }]);
    let read = s.read_range(&r, 0, u64::MAX, 10).await.unwrap();
    assert_eq!(
        read.messages
            .iter()
            .map(|m| m.id.as_str())
            .collect::<Vec<_>>(),
        vec!["before", "after"]
    );
    assert_eq!(read.epoch, epoch);
}

#[tokio::test]
async fn connect_fails_cleanly() {
    let _url = need_redis!();
    let bad = RedisStore::connect("not a url", cfg(1)).await;
    assert!(matches!(bad, Err(StoreError::Unavailable(_))));
    // Nothing listens on port 1.
    let down = RedisStore::connect("redis://127.0.0.1:1", cfg(1)).await;
    assert!(matches!(down, Err(StoreError::Unavailable(_))));
}

// ---------------------------------------------------------------------------
// Presence (`src/presence/`) and "room updated" notices.

/// A node name no other test (or earlier run) uses.
fn node(name: &str) -> String {
    format!("n-{name}-{:012x}", rand::random::<u64>() >> 16)
}

fn counts(pairs: &[(&String, u64)]) -> Vec<(String, u64)> {
    pairs.iter().map(|(r, n)| ((*r).clone(), *n)).collect()
}

#[tokio::test]
async fn presence_sums_counts_across_nodes() {
    let url = need_redis!();
    let _shared = FLUSH.read().await;
    let a = store(&url, cfg(10)).await;
    let b = store(&url, cfg(10)).await;
    let (na, nb) = (node("a"), node("b"));
    let (r1, r2, r3) = (room("p1"), room("p2"), room("p3"));
    let ttl = Duration::from_secs(60);

    let got = a
        .exchange_presence(&na, &counts(&[(&r1, 3), (&r2, 1)]), ttl)
        .await
        .unwrap();
    assert_eq!(got, vec![3, 1], "only a so far");
    let got = b
        .exchange_presence(&nb, &counts(&[(&r1, 2), (&r3, 5)]), ttl)
        .await
        .unwrap();
    assert_eq!(got, vec![5, 5], "b sees a's viewers of r1");
    // A room this node has no viewers of still gets the cluster figure.
    let got = a
        .exchange_presence(&na, &counts(&[(&r1, 3), (&r2, 1), (&r3, 0)]), ttl)
        .await
        .unwrap();
    assert_eq!(got, vec![5, 1, 5]);
    // Order follows the request.
    let got = b
        .exchange_presence(&nb, &counts(&[(&r3, 5), (&r2, 0), (&r1, 2)]), ttl)
        .await
        .unwrap();
    assert_eq!(got, vec![5, 1, 5]);
    assert_eq!(
        a.exchange_presence(&na, &[], ttl).await.unwrap(),
        Vec::<u64>::new()
    );

    // The layout of docs/redis-keys.md: one hash per node with a TTL, and the
    // node registered in the nodes set until its registration runs out.
    let mut admin = admin(&url).await;
    let hash: Vec<(String, u64)> = redis::cmd("HGETALL")
        .arg(format!("{{presence}}:node:{nb}"))
        .query_async(&mut admin)
        .await
        .unwrap();
    let mut hash = hash;
    hash.sort();
    let mut want = counts(&[(&r1, 2), (&r3, 5)]);
    want.sort();
    assert_eq!(hash, want, "zero counts are not stored");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{{presence}}:node:{nb}"))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(pttl > 50_000 && pttl <= 60_000, "pttl {pttl}");
    let deadline: Option<f64> = redis::cmd("ZSCORE")
        .arg("{presence}:nodes")
        .arg(&nb)
        .query_async(&mut admin)
        .await
        .unwrap();
    let deadline = deadline.expect("b is registered") as u64;
    // Scored on the server's clock (TIME), not this host's.
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut admin).await.unwrap();
    let now = secs * 1000 + micros / 1000;
    assert!(
        deadline > now + 50_000 && deadline <= now + 61_000,
        "deadline {deadline} vs now {now}"
    );
}

/// Unchanged counts only refresh a node's hash; a hash lost meanwhile (a
/// Redis restart, an eviction) is written again in full, not left missing.
#[tokio::test]
async fn presence_rewrites_unchanged_counts_whose_hash_is_gone() {
    let url = need_redis!();
    let _shared = FLUSH.read().await;
    let a = store(&url, cfg(10)).await;
    let b = store(&url, cfg(10)).await;
    let (na, nb) = (node("a"), node("b"));
    let r1 = room("lost1");
    let ttl = Duration::from_secs(60);
    let mine = counts(&[(&r1, 4)]);
    for _ in 0..2 {
        a.exchange_presence(&na, &mine, ttl).await.unwrap();
    }
    let theirs = counts(&[(&r1, 1)]);
    assert_eq!(
        b.exchange_presence(&nb, &theirs, ttl).await.unwrap(),
        vec![5]
    );
    let mut admin = admin(&url).await;
    let _: () = redis::cmd("DEL")
        .arg(format!("{{presence}}:node:{na}"))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(
        b.exchange_presence(&nb, &theirs, ttl).await.unwrap(),
        vec![1]
    );
    // a's counts are unchanged, but its hash is gone: it is written again.
    a.exchange_presence(&na, &mine, ttl).await.unwrap();
    assert_eq!(
        b.exchange_presence(&nb, &theirs, ttl).await.unwrap(),
        vec![5]
    );
}

#[tokio::test]
async fn presence_forgets_rooms_a_node_no_longer_lists() {
    let url = need_redis!();
    let _shared = FLUSH.read().await;
    let a = store(&url, cfg(10)).await;
    let b = store(&url, cfg(10)).await;
    let (na, nb) = (node("a"), node("b"));
    let (r1, r2) = (room("gone1"), room("gone2"));
    let ttl = Duration::from_secs(60);
    a.exchange_presence(&na, &counts(&[(&r1, 4), (&r2, 7)]), ttl)
        .await
        .unwrap();
    let got = b
        .exchange_presence(&nb, &counts(&[(&r1, 1), (&r2, 1)]), ttl)
        .await
        .unwrap();
    assert_eq!(got, vec![5, 8]);
    // r2's viewers left node a: it is no longer in a's list.
    a.exchange_presence(&na, &counts(&[(&r1, 4)]), ttl)
        .await
        .unwrap();
    let got = b
        .exchange_presence(&nb, &counts(&[(&r1, 1), (&r2, 1)]), ttl)
        .await
        .unwrap();
    assert_eq!(got, vec![5, 1]);
    // Everyone left node a: its counts vanish, the node stays harmlessly.
    a.exchange_presence(&na, &[], ttl).await.unwrap();
    let got = b
        .exchange_presence(&nb, &counts(&[(&r1, 1), (&r2, 1)]), ttl)
        .await
        .unwrap();
    assert_eq!(got, vec![1, 1]);
    // A count that drops to zero is the same as leaving.
    a.exchange_presence(&na, &counts(&[(&r1, 0)]), ttl)
        .await
        .unwrap();
    let got = b
        .exchange_presence(&nb, &counts(&[(&r1, 1)]), ttl)
        .await
        .unwrap();
    assert_eq!(got, vec![1]);
}

#[tokio::test]
async fn presence_drops_a_node_that_stops_refreshing() {
    let url = need_redis!();
    let _shared = FLUSH.read().await;
    let a = store(&url, cfg(10)).await;
    let b = store(&url, cfg(10)).await;
    let (na, nb) = (node("a"), node("b"));
    let r = room("ttl");
    let short = Duration::from_secs(1);
    a.exchange_presence(&na, &counts(&[(&r, 10)]), short)
        .await
        .unwrap();
    let got = b
        .exchange_presence(&nb, &counts(&[(&r, 1)]), short)
        .await
        .unwrap();
    assert_eq!(got, vec![11]);
    // b keeps refreshing, a does not.
    let mut sums = Vec::new();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sums.push(
            b.exchange_presence(&nb, &counts(&[(&r, 1)]), short)
                .await
                .unwrap()[0],
        );
    }
    assert_eq!(sums.last(), Some(&1), "a expired: {sums:?}");
    assert!(sums.windows(2).all(|w| w[0] >= w[1]), "{sums:?}");

    let mut admin = admin(&url).await;
    let exists: u64 = redis::cmd("EXISTS")
        .arg(format!("{{presence}}:node:{na}"))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(exists, 0, "a's hash expired");
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg("{presence}:nodes")
        .arg(&na)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(score, None, "a fell out of the nodes set");
    // A node that comes back counts again at once.
    let got = a
        .exchange_presence(&na, &counts(&[(&r, 10)]), short)
        .await
        .unwrap();
    assert_eq!(got, vec![11]);
}

#[tokio::test]
async fn presence_handles_many_rooms() {
    let url = need_redis!();
    let _shared = FLUSH.read().await;
    let a = store(&url, cfg(10)).await;
    let b = store(&url, cfg(10)).await;
    let (na, nb) = (node("a"), node("b"));
    let prefix = room("many");
    // More than one chunk of script arguments (the script works in 1000s).
    let rooms: Vec<String> = (0..2500).map(|i| format!("{prefix}-{i}")).collect();
    let la: Vec<(String, u64)> = rooms.iter().map(|r| (r.clone(), 1)).collect();
    let lb: Vec<(String, u64)> = rooms
        .iter()
        .enumerate()
        .map(|(i, r)| (r.clone(), i as u64))
        .collect();
    let ttl = Duration::from_secs(30);
    a.exchange_presence(&na, &la, ttl).await.unwrap();
    let got = b.exchange_presence(&nb, &lb, ttl).await.unwrap();
    assert_eq!(got, (0..2500).map(|i| i + 1).collect::<Vec<u64>>());
}

/// Publishes `rooms` through `from` every 200 ms until `rx` has seen each of
/// them, for at most `within`. Notices are best effort (and a subscriber
/// starts listening shortly after `updates()`), hence the repetition.
async fn notices_arrive(
    from: &RedisStore,
    rx: &mut tokio::sync::broadcast::Receiver<Arc<RoomNotice>>,
    rooms: &[String],
    within: Duration,
) -> Result<Duration, String> {
    let start = tokio::time::Instant::now();
    let mut missing: BTreeSet<String> = rooms.iter().cloned().collect();
    while start.elapsed() < within {
        let _ = from.notify_updated(rooms).await;
        let tick = tokio::time::Instant::now() + Duration::from_millis(200);
        loop {
            match tokio::time::timeout_at(tick, rx.recv()).await {
                Ok(Ok(notice)) => {
                    missing.remove(&*notice.room);
                    if missing.is_empty() {
                        return Ok(start.elapsed());
                    }
                }
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(e)) => return Err(format!("receiver closed: {e}")),
                Err(_) => break,
            }
        }
    }
    Err(format!("not received within {within:?}: {missing:?}"))
}

#[tokio::test]
async fn notices_reach_every_store() {
    let url = need_redis!();
    let _shared = FLUSH.read().await;
    let processor = store(&url, cfg(10)).await;
    let front = store(&url, cfg(10)).await;
    let mut rx = front.updates();
    let mut rx2 = front.clone().updates(); // clones share one subscriber
    let rooms = vec![room("n1"), room("n2"), room("n3")];
    notices_arrive(&processor, &mut rx, &rooms, Duration::from_secs(10))
        .await
        .unwrap();
    // Once subscribed, one publish is enough, in order, each room once.
    while rx2.try_recv().is_ok() {}
    let more = vec![room("n4"), room("n5")];
    processor.notify_updated(&more).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let notice = tokio::time::timeout(Duration::from_secs(5), rx2.recv())
            .await
            .expect("a notice within 5 s")
            .unwrap();
        let room = &notice.room;
        if room.starts_with("t-n4-") || room.starts_with("t-n5-") {
            got.push(room.to_string());
        }
    }
    assert_eq!(got, more);
    // Nothing to notify is not an error, and publishes nothing.
    processor.notify_updated(&[]).await.unwrap();
}

/// Subscribers of the notice channel on the server.
async fn notice_subscribers(admin: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (_, n): (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg("dm:updated")
        .query_async(admin)
        .await
        .unwrap();
    n
}

#[tokio::test]
async fn notices_resume_after_the_subscriber_is_killed() {
    let url = need_redis!();
    // CLIENT KILL TYPE pubsub hits every subscriber on the server: run alone.
    let _exclusive = FLUSH.write().await;
    let mut admin = admin(&url).await;
    // Stores of tests that just ended may still be closing their
    // subscriptions (CI once read a baseline of 1 that was gone a moment
    // later): none can be added while this test runs alone, so wait for the
    // count to stop falling.
    let mut baseline = notice_subscribers(&mut admin).await;
    let settle_by = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = notice_subscribers(&mut admin).await;
        if now == baseline || tokio::time::Instant::now() >= settle_by {
            baseline = now;
            break;
        }
        baseline = now;
    }
    let processor = store(&url, cfg(10)).await;
    let front = store(&url, cfg(10)).await;
    let mut rx = front.updates();
    notices_arrive(&processor, &mut rx, &[room("k0")], Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(notice_subscribers(&mut admin).await, baseline + 1);

    for round in 1..=2 {
        let killed: u64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut admin)
            .await
            .unwrap();
        assert!(killed >= 1, "round {round}: the subscriber was killed");
        let took = notices_arrive(
            &processor,
            &mut rx,
            &[room(&format!("k{round}"))],
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
        eprintln!("round {round}: notices resumed after {took:?}");
    }

    // The subscriber task ends with the store (all its clones).
    let clone = front.clone();
    drop(front);
    assert_eq!(notice_subscribers(&mut admin).await, baseline + 1);
    drop(clone);
    drop(rx);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = notice_subscribers(&mut admin).await;
        if n == baseline {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} subscribers left, expected {baseline}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn presence_and_notices_survive_an_outage() {
    let url = need_redis!();
    let _shared = FLUSH.read().await;
    let (target, _) = split_url(&url, "");
    let proxy = Proxy::start(target).await;
    let (_, proxied) = split_url(&url, &proxy.addr.to_string());
    let processor = store(&url, cfg(10)).await;
    let front = store(&proxied, cfg(10)).await;
    let mut rx = front.updates();
    notices_arrive(&processor, &mut rx, &[room("o0")], Duration::from_secs(10))
        .await
        .unwrap();
    let n = node("outage");
    let r = room("outage");
    let ttl = Duration::from_secs(30);
    let local = counts(&[(&r, 2)]);
    assert_eq!(
        front.exchange_presence(&n, &local, ttl).await.unwrap(),
        vec![2]
    );

    proxy.set_up(false);
    let down = tokio::time::timeout(Duration::from_secs(20), async {
        (
            front.exchange_presence(&n, &local, ttl).await.err(),
            front.notify_updated(std::slice::from_ref(&r)).await.err(),
        )
    })
    .await
    .expect("calls fail promptly while Redis is away");
    assert!(
        matches!(down.0, Some(StoreError::Unavailable(_))),
        "{down:?}"
    );
    assert!(
        matches!(down.1, Some(StoreError::Unavailable(_))),
        "{down:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Back: both recover without rebuilding the store.
    proxy.set_up(true);
    let got = eventually("presence after the outage", || {
        front.exchange_presence(&n, &local, ttl)
    })
    .await;
    assert_eq!(got, vec![2]);
    notices_arrive(&processor, &mut rx, &[room("o1")], Duration::from_secs(10))
        .await
        .unwrap();
    // And the front can publish again.
    let mut rx_processor = processor.updates();
    notices_arrive(
        &front,
        &mut rx_processor,
        &[room("o2")],
        Duration::from_secs(10),
    )
    .await
    .unwrap();
}

/// The next notice about `room` on `rx` (others' rooms are skipped).
async fn notice_about(
    rx: &mut tokio::sync::broadcast::Receiver<Arc<RoomNotice>>,
    room: &str,
) -> Arc<RoomNotice> {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rx.recv().await {
                Ok(n) if *n.room == *room => return n,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("receiver closed: {e}"),
            }
        }
    })
    .await
    .expect("a notice within 5 s")
}

/// A notice carries a stored batch as a read returns it (same bytes, seqs,
/// epoch), in both engines; past `notice_max_bytes` a room goes by name;
/// the test fault drops every nth notice.
#[tokio::test]
async fn notices_carry_the_stored_batch_as_a_read_returns_it() {
    let url = need_redis!();
    let _shared = FLUSH.read().await;
    let config = StoreConfig {
        notice_max_bytes: 4096,
        fault_drop_notice_every: 3,
        ..cfg(100)
    };
    let redis = store(&url, config.clone()).await;
    let front = store(&url, config.clone()).await;
    let mut redis_rx = front.updates();
    // The subscriber is live once a name-only notice gets through (sent by
    // another store: the fault counts `redis`'s calls from its first).
    let warm = store(&url, cfg(100)).await;
    notices_arrive(
        &warm,
        &mut redis_rx,
        &[room("warm")],
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let memory = MemoryStore::new(config);
    let mut memory_rx = memory.updates();
    let engines: [(&dyn LiveStore, &mut _, &str); 2] = [
        (&redis, &mut redis_rx, "redis"),
        (&memory, &mut memory_rx, "memory"),
    ];
    for (engine, rx, name) in engines {
        let r = room("carry");
        let big = room("carry-big");
        let appended = engine
            .append_in_epoch(&r, vec![msg("a", Priority::Low), msg("b", Priority::High)])
            .await
            .unwrap();
        assert_eq!(
            appended.epoch,
            engine.head(&r).await.unwrap().epoch,
            "{name}"
        );
        let read = engine.read_range(&r, 0, u64::MAX, 100).await.unwrap();
        assert_eq!(seqs(&read), [1, 2], "{name}");
        // A batch of ~60 KiB does not fit in 4 KiB: by name only.
        let huge: Vec<Message> = (0..30)
            .map(|i| Message {
                text: "x".repeat(2000),
                ..msg(&format!("h{i}"), Priority::Low)
            })
            .collect();
        let huge_read = {
            engine.append(&big, huge).await.unwrap();
            engine.read_range(&big, 0, u64::MAX, 100).await.unwrap()
        };
        let batch = |epoch: &str, messages: Vec<_>| StoredBatch {
            epoch: Arc::from(epoch),
            messages,
        };
        let notices = vec![
            RoomNotice {
                room: Arc::from(r.as_str()),
                stored: Some(batch(&appended.epoch, read.messages.clone())),
            },
            RoomNotice {
                room: Arc::from(big.as_str()),
                stored: Some(batch(&huge_read.epoch, huge_read.messages.clone())),
            },
        ];
        // Calls 1 and 2 go out, call 3 is dropped by the fault, 4 goes out.
        for call in 1..=4 {
            engine.notify(notices.clone()).await.unwrap();
            if call == 3 {
                continue;
            }
            let got = notice_about(rx, &r).await;
            assert_eq!(
                got.stored,
                Some(batch(&read.epoch, read.messages.clone())),
                "{name}: call {call} carries the read's messages, byte for byte"
            );
            let got = notice_about(rx, &big).await;
            assert_eq!(got.stored, None, "{name}: past the bound, by name");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut extra = 0;
        while let Ok(n) = rx.try_recv() {
            extra += usize::from(*n.room == *r);
        }
        assert_eq!(extra, 0, "{name}: the third call published nothing");
    }
}
