//! Criterion benches of the fan-out and ingest hot paths (issue 8):
//! rationing selection, frame encoding, a hub tick handing one frame to
//! 10 000 subscribers, a long-poll answer from a big room's cache, ingest
//! validation, and the text check with its blocked-word fold. Run with
//! `cargo bench --bench hot_paths` (see BENCHMARKS.md for the figures).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tokio::sync::{broadcast, Notify};

use danmaku::auth::{sign_gift_request, Authenticator, GiftRequest, ViewerClaims};
use danmaku::bus::memory::MemoryBus;
use danmaku::bus::Bus;
use danmaku::config::Config;
use danmaku::control::Control;
use danmaku::fanout::cache::CachedFrames;
use danmaku::fanout::frame::Frame;
use danmaku::fanout::ration::{RationRules, Rationer};
use danmaku::ingest::validate::TextRules;
use danmaku::ingest::{DanmakuRequest, Ingest};
use danmaku::message::{Gift, Kind, Message, Priority, StoredMessage, UserRef};
use danmaku::metrics::Metrics;
use danmaku::store::memory::MemoryStore;
use danmaku::text::BlockedWords;

const NOW: u64 = 1_700_000_000_000;

/// A realistic stored message (~200 bytes of JSON, like the load tool's).
fn stored(seq: u64, priority: Priority) -> StoredMessage {
    let kind = match priority {
        Priority::High => Kind::Gift,
        Priority::Whitelist => Kind::System,
        Priority::Low => Kind::Danmaku,
    };
    Message {
        id: format!("0193{seq:028x}"),
        seq: 0,
        room: "r1".into(),
        kind,
        priority,
        user: UserRef {
            id: format!("demo-{:08x}", seq * 2654435761 % 0xffff_ffff),
            name: "viewer".into(),
        },
        text: format!("bench:{}:0:{seq} 弹幕 hello", NOW * 1000),
        ts: NOW,
        offset_ms: None,
        gift: (kind == Kind::Gift).then(|| Gift {
            gift_id: "rose".into(),
            count: 1,
            value: 10,
        }),
        style: None,
    }
    .into_stored(seq)
}

/// `n` messages: 10 % whitelist, 20 % high, 70 % low (or all low).
fn input(n: u64, mixed: bool) -> Vec<StoredMessage> {
    (1..=n)
        .map(|seq| {
            let p = if !mixed {
                Priority::Low
            } else {
                match seq % 10 {
                    0 => Priority::Whitelist,
                    1 | 2 => Priority::High,
                    _ => Priority::Low,
                }
            };
            stored(seq, p)
        })
        .collect()
}

fn rules(budget: u32) -> RationRules {
    RationRules {
        budget_per_s: budget,
        high_share: 0.5,
        max_lag_ms: 5000,
    }
}

fn rationing(c: &mut Criterion) {
    let mut g = c.benchmark_group("ration");
    // One tick of a 200 msg/s room (20 low per 100 ms tick), nothing rationed.
    let small = input(20, false);
    g.throughput(Throughput::Elements(20));
    g.bench_function("tick_20_low_unrationed", |b| {
        b.iter_batched(
            || (Rationer::default(), small.clone()),
            |(mut r, msgs)| black_box(r.tick(NOW, 100, &rules(100_000), msgs)),
            BatchSize::SmallInput,
        )
    });
    // A flood tick: 500 mixed messages against a big room's budget of 50/s.
    let flood = input(500, true);
    g.throughput(Throughput::Elements(500));
    g.bench_function("tick_500_mixed_budget_50", |b| {
        b.iter_batched(
            || (Rationer::default(), flood.clone()),
            |(mut r, msgs)| black_box(r.tick(NOW, 100, &rules(50), msgs)),
            BatchSize::SmallInput,
        )
    });
    // A whole one-second window: 10 ticks of 200 mixed messages, budget 50/s
    // (backlog, rollover at the last tick, drops).
    let second = input(2000, true);
    g.throughput(Throughput::Elements(2000));
    g.bench_function("window_10_ticks_2000_mixed_budget_50", |b| {
        b.iter_batched(
            || {
                let chunks: Vec<Vec<StoredMessage>> =
                    second.chunks(200).map(|c| c.to_vec()).collect();
                (Rationer::default(), chunks)
            },
            |(mut r, chunks)| {
                for (i, msgs) in chunks.into_iter().enumerate() {
                    black_box(r.tick(NOW + i as u64 * 100, 100, &rules(50), msgs));
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn encoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_encode");
    let epoch: Arc<str> = Arc::from("0123456789abcdef");
    for (name, msgs) in [
        ("20_low", input(20, false)),
        ("100_mixed", input(100, true)),
        ("500_mixed", input(500, true)),
    ] {
        let bytes: usize = msgs.iter().map(|m| m.json.len()).sum();
        g.throughput(Throughput::Bytes(bytes as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                black_box(Frame::encode(
                    "r1",
                    epoch.clone(),
                    0,
                    msgs.len() as u64,
                    &msgs,
                ))
            })
        });
    }
    g.finish();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A hub tick's hand-off: one `Arc<Frame>` through a tokio broadcast ring
/// (the hub's, `max_lag_frames` = 30 slots) to 10 000 subscribers.
fn hub_tick(c: &mut Criterion) {
    const SUBSCRIBERS: usize = 10_000;
    let mut g = c.benchmark_group("hub_tick_10k");
    g.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    g.sample_size(30);
    let msgs = input(20, false);
    let frame = Arc::new(Frame::encode("r1", Arc::from("e"), 0, 20, &msgs));

    // Synchronous: send, then every receiver takes it (no task wake-ups).
    let (tx, _) = broadcast::channel::<Arc<Frame>>(30);
    let mut rxs: Vec<_> = (0..SUBSCRIBERS).map(|_| tx.subscribe()).collect();
    g.bench_function("send_then_try_recv_all", |b| {
        b.iter(|| {
            assert!(tx.send(frame.clone()).is_ok());
            let mut bytes = 0;
            for rx in rxs.iter_mut() {
                bytes += rx.try_recv().expect("frame").full.ws_text.len();
            }
            black_box(bytes)
        })
    });
    drop(rxs);

    // As in the server: 10 000 tasks parked on `recv().await`, one runtime
    // thread; the time from send until every task has its frame (wake-ups,
    // scheduling, the ring's locks) — everything but the socket writes.
    let rt = runtime();
    let (tx, _) = broadcast::channel::<Arc<Frame>>(30);
    let got = Arc::new(AtomicUsize::new(0));
    let all = Arc::new(Notify::new());
    rt.block_on(async {
        for _ in 0..SUBSCRIBERS {
            let mut rx = tx.subscribe();
            let got = got.clone();
            let all = all.clone();
            tokio::spawn(async move {
                while let Ok(f) = rx.recv().await {
                    black_box(f.full.ws_text.len());
                    if got.fetch_add(1, Ordering::AcqRel) + 1 == SUBSCRIBERS {
                        all.notify_one();
                    }
                }
            });
        }
        tokio::task::yield_now().await;
    });
    g.bench_function("send_and_wake_10k_tasks", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    got.store(0, Ordering::Release);
                    let t = Instant::now();
                    assert!(tx.send(frame.clone()).is_ok());
                    all.notified().await;
                    total += t.elapsed();
                }
                total
            })
        })
    });

    // A full tick of a 200 msg/s room: ration 20 messages, encode the frame,
    // hand it to 10 000 parked tasks.
    let mut rationer = Rationer::default();
    let mut seq = 0u64;
    g.bench_function("ration_encode_send_wake_10k", |b| {
        b.iter_custom(|iters| {
            let batches: Vec<Vec<StoredMessage>> = (0..iters)
                .map(|_| {
                    (0..20)
                        .map(|_| {
                            seq += 1;
                            stored(seq, Priority::Low)
                        })
                        .collect()
                })
                .collect();
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for (i, batch) in batches.into_iter().enumerate() {
                    got.store(0, Ordering::Release);
                    let t = Instant::now();
                    let now = NOW + i as u64 * 100;
                    let sel = rationer.tick(now, 100, &rules(100_000), batch);
                    let frame = Frame::encode("r1", Arc::from("e"), 0, 20, &sel.messages);
                    assert!(tx.send(Arc::new(frame)).is_ok());
                    all.notified().await;
                    total += t.elapsed();
                }
                total
            })
        })
    });
    g.finish();
    drop(tx);
}

/// A cache of 10 frames of 30 mixed messages, as a big room holds them.
fn cache_frames() -> std::collections::VecDeque<Arc<Frame>> {
    let epoch: Arc<str> = Arc::from("0123456789abcdef");
    (0..10u64)
        .map(|i| {
            let msgs: Vec<StoredMessage> = input(30, true)
                .into_iter()
                .map(|mut m| {
                    m.seq += i * 30;
                    m
                })
                .collect();
            Arc::new(Frame::encode(
                "r1",
                epoch.clone(),
                i * 30,
                i * 30 + 30,
                &msgs,
            ))
        })
        .collect()
}

/// A big room's long-poll answer from its local cache, as the hammer
/// benchmark asks it (BENCHMARKS.md §3: ~59 messages, ~1.8 frames per
/// answer): a client at the start of the second newest frame gets the last
/// two, taken under the hub's position lock as `Hub::cached_frames_after`
/// does, then encoded as one batch.
fn poll_cache(c: &mut Criterion) {
    let mut g = c.benchmark_group("poll_cache");
    let recent = parking_lot::Mutex::new(cache_frames());
    let epoch: Arc<str> = Arc::from("0123456789abcdef");
    let (sent, after) = (10 * 30, 8 * 30);
    g.throughput(Throughput::Elements(60));
    g.bench_function("answer_2_frames_60_msgs", |b| {
        b.iter(|| {
            let read = {
                let pos = recent.lock();
                CachedFrames::after(&pos, epoch.clone(), sent, black_box(after), 100)
            };
            assert_eq!(read.message_count(), 60);
            black_box(read.encode("r1", false))
        })
    });
    g.finish();
}

fn ingest(c: &mut Criterion) {
    let mut g = c.benchmark_group("ingest");
    let rt = runtime();
    let mut config = Config::embedded();
    config.ingest.user_rate_per_s = 1e12;
    config.ingest.user_burst = 1e12;
    config.ingest.ip_rate_per_s = 1e12;
    config.ingest.ip_burst = 1e12;
    config.ingest.blocked_words = vec!["spam".into(), "scam".into(), "广告".into()];
    let bus = Arc::new(MemoryBus::new(config.bus.partitions, 1_000_000));
    let store = Arc::new(MemoryStore::new(config.store.clone()));
    let ingest = Ingest::new(
        config.ingest.clone(),
        bus.clone(),
        store,
        Arc::new(Metrics::new()),
        Control::in_memory(config.ration.clone(), Arc::new(Metrics::new())),
    );
    let viewer = ViewerClaims {
        sub: "u1".into(),
        name: "viewer".into(),
        exp: u64::MAX,
        nbf: None,
        vip: None,
        rooms: None,
    };
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut consumer = rt.block_on(bus.consumer()).expect("consumer");
    let mut n = 0u64;
    g.throughput(Throughput::Elements(1));

    // Accepted: rate limits, validation (length, control characters, blocked
    // words), dedup claim, publish to the in-memory bus, record the answer.
    g.bench_function("danmaku_accepted", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let chunk = left.min(1000);
                    let reqs: Vec<DanmakuRequest> = (0..chunk)
                        .map(|_| {
                            n += 1;
                            DanmakuRequest {
                                client_msg_id: format!("m{n}"),
                                text: format!("bench:{n} 弹幕 hello world, nice stream"),
                                style: None,
                            }
                        })
                        .collect();
                    let t = Instant::now();
                    for req in reqs {
                        black_box(
                            ingest
                                .danmaku("r1", &viewer, ip, req)
                                .await
                                .expect("accepted"),
                        );
                    }
                    total += t.elapsed();
                    left -= chunk;
                    // Keep the bus empty (the processor's job), untimed.
                    loop {
                        let got = consumer.poll(4096, Duration::ZERO).await.expect("poll");
                        if got.is_empty() {
                            break;
                        }
                        consumer.commit(&got).await.expect("commit");
                    }
                }
                total
            })
        })
    });

    // Refused by validation (a control character): no store, no bus.
    g.bench_function("danmaku_invalid_text", |b| {
        b.iter_batched(
            || DanmakuRequest {
                client_msg_id: "bad".into(),
                text: "line\nbreak in a danmaku of ordinary length".into(),
                style: None,
            },
            |req| {
                rt.block_on(async {
                    black_box(ingest.danmaku("r1", &viewer, ip, req).await.unwrap_err())
                })
            },
            BatchSize::SmallInput,
        )
    });

    // The credentials checked before ingest: a viewer token (HS256 JWT) and a
    // gift backend signature (v2: HMAC-SHA256 over timestamp, method, path,
    // Idempotency-Key and body).
    let auth = Authenticator::new(&config.auth);
    let token = format!("Bearer {}", auth.issue("u1", "viewer", 3600));
    g.bench_function("viewer_token_verify", |b| {
        b.iter(|| black_box(auth.viewer_from_header(Some(&token)).expect("valid")))
    });
    let body = br#"{"kind":"gift","user":{"id":"u1","name":"viewer"},"gift":{"gift_id":"rose","count":1,"value":10}}"#;
    let ts = danmaku::auth::unix_now();
    let ts_s = ts.to_string();
    let path = "/v1/rooms/r1/events";
    let sig = sign_gift_request(
        &config.auth.gift_secrets[0],
        &ts_s,
        "POST",
        path,
        "k1",
        body,
    );
    g.bench_function("gift_signature_verify", |b| {
        b.iter(|| {
            let req = GiftRequest {
                timestamp: black_box(Some(&ts_s)),
                signature: Some(&sig),
                method: "POST",
                path,
                idempotency_key: "k1",
                body: black_box(body),
            };
            auth.gift_signature(&req, ts).expect("valid")
        })
    });
    g.finish();
}

/// The text check of every post (`TextRules::check`): control, bidi and
/// blank scans, then the fold (`danmaku::text`) matched against 3 global and
/// 20 room words; and the fold alone on a long mixed text.
fn text_rules(c: &mut Criterion) {
    let mut g = c.benchmark_group("text");
    let mut config = Config::embedded();
    config.ingest.blocked_words = vec!["spam".into(), "scam".into(), "广告".into()];
    let rules = TextRules::new(&config.ingest);
    let room_words: Vec<String> = (0..20).map(|i| format!("word{i}")).collect();
    let room = BlockedWords::new(room_words.iter().map(String::as_str));
    g.throughput(Throughput::Elements(1));
    for (name, text) in [
        ("check_ascii", "bench:12345 hello world, nice stream gg"),
        ("check_chinese", "主播太强了 666 弹幕来了，这波操作可以"),
        ("check_mixed", "gg 主播 ｗｏｗ 👍🏽 ура! s\u{200b}tream"),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| black_box(rules.check(black_box(text), &room)).is_ok())
        });
    }
    let long = "弹幕 Ｈｅｌｌｏ 𝐰𝐨𝐫𝐥𝐝 café ".repeat(12);
    g.bench_function("fold_200_chars_mixed", |b| {
        b.iter(|| black_box(danmaku::text::fold(black_box(&long))))
    });
    g.finish();
}

criterion_group!(benches, rationing, encoding, hub_tick, poll_cache, ingest, text_rules);
criterion_main!(benches);
