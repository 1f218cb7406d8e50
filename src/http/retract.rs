//! `DELETE /v1/admin/rooms/{room}/messages/{id}` (DESIGN §4): retracts a
//! message (`crate::moderation::retract`). Admin bearer token for now.
//!
//! `200 {"room","id","seq"}`; a malformed room → 400 `bad_room`, a malformed
//! id → 400 `invalid_id`, an id neither the live store nor the archive knows
//! in this room → 404 `unknown_message` (nothing changed). Retracting a
//! message again → `200` with the same answer: the operation is idempotent,
//! so a retry after a timeout or a 503 is safe and completes the work.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;

use super::guard::require_admin;
use super::routes::Routes;
use super::state::AppState;
use crate::error::ApiError;
use crate::message::valid_room;
use crate::moderation::retract::{RetractError, Retracted, Retractor};

pub(super) fn routes() -> Routes {
    Routes::new().delete("/v1/admin/rooms/{room}/messages/{id}", retract)
}

async fn retract(
    State(s): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Json<Retracted>, ApiError> {
    require_admin(&s.config.auth.admin_token, &headers)?;
    // A segment that does not decode (bad percent-encoding, not UTF-8) is
    // no message id.
    let Ok(Path((room, id))) = path else {
        return Err(RetractError::InvalidId.into());
    };
    if !valid_room(&room) {
        return Err(ApiError::bad_request(
            "bad_room",
            "room must be 1-64 characters of A-Z a-z 0-9 _ -",
        ));
    }
    let retractor = Retractor::new(
        s.store.clone(),
        s.hubs.clone(),
        s.replay.clone(),
        s.metrics.clone(),
    );
    // The actor is "operator" while the admin token is the only way in.
    Ok(Json(retractor.retract(&room, &id, "operator").await?))
}
