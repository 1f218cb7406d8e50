//! Moderator tokens (`docs/architecture.md`, "Control plane"): JWTs (HS256)
//! signed with the admin token, naming the moderator (`sub`), `role:
//! "moderator"` and the rooms it may act on. Operators keep the shared admin
//! token; a platform hands each moderator a token of its own, so every
//! action is logged with who did it and a moderator cannot act outside its
//! rooms.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{unix_now, AuthFailure};

/// The only role a moderator token may carry.
pub const MODERATOR_ROLE: &str = "moderator";
/// Rooms one token may name.
const MAX_ROOMS: usize = 1000;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ModeratorClaims {
    pub sub: String,
    pub role: String,
    pub rooms: Vec<String>,
    pub exp: u64,
}

impl ModeratorClaims {
    pub fn may_act_in(&self, room: &str) -> bool {
        self.rooms.iter().any(|r| r == room)
    }
}

/// A user id as tokens carry it (`sub`) and paths name it: 1–64 bytes, no
/// control or bidi control characters.
pub fn valid_subject(sub: &str) -> bool {
    !sub.is_empty()
        && sub.len() <= 64
        && !sub
            .chars()
            .any(|c| c.is_control() || crate::text::is_bidi_control(c))
}

/// Who performed an admin or moderation action, for logs and answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// The shared admin token.
    Operator,
    /// A moderator token's `sub`.
    Moderator(String),
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::Operator => f.write_str("operator"),
            Actor::Moderator(sub) => write!(f, "moderator:{sub}"),
        }
    }
}

/// Verifies (and, for tests and tools, mints) moderator tokens.
pub struct Moderators {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    /// No admin token, no moderator tokens.
    enabled: bool,
}

impl Moderators {
    pub fn new(admin_token: &str, leeway_s: u64) -> Moderators {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = leeway_s;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Moderators {
            decoding: DecodingKey::from_secret(admin_token.as_bytes()),
            encoding: EncodingKey::from_secret(admin_token.as_bytes()),
            validation,
            enabled: !admin_token.is_empty(),
        }
    }

    pub fn verify(&self, token: &str) -> Result<ModeratorClaims, AuthFailure> {
        if !self.enabled || token.is_empty() {
            return Err(AuthFailure::InvalidToken);
        }
        let claims = decode::<ModeratorClaims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthFailure::ExpiredToken,
                _ => AuthFailure::InvalidToken,
            })?
            .claims;
        if claims.role != MODERATOR_ROLE
            || !valid_subject(&claims.sub)
            || claims.rooms.len() > MAX_ROOMS
        {
            return Err(AuthFailure::InvalidToken);
        }
        Ok(claims)
    }

    /// Mints a moderator token (tests, `danmaku token`).
    pub fn issue(&self, sub: &str, rooms: &[&str], ttl_s: u64) -> String {
        let claims = ModeratorClaims {
            sub: sub.to_string(),
            role: MODERATOR_ROLE.to_string(),
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            exp: unix_now() + ttl_s,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).expect("HS256 encodes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_rooms_and_need_the_admin_key() {
        let m = Moderators::new("admin-secret", 0);
        let token = m.issue("mod-1", &["r1"], 60);
        let claims = m.verify(&token).unwrap();
        assert_eq!(claims.sub, "mod-1");
        assert!(claims.may_act_in("r1"));
        assert!(!claims.may_act_in("r2"));
        let other = Moderators::new("another-secret", 0);
        assert_eq!(other.verify(&token), Err(AuthFailure::InvalidToken));
        assert_eq!(
            Moderators::new("", 0).verify(&token),
            Err(AuthFailure::InvalidToken),
            "no admin token, no moderators"
        );
        let mut expired = ModeratorClaims {
            sub: "m".into(),
            role: MODERATOR_ROLE.into(),
            rooms: vec!["r1".into()],
            exp: 1,
        };
        let key = EncodingKey::from_secret(b"admin-secret");
        let t = encode(&Header::new(Algorithm::HS256), &expired, &key).unwrap();
        assert_eq!(m.verify(&t), Err(AuthFailure::ExpiredToken));
        expired.exp = unix_now() + 60;
        expired.role = "viewer".into();
        let t = encode(&Header::new(Algorithm::HS256), &expired, &key).unwrap();
        assert_eq!(
            m.verify(&t),
            Err(AuthFailure::InvalidToken),
            "role must be moderator"
        );
        assert_eq!(Actor::Moderator("m".into()).to_string(), "moderator:m");
    }
}
