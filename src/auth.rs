//! Authentication: viewer tokens (HS256 JWT, alg pinned) and the gift
//! backend's HMAC-SHA256 request signatures (constant-time, rotation).

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
            AuthFailure::BadTimestamp => "X-Timestamp must be unix seconds",
            AuthFailure::StaleTimestamp => "X-Timestamp is outside the accepted window",
            AuthFailure::BadSignature => "X-Signature does not match the body",
        }
    }
}

pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    gift_secrets: Vec<Vec<u8>>,
    signature_window_s: u64,
    demo_tokens: bool,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Self {
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

    /// Verifies `X-Signature: sha256=<hex>` over `"<timestamp>.<body>"` with
    /// any configured secret, and the timestamp window.
    pub fn gift_signature(
        &self,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now_s: u64,
    ) -> Result<(), AuthFailure> {
        let (Some(ts), Some(sig)) = (timestamp, signature) else {
            return Err(AuthFailure::MissingSignature);
        };
        let ts_num: u64 = ts.trim().parse().map_err(|_| AuthFailure::BadTimestamp)?;
        if ts_num.abs_diff(now_s) > self.signature_window_s {
            return Err(AuthFailure::StaleTimestamp);
        }
        let hex_sig = sig.trim().strip_prefix("sha256=").unwrap_or(sig.trim());
        let expected = hex::decode(hex_sig).map_err(|_| AuthFailure::BadSignature)?;
        for secret in &self.gift_secrets {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
            mac.update(ts.trim().as_bytes());
            mac.update(b".");
            mac.update(body);
            // verify_slice compares in constant time.
            if mac.verify_slice(&expected).is_ok() {
                return Ok(());
            }
        }
        Err(AuthFailure::BadSignature)
    }
}

/// The signature header value a gift backend sends (used by tests and the load tool).
pub fn sign_gift_request(secret: &str, timestamp: &str, body: &[u8]) -> String {
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
        for secret in ["old-secret", "new-secret"] {
            let sig = sign_gift_request(secret, &ts, body);
            assert_eq!(a.gift_signature(Some(&ts), Some(&sig), body, now), Ok(()));
        }
        let sig = sign_gift_request("wrong", &ts, body);
        assert_eq!(
            a.gift_signature(Some(&ts), Some(&sig), body, now),
            Err(AuthFailure::BadSignature)
        );
        let sig = sign_gift_request("new-secret", &ts, body);
        assert_eq!(
            a.gift_signature(Some(&ts), Some(&sig), b"{}", now),
            Err(AuthFailure::BadSignature)
        );
        assert_eq!(
            a.gift_signature(Some(&ts), Some(&sig), body, now + 301),
            Err(AuthFailure::StaleTimestamp)
        );
        assert_eq!(
            a.gift_signature(None, Some(&sig), body, now),
            Err(AuthFailure::MissingSignature)
        );
        assert_eq!(
            a.gift_signature(Some("soon"), Some(&sig), body, now),
            Err(AuthFailure::BadTimestamp)
        );
    }
}
