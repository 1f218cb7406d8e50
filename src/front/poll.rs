//! Long-poll viewers: answer at once when there is something after the
//! cursor, else hold until the hub moves or `wait_ms` passes. An answer
//! carries `"retracted": [ids]` while the room has recent retractions
//! (`fanout::retractions`: the last minute's on this node), and a
//! retraction answers a held poll. Every answer carries `"online": n`, the
//! room's viewers over the cluster (as streams get `online` frames).
//!
//! A big room's answer that is exactly its newest frame is encoded once per
//! (frame, online count) and shared by every poll that gets it (`Hub::
//! newest_answer`), gzipped once for those that accept gzip (`poll.gzip`,
//! at least `poll.gzip_min_bytes`). Other answers are made per request and
//! go plain. Every answer says `Vary: Accept-Encoding` while `poll.gzip` is on.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ConnGuard, Viewers};
use crate::error::ApiError;
use crate::fanout::frame::{encode_batch, with_online, with_retracted};
use crate::fanout::ration::ration_catch_up;
use crate::fanout::Hub;

/// Long-poll answers carry no hello: the protocol version rides in a header.
const PROTOCOL_HEADER: header::HeaderName = header::HeaderName::from_static("danmaku-protocol");
const PROTOCOL: &str = "1";
const _: () = assert!(
    crate::fanout::feed::PROTOCOL_VERSION == 1,
    "PROTOCOL follows it"
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct PollQuery {
    pub cursor: Option<u64>,
    pub epoch: Option<String>,
    pub wait_ms: Option<u64>,
    /// Viewer token (private rooms), as `Authorization: Bearer` may carry it.
    pub token: Option<String>,
}

/// Answers one long-poll of `room` (the caller holds the viewer's
/// per-address slot for as long as this runs); `gzip`: the client accepts
/// gzip and `poll.gzip` is on.
pub async fn run(s: &Viewers, room: &str, q: PollQuery, gzip: bool) -> Result<Response, ApiError> {
    let cfg = &s.config.poll;
    let wait = Duration::from_millis(
        q.wait_ms
            .unwrap_or(cfg.default_wait_ms)
            .min(cfg.max_wait_ms),
    );
    let deadline = tokio::time::Instant::now() + wait;
    let mut waiter = None;
    for _ in 0..10 {
        waiter = s.hubs.hub(room).await?.poll_waiter();
        if waiter.is_some() {
            break;
        }
    }
    let mut waiter = waiter
        .ok_or_else(|| ApiError::unavailable("hub_unavailable", "the room is restarting; retry"))?;
    let _conn = ConnGuard::new(&s.metrics.connections, "poll");
    let hub = waiter.hub().clone();
    let mut reset = false;
    let mut cursor = q.cursor.unwrap_or(waiter.cursor);
    // A retraction while the poll is held answers it (with `retracted`).
    let mark = s.hubs.retraction_mark(room);
    loop {
        let expired = tokio::time::Instant::now() >= deadline
            || s.closing.is_cancelled()
            || s.hubs.retraction_mark(room) != mark;
        let answer = if hub.is_big() {
            from_cache(s, &hub, room, q.epoch.as_deref(), cursor, expired, gzip)
        } else {
            let a = read_through(s, &hub, room, q.epoch.as_deref(), cursor, reset, expired).await?;
            if let Answer::Restart = a {
                // The client's cursor belongs to a lost stream: start this one over.
                reset = true;
                cursor = 0;
                continue;
            }
            a
        };
        if let Answer::Respond(body, count, gzipped) = answer {
            s.metrics
                .delivered
                .with_label_values(&["poll"])
                .inc_by(count as u64);
            let mut res = (
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::CACHE_CONTROL, "no-store"),
                    (PROTOCOL_HEADER, PROTOCOL),
                ],
                body,
            )
                .into_response();
            let h = res.headers_mut();
            if s.config.poll.gzip {
                h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
            }
            if gzipped {
                h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            return Ok(res);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = waiter.changed.changed() => {}
            _ = s.closing.cancelled() => {}
        }
    }
}

enum Answer {
    /// The body, its messages, and whether it is gzipped.
    Respond(Body, usize, bool),
    Wait,
    Restart,
}

/// Small rooms read through to the store (wide window), rationed by the
/// room's rules like every other transport.
async fn read_through(
    s: &Viewers,
    hub: &Hub,
    room: &str,
    epoch: Option<&str>,
    cursor: u64,
    reset: bool,
    expired: bool,
) -> Result<Answer, ApiError> {
    s.metrics.store_reads.with_label_values(&["poll"]).inc();
    let read = s
        .store
        .read_range(room, cursor, u64::MAX, s.config.poll.max_messages)
        .await
        .map_err(|e| ApiError::store_failed("poll read", Some(room), &e))?;
    if !reset && epoch.is_some_and(|e| !e.is_empty() && e != read.epoch) {
        return Ok(Answer::Restart);
    }
    let cursor = cursor.min(read.head); // a cursor from the future is clamped
    if read.messages.is_empty() && read.cursor <= cursor && !reset && !expired {
        return Ok(Answer::Wait);
    }
    let rules = s.rooms.rules(room, hub.cluster_online());
    let messages = ration_catch_up(&rules, read.messages);
    let body = encode_batch(room, &read.epoch, read.cursor.max(cursor), &messages, reset);
    let body = with_retracted(body, &s.hubs.recent_retractions(room));
    let body = with_online(body, hub.cluster_online());
    Ok(Answer::Respond(Body::from(body), messages.len(), false))
}

/// Big rooms answer from this node's cache of recent frames (narrow window,
/// fewer messages), never from the store: one frame is sent as its bytes,
/// several are encoded straight from their shared messages.
fn from_cache(
    s: &Viewers,
    hub: &Hub,
    room: &str,
    epoch: Option<&str>,
    cursor: u64,
    expired: bool,
    gzip: bool,
) -> Answer {
    let retracted = s.hubs.recent_retractions(room);
    let limit = s.config.fanout.big_poll_max_messages;
    let read = hub.cached_frames_after(cursor, limit);
    let reset = epoch.is_some_and(|e| !e.is_empty() && e != &*read.epoch);
    if reset {
        // Everything cached belongs to the new stream.
        let read = hub.cached_frames_after(0, limit);
        let body = with_online(read.encode(room, true), hub.cluster_online());
        return Answer::Respond(Body::from(body), read.message_count(), false);
    }
    if let Some(frame) = read.single().filter(|_| retracted.is_empty()) {
        s.metrics.cache_reads.with_label_values(&["hit"]).inc();
        // Encoded (and gzipped) once for every poll that gets this frame.
        let answer = hub.newest_answer(frame);
        let min_bytes = s.config.poll.gzip_min_bytes;
        let gzipped = gzip
            .then(|| answer.gzip.get(&answer.json, min_bytes, &s.metrics))
            .flatten();
        return match gzipped {
            Some(gz) => Answer::Respond(Body::from(gz.clone()), answer.count(), true),
            None => Answer::Respond(Body::from(answer.json.clone()), answer.count(), false),
        };
    }
    let count = read.message_count();
    if count == 0 && !expired {
        return Answer::Wait;
    }
    let result = if read.gap { "gap" } else { "hit" };
    s.metrics.cache_reads.with_label_values(&[result]).inc();
    let body = with_retracted(read.encode(room, false), &retracted);
    let body = with_online(body, hub.cluster_online());
    Answer::Respond(Body::from(body), count, false)
}
