//! A viewer's WebSocket text message, through the parse `front::ws` uses
//! (`api::parse_json::<ClientMessage>`), then what the session does with it:
//! `auth` → `Authenticator::viewer`, `send` → `Ingest::danmaku`.
//!
//! Never panics; a `send` is the HTTP danmaku body plus `"type":"send"`
//! (both parses agree); tokens are refused (no secret here); an accepted
//! send satisfies the validation rules.
#![no_main]

use danmaku::http::parse_json;
use danmaku::auth::{AuthFailure, ViewerClaims};
use danmaku::front::ws::ClientMessage;
use danmaku::ingest::DanmakuRequest;
use danmaku_fuzz::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Text frames are UTF-8 (the socket refuses others before parsing).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let h = Harness::get();
    send_matches_http_body(text);
    let message = match parse_json::<ClientMessage>(text.as_bytes()) {
        Ok(m) => m,
        Err(e) => return assert_validation_error(&e, &["malformed_json", "invalid_body"]),
    };
    match message {
        ClientMessage::Ping => {}
        ClientMessage::Auth { token } => {
            let got = h.auth.viewer_token(&token);
            assert!(
                matches!(
                    got,
                    Err(AuthFailure::InvalidToken | AuthFailure::MissingToken)
                ),
                "token {token:?}: {got:?}"
            );
        }
        ClientMessage::Send {
            client_msg_id,
            text: body,
            style,
        } => {
            let (ingest, bus) = h.ingest();
            let viewer = ViewerClaims {
                sub: "u1".into(),
                name: "Fuzz".into(),
                exp: 0,
                nbf: None,
                vip: None,
                rooms: None,
            };
            let req = DanmakuRequest {
                client_msg_id,
                text: body,
                style,
            };
            match h.block_on(ingest.danmaku(ROOM, &viewer, IP, req.clone())) {
                Ok(answer) => {
                    let published = h.drain(&bus);
                    assert_eq!(published.len(), 1);
                    assert_answer_names(&answer.body, &published[0]);
                    assert_valid_id(&req.client_msg_id);
                    assert_valid_text(&req.text, h.config.ingest.max_text_chars);
                    assert_valid_style(&req.style);
                    assert_eq!(published[0].text, req.text);
                    assert_round_trip(&published[0]);
                }
                Err(e) => assert_validation_error(
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
                ),
            }
        }
    }
});

/// `{"type":"send", ...}` over the socket and `{...}` posted over HTTP are
/// the same request: both refused, or both accepted with the same fields.
/// Compared on the re-encoded JSON value (no duplicate keys, which both
/// parsers refuse in raw bodies but a `Value` silently merges).
fn send_matches_http_body(text: &str) {
    let Ok(serde_json::Value::Object(mut obj)) = serde_json::from_str(text) else {
        return;
    };
    if obj.get("type").and_then(|t| t.as_str()) != Some("send") {
        return;
    }
    let ws = parse_json::<ClientMessage>(
        serde_json::Value::Object(obj.clone())
            .to_string()
            .as_bytes(),
    );
    obj.remove("type");
    let http = parse_json::<DanmakuRequest>(serde_json::Value::Object(obj).to_string().as_bytes());
    match (ws, http) {
        (Err(_), Err(_)) => {}
        (
            Ok(ClientMessage::Send {
                client_msg_id,
                text: body,
                style,
            }),
            Ok(http),
        ) => {
            assert_eq!(http.client_msg_id, client_msg_id);
            assert_eq!(http.text, body);
            assert_eq!(http.style, style);
        }
        (Ok(_), Ok(_)) => panic!("\"type\":\"send\" parsed as another message: {text}"),
        (Ok(_), Err(e)) => panic!("the socket accepts a send HTTP refuses ({e:?}): {text}"),
        (Err(e), Ok(_)) => panic!("HTTP accepts a body the socket refuses ({e:?}): {text}"),
    }
}
