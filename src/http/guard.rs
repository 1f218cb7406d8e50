//! Operator authentication: `Authorization: Bearer <admin token>`.

use axum::http::{HeaderMap, StatusCode};
use subtle::ConstantTimeEq;

use super::extract::header_str;
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
