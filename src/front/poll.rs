//! Long-poll viewers: answer at once when there is something after the
//! cursor, else hold until the hub moves or `wait_ms` passes.

use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::ConnGuard;
use crate::api::{ApiQuery, RoomPath};
use crate::app::AppState;
use crate::error::ApiError;
use crate::fanout::frame::encode_batch;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct PollQuery {
    pub cursor: Option<u64>,
    pub epoch: Option<String>,
    pub wait_ms: Option<u64>,
}

pub async fn handler(
    State(s): State<AppState>,
    RoomPath(room): RoomPath,
    ApiQuery(q): ApiQuery<PollQuery>,
) -> Result<Response, ApiError> {
    let cfg = &s.config.poll;
    let wait = Duration::from_millis(
        q.wait_ms
            .unwrap_or(cfg.default_wait_ms)
            .min(cfg.max_wait_ms),
    );
    let deadline = tokio::time::Instant::now() + wait;
    let mut waiter = None;
    for _ in 0..10 {
        waiter = s.hubs.hub(&room).await?.poll_waiter();
        if waiter.is_some() {
            break;
        }
    }
    let mut waiter = waiter
        .ok_or_else(|| ApiError::unavailable("hub_unavailable", "the room is restarting; retry"))?;
    let _conn = ConnGuard::new(&s.metrics.connections, "poll");
    let mut reset = false;
    let mut cursor = q.cursor.unwrap_or(waiter.cursor);
    loop {
        let read = s
            .store
            .read_range(&room, cursor, u64::MAX, cfg.max_messages)
            .await
            .map_err(|e| {
                tracing::warn!(room, error = %e, "poll read failed");
                ApiError::unavailable("store_unavailable", "the live store is unavailable")
            })?;
        let epoch_differs = q
            .epoch
            .as_deref()
            .is_some_and(|e| !e.is_empty() && e != read.epoch);
        if epoch_differs && !reset {
            // The client's cursor belongs to a lost stream: start this one over.
            reset = true;
            cursor = 0;
            continue;
        }
        if cursor > read.head {
            cursor = read.head; // a cursor from the future is clamped, not trusted
        }
        let expired = tokio::time::Instant::now() >= deadline || s.closing.is_cancelled();
        if !read.messages.is_empty() || read.cursor > cursor || reset || expired {
            s.metrics
                .delivered
                .with_label_values(&["poll"])
                .inc_by(read.messages.len() as u64);
            let body = encode_batch(
                &room,
                &read.epoch,
                read.cursor.max(cursor),
                &read.messages,
                reset,
            );
            return Ok((
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                body,
            )
                .into_response());
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = waiter.changed.changed() => {}
            _ = s.closing.cancelled() => {}
        }
    }
}
