//! Untrusted credentials: an `Authorization` value as a viewer token, and the
//! gift backend's `X-Timestamp` / `X-Signature` headers over a body.
//!
//! Input: `<authorization>\n<x-timestamp>\n<x-signature>\n<body>` (lines
//! decoded lossily: header values reach the verifier as `&str`). The input
//! cannot know a secret, so every credential it carries is refused, with the
//! right reason; the same timestamp and body signed as the gift backend signs
//! them (`auth::sign_gift_request`, v2, for a fixed method, path and key)
//! are accepted. (`gift_signature` fuzzes the v2 canonical string and the
//! header forms themselves.)
#![no_main]

use danmaku::auth::{
    parse_signature_header, sign_gift_request, unix_now, AuthFailure, GiftRequest, SignatureHeader,
};
use danmaku_fuzz::{Harness, GIFT_SECRETS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let bearer = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let ts = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let sig = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let body = parts.next().unwrap_or_default();
    let auth = &Harness::get().auth;

    // As a header (`Bearer <token>`) and as a bare token (query, ws `auth`).
    let got = auth.viewer_from_header(Some(&bearer));
    let expected = if bearer.trim().is_empty() {
        AuthFailure::MissingToken
    } else {
        AuthFailure::InvalidToken
    };
    // A well-signed token with a past `exp` would be ExpiredToken, but a
    // signature cannot be forged without the secret. A header naming a `kid`
    // (not HS256) is UnknownKey: the harness has no key file.
    let same = |got: Result<_, AuthFailure>, expected| {
        got == Err(expected)
            || (expected == AuthFailure::InvalidToken && got == Err(AuthFailure::UnknownKey))
    };
    assert!(same(got, expected), "viewer token {bearer:?}");
    let expected = if bearer.is_empty() {
        AuthFailure::MissingToken
    } else {
        AuthFailure::InvalidToken
    };
    assert!(same(auth.viewer_token(&bearer), expected), "bare {bearer:?}");
    assert_eq!(auth.viewer_from_header(None), Err(AuthFailure::MissingToken));

    const PATH: &str = "/v1/rooms/r1/events";
    let check = |ts: Option<&str>, sig: Option<&str>, body: &[u8], now: u64| {
        let req = GiftRequest {
            timestamp: ts,
            signature: sig,
            method: "POST",
            path: PATH,
            idempotency_key: "k1",
            body,
        };
        auth.gift_signature(&req, now)
    };
    // Legacy signatures are off in the harness (the default).
    let forged = match parse_signature_header(&sig) {
        Ok(SignatureHeader::Legacy(_)) => AuthFailure::LegacySignatureOff,
        _ => AuthFailure::BadSignature,
    };
    let now = unix_now();
    let got = check(Some(&ts), Some(&sig), body, now);
    assert!(got.is_err(), "a forged gift signature was accepted");
    match ts.trim().parse::<u64>() {
        Err(_) => assert_eq!(got, Err(AuthFailure::BadTimestamp)),
        Ok(t) => {
            // Inside the window: the HMAC comparison decides.
            for now in [t, t.saturating_add(1), t.saturating_sub(1)] {
                assert_eq!(check(Some(&ts), Some(&sig), body, now), Err(forged));
            }
            // The backend's own signature (either configured secret, the
            // old one still accepted during a rotation) passes; the same
            // signature over another body does not.
            for secret in GIFT_SECRETS {
                let good = sign_gift_request(secret, ts.trim(), "POST", PATH, "k1", body);
                assert_eq!(check(Some(&ts), Some(&good), body, t), Ok(()));
                let mut other = body.to_vec();
                other.push(b'x');
                assert_eq!(
                    check(Some(&ts), Some(&good), &other, t),
                    Err(AuthFailure::BadSignature)
                );
            }
            // Far outside it: stale, whatever the signature.
            let far = t.wrapping_add(u64::MAX / 2);
            assert_eq!(
                check(Some(&ts), Some(&sig), body, far),
                Err(AuthFailure::StaleTimestamp)
            );
        }
    }
    assert_eq!(
        check(None, Some(&sig), body, now),
        Err(AuthFailure::MissingSignature)
    );
    assert_eq!(
        check(Some(&ts), None, body, now),
        Err(AuthFailure::MissingSignature)
    );
});
