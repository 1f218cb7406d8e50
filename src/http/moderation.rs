//! Mutes and bans (`docs/architecture.md`, "Control plane"): the admin token
//! or a moderator token for the room; global mutes are for operators.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::extract::{parse_json, RawBody};
use super::guard::require_moderator;
use super::routes::Routes;
use super::state::ModerationState;
use crate::auth::moderator::{valid_subject, Actor};
use crate::error::ApiError;
use crate::message::valid_room;
use crate::moderation::mutes::MAX_DURATION_S;
use crate::store::control::MuteScope;
use crate::store::StoreError;

pub(super) fn routes() -> Routes {
    let room_mute = "/v1/admin/rooms/{room}/mutes/{user}";
    let global_mute = "/v1/admin/mutes/{user}";
    Routes::new()
        .get("/v1/admin/rooms/{room}/mutes", list_room)
        .put(room_mute, mute_in_room)
        .delete(room_mute, unmute_in_room)
        .put("/v1/admin/rooms/{room}/bans/{user}", ban_in_room)
        .get("/v1/admin/mutes", list_global)
        .put(global_mute, mute_global)
        .delete(global_mute, unmute_global)
}

/// `{"duration_s": 1..=MAX}`, or 400 `invalid_duration` / `invalid_body`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DurationBody {
    duration_s: serde_json::Number,
}

fn duration_s(body: &[u8]) -> Result<u64, ApiError> {
    let body: DurationBody = parse_json(body)?;
    match body.duration_s.as_u64() {
        Some(d) if (1..=MAX_DURATION_S).contains(&d) => Ok(d),
        _ => Err(ApiError::bad_request(
            "invalid_duration",
            format!("duration_s must be a whole number of seconds, 1 to {MAX_DURATION_S}"),
        )),
    }
}

fn check_room(room: &str) -> Result<(), ApiError> {
    if valid_room(room) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "bad_room",
            "room must be 1-64 characters of A-Z a-z 0-9 _ -",
        ))
    }
}

fn check_user(user: &str) -> Result<(), ApiError> {
    if valid_subject(user) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "bad_user",
            "user must be 1-64 bytes without control characters",
        ))
    }
}

fn unavailable(e: StoreError) -> ApiError {
    ApiError::store_failed("moderation: control state", None, &e)
}

/// Validates the path and the token: the actor and the mute's scope.
fn authorize(
    s: &ModerationState,
    headers: &HeaderMap,
    room: Option<&str>,
    user: Option<&str>,
) -> Result<(Actor, MuteScope), ApiError> {
    if let Some(room) = room {
        check_room(room)?;
    }
    let actor = require_moderator(&s.config.auth.admin_token, &s.moderators, headers, room)?;
    if let Some(user) = user {
        check_user(user)?;
    }
    let scope = room.map_or(MuteScope::Global, |r| MuteScope::Room(r.to_string()));
    Ok((actor, scope))
}

async fn list(s: &ModerationState, scope: &MuteScope) -> Result<Json<Value>, ApiError> {
    let mutes = s.mutes.list(scope).await.map_err(unavailable)?;
    Ok(Json(match scope {
        MuteScope::Room(room) => json!({"room": room, "mutes": mutes}),
        MuteScope::Global => json!({"mutes": mutes}),
    }))
}

async fn mute(
    s: &ModerationState,
    scope: &MuteScope,
    user: &str,
    actor: &Actor,
    body: &[u8],
) -> Result<Json<Value>, ApiError> {
    let duration = duration_s(body)?;
    let muted = s
        .mutes
        .mute(scope, user, duration, actor)
        .await
        .map_err(unavailable)?;
    Ok(Json(json!({ "mute": muted })))
}

async fn unmute(
    s: &ModerationState,
    scope: &MuteScope,
    user: &str,
    actor: &Actor,
) -> Result<Json<Value>, ApiError> {
    if s.mutes
        .unmute(scope, user, actor)
        .await
        .map_err(unavailable)?
    {
        Ok(Json(json!({"unmuted": user, "by": actor.to_string()})))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_muted",
            format!("{user} is not muted here"),
        ))
    }
}

async fn list_room(
    State(s): State<ModerationState>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (_, scope) = authorize(&s, &headers, Some(&room), None)?;
    list(&s, &scope).await
}

async fn mute_in_room(
    State(s): State<ModerationState>,
    Path((room, user)): Path<(String, String)>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    let (actor, scope) = authorize(&s, &headers, Some(&room), Some(&user))?;
    mute(&s, &scope, &user, &actor, &body).await
}

async fn unmute_in_room(
    State(s): State<ModerationState>,
    Path((room, user)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (actor, scope) = authorize(&s, &headers, Some(&room), Some(&user))?;
    unmute(&s, &scope, &user, &actor).await
}

async fn ban_in_room(
    State(s): State<ModerationState>,
    Path((room, user)): Path<(String, String)>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    let (actor, _) = authorize(&s, &headers, Some(&room), Some(&user))?;
    let duration = duration_s(&body)?;
    let banned = s
        .mutes
        .ban(&room, &user, duration, &actor)
        .await
        .map_err(unavailable)?;
    Ok(Json(json!({ "ban": banned })))
}

async fn list_global(
    State(s): State<ModerationState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (_, scope) = authorize(&s, &headers, None, None)?;
    list(&s, &scope).await
}

async fn mute_global(
    State(s): State<ModerationState>,
    Path(user): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    let (actor, scope) = authorize(&s, &headers, None, Some(&user))?;
    mute(&s, &scope, &user, &actor, &body).await
}

async fn unmute_global(
    State(s): State<ModerationState>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (actor, scope) = authorize(&s, &headers, None, Some(&user))?;
    unmute(&s, &scope, &user, &actor).await
}
