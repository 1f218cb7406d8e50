//! The PROXY protocol (HAProxy's, v1 text and v2 binary;
//! `server.proxy_protocol`): a load balancer that forwards raw TCP starts
//! each connection with a header naming the client's address, which then
//! stands for the connection's peer (caps, limits, logs).
//!
//! [`parse`] is the pure parser; [`read_header`] takes exactly the header's
//! bytes off a socket (peeking first, so not one byte of the HTTP request
//! behind it is consumed), within a deadline and a size bound.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// What a header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The client's address (source address and port).
    Proxied(SocketAddr),
    /// v2 `LOCAL`, v1 `UNKNOWN`, or an address family without one (the
    /// balancer's own health check): the socket peer stands.
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// A valid beginning: more bytes are needed.
    Incomplete,
    Invalid(&'static str),
}

const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 line, CRLF included (the specification's bound).
const V1_MAX: usize = 107;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Largest v2 header taken (fixed part, addresses, TLVs): balancers add a
/// few small TLVs; anything bigger is refused rather than buffered.
pub const V2_MAX: usize = 16 + 1024;

/// Parses a header at the start of `buf`: what it says and its length.
pub fn parse(buf: &[u8]) -> Result<(ProxyHeader, usize), ParseError> {
    if buf.len() < V2_SIGNATURE.len() && V2_SIGNATURE.starts_with(buf)
        || buf.len() < V1_PREFIX.len() && V1_PREFIX.starts_with(buf)
    {
        return Err(ParseError::Incomplete);
    }
    if buf.starts_with(V2_SIGNATURE) {
        parse_v2(buf)
    } else if buf.starts_with(V1_PREFIX) {
        parse_v1(buf)
    } else {
        Err(ParseError::Invalid("no PROXY protocol header"))
    }
}

fn parse_v1(buf: &[u8]) -> Result<(ProxyHeader, usize), ParseError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return Err(if buf.len() >= V1_MAX {
            ParseError::Invalid("PROXY v1 line longer than 107 bytes")
        } else {
            ParseError::Incomplete
        });
    };
    let bad = ParseError::Invalid("malformed PROXY v1 line");
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..end]).map_err(|_| bad)?;
    let mut fields = line.split(' ');
    let header = match fields.next() {
        Some("UNKNOWN") => ProxyHeader::Local,
        Some(family @ ("TCP4" | "TCP6")) => {
            let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
            ) else {
                return Err(bad);
            };
            // The destination is checked, not used: the client is the source.
            let src: IpAddr = if family == "TCP4" {
                dst.parse::<Ipv4Addr>().map_err(|_| bad)?;
                src.parse::<Ipv4Addr>().map_err(|_| bad)?.into()
            } else {
                dst.parse::<Ipv6Addr>().map_err(|_| bad)?;
                IpAddr::V6(src.parse::<Ipv6Addr>().map_err(|_| bad)?).to_canonical()
            };
            let sport = port(sport).ok_or(bad)?;
            port(dport).ok_or(bad)?;
            ProxyHeader::Proxied(SocketAddr::new(src, sport))
        }
        _ => return Err(bad),
    };
    Ok((header, end + 2))
}

/// A decimal port as v1 writes it (no sign, no leading zero).
fn port(s: &str) -> Option<u16> {
    let plain =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    plain.then(|| s.parse().ok()).flatten()
}

fn parse_v2(buf: &[u8]) -> Result<(ProxyHeader, usize), ParseError> {
    if buf.len() < 16 {
        return Err(ParseError::Incomplete);
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 {
        return Err(ParseError::Invalid("PROXY v2 header of an unknown version"));
    }
    let (family, transport) = (buf[13] >> 4, buf[13] & 0x0f);
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = 16 + len;
    if total > V2_MAX {
        return Err(ParseError::Invalid("PROXY v2 header too large"));
    }
    if buf.len() < total {
        return Err(ParseError::Incomplete);
    }
    let body = &buf[16..total];
    let header = match command {
        0x0 => ProxyHeader::Local,
        0x1 => {
            if transport > 2 {
                return Err(ParseError::Invalid(
                    "PROXY v2 header of an unknown transport",
                ));
            }
            let short = ParseError::Invalid("PROXY v2 address block too short");
            match family {
                // AF_INET: src, dst (4 bytes each), src port, dst port.
                0x1 => {
                    let b: &[u8; 12] = body.get(..12).ok_or(short)?.try_into().unwrap();
                    let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
                    let port = u16::from_be_bytes([b[8], b[9]]);
                    ProxyHeader::Proxied(SocketAddr::new(ip.into(), port))
                }
                // AF_INET6: src, dst (16 bytes each), src port, dst port.
                0x2 => {
                    let b: &[u8; 36] = body.get(..36).ok_or(short)?.try_into().unwrap();
                    let src: [u8; 16] = b[..16].try_into().unwrap();
                    let port = u16::from_be_bytes([b[32], b[33]]);
                    let ip = IpAddr::V6(Ipv6Addr::from(src)).to_canonical();
                    ProxyHeader::Proxied(SocketAddr::new(ip, port))
                }
                // AF_UNSPEC, AF_UNIX: no IP address to take.
                0x0 | 0x3 => ProxyHeader::Local,
                _ => return Err(ParseError::Invalid("PROXY v2 header of an unknown family")),
            }
        }
        _ => return Err(ParseError::Invalid("PROXY v2 header of an unknown command")),
    };
    Ok((header, total))
}

/// Takes a PROXY header off `stream` within `deadline`: exactly its bytes,
/// so the request behind it stays for the HTTP parser.
pub async fn read_header(stream: &mut TcpStream, deadline: Duration) -> io::Result<ProxyHeader> {
    match tokio::time::timeout(deadline, read_header_inner(stream)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no PROXY header in time",
        )),
    }
}

async fn read_header_inner(stream: &mut TcpStream) -> io::Result<ProxyHeader> {
    let invalid = |why: &'static str| io::Error::new(io::ErrorKind::InvalidData, why);
    let mut buf = vec![0u8; V2_MAX];
    let mut have = 0;
    loop {
        // Peek at what has arrived; consume only header bytes: all of them
        // while the header is incomplete, up to its end once complete.
        let n = stream.peek(&mut buf[have..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before a PROXY header",
            ));
        }
        // What was peeked before is consumed: the peek starts at `have`.
        match parse(&buf[..have + n]) {
            Ok((header, len)) => {
                stream.read_exact(&mut buf[have..len]).await?;
                return Ok(header);
            }
            Err(ParseError::Incomplete) => {
                if have + n == buf.len() {
                    return Err(invalid("PROXY header too large"));
                }
                stream.read_exact(&mut buf[have..have + n]).await?;
                have += n;
            }
            Err(ParseError::Invalid(why)) => return Err(invalid(why)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        h.extend_from_slice(addresses);
        h
    }

    fn proxied(s: &str) -> ProxyHeader {
        ProxyHeader::Proxied(s.parse().unwrap())
    }

    #[test]
    fn v1_lines() {
        let ok: &[(&[u8], ProxyHeader)] = &[
            (
                b"PROXY TCP4 10.1.1.1 10.0.0.1 56324 443\r\n",
                proxied("10.1.1.1:56324"),
            ),
            (
                b"PROXY TCP6 2001:db8::1 2001:db8::2 4711 80\r\n",
                proxied("[2001:db8::1]:4711"),
            ),
            (b"PROXY UNKNOWN\r\n", ProxyHeader::Local),
            (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", ProxyHeader::Local),
        ];
        for (line, want) in ok {
            let mut buf = line.to_vec();
            buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
            assert_eq!(parse(&buf), Ok((*want, line.len())), "{line:?}");
        }
        let invalid: &[&[u8]] = &[
            b"PROXY TCP4 10.1.1.1 10.0.0.1 56324\r\n",
            b"PROXY TCP4 10.1.1.1 10.0.0.1 56324 443 9\r\n",
            b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",
            b"PROXY TCP6 10.1.1.1 2001:db8::2 1 2\r\n",
            b"PROXY TCP4 10.1.1.1 10.0.0.1 65536 443\r\n",
            b"PROXY TCP4 10.1.1.1 10.0.0.1 +1 443\r\n",
            b"PROXY TCP4 10.1.1.1 10.0.0.1 01 443\r\n",
            b"PROXY TCP4  10.1.1.1 10.0.0.1 1 443\r\n",
            b"PROXY UDP4 10.1.1.1 10.0.0.1 1 443\r\n",
            b"PROXY \xff\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"proxy TCP4 10.1.1.1 10.0.0.1 1 2\r\n",
        ];
        for line in invalid {
            assert!(
                matches!(parse(line), Err(ParseError::Invalid(_))),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        let long = [b"PROXY ".as_slice(), &[b'A'; 120]].concat();
        assert!(matches!(parse(&long), Err(ParseError::Invalid(_))));
    }

    #[test]
    fn truncated_input_is_incomplete() {
        let line = b"PROXY TCP4 10.1.1.1 10.0.0.1 56324 443\r\n";
        for cut in 0..line.len() {
            assert_eq!(parse(&line[..cut]), Err(ParseError::Incomplete), "{cut}");
        }
        let mut addr = vec![10, 1, 1, 1, 10, 0, 0, 1];
        addr.extend_from_slice(&[0xdc, 0x04, 0x01, 0xbb]);
        let h = v2(1, 0x11, &addr);
        for cut in 0..h.len() {
            assert_eq!(parse(&h[..cut]), Err(ParseError::Incomplete), "{cut}");
        }
        assert_eq!(parse(&h), Ok((proxied("10.1.1.1:56324"), h.len())));
    }

    #[test]
    fn v2_headers() {
        let mut v4 = vec![10, 1, 1, 1, 10, 0, 0, 1, 0xdc, 0x04, 0x01, 0xbb];
        let h = v2(1, 0x11, &v4);
        assert_eq!(parse(&h), Ok((proxied("10.1.1.1:56324"), 28)));
        // TLVs after the addresses are skipped.
        v4.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]);
        let h = v2(1, 0x11, &v4);
        assert_eq!(parse(&h), Ok((proxied("10.1.1.1:56324"), 32)));

        let mut v6 = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        v6.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&[0x12, 0x67, 0x00, 0x50]);
        let h = v2(1, 0x21, &v6);
        assert_eq!(parse(&h), Ok((proxied("[2001:db8::1]:4711"), 52)));

        // LOCAL: the balancer's own connection, addresses ignored.
        assert_eq!(parse(&v2(0, 0x00, &[])), Ok((ProxyHeader::Local, 16)));
        assert_eq!(parse(&v2(0, 0x11, &v4)), Ok((ProxyHeader::Local, 32)));
        // AF_UNSPEC / AF_UNIX under PROXY: no address to take.
        assert_eq!(parse(&v2(1, 0x00, &[])), Ok((ProxyHeader::Local, 16)));
        assert_eq!(
            parse(&v2(1, 0x31, &[0; 216])),
            Ok((ProxyHeader::Local, 232))
        );

        let invalid = [
            v2(1, 0x11, &[10, 1, 1, 1]),
            v2(1, 0x21, &v4),
            v2(2, 0x11, &v4),
            v2(1, 0x41, &v4),
            v2(1, 0x13, &v4),
            {
                let mut h = v2(1, 0x11, &v4);
                h[12] = 0x11; // version 1 in the binary form
                h
            },
            {
                let mut h = v2(1, 0x11, &[]);
                h[14..16].copy_from_slice(&2000u16.to_be_bytes());
                h
            },
        ];
        for h in invalid {
            assert!(matches!(parse(&h), Err(ParseError::Invalid(_))), "{h:?}");
        }
    }

    #[tokio::test]
    async fn reading_leaves_the_request_behind_it() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            // The header in pieces, the request right behind its end.
            c.write_all(b"PROXY TCP4 10.1.1.1 10.0.0.1 5")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            c.write_all(b"6324 443\r").await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            c.write_all(b"\nGET / HTTP/1.1\r\n\r\n").await.unwrap();
            c
        });
        let (mut s, _) = listener.accept().await.unwrap();
        let h = read_header(&mut s, Duration::from_secs(5)).await.unwrap();
        assert_eq!(h, proxied("10.1.1.1:56324"));
        let mut rest = [0u8; 18];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"GET / HTTP/1.1\r\n\r\n");
        drop(client.await.unwrap());

        // No header: refused at once; silence: refused at the deadline.
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            let quiet = TcpStream::connect(addr).await.unwrap();
            (c, quiet)
        });
        let (mut s, _) = listener.accept().await.unwrap();
        let e = read_header(&mut s, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let (mut quiet, _) = listener.accept().await.unwrap();
        let e = read_header(&mut quiet, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(client.await.unwrap());
    }
}
