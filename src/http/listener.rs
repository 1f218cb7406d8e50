//! The HTTP/1 accept loop (hyper directly, not `axum::serve`).
//!
//! `axum::serve` gives hyper no timer, so a client could hold a connection
//! for ever by sending its request head one byte at a time (slowloris) or by
//! idling on keep-alive, and nothing caps how many sockets a node or one
//! address holds. Here every connection gets:
//! - a deadline for its request head (`server.header_read_timeout_ms`); hyper
//!   restarts it whenever the connection waits for a next request, so it also
//!   closes idle keep-alive connections;
//! - a cap on the request head's size (`server.max_header_bytes`, 431);
//! - a slot in the node's and its address's open-connection caps
//!   (`server.max_connections`, `server.max_connections_per_ip`), held by the
//!   socket itself so an upgraded WebSocket keeps it until it closes. Past a
//!   cap the connection gets a one-shot JSON 503 / 429 and is closed;
//! - with `server.proxy_protocol`, a PROXY header first (only from
//!   `server.trusted_proxies`, within the head deadline): the address it
//!   carries is the connection's peer from then on, caps included.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use super::proxy_protocol::{self, ProxyHeader};
use crate::config::{any_contains, Cidr};
use crate::error::ApiError;
use crate::fanout::direct::socket::{SharedSocket, StackIo};
use crate::front::{IpSlot, PerIpLimiter};
use crate::metrics::process::open_file_limit;
use crate::metrics::Metrics;

/// What the accept loop enforces (from `[server]`).
#[derive(Clone, Debug)]
pub struct ListenerLimits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Bytes a socket queues for a slow reader before the hub stops writing
    /// to it directly (`fanout.push_backlog_bytes`).
    pub push_backlog_bytes: usize,
    /// Connections start with a PROXY header (`server.proxy_protocol`),
    /// taken only from these peers (`server.trusted_proxies`).
    pub proxy_protocol: bool,
    pub trusted_proxies: Vec<Cidr>,
    /// `SO_SNDBUF` of accepted sockets (`server.socket_send_buffer_bytes`; 0: the kernel's).
    pub send_buffer_bytes: usize,
}

impl ListenerLimits {
    pub fn from_config(
        c: &crate::config::ServerConfig,
        fanout: &crate::config::FanoutConfig,
    ) -> Self {
        ListenerLimits {
            header_read_timeout: Duration::from_millis(c.header_read_timeout_ms.max(1)),
            max_header_bytes: c.max_header_bytes,
            max_connections: if c.max_connections == 0 {
                default_max_connections()
            } else {
                c.max_connections
            },
            max_connections_per_ip: c.max_connections_per_ip,
            push_backlog_bytes: fanout.push_backlog_bytes.max(1),
            proxy_protocol: c.proxy_protocol,
            trusted_proxies: c.trusted_proxies.clone(),
            send_buffer_bytes: c.socket_send_buffer_bytes,
        }
    }
}

/// The process's open-file limit less a reserve for everything that is not
/// a client socket (store, bus and archive connections, logs): past it
/// `accept` would fail with EMFILE instead of a clear answer.
fn default_max_connections() -> usize {
    const RESERVE: u64 = 512;
    open_file_limit()
        .map_or(1024, |(soft, _)| soft)
        .saturating_sub(RESERVE)
        .clamp(64, 1 << 20) as usize
}

/// Raises the soft open-file limit to the hard one (a server holds one
/// descriptor per viewer; the usual soft default of 1024 is for desktop
/// programs). Returns the soft limit in force.
pub fn raise_open_file_limit() -> Option<u64> {
    let (soft, hard) = open_file_limit()?;
    if soft < hard {
        let want = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return Some(hard);
        }
    }
    Some(soft)
}

/// Serves `app` on `listener` until `shutdown`; then stops accepting, asks
/// open connections to finish their current request, and returns when they
/// are gone (upgraded connections are closed by their own handlers).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ListenerLimits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    tracing::info!(
        max_connections = limits.max_connections,
        max_connections_per_ip = limits.max_connections_per_ip,
        header_read_timeout_ms = limits.header_read_timeout.as_millis() as u64,
        proxy_protocol = limits.proxy_protocol,
        "accepting connections"
    );
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes);
    let node_slots = Arc::new(Semaphore::new(limits.max_connections));
    let accept = Arc::new(Acceptor {
        ip_slots: PerIpLimiter::new(limits.max_connections_per_ip, "connections"),
        http,
        app,
        limits,
        metrics,
        refusals: TaskTracker::new(),
        shutdown: shutdown.clone(),
    });
    let connections = TaskTracker::new();
    loop {
        let (mut stream, peer) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning; the
                    // connections already open keep being served.
                    accept.metrics.http_accept_errors.inc();
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(node_slot) = node_slots.clone().try_acquire_owned() else {
            let e = ApiError::unavailable(
                "too_many_connections",
                format!(
                    "this node holds its maximum of {} connections",
                    accept.limits.max_connections
                ),
            );
            accept.refuse(stream, &e);
            continue;
        };
        if !accept.limits.proxy_protocol {
            if let Some(conn) = accept.admit(stream, peer, node_slot) {
                connections.spawn(conn);
            }
            continue;
        }
        // PROXY protocol: only a trusted balancer may name the client.
        if !any_contains(&accept.limits.trusted_proxies, peer.ip()) {
            accept.connection_error("proxy_untrusted", peer, "not a trusted proxy");
            continue;
        }
        // The header is read in the connection's task: a slow sender must
        // not hold up the accept loop.
        let accept = accept.clone();
        connections.spawn(async move {
            let header = tokio::select! {
                header = proxy_protocol::read_header(&mut stream, accept.limits.header_read_timeout) => header,
                _ = accept.shutdown.cancelled() => return,
            };
            let client = match header {
                Ok(ProxyHeader::Proxied(client)) => client,
                Ok(ProxyHeader::Local) => peer,
                Err(e) => {
                    accept.connection_error("proxy_header", peer, &e.to_string());
                    return;
                }
            };
            if let Some(conn) = accept.admit(stream, client, node_slot) {
                conn.await;
            }
        });
    }
    drop(listener);
    connections.close();
    accept.refusals.close();
    connections.wait().await;
    accept.refusals.wait().await;
    Ok(())
}

/// What every accepted connection is served with.
struct Acceptor {
    http: http1::Builder,
    app: Router,
    limits: ListenerLimits,
    metrics: Arc<Metrics>,
    ip_slots: PerIpLimiter,
    refusals: TaskTracker,
    shutdown: CancellationToken,
}

impl Acceptor {
    /// Takes `peer`'s slot in the per-address cap and returns the
    /// connection to run, or answers it with a refusal past the cap.
    fn admit(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        node_slot: OwnedSemaphorePermit,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let ip_slot = match self.ip_slots.acquire(peer.ip().to_canonical()) {
            Ok(slot) => slot,
            Err(e) => {
                self.refuse(stream, &e);
                return None;
            }
        };
        // Frames are written whole; Nagle would only delay them.
        let _ = stream.set_nodelay(true);
        if self.limits.send_buffer_bytes > 0 {
            // Best effort: the kernel clamps it to its limits (wmem_max).
            let _ =
                socket2::SockRef::from(&stream).set_send_buffer_size(self.limits.send_buffer_bytes);
        }
        let socket = SharedSocket::new(stream, self.limits.push_backlog_bytes);
        let io = TokioIo::new(CountedStream {
            io: StackIo::new(socket.clone()),
            _slots: ConnectionSlots::new(node_slot, ip_slot, self.metrics.clone()),
        });
        let app = self.app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            // The WebSocket handler hands the raw socket to the room's hub.
            req.extensions_mut().insert(ClientSocket(socket.clone()));
            // A Router is always ready: no poll_ready needed.
            app.clone().call(req)
        });
        let conn = self.http.serve_connection(io, service).with_upgrades();
        let shutdown = self.shutdown.clone();
        let metrics = self.metrics.clone();
        Some(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                let kind = if e.is_timeout() {
                    "header_timeout"
                } else if e.is_parse_too_large() {
                    "header_too_large"
                } else if e.is_parse() {
                    "malformed"
                } else {
                    "io"
                };
                metrics
                    .http_connection_errors
                    .with_label_values(&[kind])
                    .inc();
                tracing::debug!(%peer, kind, error = %e, "connection ended with an error");
            }
        })
    }

    /// Counts and logs a connection closed before HTTP (it is dropped).
    fn connection_error(&self, kind: &'static str, peer: SocketAddr, why: &str) {
        self.metrics
            .http_connection_errors
            .with_label_values(&[kind])
            .inc();
        tracing::debug!(%peer, kind, why, "connection closed before HTTP");
    }

    fn refuse(&self, stream: TcpStream, e: &ApiError) {
        refuse(&self.refusals, stream, e, &self.metrics);
    }
}

/// Refused connections being answered at once; past this many the rest
/// are closed without an answer (a flood must not grow the refusals).
const MAX_PENDING_REFUSALS: usize = 256;
/// How long a refused client gets to read its answer.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// Answers a connection over a cap with the error as a complete HTTP/1.1
/// response, then closes it.
fn refuse(refusals: &TaskTracker, mut stream: TcpStream, e: &ApiError, metrics: &Metrics) {
    metrics
        .http_connections_refused
        .with_label_values(&[if e.status == 503 { "node" } else { "address" }])
        .inc();
    if refusals.len() >= MAX_PENDING_REFUSALS {
        return;
    }
    let answer = refusal_bytes(e);
    refusals.spawn(async move {
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            stream.write_all(&answer).await?;
            stream.shutdown().await?;
            // Drain what the client sent, so closing does not reset the
            // connection before it has read the answer.
            let mut sink = [0u8; 1024];
            while tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await? > 0 {}
            io::Result::Ok(())
        })
        .await;
    });
}

fn refusal_bytes(e: &ApiError) -> Vec<u8> {
    let body = serde_json::to_vec(&e.body()).expect("an error body serialises");
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n",
        e.status.as_u16(),
        e.status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if let Some(s) = e.retry_after_s {
        out.push_str(&format!("retry-after: {s}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&body);
    out
}

/// A connection's places in the node and address caps and in the
/// open-connections gauge, released when the socket is dropped.
struct ConnectionSlots {
    _node: OwnedSemaphorePermit,
    _ip: IpSlot,
    metrics: Arc<Metrics>,
}

impl ConnectionSlots {
    fn new(node: OwnedSemaphorePermit, ip: IpSlot, metrics: Arc<Metrics>) -> Self {
        metrics.http_connections_open.inc();
        ConnectionSlots {
            _node: node,
            _ip: ip,
            metrics,
        }
    }
}

impl Drop for ConnectionSlots {
    fn drop(&mut self) {
        self.metrics.http_connections_open.dec();
    }
}

/// A client socket that carries its slots: hyper hands the socket to an
/// upgraded WebSocket, and the slots go with it until it closes.
struct CountedStream {
    io: StackIo,
    _slots: ConnectionSlots,
}

/// The request's connection, shared with whoever may write to it directly
/// (a WebSocket viewer's hub); in every request's extensions.
#[derive(Clone)]
pub struct ClientSocket(pub Arc<SharedSocket>);

impl AsyncRead for CountedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_a_complete_json_response() {
        let e = ApiError::unavailable("too_many_connections", "full");
        let text = String::from_utf8(refusal_bytes(&e)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("retry-after: 1"));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "too_many_connections");
    }

    #[test]
    fn the_default_connection_cap_leaves_descriptors_for_the_rest() {
        let n = default_max_connections();
        assert!(n >= 64, "{n}");
    }
}
