//! Room settings (admin bearer token). Off — 404 — unless a token is set.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;

use super::extract::{parse_json, RawBody, RoomPath};
use super::guard::require_admin;
use super::routes::Routes;
use super::state::AdminState;
use crate::error::ApiError;
use crate::rooms::{patch_fields, RoomSettings, RoomSettingsPatch, RoomState};
use crate::store::control::Notice;

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

fn view(s: &AdminState, room: String, state: &RoomState) -> SettingsView {
    let online = s.hubs.online(&room);
    let rules = s.rooms.rules(&room, online);
    SettingsView {
        settings: (*state.settings).clone(),
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
    let state = s.control.room(&room).await.map_err(unavailable)?;
    Ok(Json(view(&s, room, &state)))
}

fn unavailable(e: crate::store::StoreError) -> ApiError {
    tracing::warn!(error = %e, "room settings: control state unavailable");
    ApiError::store_unavailable()
}

/// Partial update, stored as cluster state; every node applies it to its
/// next tick and next post (within about a second), no restart.
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
    // The patch parsed, so the body is an object of known fields.
    let fields: serde_json::Map<String, serde_json::Value> = parse_json(&body)?;
    let change = patch_fields(&fields);
    s.control
        .plane()
        .change_settings(&room, &change)
        .await
        .map_err(unavailable)?;
    s.control
        .publish(Notice::Settings { room: room.clone() })
        .await
        .map_err(unavailable)?;
    let state = s.control.room(&room).await.map_err(unavailable)?;
    tracing::info!(room, by = "operator", set = ?change.set.iter().map(|(k, _)| k).collect::<Vec<_>>(), cleared = ?change.clear, "room settings updated");
    Ok(Json(view(&s, room, &state)))
}
