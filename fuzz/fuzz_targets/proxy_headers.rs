//! What a load balancer hands the server before the request: a PROXY
//! protocol header (`http::proxy_protocol::parse`) and the forwarding
//! headers of a trusted proxy (`http::client_addr::client_ip`).
//!
//! Input: raw bytes, as the first bytes of a connection and as the value of
//! `X-Forwarded-For` / `Forwarded`. Checks: no panic; a parsed PROXY header
//! is no longer than the input, parses the same alone, and every shorter
//! prefix of it is incomplete (so the reader never takes a byte of the
//! request behind it); an untrusted peer is always its own client; trusted
//! hops appended on the right change nothing, nor does an address a client
//! prepends on the left.
#![no_main]

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderValue};
use danmaku::config::Cidr;
use danmaku::http::client_addr::client_ip;
use danmaku::http::proxy_protocol::{parse, ParseError};
use libfuzzer_sys::fuzz_target;

fn with(name: &'static str, value: &[u8]) -> Option<HeaderMap> {
    let mut h = HeaderMap::new();
    h.insert(name, HeaderValue::from_bytes(value).ok()?);
    Some(h)
}

fuzz_target!(|data: &[u8]| {
    if let Ok((_, len)) = parse(data) {
        assert!(len <= data.len());
        assert_eq!(parse(&data[..len]).map(|(_, l)| l), Ok(len));
        for cut in 0..len {
            assert_eq!(parse(&data[..cut]), Err(ParseError::Incomplete), "{cut}");
        }
    }

    let trusted: Vec<Cidr> = vec![
        "127.0.0.1/32".parse().unwrap(),
        "10.0.0.0/8".parse().unwrap(),
    ];
    let proxy: IpAddr = "127.0.0.1".parse().unwrap();
    let stranger: IpAddr = "203.0.113.9".parse().unwrap();
    for name in ["x-forwarded-for", "forwarded"] {
        let Some(h) = with(name, data) else { continue };
        assert_eq!(client_ip(stranger, &h, &trusted), stranger);
        let client = client_ip(proxy, &h, &trusted);
        if name == "x-forwarded-for" {
            let mut appended = data.to_vec();
            appended.extend_from_slice(b", 10.9.9.9");
            let h2 = with(name, &appended).unwrap();
            assert_eq!(
                client_ip(proxy, &h2, &trusted),
                client,
                "trusted hop appended"
            );
            if client != proxy && !trusted.iter().any(|c| c.contains(client)) {
                let mut prepended = b"6.6.6.6, ".to_vec();
                prepended.extend_from_slice(data);
                let h3 = with(name, &prepended).unwrap();
                assert_eq!(client_ip(proxy, &h3, &trusted), client, "forgery prepended");
            }
        }
    }
});
