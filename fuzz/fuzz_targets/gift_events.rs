//! The gift backend's bodies, after the signature check: a single event
//! (`POST /v1/rooms/{room}/events`) and an `events:batch`, through the
//! handlers' parses (`api::parse_event`, `api::parse_batch`: the event, its
//! idempotency fingerprint source), then `Ingest::event` / `Ingest::events`.
//!
//! Never panics; fingerprints are deterministic and independent of the
//! body's formatting (and of single vs batched); accepted events satisfy the
//! validation rules and round-trip; a retry gets the same answers.
#![no_main]

use danmaku::http::{parse_batch, parse_event, parse_json};
use danmaku::ingest::{Accepted, EventRequest};
use danmaku::message::{Kind, Message, Priority};
use danmaku_fuzz::*;
use libfuzzer_sys::fuzz_target;

const EVENT_CODES: &[&str] = &[
    "bad_id",
    "bad_name",
    "bad_kind",
    "missing_gift",
    "bad_gift_count",
    "bad_gift_value",
    "empty_text",
    "text_too_long",
    "control_characters",
    "bad_text",
    "blocked_content",
];
const MAX_GIFT_COUNT: u32 = 1_000_000;
const MAX_GIFT_VALUE: u64 = (1 << 53) / MAX_GIFT_COUNT as u64;

fuzz_target!(|data: &[u8]| {
    single(data);
    batch(data);
});

/// The canonical form does not depend on formatting: re-encoding the value
/// (pretty, or canonical itself) and parsing again gives the same bytes.
/// Only checked for bodies that parse as events (no floats, whose decimal
/// parse is not guaranteed exact, can be in those).
fn assert_canonical_is_stable(value: &serde_json::Value, fp: &[u8]) {
    let pretty = serde_json::to_vec_pretty(value).expect("value serialises");
    let (got, _) = parse_event(&pretty).expect("the event re-encoded parses");
    assert_eq!(got, fp, "the fingerprint depends on formatting");
    let (got, _) = parse_event(fp).expect("canonical JSON parses");
    assert_eq!(got, fp, "canonical JSON is not a fixed point");
}

/// What ingest promises about an accepted event.
fn assert_valid_event(h: &Harness, req: &EventRequest, m: &Message) {
    assert_valid_id(&m.user.id);
    let name = &m.user.name;
    assert!(
        !name.trim().is_empty()
            && name.chars().count() <= 32
            && !name.chars().any(char::is_control),
        "accepted user.name {name:?}"
    );
    assert_eq!(m.user, req.user);
    assert_eq!(m.room, ROOM);
    assert_eq!(m.kind, req.kind);
    assert_eq!(m.text, req.text.clone().unwrap_or_default());
    assert_eq!(m.style, None);
    let max = h.config.ingest.max_text_chars;
    match m.kind {
        Kind::Danmaku => panic!("a danmaku was accepted as an event"),
        Kind::Gift => {
            let gift = m.gift.as_ref().expect("a gift event carries its gift");
            assert_eq!(Some(gift), req.gift.as_ref());
            assert_valid_id(&gift.gift_id);
            assert!((1..=MAX_GIFT_COUNT).contains(&gift.count));
            assert!(gift.value <= MAX_GIFT_VALUE);
            if !m.text.is_empty() {
                assert_valid_text(&m.text, max);
            }
            let expected = match req.priority {
                Some(Priority::Whitelist) if !h.config.ingest.events_may_request_whitelist => {
                    Priority::High
                }
                asked => asked.unwrap_or(Priority::High),
            };
            assert_eq!(m.priority, expected);
        }
        Kind::System => {
            assert_eq!(m.gift, None);
            assert_valid_text(&m.text, max);
            assert_eq!(m.priority, req.priority.unwrap_or(Priority::Whitelist));
        }
    }
    assert_round_trip(m);
}

fn single(data: &[u8]) {
    let (fp, req) = match parse_event(data) {
        Ok(parsed) => parsed,
        Err(e) => return assert_validation_error(&e, &["malformed_json", "invalid_body"]),
    };
    let (again, _) = parse_event(data).expect("parsed once");
    assert_eq!(again, fp, "the fingerprint is not deterministic");
    let value: serde_json::Value = parse_json(data).expect("an event is JSON");
    assert_canonical_is_stable(&value, &fp);

    let h = Harness::get();
    let (ingest, bus) = h.ingest();
    let key = "order-1";
    let answer = match h.block_on(ingest.event(ROOM, key, &fp, req.clone())) {
        Ok(a) => a,
        Err(e) => {
            assert_validation_error(&e, EVENT_CODES);
            assert!(h.drain(&bus).is_empty(), "a refused event was published");
            return;
        }
    };
    assert!(!answer.replayed);
    let published = h.drain(&bus);
    assert_eq!(published.len(), 1);
    assert_answer_names(&answer.body, &published[0]);
    assert_valid_event(h, &req, &published[0]);

    // Retries: the same bytes → the first answer; other bytes → refused.
    let retry = h
        .block_on(ingest.event(ROOM, key, &fp, req.clone()))
        .expect("a retry is accepted");
    assert!(retry.replayed);
    assert_eq!(retry.body, answer.body);
    let mut other = fp.clone();
    other.push(b' ');
    let e = h
        .block_on(ingest.event(ROOM, key, &other, req))
        .expect_err("a reused key with another body");
    assert_eq!(e.code, "idempotency_key_reused");
    assert!(h.drain(&bus).is_empty(), "a retry was published again");
}

fn batch(data: &[u8]) {
    let h = Harness::get();
    let max = h.config.ingest.max_batch_events;
    let items = match parse_batch(data, max) {
        Ok(items) => items,
        Err(e) if e.code == "too_many_events" => return assert_eq!(e.status.as_u16(), 413),
        Err(e) => {
            return assert_validation_error(&e, &["malformed_json", "invalid_body", "empty_batch"])
        }
    };
    // The handler parsed {"events": [...]}; the same values, for comparison.
    // Only an object is a batch (serde alone would also take `[[...]]`:
    // docs/fuzzing.md, findings).
    let body: serde_json::Value = parse_json(data).expect("a batch is JSON");
    let events = match &body {
        serde_json::Value::Object(o) => &o["events"],
        other => panic!("a batch parsed from {other}"),
    };
    let events = events.as_array().expect("a batch holds an array");
    assert!(!events.is_empty() && events.len() <= max);
    assert_eq!(items.len(), events.len(), "one item per event");
    // Deterministic: the same body gives the same keys and fingerprints.
    let twice = parse_batch(data, max).expect("parsed once");
    for ((value, item), twice) in events.iter().zip(&items).zip(&twice) {
        match (item, twice) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.idempotency_key, b.idempotency_key);
                assert_eq!(a.fingerprint_source, b.fingerprint_source);
            }
            (Err(a), Err(b)) => assert_eq!(a, b),
            _ => panic!("parse_batch is not deterministic"),
        }
        match item {
            Ok(item) => {
                // The same event posted alone (without its key) has the same
                // fingerprint and request.
                let mut alone = value.clone();
                let key = alone
                    .as_object_mut()
                    .expect("an accepted event is an object")
                    .remove("idempotency_key");
                assert_eq!(
                    key.as_ref().and_then(|k| k.as_str()),
                    Some(&*item.idempotency_key)
                );
                let (fp, single) = parse_event(&serde_json::to_vec(&alone).expect("serialises"))
                    .expect("a batched event is a valid single event");
                assert_eq!(fp, item.fingerprint_source);
                assert_canonical_is_stable(&alone, &item.fingerprint_source);
                assert_eq!(format!("{single:?}"), format!("{:?}", item.req));
            }
            Err(e) => assert_validation_error(e, &["invalid_body", "missing_idempotency_key"]),
        }
    }

    let (ingest, bus) = h.ingest();
    let reqs: Vec<Option<EventRequest>> = items
        .iter()
        .map(|i| i.as_ref().ok().map(|i| i.req.clone()))
        .collect();
    let first = h.block_on(ingest.events(ROOM, items));
    assert_eq!(first.len(), events.len(), "one result per event");
    let published = h.drain(&bus);
    let fresh: Vec<(usize, &Accepted)> = first
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().ok().filter(|a| !a.replayed).map(|a| (i, a)))
        .collect();
    assert_eq!(
        published.len(),
        fresh.len(),
        "one message per newly accepted event"
    );
    for (i, answer) in &fresh {
        let req = reqs[*i].as_ref().expect("an accepted event was parsed");
        let m = published
            .iter()
            .find(|m| serde_json::json!({ "id": m.id }).to_string() == answer.body)
            .expect("the answer names a published message");
        assert_valid_event(h, req, m);
    }
    for r in &first {
        if let Err(e) = r {
            let mut codes = EVENT_CODES.to_vec();
            codes.extend(["invalid_body", "missing_idempotency_key"]);
            if e.code != "idempotency_key_reused" {
                assert_validation_error(e, &codes);
            }
        }
    }

    // The same batch again: every accepted event is a replay of its answer,
    // every refusal is refused again, nothing is published.
    let second = h.block_on(ingest.events(ROOM, twice));
    for (a, b) in first.iter().zip(&second) {
        match (a, b) {
            (Ok(a), Ok(b)) => {
                assert!(b.replayed, "a retried event was not a replay");
                assert_eq!(a.body, b.body);
            }
            (Err(a), Err(b)) => assert_eq!(a.code, b.code),
            _ => panic!("a retried batch answered differently: {a:?} then {b:?}"),
        }
    }
    assert!(
        h.drain(&bus).is_empty(),
        "a retried batch was published again"
    );
}
