//! The door of every watch route (WebSocket, SSE, long-poll, snapshot,
//! replay): the room's `private` setting, read from the cluster state
//! before anything is served, and the viewer token the request carries,
//! judged by `auth::access`.

use std::time::Duration;

use axum::http::HeaderMap;

use super::extract::header_str;
use crate::auth::access::watch_access;
use crate::auth::{AuthFailure, Authenticator, ViewerClaims};
use crate::control::Control;
use crate::error::ApiError;

/// How long a watch request waits for its room's settings to load (once per
/// room and node; kept current by notices afterwards).
const ROOM_LOAD_WAIT: Duration = Duration::from_secs(2);

/// A watcher let in.
pub(super) struct Admitted {
    /// The room is private: the session ends when the token does.
    pub private: bool,
    /// What the request's token said (`None`: no token).
    pub token: Option<Result<ViewerClaims, AuthFailure>>,
}

impl Admitted {
    /// The token's claims if it was given and valid.
    pub fn viewer(&self) -> Option<&ViewerClaims> {
        self.token.as_ref().and_then(|t| t.as_ref().ok())
    }
}

/// The token of a watch request: `?token=` (bare, for browsers' WebSocket
/// and EventSource) or `Authorization: Bearer`.
pub(super) fn presented_token(
    auth: &Authenticator,
    query_token: Option<&str>,
    headers: &HeaderMap,
) -> Option<Result<ViewerClaims, AuthFailure>> {
    match (query_token, header_str(headers, "authorization")) {
        (Some(token), _) => Some(auth.viewer_token(token)),
        (None, Some(header)) => Some(auth.viewer_from_header(Some(header))),
        (None, None) => None,
    }
}

/// Lets a watcher of `room` in, or refuses it (401/403). The room's
/// settings must be known: if the control plane cannot say whether the
/// room is private, the request is refused (503), never served as public.
pub(super) async fn admit(
    control: &Control,
    auth: &Authenticator,
    room: &str,
    query_token: Option<&str>,
    headers: &HeaderMap,
) -> Result<Admitted, ApiError> {
    let state = match tokio::time::timeout(ROOM_LOAD_WAIT, control.room(room)).await {
        Ok(Ok(state)) => state,
        Ok(Err(e)) => {
            return Err(ApiError::store_failed(
                "room settings (watch refused)",
                Some(room),
                &e,
            ))
        }
        Err(_) => return Err(ApiError::store_unavailable()),
    };
    let private = state.settings.private;
    let token = presented_token(auth, query_token, headers);
    watch_access(room, private, token.as_ref())?;
    Ok(Admitted { private, token })
}
