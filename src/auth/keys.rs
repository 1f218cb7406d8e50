//! The platform's signing keys for viewer tokens (`auth.viewer_keys_file`):
//! public keys by key id, each bound to the one algorithm its key type
//! says, read from a JWKS JSON file or a PEM file. A token names its key
//! with the JWT header's `kid`; it verifies only with that key and only
//! under that key's algorithm (no algorithm confusion: an RSA key never
//! checks an HS256 or ES256 token, and HS256 is only ever the configured
//! `auth.jwt_secret`).
//!
//! File formats (docs/protocol.md §"Viewer tokens"):
//! - JWKS: `{"keys":[{"kty":"RSA","kid":"k1","n":…,"e":…}, {"kty":"EC",
//!   "crv":"P-256","kid":"k2","x":…,"y":…}]}`. RSA keys verify RS256 (or the
//!   `alg` they name: RS384, RS512); EC P-256 keys ES256, P-384 ES384. A
//!   key's `alg`, when present, must agree. Symmetric (`oct`) and other key
//!   types are refused.
//! - PEM: blocks of `-----BEGIN PUBLIC KEY-----` (SPKI: RSA, EC P-256/P-384)
//!   or `-----BEGIN RSA PUBLIC KEY-----` (PKCS#1), each preceded by a line
//!   `kid: <id>` naming it; other text outside the blocks is ignored.
//!
//! Any key that cannot be used fails the whole file: a half-read key set
//! would refuse tokens the platform thinks valid with no sign why.

use std::collections::HashMap;

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};

/// Public keys by key id, each with its one algorithm.
#[derive(Default)]
pub struct KeySet {
    keys: HashMap<String, BoundKey>,
}

/// A key and the only algorithm it verifies.
pub struct BoundKey {
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

impl KeySet {
    /// Reads a key file's text: JWKS when it starts with `{`, else PEM.
    pub fn parse(text: &str) -> Result<KeySet, String> {
        let keys = if text.trim_start().starts_with('{') {
            parse_jwks(text)?
        } else {
            parse_pem(text)?
        };
        let mut set = KeySet::default();
        for (kid, key) in keys {
            if kid.is_empty() || kid.len() > 128 {
                return Err("a kid must be 1-128 bytes".into());
            }
            if set.keys.insert(kid.clone(), key).is_some() {
                return Err(format!("kid {kid:?} appears twice"));
            }
        }
        Ok(set)
    }

    pub fn get(&self, kid: &str) -> Option<&BoundKey> {
        self.keys.get(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn parse_jwks(text: &str) -> Result<Vec<(String, BoundKey)>, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut out = Vec::with_capacity(set.keys.len());
    for jwk in &set.keys {
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or("every JWKS key needs a kid")?;
        let named = jwk.common.key_algorithm;
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => match named {
                None | Some(KeyAlgorithm::RS256) => Algorithm::RS256,
                Some(KeyAlgorithm::RS384) => Algorithm::RS384,
                Some(KeyAlgorithm::RS512) => Algorithm::RS512,
                Some(other) => return Err(format!("kid {kid:?}: an RSA key with alg {other:?}")),
            },
            AlgorithmParameters::EllipticCurve(ec) => {
                let (algorithm, expected) = match ec.curve {
                    EllipticCurve::P256 => (Algorithm::ES256, KeyAlgorithm::ES256),
                    EllipticCurve::P384 => (Algorithm::ES384, KeyAlgorithm::ES384),
                    ref other => {
                        return Err(format!("kid {kid:?}: curve {other:?} is not supported"))
                    }
                };
                if named.is_some_and(|a| a != expected) {
                    return Err(format!("kid {kid:?}: alg does not match the curve"));
                }
                algorithm
            }
            _ => {
                return Err(format!(
                    "kid {kid:?}: only RSA and EC public keys (HS256 is auth.jwt_secret)"
                ))
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("kid {kid:?}: {e}"))?;
        out.push((kid, BoundKey { algorithm, key }));
    }
    Ok(out)
}

/// SPKI algorithm ids: rsaEncryption, id-ecPublicKey and its curves.
const RSA_ENCRYPTION: spki::ObjectIdentifier =
    spki::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: spki::ObjectIdentifier =
    spki::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.3.132.0.34");

fn parse_pem(text: &str) -> Result<Vec<(String, BoundKey)>, String> {
    let mut out = Vec::new();
    let mut kid: Option<String> = None;
    let mut block: Option<(String, String)> = None; // (label, base64)
    for line in text.lines().map(str::trim) {
        if let Some((label, body)) = &mut block {
            if line.starts_with("-----END ") {
                let label = std::mem::take(label);
                let der = base64::engine::general_purpose::STANDARD
                    .decode(body.as_bytes())
                    .map_err(|_| "a PEM block is not base64".to_string())?;
                block = None;
                let kid = kid
                    .take()
                    .ok_or("each PEM key needs a `kid: <id>` line before it")?;
                let key = pem_key(&label, &der).map_err(|e| format!("kid {kid:?}: {e}"))?;
                out.push((kid, key));
            } else {
                body.push_str(line);
            }
        } else if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            block = Some((label.to_string(), String::new()));
        } else if let Some(id) = line.strip_prefix("kid:") {
            kid = Some(id.trim().to_string());
        }
    }
    if block.is_some() {
        return Err("a PEM block has no END line".into());
    }
    if out.is_empty() {
        return Err("no key in the file".into());
    }
    Ok(out)
}

/// One PEM block's key: `PUBLIC KEY` (SPKI) or `RSA PUBLIC KEY` (PKCS#1).
fn pem_key(label: &str, der: &[u8]) -> Result<BoundKey, String> {
    use spki::der::Decode;
    let rsa = |pkcs1: &[u8]| BoundKey {
        algorithm: Algorithm::RS256,
        key: DecodingKey::from_rsa_der(pkcs1),
    };
    match label {
        "RSA PUBLIC KEY" => Ok(rsa(der)),
        "PUBLIC KEY" => {
            let info = spki::SubjectPublicKeyInfoRef::from_der(der)
                .map_err(|e| format!("not a public key: {e}"))?;
            let bits = info
                .subject_public_key
                .as_bytes()
                .ok_or("the key bits are not whole bytes")?;
            if info.algorithm.oid == RSA_ENCRYPTION {
                return Ok(rsa(bits));
            }
            if info.algorithm.oid != EC_PUBLIC_KEY {
                return Err(format!("key type {} is not supported", info.algorithm.oid));
            }
            let algorithm = match info.algorithm.parameters_oid() {
                Ok(c) if c == P256 => Algorithm::ES256,
                Ok(c) if c == P384 => Algorithm::ES384,
                _ => return Err("only EC keys on P-256 or P-384".into()),
            };
            // ring takes the uncompressed point as the EC "DER" key.
            Ok(BoundKey {
                algorithm,
                key: DecodingKey::from_ec_der(bits),
            })
        }
        other => Err(format!(
            "a {other:?} PEM block (public keys only: PUBLIC KEY, RSA PUBLIC KEY)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_forms_and_their_refusals() {
        // (file text, Ok(number of keys) or a piece of the error)
        let ec_jwk = r#"{"kty":"EC","crv":"P-256","kid":"e1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
        let cases: &[(String, Result<usize, &str>)] = &[
            (format!(r#"{{"keys":[{ec_jwk}]}}"#), Ok(1)),
            (
                format!(r#"{{"keys":[{ec_jwk},{ec_jwk}]}}"#),
                Err("appears twice"),
            ),
            (
                r#"{"keys":[{"kty":"oct","kid":"s","k":"c2VjcmV0"}]}"#.into(),
                Err("only RSA and EC"),
            ),
            (
                ec_jwk
                    .replace(r#""kid":"e1","#, "")
                    .replace("{", r#"{"keys":[{"#)
                    + "]}",
                Err("needs a kid"),
            ),
            (
                format!(
                    r#"{{"keys":[{}]}}"#,
                    ec_jwk.replace(r#""kid""#, r#""alg":"ES384","kid""#)
                ),
                Err("does not match"),
            ),
            ("{not json".into(), Err("not a JWKS")),
            ("".into(), Err("no key")),
            (
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into(),
                Err("kid: <id>"),
            ),
            (
                "kid: a\n-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
                Err("public keys only"),
            ),
            (
                "kid: a\n-----BEGIN PUBLIC KEY-----\nAAAA\n".into(),
                Err("no END"),
            ),
        ];
        for (text, expected) in cases {
            match (KeySet::parse(text), expected) {
                (Ok(set), Ok(n)) => assert_eq!(set.len(), *n, "{text}"),
                (Err(e), Err(piece)) => assert!(e.contains(piece), "{text}: {e}"),
                (Ok(_), Err(piece)) => panic!("{text}: accepted, expected {piece}"),
                (Err(e), Ok(_)) => panic!("{text}: refused: {e}"),
            }
        }
        let set = KeySet::parse(&format!(r#"{{"keys":[{ec_jwk}]}}"#)).unwrap();
        assert_eq!(set.get("e1").unwrap().algorithm, Algorithm::ES256);
    }
}
