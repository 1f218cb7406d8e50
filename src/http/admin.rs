//! Room settings and archived lives' deletion (admin bearer token). Off —
//! 404 — unless a token is set.

use std::sync::Arc;

use axum::extract::{FromRef, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::extract::{parse_json, RawBody, RoomPath};
use super::guard::require_admin;
use super::routes::Routes;
use super::state::{AdminState, AppState};
use crate::archive::Live;
use crate::config::Config;
use crate::control::Control;
use crate::error::ApiError;
use crate::replay::{archive_error, LiveDeletion, Replay};
use crate::rooms::{patch_fields, RoomSettings, RoomSettingsPatch, RoomState};
use crate::store::control::Notice;

pub(super) fn routes() -> Routes {
    let settings = "/v1/admin/rooms/{room}/settings";
    Routes::new()
        .get(settings, get_settings)
        .put(settings, patch_settings)
        .patch(settings, patch_settings)
        .delete("/v1/admin/lives/{live_id}", delete_live)
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
    ApiError::store_failed("room settings: control state", None, &e)
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

/// Deleting lives: the archive, and the control plane to tell every node.
#[derive(Clone)]
struct LivesAdminState {
    config: Arc<Config>,
    replay: Arc<Replay>,
    control: Arc<Control>,
}

impl FromRef<AppState> for LivesAdminState {
    fn from_ref(s: &AppState) -> LivesAdminState {
        LivesAdminState {
            config: s.config.clone(),
            replay: s.replay.clone(),
            control: s.control.clone(),
        }
    }
}

/// `DELETE /v1/admin/lives/{live_id}`: deletes an ended, archived live's
/// messages and the live, and its replay caches on every node. 200 `{"live",
/// "deleted": {"messages"}}`; 404 `unknown_live`; 409 `live_open` (end it
/// first) or `live_not_archived` (its archive is still being written), with
/// the live.
async fn delete_live(
    State(s): State<LivesAdminState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&s.config.auth.admin_token, &headers)?;
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_request(
            "bad_live",
            "a live id is 1-64 visible ASCII characters",
        ));
    }
    let conflict = |code, message: &str, live: &Live, retry: bool| {
        let e = ApiError::new(StatusCode::CONFLICT, code, message);
        let mut body = e.body();
        body["live"] = live.view();
        let mut res = (StatusCode::CONFLICT, Json(body)).into_response();
        if retry {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(1));
        }
        Ok(res)
    };
    match s.replay.delete_live(&id).await.map_err(archive_error)? {
        LiveDeletion::Deleted { live, messages } => {
            crate::replay::announce(&s.control, &live).await;
            Ok(Json(serde_json::json!({
                "live": live.view(),
                "deleted": {"messages": messages},
            }))
            .into_response())
        }
        LiveDeletion::Unknown => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_live",
            "no such live",
        )),
        LiveDeletion::Open(live) => conflict(
            "live_open",
            "the live is still on; end it first",
            &live,
            false,
        ),
        LiveDeletion::NotArchived(live) => conflict(
            "live_not_archived",
            "the live's archive is still being written; try again shortly",
            &live,
            true,
        ),
    }
}
