//! Behind a load balancer (README "Behind a load balancer"): per-address
//! limits key on the client a trusted proxy names (a real nginx in front of
//! a real `danmaku serve`), the PROXY protocol's address is the connection's
//! peer, and CORS answers browsers of the allowed origins only.

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::procs::{free_port, have_program, require_programs, Node, ScratchDir};
use common::TestServer;
use danmaku::auth::Authenticator;
use danmaku::config::Config;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// An nginx of the test's own (`daemon off`, everything in `dir`) proxying
/// `127.0.0.1:port` to `upstream`; killed when dropped.
struct Nginx {
    child: Child,
    port: u16,
}

impl Nginx {
    fn start(program: &str, dir: &Path, upstream: u16) -> Nginx {
        let port = free_port();
        for temp in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            let path = dir.join(temp);
            std::fs::create_dir_all(&path).unwrap();
            // Workers may run as another user when the test runs as root.
            let _ = Command::new("chmod").arg("777").arg(&path).status();
        }
        let d = dir.display();
        let conf = format!(
            "daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://127.0.0.1:{upstream};
      proxy_http_version 1.1;
      proxy_set_header X-Forwarded-For $remote_addr;
    }}
  }}
}}
"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut child = Command::new(program)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn nginx");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                panic!("nginx exited: {status}\n{log}");
            }
            assert!(Instant::now() < deadline, "nginx did not listen");
            std::thread::sleep(Duration::from_millis(25));
        }
        Nginx { child, port }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client whose connections come from `source` (a loopback address).
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(source.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn post(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    id: &str,
    forged: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let mut req = http
        .post(format!("{base}/v1/rooms/edge/danmaku"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(serde_json::json!({"client_msg_id": id, "text": "hi"}).to_string());
    if let Some(xff) = forged {
        req = req.header("x-forwarded-for", xff);
    }
    let res = req.send().await.expect("POST danmaku");
    let status = res.status();
    (status, res.json().await.unwrap_or_default())
}

#[tokio::test]
async fn behind_nginx_each_client_has_its_own_rate_bucket() {
    // Debian puts nginx in /usr/sbin, not on every user's PATH.
    let nginx = if !have_program("nginx") && Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    };
    if require_programs(&[nginx]).is_none() {
        return;
    }
    let env: Vec<(String, String)> = [
        ("DANMAKU_SERVER__TRUSTED_PROXIES", "127.0.0.1/32"),
        ("DANMAKU_INGEST__IP_RATE_PER_S", "0.01"),
        ("DANMAKU_INGEST__IP_BURST", "2"),
        ("DANMAKU_INGEST__USER_RATE_PER_S", "1000"),
        ("DANMAKU_INGEST__USER_BURST", "1000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let node = Node::spawn("serve", &env);
    let direct = client_from("127.0.0.1");
    node.ready(&direct).await;
    let dir = ScratchDir::new("nginx");
    let nginx = Nginx::start(nginx, &dir.0, node.port);
    let via_nginx = format!("http://127.0.0.1:{}", nginx.port);
    let token = Authenticator::new(&Config::embedded().auth).issue("u1", "Fan", 3600);

    // Client 1 (127.0.0.2) spends its burst of 2, then is limited; its
    // X-Forwarded-For is replaced by nginx, so forging one does not help.
    let c1 = client_from("127.0.0.2");
    for i in 0..2 {
        let (s, b) = post(&c1, &via_nginx, &token, &format!("c1-{i}"), None).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    }
    let (s, b) = post(&c1, &via_nginx, &token, "c1-x", Some("198.51.100.1")).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{b}");
    assert_eq!(b["error"]["code"], "rate_limited");

    // Client 2 (127.0.0.3), through the same nginx, has a bucket of its own.
    let c2 = client_from("127.0.0.3");
    for i in 0..2 {
        let (s, b) = post(&c2, &via_nginx, &token, &format!("c2-{i}"), None).await;
        assert_eq!(s, StatusCode::ACCEPTED, "client 2 is not client 1: {b}");
    }

    // Straight to the server from an untrusted peer (127.0.0.4): a forged
    // X-Forwarded-For is ignored, so every forgery shares the peer's bucket.
    let c3 = client_from("127.0.0.4");
    for i in 0..2 {
        let forged = format!("203.0.113.{i}");
        let (s, b) = post(&c3, &node.base(), &token, &format!("c3-{i}"), Some(&forged)).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    }
    let (s, b) = post(&c3, &node.base(), &token, "c3-x", Some("203.0.113.99")).await;
    assert_eq!(
        s,
        StatusCode::TOO_MANY_REQUESTS,
        "a forged X-Forwarded-For must not open a fresh bucket: {b}"
    );
}

// ---- PROXY protocol -------------------------------------------------------------

/// A connection to `port` from `source` that starts with `header`.
async fn connect_with(source: &str, port: u16, header: &[u8]) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut s = socket
        .connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap();
    s.write_all(header).await.unwrap();
    s
}

fn v1(client: &str) -> Vec<u8> {
    format!("PROXY TCP4 {client} 127.0.0.1 40000 8080\r\n").into_bytes()
}

/// A WebSocket handshake over `stream`: `Ok` when upgraded, else the HTTP
/// status and body of the refusal.
async fn ws_over(
    stream: TcpStream,
    url: &str,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, (u16, serde_json::Value)> {
    use tokio_tungstenite::tungstenite::Error;
    match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(url, stream),
    )
    .await
    .expect("handshake in time")
    {
        Ok((ws, _)) => Ok(ws),
        Err(Error::Http(res)) => Err((
            res.status().as_u16(),
            serde_json::from_slice(res.body().as_deref().unwrap_or(b"{}")).unwrap_or_default(),
        )),
        Err(e) => panic!("WebSocket handshake failed: {e}"),
    }
}

/// Reads until the peer closes (or 5 s): what it sent before closing.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server did not close the connection");
    out
}

#[tokio::test]
async fn proxy_protocol_address_is_the_peer_for_caps() {
    let t = TestServer::start_with(|c| {
        c.server.proxy_protocol = true;
        c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.server.max_viewer_connections_per_ip = 1;
    })
    .await;
    let port: u16 = t.base.rsplit(':').next().unwrap().parse().unwrap();
    let room = t.room("pp");
    let url = t.ws_url(&room, &[]);

    // 10.1.1.1 gets its one viewer stream, then the cap.
    let first = ws_over(connect_with("127.0.0.1", port, &v1("10.1.1.1")).await, &url)
        .await
        .expect("the first stream of 10.1.1.1 opens");
    let (status, body) = ws_over(connect_with("127.0.0.1", port, &v1("10.1.1.1")).await, &url)
        .await
        .expect_err("a second stream of 10.1.1.1 is over its cap");
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_connections");
    // Another client behind the same balancer is not affected; nor is one
    // in the binary form (v2, 10.3.3.3).
    let _second = ws_over(connect_with("127.0.0.1", port, &v1("10.2.2.2")).await, &url)
        .await
        .expect("10.2.2.2 has a cap of its own");
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[10, 3, 3, 3, 127, 0, 0, 1, 0x9c, 0x40, 0x1f, 0x90]);
    let _third = ws_over(connect_with("127.0.0.1", port, &v2).await, &url)
        .await
        .expect("10.3.3.3 (v2 header) has a cap of its own");

    // A plain request with a header is served.
    let mut s = connect_with("127.0.0.1", port, &v1("10.4.4.4")).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&read_to_close(&mut s).await).to_string();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // No header: closed without an answer.
    let mut s = connect_with(
        "127.0.0.1",
        port,
        b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert_eq!(read_to_close(&mut s).await, b"", "no PROXY header");
    // A header from a peer that is no trusted proxy: closed too.
    let mut s = connect_with("127.0.0.2", port, &v1("10.5.5.5")).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_to_close(&mut s).await, b"", "untrusted peer");
    drop(first);
    t.shutdown().await;
}

// ---- CORS -----------------------------------------------------------------------

#[tokio::test]
async fn cors_answers_allowed_origins_only() {
    let t = TestServer::start_with(|c| {
        c.server.allowed_origins = vec!["https://app.example".to_string()];
    })
    .await;
    let room = t.room("cors");
    let preflight = |origin: &'static str| {
        t.http
            .request(
                reqwest::Method::OPTIONS,
                t.url(&format!("/v1/rooms/{room}/danmaku")),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let res = preflight("https://app.example").await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    let methods = h["access-control-allow-methods"].to_str().unwrap();
    assert!(methods.contains("POST"), "{methods}");
    let headers = h["access-control-allow-headers"].to_str().unwrap();
    for name in [
        "authorization",
        "content-type",
        "idempotency-key",
        "last-event-id",
    ] {
        assert!(headers.contains(name), "{headers}");
    }
    assert!(h.contains_key("access-control-max-age"));
    assert_eq!(h["vary"], "origin");
    assert!(!h.contains_key("access-control-allow-credentials"));

    let res = preflight("https://evil.example").await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let cors: Vec<_> = res
        .headers()
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .collect();
    assert!(cors.is_empty(), "{cors:?}");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "origin_not_allowed");

    let res = t
        .http
        .get(t.url("/healthz"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let exposed = res.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("etag") && exposed.contains("retry-after"));

    // WebSocket upgrades still work with the layer in place (hello read).
    let ws = t.ws(&room, &[]).await;
    ws.close().await;
    t.shutdown().await;
}
