//! A viewer's `POST /v1/rooms/{room}/danmaku` body, through the handler's
//! parse (`api::parse_json`) and `Ingest::danmaku` (validation, dedup,
//! classification, publish). Never panics; an accepted message matches the
//! request, satisfies the validation rules, round-trips through JSON, and a
//! retry of the same `client_msg_id` is a replay of the same answer.
#![no_main]

use danmaku::http::parse_json;
use danmaku::auth::ViewerClaims;
use danmaku::ingest::DanmakuRequest;
use danmaku::message::{Kind, Priority};
use danmaku_fuzz::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let req: DanmakuRequest = match parse_json(data) {
        Ok(req) => req,
        Err(e) => return assert_validation_error(&e, &["malformed_json", "invalid_body"]),
    };
    let h = Harness::get();
    let (ingest, bus) = h.ingest();
    // Odd-length bodies come from the whitelisted user.
    let sub = if data.len() % 2 == 1 { VIP } else { "u1" };
    let viewer = ViewerClaims {
        sub: sub.into(),
        name: "Fuzz".into(),
        exp: 0,
        nbf: None,
        vip: None,
        rooms: None,
    };
    let answer = match h.block_on(ingest.danmaku(ROOM, &viewer, IP, req.clone())) {
        Ok(a) => a,
        Err(e) => {
            assert_validation_error(
                &e,
                &[
                    "bad_id",
                    "empty_text",
                    "text_too_long",
                    "control_characters",
                    "bad_text",
                    "blocked_content",
                    "bad_style",
                ],
            );
            assert!(h.drain(&bus).is_empty(), "a refused danmaku was published");
            return;
        }
    };
    assert!(!answer.replayed);
    let published = h.drain(&bus);
    assert_eq!(published.len(), 1, "one accepted danmaku, one message");
    let m = &published[0];
    assert_answer_names(&answer.body, m);
    assert_valid_id(&req.client_msg_id);
    assert_valid_text(&req.text, h.config.ingest.max_text_chars);
    assert_valid_style(&req.style);
    assert_eq!(m.room, ROOM);
    assert_eq!(m.kind, Kind::Danmaku);
    assert_eq!(m.text, req.text);
    assert_eq!(m.style, req.style);
    assert_eq!(m.user.id, sub);
    assert_eq!(m.gift, None);
    let expected = if sub == VIP {
        Priority::Whitelist
    } else {
        Priority::Low
    };
    assert_eq!(m.priority, expected);
    assert_round_trip(m);

    // The same client_msg_id again: the first answer, nothing published.
    let again = h
        .block_on(ingest.danmaku(ROOM, &viewer, IP, req))
        .expect("a retry is accepted");
    assert!(again.replayed);
    assert_eq!(again.body, answer.body);
    assert!(h.drain(&bus).is_empty(), "a retry was published again");
});
