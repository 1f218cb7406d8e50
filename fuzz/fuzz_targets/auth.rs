//! Untrusted credentials: an `Authorization` value as a viewer token, and the
//! gift backend's `X-Timestamp` / `X-Signature` headers over a body.
//!
//! Input: `<authorization>\n<x-timestamp>\n<x-signature>\n<body>` (lines
//! decoded lossily: header values reach the verifier as `&str`). The input
//! cannot know a secret, so every credential it carries is refused, with the
//! right reason; the same timestamp and body signed as the gift backend signs
//! them (`auth::sign_gift_request`) are accepted.
#![no_main]

use danmaku::auth::{sign_gift_request, unix_now, AuthFailure};
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
    // signature cannot be forged without the secret.
    assert_eq!(got, Err(expected), "viewer token {bearer:?}");
    let expected = if bearer.is_empty() {
        AuthFailure::MissingToken
    } else {
        AuthFailure::InvalidToken
    };
    assert_eq!(auth.viewer_token(&bearer), Err(expected), "bare {bearer:?}");
    assert_eq!(auth.viewer_from_header(None), Err(AuthFailure::MissingToken));

    let now = unix_now();
    let got = auth.gift_signature(Some(&ts), Some(&sig), body, now);
    assert!(got.is_err(), "a forged gift signature was accepted");
    match ts.trim().parse::<u64>() {
        Err(_) => assert_eq!(got, Err(AuthFailure::BadTimestamp)),
        Ok(t) => {
            // Inside the window: the HMAC comparison decides.
            for now in [t, t.saturating_add(1), t.saturating_sub(1)] {
                assert_eq!(
                    auth.gift_signature(Some(&ts), Some(&sig), body, now),
                    Err(AuthFailure::BadSignature)
                );
            }
            // The backend's own signature (either configured secret, the
            // old one still accepted during a rotation) passes; the same
            // signature over another body does not.
            for secret in GIFT_SECRETS {
                let good = sign_gift_request(secret, ts.trim(), body);
                assert_eq!(auth.gift_signature(Some(&ts), Some(&good), body, t), Ok(()));
                let mut other = body.to_vec();
                other.push(b'x');
                assert_eq!(
                    auth.gift_signature(Some(&ts), Some(&good), &other, t),
                    Err(AuthFailure::BadSignature)
                );
            }
            // Far outside it: stale, whatever the signature.
            let far = t.wrapping_add(u64::MAX / 2);
            assert_eq!(
                auth.gift_signature(Some(&ts), Some(&sig), body, far),
                Err(AuthFailure::StaleTimestamp)
            );
        }
    }
    assert_eq!(
        auth.gift_signature(None, Some(&sig), body, now),
        Err(AuthFailure::MissingSignature)
    );
    assert_eq!(
        auth.gift_signature(Some(&ts), None, body, now),
        Err(AuthFailure::MissingSignature)
    );
});
