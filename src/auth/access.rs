//! Who may watch a room (WebSocket, SSE, long-poll, snapshot, replay): a
//! public room, anyone (a token is not needed); a private room (room setting
//! `private`), only a viewer whose valid token's `rooms` claim names it.

use axum::http::StatusCode;

use super::{AuthFailure, ViewerClaims};
use crate::error::ApiError;

/// Why a watcher is refused: 401 (no usable token) or 403 (a token for
/// other rooms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchRefusal {
    Token(AuthFailure),
    RoomForbidden,
}

/// The policy: `token` is what the request carried (`None`: nothing, else
/// the check's result). A public room ignores a bad token here (the
/// transports that use one for sending refuse it themselves).
pub fn watch_access(
    room: &str,
    private: bool,
    token: Option<&Result<ViewerClaims, AuthFailure>>,
) -> Result<(), WatchRefusal> {
    if !private {
        return Ok(());
    }
    match token {
        None => Err(WatchRefusal::Token(AuthFailure::MissingToken)),
        Some(Err(f)) => Err(WatchRefusal::Token(*f)),
        Some(Ok(claims)) if names_room(claims, room) => Ok(()),
        Some(Ok(_)) => Err(WatchRefusal::RoomForbidden),
    }
}

/// Whether the token's `rooms` claim names `room`.
pub fn names_room(claims: &ViewerClaims, room: &str) -> bool {
    claims
        .rooms
        .as_ref()
        .is_some_and(|rooms| rooms.iter().any(|r| r == room))
}

impl From<WatchRefusal> for ApiError {
    fn from(r: WatchRefusal) -> Self {
        match r {
            WatchRefusal::Token(f) => f.into(),
            WatchRefusal::RoomForbidden => ApiError::new(
                StatusCode::FORBIDDEN,
                "room_forbidden",
                "this room is private: the viewer token's rooms claim does not name it",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(rooms: Option<&[&str]>) -> ViewerClaims {
        ViewerClaims {
            sub: "u".into(),
            name: "U".into(),
            exp: u64::MAX,
            nbf: None,
            vip: None,
            rooms: rooms.map(|r| r.iter().map(|s| s.to_string()).collect()),
        }
    }

    /// (private, the token's check, the answer)
    type Case<'a> = (
        bool,
        Option<&'a Result<ViewerClaims, AuthFailure>>,
        Result<(), WatchRefusal>,
    );

    #[test]
    fn who_may_watch() {
        use AuthFailure::*;
        use WatchRefusal::*;
        let named = Ok(claims(Some(&["r1", "r2"])));
        let other = Ok(claims(Some(&["r2"])));
        let no_claim = Ok(claims(None));
        let expired = Err(ExpiredToken);
        let cases: &[Case] = &[
            (false, None, Ok(())),
            (false, Some(&expired), Ok(())),
            (false, Some(&other), Ok(())),
            (true, None, Err(Token(MissingToken))),
            (true, Some(&expired), Err(Token(ExpiredToken))),
            (true, Some(&Err(UnknownKey)), Err(Token(UnknownKey))),
            (true, Some(&named), Ok(())),
            (true, Some(&other), Err(RoomForbidden)),
            (true, Some(&no_claim), Err(RoomForbidden)),
        ];
        for (private, token, expected) in cases {
            assert_eq!(
                watch_access("r1", *private, *token),
                *expected,
                "private={private} token={token:?}"
            );
        }
        let e = ApiError::from(RoomForbidden);
        assert_eq!((e.status.as_u16(), e.code), (403, "room_forbidden"));
        let e = ApiError::from(Token(UnknownKey));
        assert_eq!((e.status.as_u16(), e.code), (401, "unknown_key"));
    }
}
