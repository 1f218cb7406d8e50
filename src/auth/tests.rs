//! Unit tests of viewer tokens and gift signatures.
use super::*;
use crate::config::Config;

fn auth_with(gift: &[&str]) -> Authenticator {
    let mut c = Config::embedded().auth;
    c.gift_secrets = gift.iter().map(|s| s.to_string()).collect();
    Authenticator::new(&c)
}

#[test]
fn viewer_tokens_round_trip_and_reject_forgeries() {
    let a = auth_with(&["k1"]);
    let t = a.issue("u1", "Alice", 60);
    let c = a.viewer_from_header(Some(&format!("Bearer {t}"))).unwrap();
    assert_eq!((c.sub.as_str(), c.name.as_str()), ("u1", "Alice"));
    assert_eq!(a.viewer_from_header(None), Err(AuthFailure::MissingToken));
    // Flip one character in the middle of the signature.
    let mut chars: Vec<char> = t.chars().collect();
    let i = chars.len() - 10;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    let forged: String = chars.into_iter().collect();
    assert_eq!(
        a.viewer_token(&forged).unwrap_err(),
        AuthFailure::InvalidToken
    );
    // A token signed with another secret.
    let mut other = Config::embedded().auth;
    other.jwt_secret = "another-secret-of-enough-length".into();
    let t2 = Authenticator::new(&other).issue("u1", "A", 60);
    assert_eq!(a.viewer_token(&t2).unwrap_err(), AuthFailure::InvalidToken);
}

#[test]
fn expired_and_alg_none_tokens_are_refused() {
    let a = auth_with(&["k1"]);
    let claims = ViewerClaims {
        sub: "u".into(),
        name: "n".into(),
        exp: unix_now() - 3600,
        nbf: None,
        vip: None,
        rooms: None,
    };
    let t = encode(&Header::new(Algorithm::HS256), &claims, &a.encoding).unwrap();
    assert_eq!(a.viewer_token(&t).unwrap_err(), AuthFailure::ExpiredToken);
    // alg=none: header {"alg":"none"} + claims + empty signature.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(format!(
            r#"{{"sub":"u","name":"n","exp":{}}}"#,
            unix_now() + 60
        ))
    );
    assert_eq!(
        a.viewer_token(&none).unwrap_err(),
        AuthFailure::InvalidToken
    );
}

#[test]
fn exp_and_nbf_hold_within_the_clock_skew_and_other_algs_are_refused() {
    let a = auth_with(&["k1"]); // jwt_leeway_s = 30 (default)
    let now = unix_now();
    let token = |exp: u64, nbf: Option<u64>, alg: Algorithm| {
        let claims = ViewerClaims {
            sub: "u".into(),
            name: "n".into(),
            exp,
            nbf,
            vip: None,
            rooms: None,
        };
        encode(&Header::new(alg), &claims, &a.encoding).unwrap()
    };
    let hs256 = Algorithm::HS256;
    // Expired 10 s ago: within the 30 s skew. 60 s ago: refused.
    assert!(a.viewer_token(&token(now - 10, None, hs256)).is_ok());
    assert_eq!(
        a.viewer_token(&token(now - 60, None, hs256)).unwrap_err(),
        AuthFailure::ExpiredToken
    );
    // Not valid before 10 s from now: within the skew. 120 s: refused.
    assert!(a
        .viewer_token(&token(now + 600, Some(now + 10), hs256))
        .is_ok());
    assert_eq!(
        a.viewer_token(&token(now + 600, Some(now + 120), hs256))
            .unwrap_err(),
        AuthFailure::InvalidToken
    );
    // The right secret under another HMAC algorithm: refused (alg pinned).
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        assert_eq!(
            a.viewer_token(&token(now + 600, None, alg)).unwrap_err(),
            AuthFailure::InvalidToken,
            "{alg:?}"
        );
    }
}

/// A token signed with the embedded secret, with any header and claims JSON.
fn signed(header: &str, claims: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let head = format!("{}.{}", b64.encode(header), b64.encode(claims));
    let key = jsonwebtoken::EncodingKey::from_secret(Config::embedded().auth.jwt_secret.as_bytes());
    let sig = jsonwebtoken::crypto::sign(head.as_bytes(), &key, Algorithm::HS256).unwrap();
    format!("{head}.{sig}")
}

#[test]
fn header_scheme_claims_characters_and_crit_are_checked() {
    let a = auth_with(&["k1"]);
    let t = a.issue("u1", "Alice", 60);
    for header in [
        format!("Bearer {t}"),
        format!("bearer {t}"),
        format!("BEARER  {t}"),
        format!(" Bearer {t} "),
        format!("Bearer\t{t}"),
    ] {
        assert!(a.viewer_from_header(Some(&header)).is_ok(), "{header}");
    }
    for header in [
        t.clone(),
        format!("Bearer{t}"),
        format!("Basic {t}"),
        "Bearer".into(),
    ] {
        assert_eq!(
            a.viewer_from_header(Some(&header)).unwrap_err(),
            AuthFailure::InvalidToken,
            "{header}"
        );
    }
    assert_eq!(
        a.viewer_from_header(Some("  ")),
        Err(AuthFailure::MissingToken)
    );
    assert_eq!(a.viewer_token(""), Err(AuthFailure::MissingToken));
    assert!(a.viewer_token(&t).is_ok());
    assert_eq!(
        a.viewer_token(&format!("Bearer {t}")),
        Err(AuthFailure::InvalidToken)
    );
    let exp = unix_now() + 60;
    let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
    let ok = signed(
        hs,
        &format!(r#"{{"sub":"u","name":"安娜 🌸","exp":{exp}}}"#),
    );
    assert!(a.viewer_token(&ok).is_ok());
    for (header, sub, name) in [
        (hs, "u", "a\\u0007b"),
        (hs, "u", "\\u202eevil"),
        (hs, "u", "a\\u2066b"),
        (hs, "u\\u0000", "n"),
        (hs, "u\\u202e", "n"),
        (hs, "u\\n", "n"),
        (
            r#"{"alg":"HS256","typ":"JWT","crit":["exp"],"exp":1}"#,
            "u",
            "n",
        ),
        (r#"{"alg":"HS256","crit":[]}"#, "u", "n"),
        (r#"{"alg":"HS256","alg":"HS256"}"#, "u", "n"),
    ] {
        let t = signed(
            header,
            &format!(r#"{{"sub":"{sub}","name":"{name}","exp":{exp}}}"#),
        );
        assert_eq!(
            a.viewer_token(&t).unwrap_err(),
            AuthFailure::InvalidToken,
            "{header} {sub:?} {name:?}"
        );
    }
}

#[test]
fn gift_signatures_with_rotation_and_window() {
    let a = auth_with(&["old-secret", "new-secret"]);
    let now = 1_700_000_000;
    let ts = now.to_string();
    let body = br#"{"kind":"gift"}"#;
    let path = "/v1/rooms/r1/events";
    let sign = |secret: &str| sign_gift_request(secret, &ts, "POST", path, "k1", body);
    let check = |ts: Option<&str>, sig: Option<&str>, body: &[u8], now: u64| {
        let req = GiftRequest {
            timestamp: ts,
            signature: sig,
            method: "POST",
            path,
            idempotency_key: "k1",
            body,
        };
        a.gift_signature(&req, now)
    };
    for secret in ["old-secret", "new-secret"] {
        assert_eq!(check(Some(&ts), Some(&sign(secret)), body, now), Ok(()));
    }
    let sig = sign("wrong");
    assert_eq!(
        check(Some(&ts), Some(&sig), body, now),
        Err(AuthFailure::BadSignature)
    );
    let sig = sign("new-secret");
    assert_eq!(
        check(Some(&ts), Some(&sig), b"{}", now),
        Err(AuthFailure::BadSignature)
    );
    assert_eq!(
        check(Some(&ts), Some(&sig), body, now + 301),
        Err(AuthFailure::StaleTimestamp)
    );
    assert_eq!(
        check(None, Some(&sig), body, now),
        Err(AuthFailure::MissingSignature)
    );
    assert_eq!(
        check(Some("soon"), Some(&sig), body, now),
        Err(AuthFailure::BadTimestamp)
    );
}

#[test]
fn v2_binds_method_path_and_key_and_legacy_is_off_by_default() {
    let a = auth_with(&["k"]);
    let now = 1_700_000_000;
    let ts = now.to_string();
    let body = b"{}";
    let sig = sign_gift_request("k", &ts, "POST", "/v1/rooms/r1/events", "k1", body);
    let req = |method, path, key, sig| GiftRequest {
        timestamp: Some(&ts),
        signature: Some(sig),
        method,
        path,
        idempotency_key: key,
        body,
    };
    let ok = req("POST", "/v1/rooms/r1/events", "k1", &sig);
    assert_eq!(a.gift_signature(&ok, now), Ok(()));
    for other in [
        req("PUT", "/v1/rooms/r1/events", "k1", &sig),
        req("POST", "/v1/rooms/r2/events", "k1", &sig),
        req("POST", "/v1/rooms/r1/events", "k2", &sig),
        req("POST", "/v1/rooms/r1/events:batch", "", &sig),
    ] {
        assert_eq!(
            a.gift_signature(&other, now),
            Err(AuthFailure::BadSignature)
        );
    }
    // Bare hex and other prefixes are not a signature form.
    let bare = sig.trim_start_matches("v2=").to_string();
    for bad in [bare.as_str(), "v2=zz", "v3=00", "v2=", "sha256="] {
        let r = req("POST", "/v1/rooms/r1/events", "k1", bad);
        assert_eq!(a.gift_signature(&r, now), Err(AuthFailure::BadSignature));
    }
    let legacy = sign_gift_request_legacy("k", &ts, body);
    let r = req("POST", "/v1/rooms/r1/events", "k1", &legacy);
    assert_eq!(
        a.gift_signature(&r, now),
        Err(AuthFailure::LegacySignatureOff)
    );
    assert_eq!(AuthFailure::LegacySignatureOff.code(), "bad_signature");

    let mut c = Config::embedded().auth;
    c.gift_secrets = vec!["k".into()];
    c.accept_legacy_signatures = true;
    let lenient = Authenticator::new(&c);
    assert_eq!(lenient.gift_signature(&r, now), Ok(()));
    assert_eq!(lenient.gift_signature(&ok, now), Ok(()));
    let wrong = sign_gift_request_legacy("other", &ts, body);
    let r = req("POST", "/v1/rooms/r1/events", "k1", &wrong);
    assert_eq!(
        lenient.gift_signature(&r, now),
        Err(AuthFailure::BadSignature)
    );
}

/// `vip` is an optional integer level ≥ 0; anything else present makes the
/// token invalid (not silently a plain viewer).
#[test]
fn vip_claim_is_an_integer_level_or_the_token_is_invalid() {
    let a = auth_with(&["k1"]);
    let exp = unix_now() + 600;
    let token = |vip: serde_json::Value| {
        let claims = serde_json::json!({"sub": "u", "name": "n", "exp": exp, "vip": vip});
        encode(&Header::new(Algorithm::HS256), &claims, &a.encoding).unwrap()
    };
    assert_eq!(a.viewer_token(&token(3.into())).unwrap().vip, Some(3));
    assert_eq!(a.viewer_token(&token(0.into())).unwrap().vip, Some(0));
    let plain = a.issue("u", "n", 60);
    assert_eq!(a.viewer_token(&plain).unwrap().vip, None);
    let minted = a.issue_with_vip("u", "n", 60, Some(2));
    assert_eq!(a.viewer_token(&minted).unwrap().vip, Some(2));
    for bad in [
        serde_json::json!("3"),
        serde_json::json!(1.5),
        serde_json::json!(2.0),
        serde_json::json!(-1),
        serde_json::json!(u64::from(u32::MAX) + 1),
        serde_json::json!(null),
        serde_json::json!(true),
        serde_json::json!([1]),
    ] {
        assert_eq!(
            a.viewer_token(&token(bad.clone())).unwrap_err(),
            AuthFailure::InvalidToken,
            "vip {bad}"
        );
    }
}
