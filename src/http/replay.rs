//! Viewers' reads of archived lives: the list of a room's lives and replay
//! windows (read through `crate::replay`).

use std::sync::Arc;

use axum::extract::{FromRef, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::extract::{if_none_match, ApiQuery, RoomPath};
use super::routes::Routes;
use super::state::{AppState, ArchiveState};
use super::watch_gate::admit;
use crate::archive::Live;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::control::Control;
use crate::error::ApiError;
use crate::replay::{archive_error, Replay};
use crate::rooms::RoomDirectory;

pub(super) fn routes() -> Routes {
    Routes::new()
        .get("/v1/rooms/{room}/lives", lives)
        .get("/v1/rooms/{room}/replay", replay)
}

/// `GET /v1/rooms/{room}/lives`: newest first (at most 100).
async fn lives(
    State(s): State<ArchiveState>,
    RoomPath(room): RoomPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admit(&s.control, &s.auth, &room, None, &headers).await?;
    let lives = s
        .replay
        .archive()
        .lives(&room, 100)
        .await
        .map_err(archive_error)?;
    let lives: Vec<_> = lives.iter().map(Live::view).collect();
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(serde_json::json!({"room": room, "lives": lives})),
    )
        .into_response())
}

/// Replay reads: the archive side, and the room's rules for density.
#[derive(Clone)]
struct ReplayState {
    config: Arc<Config>,
    replay: Arc<Replay>,
    rooms: Arc<RoomDirectory>,
    control: Arc<Control>,
    auth: Arc<Authenticator>,
}

impl FromRef<AppState> for ReplayState {
    fn from_ref(s: &AppState) -> ReplayState {
        ReplayState {
            config: s.config.clone(),
            replay: s.replay.clone(),
            rooms: s.rooms.clone(),
            control: s.control.clone(),
            auth: s.auth.clone(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayQuery {
    #[serde(default)]
    live: Option<String>,
    #[serde(default)]
    from_ms: Option<u64>,
    #[serde(default)]
    to_ms: Option<u64>,
    /// Viewer token (private rooms), as `Authorization: Bearer` may carry it.
    #[serde(default)]
    token: Option<String>,
}

/// `GET /v1/rooms/{room}/replay?live=ID&from_ms=A&to_ms=B`: the archived
/// messages with `A <= offset_ms < B`, by (offset_ms, seq). Default live: the
/// room's latest archived one; default window: `[0, replay_window_ms)` from A.
/// The body never changes once archived: strong ETag, 304 on `If-None-Match`.
/// Density: each viewer gets what the room's per-viewer budget allows (the
/// room's `budget_per_s` if set, else the live's budget for the smallest
/// rooms, `ration.budget_tiers`): the same on every front, whoever watches.
async fn replay(
    State(s): State<ReplayState>,
    RoomPath(room): RoomPath,
    ApiQuery(q): ApiQuery<ReplayQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // The room's settings, loaded if this node has not yet (once; kept
    // current by the control plane's notices): whether the room is private
    // (then its token holders alone read it, never through a shared
    // cache), and the rules every front rations by. Unreachable: 503, as
    // an unknown `private` is not served as public.
    let admitted = admit(&s.control, &s.auth, &room, q.token.as_deref(), &headers).await?;
    let rules = s.rooms.rules(&room, 0);
    let body = s
        .replay
        .read(&room, q.live.as_deref(), q.from_ms, q.to_ms, &rules)
        .await?;
    let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&body))[..32]);
    let cache_control = if admitted.private {
        HeaderValue::from_static("private, no-store")
    } else {
        HeaderValue::from_str(&s.config.archive.replay_cache_control)
            .unwrap_or(HeaderValue::from_static("public, max-age=3600"))
    };
    let etag_value = HeaderValue::from_str(&etag).expect("hex etag");
    if if_none_match(&headers, &etag) {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, etag_value),
                (header::CACHE_CONTROL, cache_control),
            ],
        )
            .into_response());
    }
    Ok((
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, etag_value),
            (header::CACHE_CONTROL, cache_control),
        ],
        body,
    )
        .into_response())
}
