//! Frame encoding (`fanout::frame`): arbitrary messages, stored as the
//! processor stores them (`Message::into_stored`), encoded as one batch in
//! every transport's framing. The JSON is valid, names the room, epoch and
//! cursor, and carries exactly the messages (with their seq) in order; the
//! lite variant is the same without low; the SSE event is one `data:` line.
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use danmaku::fanout::frame::{encode_batch, Encoded, Frame};
use danmaku::message::{Gift, Kind, Message, Priority, Style, StyleMode, UserRef};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;

#[derive(Arbitrary, Debug)]
struct ArbMessage {
    id: String,
    seq_step: u8,
    kind: u8,
    priority: u8,
    user: (String, String),
    text: String,
    ts: u64,
    offset_ms: Option<u64>,
    gift: Option<(String, u32, u64)>,
    style: Option<(Option<String>, Option<u8>)>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    room: String,
    epoch: String,
    from: u64,
    reset: bool,
    messages: Vec<ArbMessage>,
}

/// The batch as a client reads it.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Batch {
    #[serde(rename = "type")]
    kind: String,
    room: String,
    epoch: String,
    cursor: u64,
    #[serde(default)]
    reset: bool,
    messages: Vec<Message>,
}

fn message(m: ArbMessage, room: &str) -> Message {
    Message {
        id: m.id,
        seq: 0,
        room: room.to_string(),
        kind: [Kind::Danmaku, Kind::Gift, Kind::System][m.kind as usize % 3],
        priority: Priority::ALL[m.priority as usize % 3],
        user: UserRef {
            id: m.user.0,
            name: m.user.1,
        },
        text: m.text,
        ts: m.ts,
        offset_ms: m.offset_ms,
        gift: m.gift.map(|(gift_id, count, value)| Gift {
            gift_id,
            count,
            value,
        }),
        style: m.style.map(|(color, mode)| Style {
            color,
            mode: mode
                .map(|i| [StyleMode::Scroll, StyleMode::Top, StyleMode::Bottom][i as usize % 3]),
        }),
    }
}

fn check(encoded: &Encoded, room: &str, epoch: &str, to: u64, expected: &[&Message]) {
    assert_eq!(encoded.count, expected.len());
    assert_eq!(encoded.ws_text.as_str().as_bytes(), &encoded.json[..]);
    assert!(
        !encoded.json.contains(&b'\n') && !encoded.json.contains(&b'\r'),
        "a line break in the frame JSON breaks SSE framing"
    );
    let batch: Batch = serde_json::from_slice(&encoded.json).unwrap_or_else(|e| {
        panic!(
            "frame is not valid JSON ({e}): {}",
            String::from_utf8_lossy(&encoded.json)
        )
    });
    assert_eq!(batch.kind, "batch");
    assert_eq!(batch.room, room);
    assert_eq!(batch.epoch, epoch);
    assert_eq!(batch.cursor, to);
    assert!(!batch.reset);
    assert_eq!(batch.messages.len(), expected.len());
    for (got, want) in batch.messages.iter().zip(expected) {
        assert_eq!(got, *want);
    }
    let mut sse = format!("id: {to}\nevent: batch\ndata: ").into_bytes();
    sse.extend_from_slice(&encoded.json);
    sse.extend_from_slice(b"\n\n");
    assert_eq!(&encoded.sse[..], &sse[..]);
}

fuzz_target!(|input: Input| {
    let Input {
        room,
        epoch,
        from,
        reset,
        messages,
    } = input;
    let mut seq = from;
    let mut originals = Vec::with_capacity(messages.len());
    let mut stored = Vec::with_capacity(messages.len());
    for m in messages {
        seq = seq.saturating_add(m.seq_step as u64 + 1);
        let m = message(m, &room);
        stored.push(m.clone().into_stored(seq));
        originals.push(Message { seq, ..m });
    }
    let to = seq;
    for (s, m) in stored.iter().zip(&originals) {
        assert_eq!(
            (s.seq, s.priority, s.ts, &s.id),
            (m.seq, m.priority, m.ts, &m.id)
        );
    }

    let frame = Frame::encode(&room, Arc::from(epoch.as_str()), from, to, &stored);
    assert_eq!(
        (frame.from, frame.to, &*frame.epoch),
        (from, to, epoch.as_str())
    );
    assert_eq!(&frame.messages[..], &stored[..]);
    let all: Vec<&Message> = originals.iter().collect();
    check(&frame.full, &room, &epoch, to, &all);
    let kept: Vec<&Message> = originals
        .iter()
        .filter(|m| m.priority != Priority::Low)
        .collect();
    match &frame.lite {
        None => assert_eq!(kept.len(), all.len(), "low messages but no lite variant"),
        Some(lite) => {
            assert!(kept.len() < all.len(), "a lite variant without low to shed");
            check(lite, &room, &epoch, to, &kept);
        }
    }
    let lite = frame.encoded(true);
    assert_eq!(lite.count, kept.len());
    assert_eq!(frame.encoded(false).count, all.len());

    // The bare batch (long-poll, catch-up), with the reset flag.
    let json = encode_batch(&room, &epoch, to, &stored, reset);
    let batch: Batch = serde_json::from_slice(&json).expect("batch is valid JSON");
    assert_eq!(batch.reset, reset);
    assert_eq!(batch.cursor, to);
    assert_eq!(batch.messages, originals);
});
