//! Viewer tokens with forged claims, signed with the right secret (or a
//! wrong one, or another HMAC algorithm): `Authenticator::viewer_from_header` must apply
//! exactly the exp / nbf / leeway rules, pin HS256, bound sub and name (no control or bidi
//! characters), and take only `Bearer <token>`.
#![no_main]

use arbitrary::Arbitrary;
use danmaku::auth::{unix_now, AuthFailure, ViewerClaims};
use danmaku_fuzz::{Harness, JWT_SECRET};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Time {
    /// Seconds from now.
    Relative(i32),
    Absolute(u64),
}

#[derive(Arbitrary, Debug)]
struct Input {
    sub: String,
    name: String,
    exp: Time,
    nbf: Option<Time>,
    /// 0: HS256, 1: HS384, 2: HS512.
    alg: u8,
    right_secret: bool,
    /// How the token is presented in the header.
    prefix: u8,
}

fn at(t: &Time, now: u64) -> u64 {
    match *t {
        Time::Relative(d) => now.saturating_add_signed(d as i64),
        Time::Absolute(t) => t,
    }
}

fuzz_target!(|input: Input| {
    let h = Harness::get();
    let leeway = h.config.auth.jwt_leeway_s;
    let now = unix_now();
    let claims = ViewerClaims {
        sub: input.sub,
        name: input.name,
        exp: at(&input.exp, now),
        nbf: input.nbf.as_ref().map(|t| at(t, now)),
        vip: None,
        rooms: None,
    };
    // Skip instants the clock could move across while this input runs.
    let near = |t: u64, edge: u64| t.abs_diff(edge) <= 5;
    if near(claims.exp, now.saturating_sub(leeway))
        || claims.nbf.is_some_and(|n| near(n, now + leeway))
    {
        return;
    }
    let alg = match input.alg % 3 {
        0 => Algorithm::HS256,
        1 => Algorithm::HS384,
        _ => Algorithm::HS512,
    };
    let secret = if input.right_secret {
        JWT_SECRET
    } else {
        "not-the-secret-but-long-enough-anyway"
    };
    let token = encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HMAC tokens encode");
    let header = match input.prefix % 4 {
        0 => token,
        1 => format!("Bearer {token}"),
        2 => format!("  Bearer\t{token}  "),
        _ => format!("Bearer{token}"),
    };

    let bad_char = |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    let expected = if alg != Algorithm::HS256 || !input.right_secret || input.prefix % 4 == 0 || input.prefix % 4 == 3 {
        Err(AuthFailure::InvalidToken)
    } else if claims.exp < now - leeway {
        Err(AuthFailure::ExpiredToken)
    } else if claims.nbf.is_some_and(|n| n > now + leeway) {
        Err(AuthFailure::InvalidToken)
    } else if claims.sub.is_empty()
        || claims.sub.len() > 64
        || claims.name.chars().count() > 32
        || claims.sub.chars().any(bad_char)
        || claims.name.chars().any(bad_char)
    {
        Err(AuthFailure::InvalidToken)
    } else {
        Ok(claims.clone())
    };
    assert_eq!(h.auth.viewer_from_header(Some(&header)), expected, "claims {claims:?}");
});
