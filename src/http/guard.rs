//! Operator and moderator authentication: `Authorization: Bearer <admin
//! token>` or a moderator token (`auth/moderator.rs`).

use axum::http::{HeaderMap, StatusCode};
use subtle::ConstantTimeEq;

use super::extract::header_str;
use crate::auth::moderator::{Actor, Moderators};
use crate::error::ApiError;

/// The token of an `Authorization: Bearer <token>` header (trimmed; empty
/// when the header is absent or another scheme).
pub fn bearer(headers: &HeaderMap) -> &str {
    header_str(headers, "authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .trim()
}

/// Checks the admin bearer token against `configured` in constant time;
/// admin routes are off (404) when no token is configured.
pub fn require_admin(configured: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    let configured = configured.as_bytes();
    if configured.is_empty() {
        return Err(ApiError::not_found(
            "admin routes are off (no admin token configured)",
        ));
    }
    let given = bearer(headers).as_bytes();
    if given.is_empty() || !bool::from(given.ct_eq(configured)) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_admin_token",
            "an admin bearer token is required",
        ));
    }
    Ok(())
}

/// Who may act on `room` (`None`: an action over every room, operators
/// only): the admin token is an operator; a moderator token (signed with
/// the admin token) is its `sub`, for the rooms it names. A moderator
/// refused a room is logged with its name.
pub fn require_moderator(
    configured: &str,
    moderators: &Moderators,
    headers: &HeaderMap,
    room: Option<&str>,
) -> Result<Actor, ApiError> {
    let given = bearer(headers);
    if configured.is_empty() || bool::from(given.as_bytes().ct_eq(configured.as_bytes())) {
        return require_admin(configured, headers).map(|()| Actor::Operator);
    }
    let claims = moderators.verify(given).map_err(|_| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_admin_token",
            "an admin or moderator bearer token is required",
        )
    })?;
    match room {
        Some(room) if claims.may_act_in(room) => Ok(Actor::Moderator(claims.sub)),
        Some(room) => {
            tracing::warn!(moderator = %claims.sub, room, "moderator refused: not one of its rooms");
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_room",
                format!("moderator {} may not act in room {room}", claims.sub),
            ))
        }
        None => {
            tracing::warn!(moderator = %claims.sub, "moderator refused: operators only");
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "operators_only",
                "this action needs the admin token",
            ))
        }
    }
}
