//! What the cluster-wide limits and mute checks add to a post
//! (`docs/architecture.md`, "Control plane"): the room's mutes from the
//! node's cache, then `admit_post` (global mute + the user's rate, one
//! command). Embedded engine always; the Redis engine when
//! `DANMAKU_BENCH_REDIS_URL` is set, where the bench also counts the Redis
//! commands one gate costs (from `INFO commandstats`).
//!
//! `DANMAKU_BENCH_REDIS_URL=redis://127.0.0.1:6379 cargo bench --bench post_gate`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};

use danmaku::config::Config;
use danmaku::control::Control;
use danmaku::message::now_ms;
use danmaku::metrics::Metrics;
use danmaku::store::control::{ControlPlane, PostGate, PostRate};
use danmaku::store::redis::RedisStore;

/// A rate no bench reaches, so every gate answers `Open`.
const OPEN: PostRate = PostRate {
    rate_per_s: 1e9,
    burst: 1e9,
};

async fn gate(control: &Control, room: &str, user: &str) {
    let state = control.room(room).await.expect("room state");
    assert!(state.muted_until(user, now_ms()).is_none());
    let answer = control.plane().admit_post(user, OPEN).await.expect("gate");
    assert_eq!(answer, PostGate::Open);
}

async fn commands_processed(url: &str) -> u64 {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

fn post_gate(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = Config::embedded();
    let memory = Control::in_memory(config.ration.clone(), Arc::new(Metrics::new()));
    c.bench_function("post_gate/memory", |b| {
        b.iter(|| rt.block_on(gate(&memory, "r", "u1")))
    });

    let Ok(url) = std::env::var("DANMAKU_BENCH_REDIS_URL") else {
        eprintln!("post_gate/redis skipped: set DANMAKU_BENCH_REDIS_URL");
        return;
    };
    let redis = rt.block_on(async {
        RedisStore::connect(&url, config.store.clone())
            .await
            .expect("redis")
    });
    let plane: Arc<dyn ControlPlane> = Arc::new(redis);
    let control = Control::new(
        plane,
        Arc::new(danmaku::rooms::RoomDirectory::new(config.ration.clone())),
        Arc::new(Metrics::new()),
        std::time::Duration::from_secs(1),
    );
    let posts = 2_000u64;
    let per_post = rt.block_on(async {
        gate(&control, "bench-room", "bench-user").await; // room cached, script loaded
        let before = commands_processed(&url).await;
        for _ in 0..posts {
            gate(&control, "bench-room", "bench-user").await;
        }
        let after = commands_processed(&url).await;
        // The INFO call itself is one command.
        (after - before - 1) as f64 / posts as f64
    });
    eprintln!("post_gate/redis: {per_post:.2} Redis commands per post");
    c.bench_function("post_gate/redis", |b| {
        b.iter(|| rt.block_on(gate(&control, "bench-room", "bench-user")))
    });
}

criterion_group!(benches, post_gate);
criterion_main!(benches);
