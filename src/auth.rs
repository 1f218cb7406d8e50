//! Authentication: viewer tokens (HS256 JWT, alg pinned) and the gift
//! backend's HMAC-SHA256 request signatures (v2: bound to the method, path
//! and Idempotency-Key; constant-time, rotation).

use hmac::{Hmac, Mac};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::config::AuthConfig;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ViewerClaims {
    pub sub: String,
    pub name: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// Why a credential was refused; `code` goes into the error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    MissingToken,
    InvalidToken,
    ExpiredToken,
    MissingSignature,
    /// A `sha256=` signature while `auth.accept_legacy_signatures` is off.
    LegacySignatureOff,
    BadTimestamp,
    StaleTimestamp,
    BadSignature,
}

impl AuthFailure {
    pub fn code(self) -> &'static str {
        match self {
            AuthFailure::MissingToken => "missing_token",
            AuthFailure::InvalidToken => "invalid_token",
            AuthFailure::ExpiredToken => "token_expired",
            AuthFailure::MissingSignature => "missing_signature",
            AuthFailure::LegacySignatureOff => "bad_signature",
            AuthFailure::BadTimestamp => "bad_timestamp",
            AuthFailure::StaleTimestamp => "stale_timestamp",
            AuthFailure::BadSignature => "bad_signature",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            AuthFailure::MissingToken => {
                "an Authorization: Bearer <viewer token> header is required"
            }
            AuthFailure::InvalidToken => "the viewer token is not valid",
            AuthFailure::ExpiredToken => "the viewer token has expired",
            AuthFailure::MissingSignature => "X-Timestamp and X-Signature headers are required",
            AuthFailure::LegacySignatureOff => {
                "legacy sha256= signatures are off: sign with X-Signature: v2=<hex HMAC-SHA256 of \
                 \"<timestamp>\\n<METHOD>\\n<path>\\n<Idempotency-Key>\\n<body>\">"
            }
            AuthFailure::BadTimestamp => "X-Timestamp must be unix seconds",
            AuthFailure::StaleTimestamp => "X-Timestamp is outside the accepted window",
            AuthFailure::BadSignature => "X-Signature does not match the request",
        }
    }
}

pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    gift_secrets: Vec<Vec<u8>>,
    signature_window_s: u64,
    accept_legacy_signatures: bool,
    demo_tokens: bool,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Self {
        if config.accept_legacy_signatures {
            // Legacy signatures do not bind the room or the key: replayable.
            tracing::warn!(
                "auth.accept_legacy_signatures is on: sha256= gift signatures (not bound to \
                 the room or the Idempotency-Key) are accepted; switch gift backends to v2= \
                 and turn it off"
            );
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = config.jwt_leeway_s;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Authenticator {
            decoding: DecodingKey::from_secret(config.jwt_secret.as_bytes()),
            encoding: EncodingKey::from_secret(config.jwt_secret.as_bytes()),
            validation,
            gift_secrets: config
                .gift_secrets
                .iter()
                .map(|s| s.as_bytes().to_vec())
                .collect(),
            signature_window_s: config.signature_window_s,
            accept_legacy_signatures: config.accept_legacy_signatures,
            // Demo tokens are only ever minted with the development secret.
            demo_tokens: config.demo_tokens && config.uses_dev_jwt_secret(),
        }
    }

    pub fn demo_tokens_enabled(&self) -> bool {
        self.demo_tokens
    }

    /// Checks an `Authorization` header: `Bearer <token>` (the scheme is
    /// case-insensitive, RFC 9110 §11.1). A header without the scheme is
    /// `invalid_token`; no header, `missing_token`.
    pub fn viewer_from_header(&self, header: Option<&str>) -> Result<ViewerClaims, AuthFailure> {
        let raw = header.map(str::trim).unwrap_or("");
        if raw.is_empty() {
            return Err(AuthFailure::MissingToken);
        }
        match raw.split_once([' ', '\t']) {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                self.viewer_token(token.trim_start_matches([' ', '\t']))
            }
            _ => Err(AuthFailure::InvalidToken),
        }
    }

    /// Checks a bare viewer token (the `?token=` query parameter of the
    /// stream endpoints, the WebSocket `auth` message): an HS256 JWT whose
    /// header has no `crit` (we understand no extension, RFC 7515 §4.1.11),
    /// with `exp` (and `nbf`) within the clock skew and a `sub` and `name`
    /// free of control and bidi characters.
    pub fn viewer_token(&self, token: &str) -> Result<ViewerClaims, AuthFailure> {
        if token.is_empty() {
            return Err(AuthFailure::MissingToken);
        }
        if Self::has_crit_header(token) {
            return Err(AuthFailure::InvalidToken);
        }
        let data =
            decode::<ViewerClaims>(token, &self.decoding, &self.validation).map_err(|e| match e
                .kind()
            {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthFailure::ExpiredToken,
                _ => AuthFailure::InvalidToken,
            })?;
        let c = data.claims;
        let bad_char = |c: char| c.is_control() || crate::text::is_bidi_control(c);
        if c.sub.is_empty()
            || c.sub.len() > 64
            || c.name.chars().count() > 32
            || c.sub.chars().any(bad_char)
            || c.name.chars().any(bad_char)
        {
            return Err(AuthFailure::InvalidToken);
        }
        Ok(c)
    }

    /// Whether a JWT's header (its first segment) has a `crit` member, or
    /// cannot be read (the decode refuses those anyway). jsonwebtoken does not
    /// look at `crit`.
    fn has_crit_header(token: &str) -> bool {
        use base64::Engine;
        let segment = token.split('.').next().unwrap_or("");
        let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(segment) else {
            return true;
        };
        match crate::json::parse_json::<serde_json::Map<String, serde_json::Value>>(&json) {
            Ok(header) => header.contains_key("crit"),
            Err(_) => true,
        }
    }

    /// Mints a viewer token (demo endpoint and tests).
    pub fn issue(&self, sub: &str, name: &str, ttl_s: u64) -> String {
        let claims = ViewerClaims {
            sub: sub.to_string(),
            name: name.to_string(),
            exp: unix_now() + ttl_s,
            nbf: None,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).expect("HS256 encodes")
    }

    /// Verifies a gift backend's signed request (DESIGN §4): the timestamp
    /// window, then `v2=` over [`gift_canonical_v2`] with any configured
    /// secret (rotation); `sha256=` over `"<timestamp>.<body>"` only with
    /// `auth.accept_legacy_signatures`.
    pub fn gift_signature(&self, req: &GiftRequest<'_>, now_s: u64) -> Result<(), AuthFailure> {
        let (Some(ts), Some(sig)) = (req.timestamp, req.signature) else {
            return Err(AuthFailure::MissingSignature);
        };
        let ts = ts.trim();
        let ts_num: u64 = ts.parse().map_err(|_| AuthFailure::BadTimestamp)?;
        if ts_num.abs_diff(now_s) > self.signature_window_s {
            return Err(AuthFailure::StaleTimestamp);
        }
        let parts = match parse_signature_header(sig)? {
            SignatureHeader::V2(mac) => {
                // HTTP cannot carry a newline in these; refusing one keeps the
                // canonical string unambiguous whoever calls this.
                if req.path.contains('\n') || req.idempotency_key.contains('\n') {
                    return Err(AuthFailure::BadSignature);
                }
                let parts =
                    canonical_parts(ts, req.method, req.path, req.idempotency_key, req.body);
                (mac, parts.to_vec())
            }
            SignatureHeader::Legacy(_) if !self.accept_legacy_signatures => {
                return Err(AuthFailure::LegacySignatureOff);
            }
            SignatureHeader::Legacy(mac) => (mac, vec![ts.as_bytes(), b".", req.body]),
        };
        let (expected, parts) = parts;
        for secret in &self.gift_secrets {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
            for p in &parts {
                mac.update(p);
            }
            // verify_slice compares in constant time.
            if mac.verify_slice(&expected).is_ok() {
                return Ok(());
            }
        }
        Err(AuthFailure::BadSignature)
    }
}

/// What a gift request's v2 signature covers; the handlers fill it in from
/// the request as received.
#[derive(Debug, Clone, Copy)]
pub struct GiftRequest<'a> {
    /// `X-Timestamp`.
    pub timestamp: Option<&'a str>,
    /// `X-Signature`.
    pub signature: Option<&'a str>,
    pub method: &'a str,
    /// The request path as received, without the query string.
    pub path: &'a str,
    /// `Idempotency-Key`; empty for `events:batch`.
    pub idempotency_key: &'a str,
    pub body: &'a [u8],
}

/// A parsed `X-Signature` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureHeader {
    /// `v2=<64 hex>`: the MAC bytes.
    V2(Vec<u8>),
    /// `sha256=<64 hex>`: the MAC bytes (legacy form).
    Legacy(Vec<u8>),
}

/// Parses `X-Signature`: `v2=` or `sha256=` followed by 64 hex digits
/// (either case); anything else is `BadSignature`.
pub fn parse_signature_header(value: &str) -> Result<SignatureHeader, AuthFailure> {
    let value = value.trim();
    let (form, hex_mac): (fn(Vec<u8>) -> SignatureHeader, &str) =
        if let Some(h) = value.strip_prefix("v2=") {
            (SignatureHeader::V2, h)
        } else if let Some(h) = value.strip_prefix("sha256=") {
            (SignatureHeader::Legacy, h)
        } else {
            return Err(AuthFailure::BadSignature);
        };
    match hex::decode(hex_mac) {
        Ok(mac) if mac.len() == 32 => Ok(form(mac)),
        _ => Err(AuthFailure::BadSignature),
    }
}

/// The pieces of the v2 canonical string, in order; the signer, the
/// verifier and [`gift_canonical_v2`] all use this one list.
fn canonical_parts<'a>(
    timestamp: &'a str,
    method: &'a str,
    path: &'a str,
    idempotency_key: &'a str,
    body: &'a [u8],
) -> [&'a [u8]; 9] {
    [
        timestamp.as_bytes(),
        b"\n",
        method.as_bytes(),
        b"\n",
        path.as_bytes(),
        b"\n",
        idempotency_key.as_bytes(),
        b"\n",
        body,
    ]
}

/// `"<timestamp>\n<METHOD>\n<path>\n<Idempotency-Key>\n<body>"`: what v2 signs.
pub fn gift_canonical_v2(
    timestamp: &str,
    method: &str,
    path: &str,
    idempotency_key: &str,
    body: &[u8],
) -> Vec<u8> {
    canonical_parts(timestamp, method, path, idempotency_key, body).concat()
}

/// The `X-Signature` value a gift backend sends (v2; tests, the load tool).
pub fn sign_gift_request(
    secret: &str,
    timestamp: &str,
    method: &str,
    path: &str,
    idempotency_key: &str,
    body: &[u8],
) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    for p in canonical_parts(timestamp, method, path, idempotency_key, body) {
        mac.update(p);
    }
    format!("v2={}", hex::encode(mac.finalize().into_bytes()))
}

/// The legacy `sha256=` form over `"<timestamp>.<body>"`; only for tests of
/// `auth.accept_legacy_signatures`.
#[doc(hidden)]
pub fn sign_gift_request_legacy(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub fn unix_now() -> u64 {
    crate::message::now_ms() / 1000
}

#[cfg(test)]
mod tests {
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
        let key =
            jsonwebtoken::EncodingKey::from_secret(Config::embedded().auth.jwt_secret.as_bytes());
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
}
