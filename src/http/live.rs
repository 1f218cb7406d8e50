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
use crate::replay::LiveStart;

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

/// `POST /v1/admin/rooms/{room}/live/end`: ends the live; the archiver copies it.
async fn live_end(
    State(s): State<ArchiveState>,
    RoomPath(room): RoomPath,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&s.config.auth.admin_token, &headers)?;
    match s.replay.end_live(&room, &s.archive_wake).await? {
        Some(live) => Ok(Json(serde_json::json!({"live": live.view()}))),
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_live",
            "the room has no live to end",
        )),
    }
}
