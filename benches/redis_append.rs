//! What the failover mechanisms cost an append (`docs/architecture.md`,
//! "Failover"): one batch of 20 messages through `append.lua` (which reads
//! `INFO server` for the room's writer check), without and with
//! `store.redis_wait_replicas = 1` (a `WAIT` round trip after the script).
//! Needs a Redis primary with at least one replica in
//! `DANMAKU_BENCH_REDIS_URL` (e.g. the primary of `scripts/redis-sentinel.sh`);
//! prints the Redis-side time per call of the script and of `WAIT` (`INFO
//! commandstats`, cumulative over both runs) as well.
//!
//! `DANMAKU_BENCH_REDIS_URL=redis://127.0.0.1:16760 cargo bench --bench redis_append`

use criterion::{criterion_group, criterion_main, Criterion};

use danmaku::config::{Config, StoreConfig};
use danmaku::message::{now_ms, Kind, Message, Priority, UserRef};
use danmaku::store::redis::RedisStore;
use danmaku::store::LiveStore;

const BATCH: usize = 20;

fn batch(room: &str, n: &mut u64) -> Vec<Message> {
    (0..BATCH)
        .map(|_| {
            *n += 1;
            Message {
                id: format!("bench-{n}"),
                seq: 0,
                room: room.to_string(),
                kind: Kind::Danmaku,
                priority: Priority::High,
                user: UserRef {
                    id: "u".into(),
                    name: "U".into(),
                },
                text: "a bench message of ordinary length".into(),
                ts: now_ms(),
                offset_ms: None,
                gift: None,
                style: None,
            }
        })
        .collect()
}

/// `usec_per_call` of one command in `INFO commandstats`.
async fn usec_per_call(url: &str, command: &str) -> Option<f64> {
    let client = redis::Client::open(url).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .ok()?;
    let line = info
        .lines()
        .find(|l| l.starts_with(&format!("cmdstat_{command}:")))?;
    line.split(',')
        .find_map(|f| f.strip_prefix("usec_per_call="))
        .and_then(|v| v.trim().parse().ok())
}

fn redis_append(c: &mut Criterion) {
    let Ok(url) = std::env::var("DANMAKU_BENCH_REDIS_URL") else {
        eprintln!("redis_append skipped: set DANMAKU_BENCH_REDIS_URL");
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let base = Config::embedded().store;
    for (name, wait) in [
        ("redis_append/batch20", 0),
        ("redis_append/batch20_wait1", 1),
    ] {
        let config = StoreConfig {
            redis_wait_replicas: wait,
            max_per_bucket: 1000,
            ..base.clone()
        };
        let store = rt.block_on(async { RedisStore::connect(&url, config).await.expect("redis") });
        let room = format!("bench-append-{}-{wait}", now_ms());
        let mut n = 0;
        rt.block_on(store.append(&room, batch(&room, &mut n)))
            .expect("append (WAIT needs a replica)");
        c.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(store.append(&room, batch(&room, &mut n)))
                    .unwrap()
            })
        });
        rt.block_on(async {
            eprintln!(
                "{name}: redis-side usec_per_call evalsha={:?} wait={:?}",
                usec_per_call(&url, "evalsha").await,
                usec_per_call(&url, "wait").await
            )
        });
    }
}

criterion_group!(benches, redis_append);
criterion_main!(benches);
