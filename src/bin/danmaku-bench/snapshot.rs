//! Snapshot revalidation: clients behaving like CDN edges, each asking
//! `GET /v1/rooms/{room}/snapshot` again and again over one keep-alive
//! connection with `If-None-Match: <the ETag it holds>` (docs/cdn.md).

use std::io::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::net::{Body, Conn};
use crate::stats::now_us;
use crate::viewer::{connect_with, ended_early, room_path, Ctx, ViewerResult};

/// The request for a client holding `etag` (none yet: empty, a plain GET).
fn request(path: &str, host: &str, etag: &[u8]) -> Vec<u8> {
    let mut req = Vec::with_capacity(128 + etag.len());
    write!(req, "GET {path} HTTP/1.1\r\nHost: {host}\r\n").expect("vec write");
    if !etag.is_empty() {
        req.extend_from_slice(b"If-None-Match: ");
        req.extend_from_slice(etag);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req
}

/// One edge: the first GET learns the ETag; every later one revalidates it.
/// A `200` means the room changed: its ETag is taken for the next requests.
pub async fn snapshot_client(
    ctx: Arc<Ctx>,
    i: usize,
    room_idx: usize,
    room: Arc<str>,
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
    let stop = ctx.stop_viewers.clone();
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    let path = room_path(&room, "snapshot");
    // `held`: the ETag of the body this client holds; `answered`: of the last answer.
    let mut held: Vec<u8> = Vec::new();
    let mut answered: Vec<u8> = Vec::new();
    let mut req = request(&path, &ctx.target.host, &held);
    let mut counted = conn.bytes_read;
    loop {
        let t0 = now_us();
        let answer = async {
            conn.write_all(&req).await?;
            let head = conn.read_head_etag(Some(&mut answered)).await?;
            let body = conn.read_body(&head).await?;
            Ok::<_, std::io::Error>((head, body))
        };
        let (head, body) = tokio::select! {
            biased;
            _ = &mut cancelled => break,
            a = answer => match a {
                Ok(a) => a,
                Err(e) => {
                    r.ended = Some(format!("snapshot: {e}"));
                    ctx.counters.request_errors.fetch_add(1, Relaxed);
                    break;
                }
            },
        };
        if ctx.measuring.load(Relaxed) {
            ctx.poll_rtt.record(now_us().saturating_sub(t0));
        }
        if let Body::InBuffer(n) = body {
            conn.consume(n);
        }
        let b = conn.bytes_read;
        ctx.counters.bytes.fetch_add(b - counted, Relaxed);
        counted = b;
        match head.status {
            304 => {
                ctx.counters.not_modified.fetch_add(1, Relaxed);
            }
            200 => {
                ctx.counters.snapshot_ok.fetch_add(1, Relaxed);
                if answered != held {
                    std::mem::swap(&mut held, &mut answered);
                    req = request(&path, &ctx.target.host, &held);
                }
            }
            _ => {
                ctx.counters.request_errors.fetch_add(1, Relaxed);
                r.poll_errors += 1;
                // A refusal (503 while the store is down…): do not spin on it.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    ended_early(&ctx, &r);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_revalidate_the_held_etag() {
        let plain = request("/v1/rooms/r1/snapshot", "127.0.0.1:8080", b"");
        assert_eq!(
            plain,
            b"GET /v1/rooms/r1/snapshot HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
        );
        let again = request("/v1/rooms/r1/snapshot", "127.0.0.1:8080", b"\"4f0c\"");
        assert_eq!(
            again,
            b"GET /v1/rooms/r1/snapshot HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
              If-None-Match: \"4f0c\"\r\n\r\n"
        );
        let mut headers = [httparse::EMPTY_HEADER; 4];
        let mut parsed = httparse::Request::new(&mut headers);
        assert!(parsed.parse(&again).unwrap().is_complete());
        assert_eq!(parsed.headers[1].name, "If-None-Match");
        assert_eq!(parsed.headers[1].value, b"\"4f0c\"");
    }
}
