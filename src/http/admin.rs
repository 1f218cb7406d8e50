//! Room settings (admin bearer token). Off — 404 — unless a token is set.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;

use super::extract::{parse_json, RawBody, RoomPath};
use super::guard::require_admin;
use super::routes::Routes;
use super::state::AdminState;
use crate::error::ApiError;
use crate::rooms::{RoomSettings, RoomSettingsPatch};

pub(super) fn routes() -> Routes {
    let settings = "/v1/admin/rooms/{room}/settings";
    Routes::new()
        .get(settings, get_settings)
        .put(settings, patch_settings)
        .patch(settings, patch_settings)
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

fn view(s: &AdminState, room: String) -> SettingsView {
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

async fn get_settings(
    State(s): State<AdminState>,
    RoomPath(room): RoomPath,
    headers: HeaderMap,
) -> Result<Json<SettingsView>, ApiError> {
    require_admin(&s.config.auth.admin_token, &headers)?;
    Ok(Json(view(&s, room)))
}

/// Partial update; applies to the next tick and the next post, no restart.
async fn patch_settings(
    State(s): State<AdminState>,
    RoomPath(room): RoomPath,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<SettingsView>, ApiError> {
    require_admin(&s.config.auth.admin_token, &headers)?;
    let patch: RoomSettingsPatch = parse_json(&body)?;
    patch
        .validate()
        .map_err(|m| ApiError::bad_request("invalid_settings", m))?;
    s.rooms.update(&room, patch);
    tracing::info!(room, "room settings updated");
    Ok(Json(view(&s, room)))
}
