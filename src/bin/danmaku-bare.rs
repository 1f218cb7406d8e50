//! The bare reference of the fan-out benchmark (BENCHMARKS.md): the least a
//! broadcaster can do per delivery on this machine, measured with the same
//! load tool and command as the real server (`danmaku-bench fanout --spawn
//! $T/danmaku-bare ...`).
//!
//! It takes the load tool's publishers and WebSocket viewers and, once per
//! 100 ms tick, writes one shared pre-encoded frame holding the tick's
//! messages to every viewer straight from the tick loop (one non-blocking
//! `write(2)` each; a viewer whose socket is full gets the rest from its own
//! task). No bus, store, rationing, cursor checks or metrics: only what any
//! server has to pay. It is a benchmark fixture, not a server: loopback only,
//! one room's worth of state, no limits.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use danmaku::fanout::frame::ws_text_frame;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const TICK: Duration = Duration::from_millis(100);

/// A viewer's socket and what the tick loop could not write at once. Its
/// own minimal backlog, not the server's `SharedSocket`: the reference must
/// not take on the server's costs (on SharedSocket it measured 3.64 M
/// deliveries per CPU-s against 3.84 M, medians of 3).
struct Viewer {
    stream: Arc<TcpStream>,
    backlog: Mutex<Backlog>,
    wake: Notify,
}

#[derive(Default)]
struct Backlog {
    bytes: Vec<u8>,
    /// The viewer's own task owns the socket's write side until it is empty.
    writing: bool,
    closed: bool,
}

#[derive(Default)]
struct Room {
    /// Messages since the last tick, as JSON objects joined by commas.
    pending: Vec<u8>,
    pending_count: usize,
    seq: u64,
    viewers: Vec<Arc<Viewer>>,
}

type Rooms = Arc<Mutex<HashMap<String, Room>>>;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // Same command line as the server (`serve --listen ADDR [--config F]`)
    // so the load tool's `--spawn` can start either.
    let listen = args
        .windows(2)
        .find(|w| w[0] == "--listen")
        .map_or("127.0.0.1:8080".to_string(), |w| w[1].clone());
    let addr: std::net::SocketAddr = listen.parse()?;
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "the bare reference listens on loopback only"
    );
    danmaku::http::listener::raise_open_file_limit();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        let rooms: Rooms = Arc::default();
        tokio::spawn(tick_loop(rooms.clone()));
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(connection(stream, rooms.clone()));
        }
    })
}

async fn tick_loop(rooms: Rooms) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut rooms = rooms.lock();
        for (name, room) in rooms.iter_mut() {
            room.viewers.retain(|v| !v.backlog.lock().closed);
            if room.pending_count == 0 {
                continue;
            }
            let json = format!(
                r#"{{"type":"batch","room":"{name}","epoch":"bare","cursor":{},"messages":[{}]}}"#,
                room.seq,
                String::from_utf8_lossy(&room.pending)
            );
            room.pending.clear();
            room.pending_count = 0;
            let frame = ws_text_frame(json.as_bytes());
            for viewer in &room.viewers {
                send(viewer, &frame);
            }
        }
    }
}

/// Writes `frame` at once if the socket takes it; the rest is left to the
/// viewer's task.
fn send(viewer: &Viewer, frame: &[u8]) {
    let mut backlog = viewer.backlog.lock();
    if backlog.closed {
        return;
    }
    if backlog.writing {
        backlog.bytes.extend_from_slice(frame);
        return;
    }
    let written = match viewer.stream.try_write(frame) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(_) => {
            backlog.closed = true;
            return;
        }
    };
    if written < frame.len() {
        backlog.bytes.extend_from_slice(&frame[written..]);
        backlog.writing = true;
        viewer.wake.notify_one();
    }
}

struct Request {
    method: String,
    path: String,
    ws_key: Option<String>,
    content_length: usize,
}

async fn connection(mut stream: TcpStream, rooms: Rooms) -> io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let (req, head_len) = loop {
            if let Some(parsed) = parse_head(&buf)? {
                break parsed;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        while buf.len() < head_len + req.content_length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = buf[head_len..head_len + req.content_length].to_vec();
        buf.drain(..head_len + req.content_length);
        let room = req
            .path
            .strip_prefix("/v1/rooms/")
            .and_then(|p| p.split_once('/'))
            .map(|(room, what)| (room.to_string(), what.to_string()));
        match (req.method.as_str(), room, req.ws_key) {
            ("GET", Some((room, what)), Some(key)) if what == "ws" => {
                return viewer(stream, rooms, room, &key).await;
            }
            ("POST", Some((room, what)), _) if what == "danmaku" => {
                let answer = publish(&rooms, &room, &body);
                respond(&mut stream, "202 Accepted", &answer).await?;
            }
            ("POST", None, _) if req.path == "/v1/demo/token" => {
                respond(&mut stream, "200 OK", r#"{"token":"bare"}"#).await?;
            }
            ("GET", None, _) if req.path == "/healthz" => {
                respond(&mut stream, "200 OK", r#"{"status":"ok"}"#).await?;
            }
            _ => respond(&mut stream, "404 Not Found", r#"{"error":"not_found"}"#).await?,
        }
    }
}

fn parse_head(buf: &[u8]) -> io::Result<Option<(Request, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(io::Error::other(e)),
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let request = Request {
        content_length: header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        ws_key: header("sec-websocket-key"),
        method: req.method.unwrap_or("").to_string(),
        path: req.path.unwrap_or("").to_string(),
    };
    Ok(Some((request, head_len)))
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> io::Result<()> {
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(answer.as_bytes()).await
}

/// Appends a message shaped like the server's (same fields, same size).
fn publish(rooms: &Rooms, room: &str, body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = v["text"].as_str().unwrap_or("");
    let mut rooms = rooms.lock();
    let r = rooms.entry(room.to_string()).or_default();
    r.seq += 1;
    let id = uuid::Uuid::now_v7();
    let message = serde_json::json!({
        "id": id.to_string(), "seq": r.seq, "room": room, "kind": "danmaku",
        "priority": "low", "user": {"id": "bench", "name": "bench"}, "text": text,
        "ts": danmaku::message::now_ms(),
    });
    if r.pending_count > 0 {
        r.pending.push(b',');
    }
    serde_json::to_writer(&mut r.pending, &message).expect("vec write");
    r.pending_count += 1;
    format!(r#"{{"id":"{id}","seq":{}}}"#, r.seq)
}

async fn viewer(stream: TcpStream, rooms: Rooms, room: String, key: &str) -> io::Result<()> {
    use base64::Engine;
    use sha1::Digest;
    let mut sha = sha1::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
         sec-websocket-accept: {accept}\r\n\r\n"
    );
    let mut stream = stream;
    stream.write_all(head.as_bytes()).await?;
    let viewer = Arc::new(Viewer {
        stream: Arc::new(stream),
        backlog: Mutex::default(),
        wake: Notify::new(),
    });
    {
        // Joining under the rooms lock: the hello's cursor and the first
        // frame this viewer gets cannot miss or repeat a message.
        let mut rooms = rooms.lock();
        let r = rooms.entry(room.clone()).or_default();
        let hello = format!(
            r#"{{"type":"hello","room":"{room}","epoch":"bare","cursor":{},"online":{},"tick_ms":100}}"#,
            r.seq,
            r.viewers.len() + 1
        );
        send(&viewer, &ws_text_frame(hello.as_bytes()));
        r.viewers.push(viewer.clone());
    }
    let result = serve_viewer(&viewer).await;
    viewer.backlog.lock().closed = true;
    result
}

/// Reads (and drops) what the viewer sends; writes what the tick loop left.
async fn serve_viewer(viewer: &Viewer) -> io::Result<()> {
    let mut sink = [0u8; 512];
    loop {
        tokio::select! {
            readable = viewer.stream.readable() => {
                readable?;
                match viewer.stream.try_read(&mut sink) {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            _ = viewer.wake.notified() => loop {
                let bytes = {
                    let mut backlog = viewer.backlog.lock();
                    if backlog.bytes.is_empty() {
                        backlog.writing = false;
                        break;
                    }
                    std::mem::take(&mut backlog.bytes)
                };
                let mut at = 0;
                while at < bytes.len() {
                    viewer.stream.writable().await?;
                    match viewer.stream.try_write(&bytes[at..]) {
                        Ok(n) => at += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
            },
        }
    }
}
