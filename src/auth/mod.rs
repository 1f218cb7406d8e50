//! Authentication: viewer tokens (HS256 with `auth.jwt_secret`, or RS/ES
//! signed by the platform with a key of `auth.viewer_keys_file`, each key id
//! bound to one algorithm), who may watch private rooms (`access`), and the
//! gift backend's HMAC-SHA256 request signatures (v2: bound to the method,
//! path and Idempotency-Key; constant-time, rotation).

use hmac::{Hmac, Mac};
use std::collections::HashMap;

use jsonwebtoken::{
    decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::config::AuthConfig;
use crate::error::ApiError;

pub mod access;
pub mod key_file;
pub mod keys;
pub mod moderator;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ViewerClaims {
    pub sub: String,
    pub name: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The platform's VIP level (an integer ≥ 0); rooms map it to a bucket
    /// (`vip_high_level`). Present but not such an integer (`"3"`, `1.5`,
    /// `-1`, `null`): the token is invalid.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_level"
    )]
    pub vip: Option<u32>,
    /// The private rooms the token may watch (`access::watch_access`);
    /// absent: none. Public rooms need no naming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
}

/// A present `vip` must be an integer ≥ 0 (`null` included in what is
/// refused: a claim either says a level or is absent).
fn present_level<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    u32::deserialize(d).map(Some)
}

/// Why a credential was refused; `code` goes into the error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    MissingToken,
    InvalidToken,
    ExpiredToken,
    /// A `kid` that names no key of `auth.viewer_keys_file` (rotated out, or
    /// never there).
    UnknownKey,
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
            AuthFailure::UnknownKey => "unknown_key",
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
            AuthFailure::UnknownKey => "the viewer token's kid names no current signing key",
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
    /// One validation per algorithm a token may use, each allowing only it.
    validations: HashMap<Algorithm, Validation>,
    /// The platform's public keys (`auth.viewer_keys_file`), if configured.
    key_file: Option<key_file::KeyFile>,
    gift_secrets: Vec<Vec<u8>>,
    signature_window_s: u64,
    accept_legacy_signatures: bool,
    demo_tokens: bool,
}

impl Authenticator {
    /// The server's authenticator: key file reads counted in `metrics`.
    pub fn with_metrics(config: &AuthConfig, metrics: &crate::metrics::Metrics) -> Self {
        Self::counted(config, metrics.viewer_key_reloads.clone())
    }

    pub fn new(config: &AuthConfig) -> Self {
        let opts = prometheus::Opts::new("viewer_key_reloads", "uncounted");
        let uncounted = prometheus::IntCounterVec::new(opts, &["result"]).expect("valid metric");
        Self::counted(config, uncounted)
    }

    fn counted(config: &AuthConfig, key_reloads: prometheus::IntCounterVec) -> Self {
        if config.accept_legacy_signatures {
            // Legacy signatures do not bind the room or the key: replayable.
            tracing::warn!(
                "auth.accept_legacy_signatures is on: sha256= gift signatures (not bound to \
                 the room or the Idempotency-Key) are accepted; switch gift backends to v2= \
                 and turn it off"
            );
        }
        let validations = [
            Algorithm::HS256,
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::ES256,
            Algorithm::ES384,
        ]
        .into_iter()
        .map(|alg| {
            let mut validation = Validation::new(alg);
            validation.algorithms = vec![alg];
            validation.leeway = config.jwt_leeway_s;
            validation.validate_exp = true;
            validation.validate_nbf = true;
            validation.set_required_spec_claims(&["exp", "sub"]);
            (alg, validation)
        })
        .collect();
        let key_file = (!config.viewer_keys_file.is_empty())
            .then(|| key_file::KeyFile::open(&config.viewer_keys_file, key_reloads));
        Authenticator {
            decoding: DecodingKey::from_secret(config.jwt_secret.as_bytes()),
            encoding: EncodingKey::from_secret(config.jwt_secret.as_bytes()),
            validations,
            key_file,
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
    /// stream endpoints, the WebSocket `auth` message): a JWT whose header
    /// has no `crit` (we understand no extension, RFC 7515 §4.1.11), signed
    /// either with a key of `auth.viewer_keys_file` named by its `kid`,
    /// under that key's one algorithm, or HS256 with `auth.jwt_secret` (no
    /// `kid`, or one the key file does not have); with `exp` (and `nbf`)
    /// within the clock skew and a `sub` and `name` free of control and bidi
    /// characters. A `kid` the key file lacks on a non-HS256 token is
    /// `UnknownKey`.
    pub fn viewer_token(&self, token: &str) -> Result<ViewerClaims, AuthFailure> {
        if token.is_empty() {
            return Err(AuthFailure::MissingToken);
        }
        if Self::has_crit_header(token) {
            return Err(AuthFailure::InvalidToken);
        }
        let header = decode_header(token).map_err(|_| AuthFailure::InvalidToken)?;
        let keys = self.key_file.as_ref().map(key_file::KeyFile::keys);
        let bound = header
            .kid
            .as_deref()
            .and_then(|kid| keys.as_ref()?.get(kid));
        let (key, alg) = match bound {
            Some(bound) => (&bound.key, bound.algorithm),
            None if header.alg == Algorithm::HS256 => (&self.decoding, Algorithm::HS256),
            None if header.kid.is_some() => return Err(AuthFailure::UnknownKey),
            None => return Err(AuthFailure::InvalidToken),
        };
        // The validation allows the key's algorithm alone: a token whose
        // header names another one fails here, whatever its signature.
        let validation = &self.validations[&alg];
        let data = decode::<ViewerClaims>(token, key, validation).map_err(|e| match e.kind() {
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
        self.issue_with_vip(sub, name, ttl_s, None)
    }

    /// Mints a viewer token with a `vip` level (demo endpoint and tests).
    pub fn issue_with_vip(&self, sub: &str, name: &str, ttl_s: u64, vip: Option<u32>) -> String {
        let claims = ViewerClaims {
            sub: sub.to_string(),
            name: name.to_string(),
            exp: unix_now() + ttl_s,
            nbf: None,
            vip,
            rooms: None,
        };
        self.issue_claims(&claims)
    }

    /// Signs any viewer claims with the HS256 secret (tests).
    pub fn issue_claims(&self, claims: &ViewerClaims) -> String {
        encode(&Header::new(Algorithm::HS256), claims, &self.encoding).expect("HS256 encodes")
    }

    /// Looks at `auth.viewer_keys_file` every [`key_file::CHECK_EVERY`]
    /// until `stop` (besides the look token checks take), so that a rotation
    /// or a broken rewrite shows in the log and metrics even while no token
    /// arrives. Returns at once without a key file.
    pub async fn watch_key_file(
        self: std::sync::Arc<Self>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let Some(file) = &self.key_file else {
            return;
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(key_file::CHECK_EVERY) => {
                    file.keys();
                }
            }
        }
    }

    /// Key file reads that succeeded and that failed (the metric's source);
    /// `(0, 0)` without a key file.
    pub fn key_file_counts(&self) -> (u64, u64) {
        self.key_file
            .as_ref()
            .map_or((0, 0), key_file::KeyFile::counts)
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

/// A refused credential is a 401 with the failure's code (here rather than in
/// `error.rs`, so the error type depends on nothing above it).
impl From<AuthFailure> for ApiError {
    fn from(f: AuthFailure) -> Self {
        ApiError::new(axum::http::StatusCode::UNAUTHORIZED, f.code(), f.message())
    }
}

#[cfg(test)]
mod tests;
