//! A minimal client for loopback benchmarks: HTTP/1.1 keep-alive requests,
//! chunked streams (SSE) and WebSocket frames, parsed in place from one
//! growable buffer per connection. No TLS, no redirects, no proxies: it only
//! talks to a local `danmaku serve`.

use std::io;
use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context};
use tokio::net::{TcpSocket, TcpStream};

/// Where the server is: a loopback address, its Host header, and the local
/// addresses connections are spread over (127.0.0.1, 127.0.0.2, … when asked,
/// so that many connections do not share one ephemeral port range).
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub sources: Vec<IpAddr>,
}

impl Target {
    /// Parses `http://host:port` (or `ws://`), resolves it and refuses
    /// anything that is not loopback.
    pub async fn parse(url: &str, source_ips: usize) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
            .with_context(|| {
                format!("{url}: only http:// (or ws://) loopback URLs are accepted")
            })?;
        let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
        if !path.is_empty() {
            bail!("{url}: give the server's base URL without a path");
        }
        let with_port = if hostport.ends_with(']') || !hostport.contains(':') {
            format!("{hostport}:80")
        } else {
            hostport.to_string()
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&with_port)
            .await
            .with_context(|| format!("resolving {with_port}"))?
            .collect();
        if addrs.is_empty() {
            bail!("{url}: no address");
        }
        if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            bail!(
                "{url} resolves to {a}, which is not loopback: this tool only loads a local server"
            );
        }
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .copied()
            .unwrap_or(addrs[0]);
        let sources = match addr.ip() {
            IpAddr::V4(_) if source_ips > 1 => (0..source_ips.min(250))
                .map(|i| IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1 + i as u8)))
                .collect(),
            _ => Vec::new(),
        };
        Ok(Target {
            addr,
            host: hostport.to_string(),
            sources,
        })
    }
}

/// What an HTTP response head said.
#[derive(Debug, Clone, Copy)]
pub struct Head {
    pub status: u16,
    pub content_length: Option<usize>,
    pub chunked: bool,
    /// A status that never has a body (1xx, 204, 304), whatever the headers say.
    pub bodiless: bool,
}

/// Parses a response head at the front of `d`: `None` until it is complete,
/// else the head and its length. With `etag`, the `ETag` value is copied there
/// (cleared when the response has none).
fn parse_head(d: &[u8], etag: Option<&mut Vec<u8>>) -> io::Result<Option<(Head, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut res = httparse::Response::new(&mut headers);
    let n = match res.parse(d) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(io::Error::other(format!("bad response head: {e}"))),
    };
    let status = res.code.unwrap_or(0);
    let mut head = Head {
        status,
        content_length: None,
        chunked: false,
        bodiless: (100..200).contains(&status) || status == 204 || status == 304,
    };
    let mut etag = etag;
    if let Some(e) = etag.as_deref_mut() {
        e.clear();
    }
    for h in res.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            head.content_length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = h
                .value
                .windows(7)
                .any(|w| w.eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("etag") {
            if let Some(e) = etag.as_deref_mut() {
                e.extend_from_slice(h.value);
            }
        }
    }
    Ok(Some((head, n)))
}

/// A WebSocket frame at the front of the buffer: payload is
/// `data()[hdr..hdr + len]`; `consume(hdr + len)` when done.
#[derive(Debug, Clone, Copy)]
pub struct WsFrame {
    pub opcode: u8,
    pub fin: bool,
    /// Compressed (permessage-deflate; on a message's first frame).
    pub rsv1: bool,
    pub hdr: usize,
    pub len: usize,
}

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// Bytes read from the socket so far.
    pub bytes_read: u64,
}

impl Conn {
    /// Connects (from source address `i % sources`), with TCP_NODELAY and
    /// an initial read buffer of `buf` bytes.
    pub async fn connect(t: &Target, i: usize, buf: usize) -> io::Result<Conn> {
        Conn::connect_with_rcvbuf(t, i, buf, None).await
    }

    /// `connect` with the socket's receive buffer set to `rcvbuf` bytes
    /// (before the handshake, so the window the server sees is small too).
    pub async fn connect_with_rcvbuf(
        t: &Target,
        i: usize,
        buf: usize,
        rcvbuf: Option<u32>,
    ) -> io::Result<Conn> {
        let stream = if t.sources.is_empty() && rcvbuf.is_none() {
            TcpStream::connect(t.addr).await?
        } else {
            let sock = if t.addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Some(n) = rcvbuf {
                sock.set_recv_buffer_size(n)?;
            }
            if !t.sources.is_empty() {
                sock.bind(SocketAddr::new(t.sources[i % t.sources.len()], 0))?;
            }
            sock.connect(t.addr).await?
        };
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: vec![0; buf.max(256)],
            pos: 0,
            end: 0,
            bytes_read: 0,
        })
    }

    /// Unconsumed bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    #[inline]
    pub fn consume(&mut self, n: usize) {
        self.pos += n;
        debug_assert!(self.pos <= self.end);
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        }
    }

    /// Reads at least one more byte (EOF is an error), making room first.
    pub async fn fill(&mut self) -> io::Result<()> {
        if self.end == self.buf.len() {
            if self.pos > 0 {
                self.buf.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
            } else {
                let n = self.buf.len() * 2;
                self.buf.resize(n, 0);
            }
        }
        loop {
            match self.stream.try_read(&mut self.buf[self.end..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.end += n;
                    self.bytes_read += n as u64;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stream.readable().await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Makes sure at least `n` unconsumed bytes are buffered.
    pub async fn ensure(&mut self, n: usize) -> io::Result<()> {
        while self.end - self.pos < n {
            if self.buf.len() - self.pos < n {
                self.buf.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
                if self.buf.len() < n {
                    self.buf.resize(n.next_power_of_two(), 0);
                }
            }
            self.fill().await?;
        }
        Ok(())
    }

    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match self.stream.try_write(data) {
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stream.writable().await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads and consumes one response head.
    pub async fn read_head(&mut self) -> io::Result<Head> {
        self.read_head_etag(None).await
    }

    /// `read_head`, also copying the `ETag` value into `etag` when there is one.
    pub async fn read_head_etag(&mut self, mut etag: Option<&mut Vec<u8>>) -> io::Result<Head> {
        loop {
            if let Some((head, n)) = parse_head(self.data(), etag.as_deref_mut())? {
                self.consume(n);
                return Ok(head);
            }
            if self.end - self.pos > 64 * 1024 {
                return Err(io::Error::other("response head too large"));
            }
            self.fill().await?;
        }
    }

    /// After `read_head`: makes the whole body available. Content-length
    /// bodies stay in the buffer (`Body::InBuffer(len)`: `data()[..len]`,
    /// then `consume(len)`); chunked ones are collected.
    pub async fn read_body(&mut self, head: &Head) -> io::Result<Body> {
        if head.bodiless {
            return Ok(Body::InBuffer(0));
        }
        if let Some(len) = head.content_length {
            self.ensure(len).await?;
            return Ok(Body::InBuffer(len));
        }
        if head.chunked {
            let mut out = Vec::new();
            loop {
                let (hdr, size) = self.next_chunk().await?;
                out.extend_from_slice(&self.data()[hdr..hdr + size]);
                self.consume(hdr + size + 2);
                if size == 0 {
                    return Ok(Body::Owned(out));
                }
            }
        }
        Err(io::Error::other(
            "response without length (connection-delimited bodies are not supported)",
        ))
    }

    /// In a chunked stream: waits for a whole chunk at the front. Returns
    /// (header length, payload size); the chunk ends at `hdr + size + 2`.
    /// Size 0 is the last chunk (its trailer must be empty).
    pub async fn next_chunk(&mut self) -> io::Result<(usize, usize)> {
        loop {
            let d = self.data();
            if let Some(nl) = memchr::memchr(b'\n', d) {
                let line = &d[..nl];
                let hex_end = line
                    .iter()
                    .position(|b| !b.is_ascii_hexdigit())
                    .unwrap_or(line.len());
                let size =
                    usize::from_str_radix(std::str::from_utf8(&line[..hex_end]).unwrap_or(""), 16)
                        .map_err(|_| io::Error::other("bad chunk size"))?;
                let hdr = nl + 1;
                self.ensure(hdr + size + 2).await?;
                return Ok((hdr, size));
            }
            if d.len() > 1024 {
                return Err(io::Error::other("bad chunk header"));
            }
            self.fill().await?;
        }
    }

    /// Sends a WebSocket upgrade for `path` and waits for `101`.
    /// The upgrade; `compress`: offer permessage-deflate as browsers do
    /// (the server may decline; RSV1 on a frame tells).
    pub async fn ws_handshake(&mut self, host: &str, path: &str, compress: bool) -> io::Result<()> {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
        let offer = if compress {
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        } else {
            ""
        };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
        );
        self.write_all(req.as_bytes()).await?;
        let head = self.read_head().await?;
        if head.status != 101 {
            let body = match self.read_body(&head).await {
                Ok(Body::InBuffer(n)) => {
                    let s = String::from_utf8_lossy(&self.data()[..n]).into_owned();
                    self.consume(n);
                    s
                }
                Ok(Body::Owned(v)) => String::from_utf8_lossy(&v).into_owned(),
                Err(_) => String::new(),
            };
            return Err(io::Error::other(format!(
                "upgrade refused: HTTP {} {}",
                head.status,
                body.chars().take(200).collect::<String>()
            )));
        }
        Ok(())
    }

    /// Waits for a whole WebSocket frame at the front of the buffer.
    pub async fn ws_next(&mut self) -> io::Result<WsFrame> {
        loop {
            if let Some(f) = parse_ws_header(self.data()) {
                if f.len > 64 << 20 {
                    return Err(io::Error::other("frame larger than 64 MiB"));
                }
                self.ensure(f.hdr + f.len).await?;
                return Ok(f);
            }
            self.fill().await?;
        }
    }

    /// Sends one masked (client) frame.
    pub async fn ws_send(&self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        out.push(0x80 | opcode);
        let n = payload.len();
        if n < 126 {
            out.push(0x80 | n as u8);
        } else if n <= u16::MAX as usize {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        let mask: [u8; 4] = rand::random();
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        self.write_all(&out).await
    }
}

pub enum Body {
    InBuffer(usize),
    Owned(Vec<u8>),
}

fn parse_ws_header(d: &[u8]) -> Option<WsFrame> {
    if d.len() < 2 {
        return None;
    }
    let fin = d[0] & 0x80 != 0;
    let rsv1 = d[0] & 0x40 != 0;
    let opcode = d[0] & 0x0f;
    let masked = d[1] & 0x80 != 0;
    let (len, mut hdr) = match d[1] & 0x7f {
        126 => {
            if d.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([d[2], d[3]]) as usize, 4)
        }
        127 => {
            if d.len() < 10 {
                return None;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&d[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (n as usize, 2),
    };
    if masked {
        hdr += 4; // servers do not mask; a masked frame's payload is left as is
    }
    Some(WsFrame {
        opcode,
        fin,
        rsv1,
        hdr,
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_heads_with_etags_and_bodiless_statuses() {
        let mut etag = b"stale".to_vec();
        let d =
            b"HTTP/1.1 304 Not Modified\r\nETag: \"abc\"\r\ncache-control: x\r\n\r\nHTTP/1.1 200";
        let (h, n) = parse_head(d, Some(&mut etag)).unwrap().unwrap();
        assert_eq!((h.status, h.bodiless, h.content_length), (304, true, None));
        assert_eq!(etag, b"\"abc\"");
        assert!(d[n..].starts_with(b"HTTP/1.1 200"), "head length");
        let d = b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\netag: \"d\"\r\n\r\n{}";
        let (h, _) = parse_head(d, Some(&mut etag)).unwrap().unwrap();
        assert_eq!(
            (h.status, h.bodiless, h.content_length),
            (200, false, Some(12))
        );
        assert_eq!(etag, b"\"d\"");
        let d = b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n";
        let (h, _) = parse_head(d, Some(&mut etag)).unwrap().unwrap();
        assert!(h.chunked && !h.bodiless);
        assert!(etag.is_empty(), "no ETag: cleared");
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-le", None)
            .unwrap()
            .is_none());
        assert!(parse_head(b"HTTQ/1.1 200\r\n\r\n", None).is_err());
    }

    #[test]
    fn ws_headers_of_each_length_form() {
        assert!(parse_ws_header(&[0x81]).is_none());
        let f = parse_ws_header(&[0x81, 5, b'h']).unwrap();
        assert_eq!((f.opcode, f.fin, f.hdr, f.len), (OP_TEXT, true, 2, 5));
        let f = parse_ws_header(&[0x01, 126, 0x12, 0x34]).unwrap();
        assert_eq!((f.opcode, f.fin, f.hdr, f.len), (OP_TEXT, false, 4, 0x1234));
        assert!(parse_ws_header(&[0x82, 127, 0, 0]).is_none());
        let f = parse_ws_header(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]).unwrap();
        assert_eq!((f.opcode, f.hdr, f.len), (OP_BINARY, 10, 65536));
        let f = parse_ws_header(&[0x89, 0x80 | 2]).unwrap();
        assert_eq!(
            (f.opcode, f.hdr, f.len),
            (OP_PING, 6, 2),
            "masked: 4 key bytes"
        );
        let f = parse_ws_header(&[0x88, 2, 0x03, 0xf0]).unwrap();
        assert_eq!((f.opcode, f.len), (OP_CLOSE, 2));
        assert_eq!(OP_CONT, 0);
        assert_eq!(OP_PONG, 0xA);
    }

    #[tokio::test]
    async fn only_loopback_urls() {
        assert!(Target::parse("http://127.0.0.1:8080", 1).await.is_ok());
        assert!(Target::parse("http://localhost:8080", 1).await.is_ok());
        assert!(Target::parse("http://[::1]:8080", 1).await.is_ok());
        assert!(Target::parse("http://10.1.2.3:8080", 1).await.is_err());
        assert!(Target::parse("https://127.0.0.1:8080", 1).await.is_err());
        assert!(Target::parse("http://127.0.0.1:8080/v1", 1).await.is_err());
        let t = Target::parse("http://127.0.0.1:8080", 3).await.unwrap();
        assert_eq!(t.sources.len(), 3);
    }
}
