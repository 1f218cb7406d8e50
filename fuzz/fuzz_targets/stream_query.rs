//! The streaming transports' query (`?cursor=N&epoch=E&token=T`) through the
//! extractor the handlers use (`ApiQuery<StreamQuery>`), then
//! `ViewerFeed::open` on a room of the embedded store holding a few dozen
//! messages: the hello's cursor, reset flag and first catch-up frame follow
//! the cursor/epoch rules (a different epoch resets to 0, a cursor past the
//! head is clamped, the catch-up covers (cursor, head] without losing
//! non-low messages).
//!
//! Input: the query string; `EPOCH` in it is replaced by the room's real
//! epoch (which the fuzzer could not guess), so resumes are exercised too.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::FromRequestParts;
use danmaku::http::ApiQuery;
use danmaku::fanout::feed::ViewerFeed;
use danmaku::fanout::HubRegistry;
use danmaku::front::StreamQuery;
use danmaku::message::{now_ms, Kind, Message, Priority, UserRef};
use danmaku::metrics::Metrics;
use danmaku::rooms::RoomDirectory;
use danmaku::store::memory::MemoryStore;
use danmaku::store::LiveStore;
use danmaku_fuzz::{Harness, ROOM};
use libfuzzer_sys::fuzz_target;

const MESSAGES: u64 = 40;

struct Room {
    registry: Arc<HubRegistry>,
    epoch: String,
    /// (seq, priority) of what the room holds.
    stored: Vec<(u64, Priority)>,
}

fn room() -> &'static Room {
    static R: OnceLock<Room> = OnceLock::new();
    R.get_or_init(|| {
        let h = Harness::get();
        let store = Arc::new(MemoryStore::new(h.config.store.clone()));
        let ts = now_ms();
        let batch: Vec<Message> = (0..MESSAGES)
            .map(|i| Message {
                id: format!("m{i}"),
                seq: 0,
                room: ROOM.into(),
                kind: if i % 5 == 0 {
                    Kind::Gift
                } else {
                    Kind::Danmaku
                },
                priority: Priority::ALL[(i % 3) as usize],
                user: UserRef {
                    id: format!("u{i}"),
                    name: "N".into(),
                },
                text: format!("message {i}"),
                // Spread over a few seconds, as catch-up rations per second.
                ts: ts - 5000 + i * 100,
                offset_ms: None,
                gift: None,
                style: None,
            })
            .collect();
        let priorities: Vec<Priority> = batch.iter().map(|m| m.priority).collect();
        let (head, _) = h.block_on(async {
            store.append(ROOM, batch).await.expect("append");
            (store.head(ROOM).await.expect("head"), ())
        });
        assert_eq!(head.seq, MESSAGES);
        let registry = HubRegistry::new(
            store,
            Arc::new(Metrics::new()),
            Arc::new(RoomDirectory::new(h.config.ration.clone())),
            h.config.fanout.clone(),
            Duration::from_millis(h.config.ration.lite_after_ms),
            "fuzz-node".into(),
        );
        Room {
            registry,
            epoch: head.epoch,
            stored: (1..=MESSAGES).zip(priorities).collect(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let r = room();
    let h = Harness::get();
    let query = query.replace("EPOCH", &r.epoch);
    let Ok(request) = axum::http::Request::builder()
        .uri(format!("/v1/rooms/{ROOM}/ws?{query}"))
        .body(())
    else {
        return; // not a request line a server would parse
    };
    let (mut parts, ()) = request.into_parts();
    h.block_on(async {
        let q = match ApiQuery::<StreamQuery>::from_request_parts(&mut parts, &()).await {
            Ok(ApiQuery(q)) => q,
            Err(e) => {
                assert_eq!((e.status.as_u16(), e.code), (400, "bad_query"), "{e:?}");
                return;
            }
        };
        let (mut feed, hello) = ViewerFeed::open(&r.registry, ROOM, q.epoch.as_deref(), q.cursor)
            .await
            .unwrap_or_else(|e| panic!("open {q:?}: {e:?}"));
        let reset = q
            .epoch
            .as_deref()
            .is_some_and(|e| !e.is_empty() && e != r.epoch);
        let expected = if reset {
            0
        } else {
            q.cursor.unwrap_or(MESSAGES).min(MESSAGES)
        };
        assert_eq!(hello.kind, "hello");
        assert_eq!(hello.room, ROOM);
        assert_eq!(hello.epoch, r.epoch);
        assert_eq!(hello.reset, reset, "{q:?}");
        assert!(!hello.gap, "nothing was trimmed: {q:?}");
        assert_eq!(hello.cursor, expected, "{q:?}");
        let hello_json = serde_json::to_value(&hello).expect("hello serialises");
        assert_eq!(hello_json["cursor"], expected);

        let frames = feed.drain_ready();
        let mut cursor = expected;
        for ready in &frames {
            let frame = &ready.frame;
            assert_eq!(frame.from, cursor, "frames follow each other: {q:?}");
            assert!(frame.to > frame.from && frame.to <= MESSAGES, "{q:?}");
            assert_eq!(&*frame.epoch, r.epoch.as_str());
            let seqs: Vec<u64> = frame.messages.iter().map(|m| m.seq).collect();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq order {seqs:?}");
            assert!(
                seqs.iter().all(|s| (frame.from + 1..=frame.to).contains(s)),
                "{seqs:?} outside ({}, {}]",
                frame.from,
                frame.to
            );
            for &(seq, priority) in &r.stored {
                if priority != Priority::Low && (frame.from + 1..=frame.to).contains(&seq) {
                    assert!(seqs.contains(&seq), "catch-up lost seq {seq}: {q:?}");
                }
            }
            let v: serde_json::Value =
                serde_json::from_slice(&frame.full.json).expect("frame JSON");
            assert_eq!(v["cursor"], frame.to);
            cursor = frame.to;
        }
        if expected < MESSAGES {
            assert!(!frames.is_empty(), "a viewer behind gets a catch-up: {q:?}");
        }
        assert_eq!(feed.cursor(), cursor);
    });
});
