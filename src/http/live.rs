//! Operators start and end a room's live (admin bearer token).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::extract::RoomPath;
use super::guard::require_admin;
use super::routes::Routes;
use super::state::ArchiveState;
use crate::error::ApiError;
use crate::replay::{LiveEnding, LiveStart};

pub(super) fn routes() -> Routes {
    Routes::new()
        .post("/v1/admin/rooms/{room}/live/start", live_start)
        .post("/v1/admin/rooms/{room}/live/end", live_end)
}

/// `POST /v1/admin/rooms/{room}/live/start`: 201, or 409 with the live
/// the room already has.
async fn live_start(
    State(s): State<ArchiveState>,
    RoomPath(room): RoomPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&s.config.auth.admin_token, &headers)?;
    match s.replay.start_live(&room).await? {
        LiveStart::Started(live) => Ok((
            StatusCode::CREATED,
            Json(serde_json::json!({"live": live.view()})),
        )
            .into_response()),
        LiveStart::AlreadyLive(live) => {
            let mut body = ApiError::new(
                StatusCode::CONFLICT,
                "live_already_started",
                "the room already has a live; end it first",
            )
            .body();
            body["live"] = live.view();
            Ok((StatusCode::CONFLICT, Json(body)).into_response())
        }
    }
}

/// `POST /v1/admin/rooms/{room}/live/end`: ends the live; 200 once
/// everything acknowledged before the end is archived, or 202
/// `{"status":"ending"}` after `archive.end_wait_ms` (ending again is allowed
/// until it is archived).
async fn live_end(
    State(s): State<ArchiveState>,
    RoomPath(room): RoomPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&s.config.auth.admin_token, &headers)?;
    match s.replay.end_live(&room, &*s.bus).await? {
        Some(LiveEnding::Archived(live)) => Ok((
            StatusCode::OK,
            Json(serde_json::json!({"status": "archived", "live": live.view()})),
        )
            .into_response()),
        Some(LiveEnding::Ending(live)) => Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"status": "ending", "live": live.view()})),
        )
            .into_response()),
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_live",
            "the room has no live to end",
        )),
    }
}
