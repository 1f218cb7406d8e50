//! Gift signature v2 (DESIGN.md §4): the canonical string
//! `"<timestamp>\n<METHOD>\n<path>\n<Idempotency-Key>\n<body>"` and the
//! `X-Signature` forms.
//!
//! Input: `<x-timestamp>\n<x-signature>\n<method>\n<path>\n<idempotency-key>\n<body>`
//! (header lines decoded lossily, as the handlers see `&str`). Checks: the
//! header parser accepts exactly `v2=` / `sha256=` + 64 hex digits; the
//! canonical string splits back into its fields (so two requests sign the
//! same only if they are the same request); the input's own signature is
//! refused with the right reason; the backend's v2 signature passes for
//! either secret and fails once the method, path (room), key or body
//! differs; the legacy form passes only where it is switched on.
#![no_main]

use std::sync::OnceLock;

use danmaku::auth::{
    gift_canonical_v2, parse_signature_header, sign_gift_request, sign_gift_request_legacy,
    AuthFailure, Authenticator, GiftRequest, SignatureHeader,
};
use danmaku_fuzz::{Harness, GIFT_SECRETS};
use libfuzzer_sys::fuzz_target;

/// The harness's authenticator with `auth.accept_legacy_signatures` on.
fn lenient() -> &'static Authenticator {
    static A: OnceLock<Authenticator> = OnceLock::new();
    A.get_or_init(|| {
        let mut c = Harness::get().config.auth.clone();
        c.accept_legacy_signatures = true;
        Authenticator::new(&c)
    })
}

/// The header forms, written out independently of the parser.
fn expected_form(sig: &str) -> Option<(bool, Vec<u8>)> {
    let s = sig.trim();
    let (v2, hex) = if let Some(h) = s.strip_prefix("v2=") {
        (true, h)
    } else {
        (false, s.strip_prefix("sha256=")?)
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let bytes = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    Some((v2, bytes))
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(6, |b| *b == b'\n');
    let mut line = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (ts, sig, method, path, key) = (line(), line(), line(), line(), line());
    let body = parts.next().unwrap_or_default();
    let strict = &Harness::get().auth;

    // Header forms.
    let parsed = parse_signature_header(&sig);
    match expected_form(&sig) {
        Some((true, mac)) => assert_eq!(parsed, Ok(SignatureHeader::V2(mac))),
        Some((false, mac)) => assert_eq!(parsed, Ok(SignatureHeader::Legacy(mac))),
        None => assert_eq!(parsed, Err(AuthFailure::BadSignature), "{sig:?}"),
    }

    // The canonical string is the fields joined by '\n' and splits back
    // into them: none of the first four holds a '\n' here (HTTP cannot
    // carry one; the verifier refuses one in the path or key).
    let ts_t = ts.trim();
    let canonical = gift_canonical_v2(ts_t, &method, &path, &key, body);
    let mut fields = canonical.splitn(5, |b| *b == b'\n');
    for want in [
        ts_t.as_bytes(),
        method.as_bytes(),
        path.as_bytes(),
        key.as_bytes(),
        body,
    ] {
        assert_eq!(fields.next(), Some(want));
    }

    let req = GiftRequest {
        timestamp: Some(&ts),
        signature: Some(&sig),
        method: &method,
        path: &path,
        idempotency_key: &key,
        body,
    };
    let Ok(t) = ts_t.parse::<u64>() else {
        assert_eq!(
            strict.gift_signature(&req, 0),
            Err(AuthFailure::BadTimestamp)
        );
        return;
    };

    // The input cannot know a secret: refused, with the reason its form gives.
    let forged = match parsed {
        Ok(SignatureHeader::Legacy(_)) => AuthFailure::LegacySignatureOff,
        _ => AuthFailure::BadSignature,
    };
    assert_eq!(strict.gift_signature(&req, t), Err(forged));
    assert_eq!(
        lenient().gift_signature(&req, t),
        Err(AuthFailure::BadSignature)
    );

    for secret in GIFT_SECRETS {
        let good = sign_gift_request(secret, ts_t, &method, &path, &key, body);
        let signed = GiftRequest {
            signature: Some(&good),
            ..req
        };
        assert_eq!(strict.gift_signature(&signed, t), Ok(()));
        assert_eq!(lenient().gift_signature(&signed, t), Ok(()));
        // Another room, key, method or body: refused (a replay).
        let (other_path, other_key) = (format!("{path}x"), format!("{key}x"));
        let other_method = if method == "POST" { "PUT" } else { "POST" };
        let mut other_body = body.to_vec();
        other_body.push(b'x');
        for other in [
            GiftRequest {
                path: &other_path,
                ..signed
            },
            GiftRequest {
                idempotency_key: &other_key,
                ..signed
            },
            GiftRequest {
                method: other_method,
                ..signed
            },
            GiftRequest {
                body: &other_body,
                ..signed
            },
        ] {
            assert_eq!(
                strict.gift_signature(&other, t),
                Err(AuthFailure::BadSignature)
            );
        }
        // A newline smuggled into the path or key is refused outright.
        let smuggled = format!("{path}\n");
        let sig_smuggled = sign_gift_request(secret, ts_t, &method, &smuggled, &key, body);
        let r = GiftRequest {
            signature: Some(&sig_smuggled),
            path: &smuggled,
            ..req
        };
        assert_eq!(strict.gift_signature(&r, t), Err(AuthFailure::BadSignature));

        // Legacy: only where switched on.
        let legacy = sign_gift_request_legacy(secret, ts_t, body);
        let r = GiftRequest {
            signature: Some(&legacy),
            ..req
        };
        assert_eq!(
            strict.gift_signature(&r, t),
            Err(AuthFailure::LegacySignatureOff)
        );
        assert_eq!(lenient().gift_signature(&r, t), Ok(()));
    }
});
