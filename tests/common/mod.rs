//! Integration-test harness: an in-process `serve` node on a free loopback
//! port, plus clients for every transport of the API contract (README, "API").
//!
//! Every wait in here is bounded by a timeout, so a broken server makes a
//! test fail with a message instead of hanging.

#![allow(dead_code)]

pub mod fault;
pub mod netns;
pub mod pair;
pub mod procs;
pub mod proxy;

use std::time::{Duration, Instant};

use danmaku::app::Server;
use danmaku::auth::{sign_gift_request, Authenticator};
use danmaku::config::Config;
use futures_util::{SinkExt, StreamExt};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Default bound of a single wait for something the server should do soon.
pub const WAIT: Duration = Duration::from_secs(10);

/// The configuration every test starts from.
///
/// Engine selection goes through here and only here, so the same suite runs
/// on every engine: `DANMAKU_TEST_ENGINE` unset (or `memory`) = the embedded
/// engines; `redis` = the Redis live store at `DANMAKU_TEST_REDIS_URL` (or
/// `DANMAKU_REDIS_URL`). Shared engines keep state across tests and runs, so
/// tests name rooms through `TestServer::room`. A Kafka bus goes here too
/// when it lands.
static NEXT_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `DANMAKU_TEST_REDIS_URL`, or `None` (the test skips) — except under
/// `DANMAKU_REQUIRE_SERVICES=1` (scripts/test.sh), where its absence fails.
pub fn test_redis_url() -> Option<String> {
    match std::env::var("DANMAKU_TEST_REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            if std::env::var("DANMAKU_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!(
                    "DANMAKU_REQUIRE_SERVICES=1 but DANMAKU_TEST_REDIS_URL is not set: start \
                     redis-server (e.g. `redis-server --port 6390 --save '' --appendonly no \
                     --daemonize yes`) and set DANMAKU_TEST_REDIS_URL=redis://127.0.0.1:6390"
                );
            }
            eprintln!(
                "skipping: DANMAKU_TEST_REDIS_URL is not set (no redis-server to test against)"
            );
            None
        }
    }
}

pub fn base_config() -> Config {
    let mut c = Config::embedded();
    match std::env::var("DANMAKU_TEST_ENGINE").as_deref() {
        Err(_) | Ok("") | Ok("memory") | Ok("embedded") => {}
        Ok("redis") => {
            let url = ["DANMAKU_TEST_REDIS_URL", "DANMAKU_REDIS_URL"]
                .iter()
                .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
                .expect(
                    "DANMAKU_TEST_ENGINE=redis needs DANMAKU_TEST_REDIS_URL \
                     (e.g. redis://127.0.0.1:6390)",
                );
            c.store.engine = danmaku::config::StoreEngine::Redis;
            c.store.redis_url = url;
        }
        Ok("kafka") => {
            // Redis live store + Kafka bus: the distributed engines in one process.
            let env = |k: &str| {
                std::env::var(k)
                    .ok()
                    .filter(|v| !v.trim().is_empty())
                    .unwrap_or_else(|| panic!("DANMAKU_TEST_ENGINE=kafka needs {k}"))
            };
            c.store.engine = danmaku::config::StoreEngine::Redis;
            c.store.redis_url = env("DANMAKU_TEST_REDIS_URL");
            c.bus.engine = danmaku::config::BusEngine::Kafka;
            c.bus.kafka_brokers = env("DANMAKU_TEST_KAFKA_BROKERS");
            let unique = format!(
                "{}-{}",
                std::process::id(),
                NEXT_NS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            let unique = format!("{unique}-{}", now_ms());
            c.bus.topic = format!("test-{unique}");
            c.bus.group_id = format!("test-{unique}");
            c.bus.partitions = 2;
        }
        Ok(other) => panic!(
            "DANMAKU_TEST_ENGINE={other} is not known to tests/common/mod.rs base_config() \
             (memory, redis, kafka)"
        ),
    }
    c.server.listen = "127.0.0.1:0".to_string();
    // Every test client comes from 127.0.0.1.
    c.server.max_viewer_connections_per_ip = 100_000;
    // Short ticks keep tests fast; generous limits keep them from being
    // throttled unless a test means to be.
    c.fanout.tick_ms = 25;
    c.ingest.user_rate_per_s = 1000.0;
    c.ingest.user_burst = 1000.0;
    c.ingest.ip_rate_per_s = 100_000.0;
    c.ingest.ip_burst = 100_000.0;
    c.server.shutdown_grace_ms = 3000;
    c
}

pub struct TestServer {
    pub server: Server,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// `ws://127.0.0.1:PORT`
    pub ws_base: String,
    pub config: Config,
    /// Client for ordinary requests (bounded total time).
    pub http: reqwest::Client,
    /// Client for streams (SSE): no total timeout, callers bound their reads.
    pub stream_http: reqwest::Client,
    /// Suffix that makes this server's room names unique (see `room`).
    pub ns: String,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = base_config();
        adjust(&mut config);
        let server = tokio::time::timeout(WAIT, Server::start(config.clone()))
            .await
            .expect("server start timed out")
            .expect("server starts");
        let addr = server.addr();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        let stream_http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("stream client");
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ns = format!("{:x}{:x}{n}", std::process::id(), now_ms() % 0x1_0000_0000);
        TestServer {
            ns,
            server,
            base: format!("http://{addr}"),
            ws_base: format!("ws://{addr}"),
            config,
            http,
            stream_http,
        }
    }

    /// Stops the node the way `serve` does on a signal.
    pub async fn shutdown(self) {
        tokio::time::timeout(Duration::from_secs(30), self.server.shutdown())
            .await
            .expect("shutdown finished in time")
            .expect("shutdown ok");
    }

    /// A room name unique to this server: with the embedded engines every
    /// server starts empty anyway, but shared engines (Redis) keep rooms
    /// across tests and runs, so tests name their rooms through here.
    pub fn room(&self, name: &str) -> String {
        format!("{name}-{}", self.ns)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A viewer token for `sub` / `name`, valid for an hour.
    pub fn token(&self, sub: &str, name: &str) -> String {
        Authenticator::new(&self.config.auth).issue(sub, name, 3600)
    }

    pub fn gift_secret(&self) -> &str {
        &self.config.auth.gift_secrets[0]
    }

    // ---- plain HTTP -------------------------------------------------------

    pub async fn get(&self, path: &str) -> (StatusCode, Value, HeaderMap) {
        let res = self.http.get(self.url(path)).send().await.expect("GET");
        into_parts(res).await
    }

    pub async fn get_text(&self, path: &str) -> (StatusCode, String) {
        let res = self.http.get(self.url(path)).send().await.expect("GET");
        let status = res.status();
        (status, res.text().await.expect("body"))
    }

    pub async fn metrics(&self) -> String {
        let (status, text) = self.get_text("/metrics").await;
        assert_eq!(status, StatusCode::OK, "/metrics");
        text
    }

    /// Value of one sample of `/metrics`, e.g. `danmaku_messages_stored_total`
    /// or `danmaku_connections{transport="ws"}`; absent → 0.
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics().await, sample).unwrap_or(0.0)
    }

    /// Waits until a metric sample reaches at least `at_least`.
    pub async fn wait_metric(&self, sample: &str, at_least: f64, within: Duration) -> f64 {
        let deadline = Instant::now() + within;
        loop {
            let v = self.metric(sample).await;
            if v >= at_least {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "metric {sample} stayed at {v}, expected >= {at_least} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn healthz_ok(&self) {
        let (status, body, _) = self.get("/healthz").await;
        assert_eq!(status, StatusCode::OK, "healthz: {body}");
    }

    // ---- writes ----------------------------------------------------------

    /// `POST /v1/rooms/{room}/danmaku` with a bearer token.
    pub async fn post_danmaku(
        &self,
        room: &str,
        token: &str,
        client_msg_id: &str,
        text: &str,
    ) -> (StatusCode, Value, HeaderMap) {
        let body = serde_json::json!({"client_msg_id": client_msg_id, "text": text});
        self.post_danmaku_raw(
            room,
            Some(&format!("Bearer {token}")),
            body.to_string().into_bytes(),
        )
        .await
    }

    /// Posts an arbitrary body with an arbitrary (or no) Authorization header.
    pub async fn post_danmaku_raw(
        &self,
        room: &str,
        authorization: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Value, HeaderMap) {
        let mut req = self
            .http
            .post(self.url(&format!("/v1/rooms/{room}/danmaku")))
            .header("content-type", "application/json")
            .body(body);
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        into_parts(req.send().await.expect("POST danmaku")).await
    }

    /// `POST /v1/rooms/{room}/events`, signed now with the configured secret.
    pub async fn post_event(
        &self,
        room: &str,
        idempotency_key: &str,
        body: &Value,
    ) -> (StatusCode, Value, HeaderMap) {
        let body = body.to_string().into_bytes();
        let ts = unix_now().to_string();
        let sig = self.sign_event(room, &ts, idempotency_key, &body);
        self.post_event_raw(room, Some(&ts), Some(&sig), Some(idempotency_key), body)
            .await
    }

    /// The v2 `X-Signature` of `POST /v1/rooms/{room}/events` with the
    /// configured secret.
    pub fn sign_event(&self, room: &str, ts: &str, idempotency_key: &str, body: &[u8]) -> String {
        let path = format!("/v1/rooms/{room}/events");
        sign_gift_request(self.gift_secret(), ts, "POST", &path, idempotency_key, body)
    }

    /// The v2 `X-Signature` of `POST /v1/rooms/{room}/events:batch` (empty
    /// key line) with `secret`.
    pub fn sign_batch(secret: &str, room: &str, ts: &str, body: &[u8]) -> String {
        let path = format!("/v1/rooms/{room}/events:batch");
        sign_gift_request(secret, ts, "POST", &path, "", body)
    }

    /// An event request with every header under the caller's control.
    pub async fn post_event_raw(
        &self,
        room: &str,
        timestamp: Option<&str>,
        signature: Option<&str>,
        idempotency_key: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Value, HeaderMap) {
        let mut req = self
            .http
            .post(self.url(&format!("/v1/rooms/{room}/events")))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = timestamp {
            req = req.header("x-timestamp", t);
        }
        if let Some(s) = signature {
            req = req.header("x-signature", s);
        }
        if let Some(k) = idempotency_key {
            req = req.header("idempotency-key", k);
        }
        into_parts(req.send().await.expect("POST event")).await
    }

    // ---- long-poll ---------------------------------------------------------

    /// `GET /v1/rooms/{room}/poll`; returns the status and the JSON body.
    pub async fn poll(
        &self,
        room: &str,
        cursor: Option<u64>,
        epoch: Option<&str>,
        wait_ms: u64,
    ) -> (StatusCode, Value) {
        let mut q = vec![format!("wait_ms={wait_ms}")];
        if let Some(c) = cursor {
            q.push(format!("cursor={c}"));
        }
        if let Some(e) = epoch {
            q.push(format!("epoch={e}"));
        }
        let url = self.url(&format!("/v1/rooms/{room}/poll?{}", q.join("&")));
        let res = self.http.get(url).send().await.expect("GET poll");
        let (status, body, _) = into_parts(res).await;
        (status, body)
    }

    /// Everything stored in the room, read from the node's live store (not
    /// through a viewer transport, which rations what it hands out).
    pub async fn read_all(&self, room: &str) -> Vec<Value> {
        read_stream(self.server.state().store.as_ref(), room).await
    }

    /// Waits until the room holds at least `n` messages; returns them all.
    pub async fn wait_stored(&self, room: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let all = self.read_all(room).await;
            if all.len() >= n {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "room {room} holds {} messages, expected {n} within {WAIT:?}",
                all.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // ---- streams -----------------------------------------------------------

    /// A WebSocket viewer of `room` with the given query pairs
    /// (`cursor`, `epoch`, `token`).
    pub async fn ws(&self, room: &str, query: &[(&str, &str)]) -> WsViewer {
        WsViewer::connect(&self.ws_url(room, query)).await
    }

    pub fn ws_url(&self, room: &str, query: &[(&str, &str)]) -> String {
        let q: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut url = format!("{}/v1/rooms/{room}/ws", self.ws_base);
        if !q.is_empty() {
            url.push('?');
            url.push_str(&q.join("&"));
        }
        url
    }

    /// An SSE viewer of `room`, optionally resuming with `Last-Event-ID`.
    pub async fn sse(&self, room: &str, last_event_id: Option<&str>) -> SseReader {
        let mut req = self
            .stream_http
            .get(self.url(&format!("/v1/rooms/{room}/sse")))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let res = tokio::time::timeout(WAIT, req.send())
            .await
            .expect("SSE response in time")
            .expect("SSE request");
        assert_eq!(res.status(), StatusCode::OK, "SSE status");
        let ct = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(ct.starts_with("text/event-stream"), "content-type {ct}");
        SseReader::new(res)
    }
}

/// Every message a live store holds for `room`, in seq order, as JSON.
pub async fn read_stream(store: &dyn danmaku::store::LiveStore, room: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = 0;
    loop {
        let read = store
            .read_range(room, cursor, u64::MAX, 1000)
            .await
            .expect("store read");
        out.extend(
            read.messages
                .iter()
                .map(|m| serde_json::from_slice::<Value>(&m.json).expect("stored JSON")),
        );
        if read.messages.is_empty() || read.cursor <= cursor {
            return out;
        }
        cursor = read.cursor;
    }
}

pub async fn into_parts(res: reqwest::Response) -> (StatusCode, Value, HeaderMap) {
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.bytes().await.expect("response body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            Value::String(format!(
                "<not JSON> {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            ))
        })
    };
    (status, body, headers)
}

/// Asserts the contract's error shape `{"error":{"code","message"}}`.
pub fn assert_error(
    what: &str,
    got: &(StatusCode, Value, HeaderMap),
    status: StatusCode,
    code: &str,
) {
    let (s, body, headers) = got;
    assert_eq!(*s, status, "{what}: status (body {body})");
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        ct.starts_with("application/json"),
        "{what}: content-type {ct:?}"
    );
    assert_eq!(body["error"]["code"], code, "{what}: error code in {body}");
    let msg = body["error"]["message"].as_str().unwrap_or("");
    assert!(!msg.is_empty(), "{what}: error message missing in {body}");
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// Finds `sample` (a metric name with its exact label set, if any) in
/// Prometheus text output.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == sample).then(|| value.parse().ok()).flatten()
    })
}

/// Sum of every sample of a metric family (all label sets).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (sample, value) = l.rsplit_once(' ')?;
            let base = sample.split('{').next()?;
            (base == name).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// `seq` of each message.
pub fn seqs(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

/// `id` of each message.
pub fn ids(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect()
}

/// `text` of each message.
pub fn texts(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["text"].as_str().unwrap_or("").to_string())
        .collect()
}

fn priority_rank(m: &Value) -> u8 {
    match m["priority"].as_str() {
        Some("whitelist") => 0,
        Some("high") => 1,
        Some("low") => 2,
        other => panic!("unknown priority {other:?} in {m}"),
    }
}

/// A live batch is ordered whitelist, high, low, and by seq within each
/// bucket (docs/architecture.md, "Rationing is deterministic").
pub fn assert_batch_order(batch: &Value) {
    let msgs = batch["messages"].as_array().expect("messages");
    for w in msgs.windows(2) {
        let (a, b) = (priority_rank(&w[0]), priority_rank(&w[1]));
        assert!(
            a < b || (a == b && w[0]["seq"].as_u64() < w[1]["seq"].as_u64()),
            "batch not ordered whitelist, high, low then by seq: {batch}"
        );
    }
}

/// Asserts seqs strictly increase (in order, no duplicates).
pub fn assert_strictly_increasing(what: &str, messages: &[Value]) {
    let s = seqs(messages);
    assert!(
        s.windows(2).all(|w| w[0] < w[1]),
        "{what}: seqs not strictly increasing: {s:?}"
    );
}

// ---- WebSocket viewer -------------------------------------------------------

/// How a WebSocket read ended when it did not yield a text message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEnd {
    /// A close frame (code, reason); `None` if the close carried no frame.
    Closed(Option<(u16, String)>),
    /// The stream ended without a close frame, or errored.
    Dropped(String),
    Timeout,
}

pub struct WsViewer {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub hello: Value,
    /// Cursor of the last batch (or of the hello).
    pub cursor: u64,
    pub epoch: String,
    /// Non-batch, non-hello JSON messages received while collecting
    /// (acks, errors, repeated hellos).
    pub others: Vec<Value>,
    /// Batch frames received, as JSON (messages included).
    pub batches: Vec<Value>,
    /// Set once the server closed the socket.
    pub ended: Option<WsEnd>,
    /// Seqs delivered so far (a repeat fails the test).
    pub seen: std::collections::HashSet<u64>,
    /// Keep a copy of every batch in `batches` (on by default).
    pub keep_batches: bool,
    /// The room's online count from the latest `online` frame. Those frames
    /// come whenever the count changes, so `next_json` takes them in here
    /// instead of returning them, unless `keep_online` (tests/online_counts.rs).
    pub online: Option<u64>,
    pub keep_online: bool,
}

impl WsViewer {
    /// Connects and reads the `hello`.
    pub async fn connect(url: &str) -> WsViewer {
        Self::try_connect(url)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like `connect`, but a refused or failed connection is an `Err` (for
    /// viewers that reconnect elsewhere when a node is down).
    pub async fn try_connect(url: &str) -> Result<WsViewer, String> {
        let ws = match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await {
            Err(_) => return Err(format!("WebSocket connect to {url} timed out")),
            Ok(Err(e)) => return Err(format!("WebSocket connect to {url}: {e}")),
            Ok(Ok((ws, _response))) => ws,
        };
        Self::start(url, ws).await
    }

    /// Connects with a socket receive buffer of about `rcvbuf` bytes, so
    /// that a viewer which stops reading soon fills the server's socket.
    pub async fn connect_small_buffer(url: &str, rcvbuf: u32) -> WsViewer {
        let addr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .expect("host:port");
        let addr: std::net::SocketAddr = addr.parse().expect("a loopback address");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
        let tcp = socket.connect(addr).await.expect("connect");
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
            .await
            .expect("WebSocket handshake");
        Self::start(url, ws).await.unwrap_or_else(|e| panic!("{e}"))
    }

    async fn start(
        url: &str,
        ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    ) -> Result<WsViewer, String> {
        let mut v = WsViewer {
            ws,
            hello: Value::Null,
            cursor: 0,
            epoch: String::new(),
            others: Vec::new(),
            batches: Vec::new(),
            ended: None,
            seen: Default::default(),
            keep_batches: true,
            online: None,
            keep_online: false,
        };
        let hello = v
            .next_json(WAIT)
            .await
            .map_err(|e| format!("no hello from {url}: {e:?}"))?;
        assert_eq!(hello["type"], "hello", "first message is hello: {hello}");
        v.cursor = hello["cursor"].as_u64().expect("hello.cursor");
        v.epoch = hello["epoch"].as_str().expect("hello.epoch").to_string();
        v.hello = hello;
        Ok(v)
    }

    /// The next JSON text message (pings/pongs skipped, and `online` frames
    /// unless `keep_online`).
    pub async fn next_json(&mut self, within: Duration) -> Result<Value, WsEnd> {
        if let Some(end) = &self.ended {
            return Err(end.clone());
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(WsEnd::Timeout),
                Ok(n) => n,
            };
            let end = match next {
                Some(Ok(WsMessage::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("server sent non-JSON text {t:?}: {e}"));
                    if v["type"] == "online" && !self.keep_online {
                        self.online = v["online"].as_u64();
                        continue;
                    }
                    return Ok(v);
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    WsEnd::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                Some(Ok(WsMessage::Binary(b))) => panic!("unexpected binary frame {b:?}"),
                Some(Ok(_)) => continue, // ping, pong, raw frame
                Some(Err(e)) => WsEnd::Dropped(e.to_string()),
                None => WsEnd::Dropped("stream ended".into()),
            };
            self.ended = Some(end.clone());
            return Err(end);
        }
    }

    /// Collects batch messages until `n` have arrived or `within` passes;
    /// returns what arrived. Checks every batch against the contract:
    /// contiguous cursors, messages after the previous cursor, in seq order.
    pub async fn collect(&mut self, n: usize, within: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_json(left).await {
                Ok(v) => {
                    if v["type"] == "batch" {
                        out.extend(self.take_batch(v));
                    } else {
                        self.others.push(v);
                    }
                }
                Err(_) => break,
            }
        }
        out
    }

    /// Reads until a non-batch message satisfying `pred` arrives; batch
    /// messages seen meanwhile are returned as well.
    pub async fn until_other(
        &mut self,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> (Option<Value>, Vec<Value>) {
        let deadline = tokio::time::Instant::now() + within;
        let mut msgs = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_json(left).await {
                Ok(v) if v["type"] == "batch" => msgs.extend(self.take_batch(v)),
                Ok(v) if pred(&v) => return (Some(v), msgs),
                Ok(v) => self.others.push(v),
                Err(_) => return (None, msgs),
            }
        }
    }

    /// Follows a `hello` with `"reset": true`: the stream starts over.
    pub fn accept_reset(&mut self, hello: &Value) {
        assert_eq!(hello["reset"], true, "{hello}");
        self.cursor = hello["cursor"].as_u64().expect("hello.cursor");
        self.epoch = hello["epoch"].as_str().expect("hello.epoch").to_string();
        self.seen.clear();
    }

    fn take_batch(&mut self, v: Value) -> Vec<Value> {
        assert_eq!(v["room"], self.hello["room"], "batch room: {v}");
        let cursor = v["cursor"].as_u64().expect("batch.cursor");
        assert!(
            cursor >= self.cursor,
            "batch cursor went back from {} to {cursor}: {v}",
            self.cursor
        );
        let msgs = v["messages"].as_array().expect("batch.messages").clone();
        // Rationing may hold a message back (late high) and deliver it in a
        // later frame, so seqs are not monotonic across frames; but every
        // message is at or below the frame's cursor and arrives only once.
        for m in &msgs {
            let s = m["seq"].as_u64().expect("message seq");
            assert!(s <= cursor, "message seq {s} above the frame cursor: {v}");
            assert!(self.seen.insert(s), "message seq {s} delivered twice: {v}");
        }
        self.cursor = cursor;
        if self.keep_batches {
            self.batches.push(v);
        }
        msgs
    }

    /// Like `collect`, but returns only `(seq, id)` per message and keeps no
    /// batch copies: for tests with very many viewers.
    pub async fn collect_ids(&mut self, n: usize, within: Duration) -> Vec<(u64, String)> {
        self.keep_batches = false;
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_json(left).await {
                Ok(v) if v["type"] == "batch" => {
                    for m in self.take_batch(v) {
                        let seq = m["seq"].as_u64().expect("seq");
                        out.push((seq, m["id"].as_str().expect("id").to_string()));
                    }
                }
                Ok(v) => self.others.push(v),
                Err(_) => break,
            }
        }
        out
    }

    pub async fn send_json(&mut self, v: &Value) {
        tokio::time::timeout(WAIT, self.ws.send(WsMessage::Text(v.to_string().into())))
            .await
            .expect("ws send in time")
            .expect("ws send");
    }

    /// Reads until the server closes; returns the close and the batch
    /// messages delivered before it.
    pub async fn until_closed(&mut self, within: Duration) -> (WsEnd, Vec<Value>) {
        let deadline = tokio::time::Instant::now() + within;
        let mut msgs = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_json(left).await {
                Ok(v) if v["type"] == "batch" => msgs.extend(self.take_batch(v)),
                Ok(v) => self.others.push(v),
                Err(end) => return (end, msgs),
            }
        }
    }

    /// Closes from the client side (normal close), bounded.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }
}

// ---- SSE reader ---------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {:?}", self.data))
    }
}

/// Parses `text/event-stream` from a streaming response, chunk by chunk.
pub struct SseReader {
    res: reqwest::Response,
    buf: Vec<u8>,
    /// Return `online` events too (skipped by default: they come whenever
    /// the room's count changes; tests/online_counts.rs keeps them).
    pub keep_online: bool,
}

impl SseReader {
    /// Reads the events of `res` (an answered SSE request).
    pub fn new(res: reqwest::Response) -> SseReader {
        SseReader {
            res,
            buf: Vec::new(),
            keep_online: false,
        }
    }

    /// The next event (comments such as `: ping` skipped, and `online`
    /// events unless `keep_online`); `None` on timeout or end of stream.
    pub async fn next_event(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(block) = self.take_block() {
                if let Some(ev) = parse_sse_block(&block) {
                    if ev.event.as_deref() == Some("online") && !self.keep_online {
                        continue;
                    }
                    return Some(ev);
                }
            }
            match tokio::time::timeout_at(deadline, self.res.chunk()).await {
                Err(_) => return None,
                Ok(Ok(Some(bytes))) => self.buf.extend_from_slice(&bytes),
                Ok(Ok(None)) | Ok(Err(_)) => return None,
            }
        }
    }

    fn take_block(&mut self) -> Option<String> {
        // Events end with a blank line; accept \n\n and \r\n\r\n.
        let text = std::str::from_utf8(&self.buf).ok()?;
        let (end, sep) = [("\r\n\r\n", 4), ("\n\n", 2)]
            .iter()
            .filter_map(|(pat, len)| text.find(pat).map(|i| (i, *len)))
            .min_by_key(|(i, _)| *i)?;
        let block = text[..end].to_string();
        self.buf.drain(..end + sep);
        Some(block)
    }

    /// Collects messages of `batch` events until `n` have arrived or time
    /// runs out; returns (messages, the batch events themselves).
    pub async fn collect(&mut self, n: usize, within: Duration) -> (Vec<Value>, Vec<SseEvent>) {
        let deadline = tokio::time::Instant::now() + within;
        let mut msgs = Vec::new();
        let mut events = Vec::new();
        while msgs.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(ev) = self.next_event(left).await else {
                break;
            };
            if ev.event.as_deref() == Some("batch") {
                let v = ev.json();
                msgs.extend(v["messages"].as_array().expect("messages").iter().cloned());
                events.push(ev);
            }
        }
        (msgs, events)
    }
}

fn parse_sse_block(block: &str) -> Option<SseEvent> {
    let mut ev = SseEvent::default();
    let mut data: Vec<&str> = Vec::new();
    let mut any = false;
    for line in block.lines() {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        any = true;
        match field {
            "id" => ev.id = Some(value.to_string()),
            "event" => ev.event = Some(value.to_string()),
            "data" => data.push(value),
            _ => {}
        }
    }
    ev.data = data.join("\n");
    any.then_some(ev)
}

// ---- Helpers of the API suites (viewer_transports, auth_failures, ingest_api)

/// A gift event body as the gift backend posts it.
pub fn gift_body(user: &str, name: &str, gift_id: &str, count: u32, value: u64) -> Value {
    serde_json::json!({
        "kind": "gift",
        "user": {"id": user, "name": name},
        "text": "sent a gift",
        "gift": {"gift_id": gift_id, "count": count, "value": value},
    })
}

/// Posts a fresh message as a "sentinel" and waits until the room holds it:
/// anything wrongly accepted before it would be stored by then too.
pub async fn sentinel(ts: &TestServer, room: &str) -> String {
    let tok = ts.token("sentinel-user", "Sentinel");
    let r = ts.post_danmaku(room, &tok, "sentinel", "sentinel").await;
    assert_eq!(r.0, StatusCode::ACCEPTED, "sentinel post: {}", r.1);
    let id = r.1["id"].as_str().expect("id").to_string();
    let deadline = Instant::now() + WAIT;
    loop {
        if ids(&ts.read_all(room).await).contains(&id) {
            return id;
        }
        assert!(Instant::now() < deadline, "sentinel never stored");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// After a series of refused requests: only the sentinel is stored, the
/// stored counter agrees, and the node still answers.
pub async fn assert_only_sentinel_stored(ts: &TestServer, room: &str) {
    let id = sentinel(ts, room).await;
    let all = ts.read_all(room).await;
    assert_eq!(ids(&all), vec![id], "only the sentinel is stored: {all:?}");
    assert_eq!(ts.metric("danmaku_messages_stored_total").await, 1.0);
    ts.healthz_ok().await;
}
