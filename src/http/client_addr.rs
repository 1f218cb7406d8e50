//! Who the client is, behind reverse proxies (`server.trusted_proxies`).
//!
//! Every per-address limit (posts per second, WebSocket sends, viewer
//! connections) keys on this address. The socket peer is the client unless
//! it is a trusted proxy; then the proxy's `Forwarded: for=` (RFC 7239), or
//! else `X-Forwarded-For`, names it. Each proxy appends the address it saw,
//! so only the right end of the list is trustworthy: the client is the
//! rightmost address that is not itself a trusted proxy, and whatever a
//! client prepends to the header it sends is never reached. A header the
//! proxy sent malformed keys the request on the proxy (never a panic, never
//! a guess).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use axum::http::{HeaderMap, HeaderValue};

use crate::config::{any_contains, Cidr};

/// The client address of a request that came from `peer`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let peer = peer.to_canonical();
    if !any_contains(trusted, peer) {
        return peer;
    }
    match forwarded_client(headers, trusted) {
        Ok(Some(ip)) => ip,
        Ok(None) => peer,
        Err(Malformed(why)) => {
            tracing::debug!(%peer, why, "unusable forwarding header from a trusted proxy; keyed on the proxy");
            peer
        }
    }
}

/// A forwarding header that names no usable client.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(&'static str);

/// The client named by the forwarding headers (`Forwarded` when it has a
/// `for=`, else `X-Forwarded-For`); `None` when there are none.
fn forwarded_client(headers: &HeaderMap, trusted: &[Cidr]) -> Result<Option<IpAddr>, Malformed> {
    let mut chain = Chain::new(trusted);
    let mut named = false;
    for value in headers.get_all("forwarded") {
        forwarded_for(text(value)?, |hop| {
            named |= hop.is_some();
            chain.push(hop);
        })?;
    }
    if named {
        return chain.client();
    }
    let mut chain = Chain::new(trusted);
    for value in headers.get_all("x-forwarded-for") {
        for hop in text(value)?.split(',') {
            chain.push(Some(hop));
        }
    }
    chain.client()
}

fn text(value: &HeaderValue) -> Result<&str, Malformed> {
    value.to_str().map_err(|_| Malformed("not text"))
}

/// The proxy chain read left to right (oldest hop first), keeping what a
/// right-to-left walk would stop at, so nothing is collected.
struct Chain<'a> {
    trusted: &'a [Cidr],
    /// The leftmost address: the client when every hop is a trusted proxy.
    first: Option<IpAddr>,
    /// The rightmost untrusted address, or a malformed hop right of it.
    pick: Option<Result<IpAddr, Malformed>>,
}

impl<'a> Chain<'a> {
    fn new(trusted: &'a [Cidr]) -> Self {
        Chain {
            trusted,
            first: None,
            pick: None,
        }
    }

    /// The next hop to the right; `None`: a hop that names no address.
    fn push(&mut self, hop: Option<&str>) {
        match hop.and_then(parse_node) {
            None => self.pick = Some(Err(Malformed("a hop is not an address"))),
            Some(ip) => {
                self.first.get_or_insert(ip);
                if !any_contains(self.trusted, ip) {
                    self.pick = Some(Ok(ip));
                }
            }
        }
    }

    fn client(self) -> Result<Option<IpAddr>, Malformed> {
        match self.pick {
            Some(pick) => pick.map(Some),
            None => Ok(self.first),
        }
    }
}

/// Calls `each` with every element's `for=` value (`None` for an element
/// without one) of one `Forwarded` header value, left to right. Elements
/// are `;`-separated `name=value` pairs, a value a token or a quoted string.
fn forwarded_for<'v>(
    value: &'v str,
    mut each: impl FnMut(Option<&'v str>),
) -> Result<(), Malformed> {
    let bad = || Malformed("Forwarded syntax");
    let mut rest = value;
    let mut element_for: Option<&str> = None;
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        let eq = rest.find('=').ok_or_else(bad)?;
        let name = &rest[..eq];
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(bad());
        }
        rest = &rest[eq + 1..];
        let val;
        if let Some(quoted) = rest.strip_prefix('"') {
            // Backslash escapes are skipped over; an escaped value is no
            // address anyway.
            let mut end = None;
            let mut escaped = false;
            for (i, b) in quoted.bytes().enumerate() {
                match b {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.ok_or_else(bad)?;
            val = &quoted[..end];
            rest = &quoted[end + 1..];
        } else {
            let end = rest.find([';', ',', ' ', '\t']).unwrap_or(rest.len());
            val = &rest[..end];
            if val.is_empty() || !val.bytes().all(is_tchar) {
                return Err(bad());
            }
            rest = &rest[end..];
        }
        if name.eq_ignore_ascii_case("for") {
            element_for = Some(val);
        }
        rest = rest.trim_start_matches([' ', '\t']);
        match rest.as_bytes().first() {
            Some(b';') => rest = &rest[1..],
            Some(b',') => {
                each(element_for.take());
                rest = &rest[1..];
            }
            None => {
                each(element_for.take());
                return Ok(());
            }
            Some(_) => return Err(bad()),
        }
    }
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:8080`,
/// `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:4711`. `unknown` and
/// obfuscated identifiers (`_hidden`) name no address.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim_matches([' ', '\t']);
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return addr
            .parse::<Ipv6Addr>()
            .ok()
            .map(|a| IpAddr::V6(a).to_canonical());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    let (addr, port) = s.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// A port, or RFC 7239's obfuscated port (`_abc`).
fn is_port(p: &str) -> bool {
    let digits = !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok();
    let obfuscated = p.len() > 1
        && p.starts_with('_')
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    digits || obfuscated
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ranges(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|r| r.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn resolution_table() {
        // (peer, headers, expected client)
        type Case = (
            &'static str,
            &'static [(&'static str, &'static str)],
            &'static str,
        );
        let cases: &[Case] = &[
            // An untrusted peer is the client, whatever it claims.
            (
                "203.0.113.9",
                &[("x-forwarded-for", "1.2.3.4")],
                "203.0.113.9",
            ),
            (
                "203.0.113.9",
                &[("forwarded", "for=1.2.3.4")],
                "203.0.113.9",
            ),
            // A trusted proxy without a header is the client itself.
            ("127.0.0.1", &[], "127.0.0.1"),
            (
                "127.0.0.1",
                &[("x-forwarded-for", "198.51.100.7")],
                "198.51.100.7",
            ),
            // Prepending does not help a client: the rightmost untrusted wins.
            (
                "127.0.0.1",
                &[("x-forwarded-for", "6.6.6.6, 198.51.100.7")],
                "198.51.100.7",
            ),
            // Trusted hops on the right are skipped.
            (
                "10.0.0.2",
                &[("x-forwarded-for", "198.51.100.7, 10.9.9.9,127.0.0.1")],
                "198.51.100.7",
            ),
            // Several headers are one list, in order.
            (
                "127.0.0.1",
                &[
                    ("x-forwarded-for", "6.6.6.6"),
                    ("x-forwarded-for", "198.51.100.7"),
                ],
                "198.51.100.7",
            ),
            // Only trusted hops: the leftmost is the client.
            (
                "127.0.0.1",
                &[("x-forwarded-for", "10.1.1.1, 10.2.2.2")],
                "10.1.1.1",
            ),
            (
                "127.0.0.1",
                &[("x-forwarded-for", "198.51.100.7:5555")],
                "198.51.100.7",
            ),
            (
                "127.0.0.1",
                &[("x-forwarded-for", "2001:db8::1")],
                "2001:db8::1",
            ),
            (
                "127.0.0.1",
                &[("x-forwarded-for", "[2001:db8::1]:80")],
                "2001:db8::1",
            ),
            (
                "127.0.0.1",
                &[("x-forwarded-for", "::ffff:198.51.100.7")],
                "198.51.100.7",
            ),
            // Forwarded (RFC 7239 §4 examples), preferred over X-Forwarded-For.
            (
                "127.0.0.1",
                &[
                    ("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43"),
                    ("x-forwarded-for", "198.51.100.7"),
                ],
                "192.0.2.60",
            ),
            (
                "127.0.0.1",
                &[("forwarded", "For=\"[2001:db8:cafe::17]:4711\"")],
                "2001:db8:cafe::17",
            ),
            (
                "127.0.0.1",
                &[("forwarded", "for=\"[2001:db8:cafe::17]\"")],
                "2001:db8:cafe::17",
            ),
            (
                "127.0.0.1",
                &[("forwarded", "for=\"192.0.2.43:47011\"")],
                "192.0.2.43",
            ),
            (
                "127.0.0.1",
                &[(
                    "forwarded",
                    "for=6.6.6.6, for=192.0.2.43 ; proto=https, for=10.3.3.3",
                )],
                "192.0.2.43",
            ),
            (
                "fd00::5",
                &[
                    ("forwarded", "for=6.6.6.6"),
                    ("forwarded", "for=\"[2001:db8::9]\""),
                ],
                "2001:db8::9",
            ),
            // A Forwarded without any for= leaves it to X-Forwarded-For.
            (
                "127.0.0.1",
                &[
                    ("forwarded", "proto=https"),
                    ("x-forwarded-for", "198.51.100.7"),
                ],
                "198.51.100.7",
            ),
            // Malformed from a trusted proxy: keyed on the proxy.
            (
                "127.0.0.1",
                &[("x-forwarded-for", "not-an-ip")],
                "127.0.0.1",
            ),
            (
                "127.0.0.1",
                &[("x-forwarded-for", "198.51.100.7, ")],
                "127.0.0.1",
            ),
            (
                "127.0.0.1",
                &[("x-forwarded-for", "198.51.100.7, unknown")],
                "127.0.0.1",
            ),
            (
                "127.0.0.1",
                &[("x-forwarded-for", "1.2.3.4:99999")],
                "127.0.0.1",
            ),
            ("127.0.0.1", &[("forwarded", "for=unknown")], "127.0.0.1"),
            ("127.0.0.1", &[("forwarded", "for=_hidden")], "127.0.0.1"),
            (
                "127.0.0.1",
                &[("forwarded", "for=\"[2001:db8::1\"")],
                "127.0.0.1",
            ),
            (
                "127.0.0.1",
                &[("forwarded", "for=\"192.0.2.1")],
                "127.0.0.1",
            ),
            (
                "127.0.0.1",
                &[("forwarded", "for=192.0.2.1;;")],
                "127.0.0.1",
            ),
            ("127.0.0.1", &[("forwarded", "=192.0.2.1")], "127.0.0.1"),
            (
                "127.0.0.1",
                &[("forwarded", "for=192.0.2.1 garbage")],
                "127.0.0.1",
            ),
            (
                "127.0.0.1",
                &[("forwarded", "for=192.0.2.1, proto=http")],
                "127.0.0.1",
            ),
            // ...but a malformed hop left of the client does not matter.
            (
                "127.0.0.1",
                &[("x-forwarded-for", "garbage, 198.51.100.7")],
                "198.51.100.7",
            ),
            // A dual-stack socket's mapped address is its IPv4 address.
            (
                "::ffff:127.0.0.1",
                &[("x-forwarded-for", "198.51.100.7")],
                "198.51.100.7",
            ),
            ("::ffff:203.0.113.9", &[], "203.0.113.9"),
        ];
        let trusted = ranges(&["127.0.0.1/32", "10.0.0.0/8", "fd00::/8"]);
        for (peer, hs, want) in cases {
            let got = client_ip(ip(peer), &headers(hs), &trusted);
            assert_eq!(got, ip(want), "peer {peer}, headers {hs:?}");
        }
    }

    #[test]
    fn no_trusted_proxies_means_the_peer() {
        let h = headers(&[("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &[]), ip("127.0.0.1"));
    }

    #[test]
    fn a_header_that_is_not_text_keys_on_the_proxy() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"198.51.100.7\xff").unwrap(),
        );
        let trusted = ranges(&["127.0.0.1"]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("127.0.0.1"));
    }
}
