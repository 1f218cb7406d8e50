//! Viewers: one tokio task per connection, reading WebSocket frames, SSE
//! events or long-poll answers in place and checking every seq.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::churn::{resumable, Churn, WsEnd};
use crate::net::{Body, Conn, Target, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};
use crate::stats::{now_us, parse_u64, scan_batch, Counters, Hist, SeqTrack};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Ws,
    Sse,
    Poll,
}

/// How long-poll clients choose their cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PollMode {
    /// Follow the stream: ask after the last cursor (waits for the next frame).
    Follow,
    /// Ask again from one frame behind the newest: answered at once from the
    /// big room's cache (mostly its latest frame's shared bytes).
    Hammer,
}

/// What every task shares.
pub struct Ctx {
    pub target: Target,
    pub counters: Counters,
    /// Publisher stamp → viewer receive, µs (only while `measuring`).
    pub latency: Hist,
    /// Publish request round trip, µs (only while `measuring`).
    pub publish_rtt: Hist,
    /// Long-poll or snapshot request → answer, µs (only while `measuring`).
    pub poll_rtt: Hist,
    pub measuring: AtomicBool,
    /// Record latency for every n-th viewer only (1 = all).
    pub latency_every: usize,
    pub connect_limit: Semaphore,
    pub connect_timeout: Duration,
    /// Viewers stop when cancelled.
    pub stop_viewers: CancellationToken,
    /// Initial read buffer per connection.
    pub read_buf: usize,
    /// WebSocket viewers negotiate permessage-deflate.
    pub compress: bool,
    /// Slow readers and resumes among the WebSocket viewers.
    pub churn: Churn,
}

/// One viewer's outcome.
#[derive(Debug, Default)]
pub struct ViewerResult {
    pub room: usize,
    pub connected: bool,
    pub connect_error: Option<String>,
    /// Why the connection ended before the run did (close code, EOF…).
    pub ended: Option<String>,
    pub track: SeqTrack,
    pub frames: u64,
    pub resets: u64,
    /// Long-poll answers that were not 200; snapshot answers neither 200 nor 304.
    pub poll_errors: u64,
    /// The stream's epoch (from the hello) and the cursor of the last frame:
    /// where a WebSocket viewer resumes.
    pub epoch: Option<String>,
    pub cursor: u64,
    /// A slow reader (`--slow-viewers`): its cuts are the rules at work.
    pub slow: bool,
    /// Times it left and resumed by cursor (`--resume-every`).
    pub resumes: u64,
    /// Times the server cut it and it resumed by cursor.
    pub cuts: u64,
    /// Reconnected: the next hello continues the stream unless it says `reset`.
    pub expect_hello: bool,
}

pub fn room_path(room: &str, what: &str) -> String {
    format!("/v1/rooms/{room}/{what}")
}

/// Handles one batch/hello JSON text; returns false for a close notice.
#[inline]
fn on_json(
    ctx: &Ctx,
    r: &mut ViewerResult,
    json: &[u8],
    seqs: &mut Vec<u64>,
    sample: bool,
    check_seqs: bool,
) -> bool {
    if json.starts_with(b"{\"type\":\"batch\"") {
        seqs.clear();
        let lat = (sample && ctx.measuring.load(Relaxed)).then(|| (&ctx.latency, now_us()));
        let s = scan_batch(json, seqs, lat);
        if check_seqs {
            r.track.batch(seqs);
        }
        if let Some(c) = s.cursor {
            r.cursor = c;
        }
        r.frames += 1;
        ctx.counters.frames.fetch_add(1, Relaxed);
        ctx.counters.deliveries.fetch_add(s.messages, Relaxed);
    } else if json.starts_with(b"{\"type\":\"hello\"") {
        let cursor = memchr::memmem::find(json, b"\"cursor\":")
            .and_then(|p| parse_u64(&json[p + 9..]))
            .map(|(v, _)| v);
        r.epoch = hello_epoch(json).or(r.epoch.take());
        if let Some(c) = cursor {
            let resumed = std::mem::take(&mut r.expect_hello);
            let reset = memchr::memmem::find(json, b"\"reset\":true").is_some();
            if resumed && !reset {
                // A resume by cursor: the stream goes on where it was.
            } else if r.track.start.is_some() {
                // A second hello: the stream was replaced (reset); start over.
                r.resets += 1;
                r.track = SeqTrack::default();
            }
            r.track.join(c);
            r.cursor = c;
        }
    } else if json.starts_with(b"{\"type\":\"close\"") {
        r.ended = Some(String::from_utf8_lossy(json).into_owned());
        return false;
    }
    true
}

/// The `epoch` string of a hello.
fn hello_epoch(json: &[u8]) -> Option<String> {
    let p = memchr::memmem::find(json, b"\"epoch\":\"")? + 9;
    let len = memchr::memchr(b'"', &json[p..])?;
    Some(String::from_utf8_lossy(&json[p..p + len]).into_owned())
}

/// How often a stalled slow viewer checks whether the window ended.
const STALL_STEP: Duration = Duration::from_millis(100);

/// Opens a WebSocket to `room`, resuming at `(epoch, cursor)` if given.
async fn open_ws(
    ctx: &Ctx,
    i: usize,
    room: &str,
    resume: Option<(&str, u64)>,
) -> std::io::Result<Conn> {
    let rcvbuf = ctx.churn.rcvbuf(i);
    let mut conn = Conn::connect_with_rcvbuf(&ctx.target, i, ctx.read_buf, rcvbuf).await?;
    let mut path = room_path(room, "ws");
    if let Some((epoch, cursor)) = resume {
        path.push_str(&format!("?epoch={epoch}&cursor={cursor}"));
    }
    conn.ws_handshake(&ctx.target.host, &path, ctx.compress)
        .await?;
    Ok(conn)
}

async fn open_sse(ctx: &Ctx, i: usize, room: &str) -> std::io::Result<Conn> {
    let mut conn = Conn::connect(&ctx.target, i, ctx.read_buf).await?;
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        room_path(room, "sse"),
        ctx.target.host
    );
    conn.write_all(req.as_bytes()).await?;
    let head = conn.read_head().await?;
    if head.status != 200 || !head.chunked {
        return Err(std::io::Error::other(format!(
            "SSE refused: HTTP {} (chunked: {})",
            head.status, head.chunked
        )));
    }
    Ok(conn)
}

/// Connects under the shared connect limit and timeout.
pub async fn connect_with<F, Fut>(ctx: &Ctx, r: &mut ViewerResult, open: F) -> Option<Conn>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<Conn>>,
{
    let permit = ctx.connect_limit.acquire().await.ok()?;
    let res = tokio::time::timeout(ctx.connect_timeout, open()).await;
    drop(permit);
    match res {
        Ok(Ok(c)) => {
            ctx.counters.connected.fetch_add(1, Relaxed);
            r.connected = true;
            Some(c)
        }
        Ok(Err(e)) => {
            ctx.counters.connect_errors.fetch_add(1, Relaxed);
            r.connect_error = Some(e.to_string());
            None
        }
        Err(_) => {
            ctx.counters.connect_errors.fetch_add(1, Relaxed);
            r.connect_error = Some("connect timeout".into());
            None
        }
    }
}

pub fn ended_early(ctx: &Ctx, r: &ViewerResult) {
    if r.ended.is_some() && !ctx.stop_viewers.is_cancelled() {
        ctx.counters.dropped.fetch_add(1, Relaxed);
    }
}

/// A WebSocket viewer: reads until the run ends; with `--slow-viewers` or
/// `--resume-every` (see `churn`) it also leaves and is cut, and resumes by
/// cursor each time, its seq check running on across connections.
pub async fn ws_viewer(ctx: Arc<Ctx>, i: usize, room_idx: usize, room: Arc<str>) -> ViewerResult {
    let mut r = ViewerResult {
        room: room_idx,
        slow: ctx.churn.is_slow(i),
        ..Default::default()
    };
    let Some(mut conn) = connect_with(&ctx, &mut r, || open_ws(&ctx, i, &room, None)).await else {
        return r;
    };
    let mut leave_at = ctx.churn.next_resume(i, Instant::now(), true);
    loop {
        match read_ws(&ctx, &mut r, &mut conn, i, leave_at).await {
            WsEnd::Stopped | WsEnd::Ended => break,
            WsEnd::Leave => r.resumes += 1,
            WsEnd::Cut => r.cuts += 1,
        }
        leave_at = ctx.churn.next_resume(i, Instant::now(), false);
        let Some(epoch) = r.epoch.clone() else { break };
        let resume = Some((epoch.as_str(), r.cursor));
        match tokio::time::timeout(ctx.connect_timeout, open_ws(&ctx, i, &room, resume)).await {
            Ok(Ok(c)) => {
                conn = c;
                r.ended = None;
                r.expect_hello = true;
            }
            Ok(Err(e)) => {
                r.ended = Some(format!("resume: {e}"));
                break;
            }
            Err(_) => {
                r.ended = Some("resume: timeout".into());
                break;
            }
        }
    }
    ended_early(&ctx, &r);
    r
}

/// Reads one WebSocket connection until the run stops, the viewer's time to
/// leave comes (`leave_at`, only while measuring), or the connection ends.
async fn read_ws(
    ctx: &Ctx,
    r: &mut ViewerResult,
    conn: &mut Conn,
    i: usize,
    leave_at: Option<Instant>,
) -> WsEnd {
    let sample = i.is_multiple_of(ctx.latency_every.max(1));
    let cancelled = ctx.stop_viewers.cancelled();
    tokio::pin!(cancelled);
    let leave = tokio::time::sleep_until(leave_at.unwrap_or_else(Instant::now));
    tokio::pin!(leave);
    let mut stall_at = ctx.churn.next_stall(Instant::now());
    let mut seqs = Vec::with_capacity(64);
    let mut fragments: Vec<u8> = Vec::new();
    // The message being reassembled was compressed (RSV1 on its first frame).
    let mut compressed = false;
    let mut counted = conn.bytes_read;
    loop {
        let f = tokio::select! {
            biased;
            _ = &mut cancelled => return WsEnd::Stopped,
            _ = &mut leave, if leave_at.is_some() && ctx.measuring.load(Relaxed) => {
                let _ = conn.ws_send(OP_CLOSE, &1000u16.to_be_bytes()).await;
                return WsEnd::Leave;
            }
            f = conn.ws_next() => f,
        };
        let f = match f {
            Ok(f) => f,
            Err(e) => {
                r.ended = Some(format!("read: {e}"));
                // A slow reader's socket dropped by the server (no close
                // frame could be written) is the rules at work: it resumes.
                return if r.slow && r.epoch.is_some() {
                    WsEnd::Cut
                } else {
                    WsEnd::Ended
                };
            }
        };
        let payload_at = f.hdr..f.hdr + f.len;
        let mut keep_going = true;
        match f.opcode {
            OP_TEXT | OP_BINARY if f.fin && !f.rsv1 => {
                let json = &conn.data()[payload_at];
                keep_going = on_json(ctx, r, json, &mut seqs, sample, true);
            }
            OP_TEXT | OP_BINARY | OP_CONT => {
                if f.opcode != OP_CONT {
                    compressed = f.rsv1;
                }
                fragments.extend_from_slice(&conn.data()[payload_at]);
                if f.fin {
                    let mut json = std::mem::take(&mut fragments);
                    if compressed {
                        match crate::inflate::message(&json) {
                            Ok(plain) => json = plain,
                            Err(e) => {
                                r.ended = Some(format!("inflate: {e}"));
                                return WsEnd::Ended;
                            }
                        }
                    }
                    keep_going = on_json(ctx, r, &json, &mut seqs, sample, true);
                }
            }
            OP_PING => {
                let payload = conn.data()[payload_at].to_vec();
                conn.consume(f.hdr + f.len);
                if let Err(e) = conn.ws_send(OP_PONG, &payload).await {
                    r.ended = Some(format!("pong: {e}"));
                    return WsEnd::Ended;
                }
                continue;
            }
            OP_CLOSE => {
                let p = &conn.data()[payload_at];
                let code = if p.len() >= 2 {
                    u16::from_be_bytes([p[0], p[1]])
                } else {
                    1005
                };
                let reason = String::from_utf8_lossy(p.get(2..).unwrap_or(&[]));
                r.ended = Some(format!("close {code}: {reason}"));
                let cut = resumable(code) && r.epoch.is_some() && !ctx.stop_viewers.is_cancelled();
                return if cut { WsEnd::Cut } else { WsEnd::Ended };
            }
            _ => {}
        }
        conn.consume(f.hdr + f.len);
        let b = conn.bytes_read;
        ctx.counters.bytes.fetch_add(b - counted, Relaxed);
        counted = b;
        if !keep_going {
            return WsEnd::Ended;
        }
        if r.slow && ctx.measuring.load(Relaxed) && Instant::now() >= stall_at {
            // Stalls end with the measured window, so that the drain after
            // it reads everything before the loss check.
            let until = Instant::now() + ctx.churn.slow_stall;
            while ctx.measuring.load(Relaxed) && Instant::now() < until {
                tokio::select! {
                    biased;
                    _ = &mut cancelled => return WsEnd::Stopped,
                    _ = tokio::time::sleep(STALL_STEP) => {}
                }
            }
            stall_at = ctx.churn.next_stall(Instant::now());
        }
    }
}

pub async fn sse_viewer(ctx: Arc<Ctx>, i: usize, room_idx: usize, room: Arc<str>) -> ViewerResult {
    let mut r = ViewerResult {
        room: room_idx,
        ..Default::default()
    };
    let Some(mut conn) = connect_with(&ctx, &mut r, || open_sse(&ctx, i, &room)).await else {
        return r;
    };
    let sample = i.is_multiple_of(ctx.latency_every.max(1));
    let stop = ctx.stop_viewers.clone();
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    let mut seqs = Vec::with_capacity(64);
    // Bytes of events not yet complete (an event split over chunks).
    let mut pending: Vec<u8> = Vec::new();
    let mut counted = conn.bytes_read;
    'run: loop {
        let c = tokio::select! {
            biased;
            _ = &mut cancelled => break,
            c = conn.next_chunk() => c,
        };
        let (hdr, size) = match c {
            Ok(c) => c,
            Err(e) => {
                r.ended = Some(format!("read: {e}"));
                break;
            }
        };
        if size == 0 {
            r.ended = Some("stream ended".into());
            break;
        }
        let chunk = &conn.data()[hdr..hdr + size];
        let whole = pending.is_empty() && chunk.ends_with(b"\n\n");
        let mut keep_going = true;
        if whole {
            keep_going = sse_events(&ctx, &mut r, chunk, &mut seqs, sample);
        } else {
            pending.extend_from_slice(chunk);
            if let Some(end) = memchr::memmem::rfind(&pending, b"\n\n") {
                let rest = pending.split_off(end + 2);
                keep_going = sse_events(&ctx, &mut r, &pending, &mut seqs, sample);
                pending = rest;
            }
        }
        conn.consume(hdr + size + 2);
        let b = conn.bytes_read;
        ctx.counters.bytes.fetch_add(b - counted, Relaxed);
        counted = b;
        if !keep_going {
            break 'run;
        }
    }
    ended_early(&ctx, &r);
    r
}

/// Complete SSE events (`…data: <json>\n\n`…): hands each data line to `on_json`.
fn sse_events(
    ctx: &Ctx,
    r: &mut ViewerResult,
    events: &[u8],
    seqs: &mut Vec<u64>,
    sample: bool,
) -> bool {
    let mut at = 0;
    while at < events.len() {
        let end = memchr::memmem::find(&events[at..], b"\n\n").map_or(events.len(), |p| at + p);
        let ev = &events[at..end];
        if let Some(p) = memchr::memmem::find(ev, b"data: ") {
            let data = &ev[p + 6..];
            let data = &data[..memchr::memchr(b'\n', data).unwrap_or(data.len())];
            if !on_json(ctx, r, data, seqs, sample, true) {
                return false;
            }
        }
        at = end + 2;
    }
    true
}

/// A long-poll client: `Follow` checks every seq like a stream viewer;
/// `Hammer` re-asks from one frame behind (repeats by design: no seq check).
pub async fn poll_viewer(
    ctx: Arc<Ctx>,
    i: usize,
    room_idx: usize,
    room: Arc<str>,
    mode: PollMode,
    wait_ms: u64,
) -> ViewerResult {
    let mut r = ViewerResult {
        room: room_idx,
        ..Default::default()
    };
    let target = ctx.target.clone();
    let Some(mut conn) =
        connect_with(&ctx, &mut r, || Conn::connect(&target, i, ctx.read_buf)).await
    else {
        return r;
    };
    let sample = i.is_multiple_of(ctx.latency_every.max(1));
    let stop = ctx.stop_viewers.clone();
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    let mut seqs = Vec::with_capacity(64);
    let mut counted = conn.bytes_read;
    // Follow: `newest`. Hammer: ask from `behind` (the newest frame's start).
    let mut newest: Option<u64> = None;
    let mut behind: Option<u64> = None;
    let base = room_path(&room, "poll");
    let mut req = Vec::with_capacity(160);
    loop {
        let cursor = match mode {
            PollMode::Follow => newest,
            PollMode::Hammer => behind.or(newest),
        };
        req.clear();
        use std::io::Write;
        let _ = write!(req, "GET {base}?wait_ms={wait_ms}");
        if let Some(c) = cursor {
            let _ = write!(req, "&cursor={c}");
        }
        let _ = write!(req, " HTTP/1.1\r\nHost: {}\r\n\r\n", ctx.target.host);
        let t0 = now_us();
        let answer = async {
            conn.write_all(&req).await?;
            let head = conn.read_head().await?;
            let body = conn.read_body(&head).await?;
            Ok::<_, std::io::Error>((head, body))
        };
        let (head, body) = tokio::select! {
            biased;
            _ = &mut cancelled => break,
            a = answer => match a {
                Ok(a) => a,
                Err(e) => {
                    r.ended = Some(format!("poll: {e}"));
                    break;
                }
            },
        };
        let t1 = now_us();
        let measuring = ctx.measuring.load(Relaxed);
        if measuring {
            ctx.poll_rtt.record(t1.saturating_sub(t0));
        }
        ctx.counters.responses.fetch_add(1, Relaxed);
        let (json, len): (&[u8], usize) = match &body {
            Body::InBuffer(n) => (&conn.data()[..*n], *n),
            Body::Owned(v) => (v.as_slice(), 0),
        };
        if head.status == 200 {
            seqs.clear();
            let lat = (sample && measuring && mode == PollMode::Follow).then(|| (&ctx.latency, t1));
            let s = scan_batch(json, &mut seqs, lat);
            if mode == PollMode::Follow {
                r.track.batch(&mut seqs);
            }
            r.frames += 1;
            ctx.counters.frames.fetch_add(1, Relaxed);
            ctx.counters.deliveries.fetch_add(s.messages, Relaxed);
            if let Some(c) = s.cursor {
                if newest.is_none_or(|n| c > n) {
                    behind = newest;
                    newest = Some(c);
                }
                if mode == PollMode::Follow && r.track.start.is_none() && s.messages == 0 {
                    r.track.join(c);
                }
            }
        } else {
            r.poll_errors += 1;
        }
        conn.consume(len);
        let b = conn.bytes_read;
        ctx.counters.bytes.fetch_add(b - counted, Relaxed);
        counted = b;
        if head.status != 200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    ended_early(&ctx, &r);
    r
}
