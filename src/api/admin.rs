//! Operator endpoints (admin bearer token). Off — 404 — unless a token is set.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use subtle::ConstantTimeEq;

use super::{header_str, parse_json, RawBody, RoomPath};
use crate::app::AppState;
use crate::error::ApiError;
use crate::rooms::{RoomSettings, RoomSettingsPatch};

/// Checks `Authorization: Bearer <admin token>` in constant time.
pub fn require_admin(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let configured = s.config.auth.admin_token.as_bytes();
    if configured.is_empty() {
        return Err(ApiError::not_found(
            "admin routes are off (no admin token configured)",
        ));
    }
    let given = header_str(headers, "authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .trim()
        .as_bytes();
    if given.is_empty() || !bool::from(given.ct_eq(configured)) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_admin_token",
            "an admin bearer token is required",
        ));
    }
    Ok(())
}

#[derive(serde::Serialize)]
pub struct SettingsView {
    room: String,
    settings: RoomSettings,
    /// The rules in force now, for this node's viewer count.
    effective: Effective,
}

#[derive(serde::Serialize)]
struct Effective {
    budget_per_s: u32,
    high_budget_per_s: u32,
    low_budget_per_s: u32,
    high_max_lag_ms: u64,
    online: usize,
}

fn view(s: &AppState, room: String) -> SettingsView {
    let online = s.hubs.online(&room);
    let rules = s.rooms.rules(&room, online);
    SettingsView {
        settings: (*s.rooms.get(&room)).clone(),
        effective: Effective {
            budget_per_s: rules.budget_per_s,
            high_budget_per_s: rules.high_budget(),
            low_budget_per_s: rules.low_budget(),
            high_max_lag_ms: rules.max_lag_ms,
            online,
        },
        room,
    }
}

pub async fn get_settings(
    State(s): State<AppState>,
    RoomPath(room): RoomPath,
    headers: HeaderMap,
) -> Result<Json<SettingsView>, ApiError> {
    require_admin(&s, &headers)?;
    Ok(Json(view(&s, room)))
}

/// Partial update; applies to the next tick and the next post, no restart.
pub async fn patch_settings(
    State(s): State<AppState>,
    RoomPath(room): RoomPath,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<SettingsView>, ApiError> {
    require_admin(&s, &headers)?;
    let patch: RoomSettingsPatch = parse_json(&body)?;
    patch
        .validate()
        .map_err(|m| ApiError::bad_request("invalid_settings", m))?;
    s.rooms.update(&room, patch);
    tracing::info!(room, "room settings updated");
    Ok(Json(view(&s, room)))
}
