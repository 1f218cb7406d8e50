//! `Content-Encoding: gzip` computed once per body and shared by every
//! request that accepts it (snapshots, big rooms' long-poll answers): the
//! body's gzip form is made by the first request that wants it and kept next
//! to the plain bytes, so N requests cost one compression.

use std::io::Write as _;
use std::sync::OnceLock;

use axum::http::{header, HeaderMap};
use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::metrics::Metrics;

/// gzip as `fanout.ws_compression_level`'s default: most of the gain, cheap.
const LEVEL: u32 = 6;

/// Whether `Accept-Encoding` allows gzip (RFC 9110 §12.5.3): `gzip` (or
/// `x-gzip`) or `*` with a q-value above 0, unless gzip itself is refused
/// with `q=0`. No header: identity only.
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut any = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("q").then(|| v.trim())
                })
                .next()
                .map_or(1.0, |v| v.parse::<f32>().unwrap_or(0.0));
            match coding.as_str() {
                "gzip" | "x-gzip" => gzip = Some(q > 0.0),
                "*" => any = Some(q > 0.0),
                _ => {}
            }
        }
    }
    gzip.or(any).unwrap_or(false)
}

/// `body` gzipped.
pub fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(
        Vec::with_capacity(body.len() / 3 + 32),
        Compression::new(LEVEL),
    );
    enc.write_all(body).expect("vec write");
    enc.finish().expect("vec write")
}

/// A body's gzip form, made at most once (see the module doc).
#[derive(Default)]
pub struct GzipOnce(OnceLock<Option<Bytes>>);

impl GzipOnce {
    /// The gzip bytes of `plain` (which must be the same bytes at every
    /// call), made by the first caller; `None` if `plain` is under
    /// `min_bytes` or gzip saves nothing (then it goes plain). Counts in
    /// `danmaku_http_gzip_total` whether this call compressed or shared.
    pub fn get(&self, plain: &[u8], min_bytes: usize, metrics: &Metrics) -> Option<&Bytes> {
        if plain.len() < min_bytes {
            return None;
        }
        let mut made = false;
        let gz = self.0.get_or_init(|| {
            made = true;
            let gz = gzip(plain);
            (gz.len() < plain.len()).then(|| Bytes::from(gz))
        });
        let outcome = match (made, gz.is_some()) {
            (_, false) => "not_smaller",
            (true, true) => "compressed",
            (false, true) => "shared",
        };
        metrics.http_gzip.with_label_values(&[outcome]).inc();
        gz.as_ref()
    }
}

/// The entity tag of a body's gzip form, from the plain one's (`"abc"` →
/// `"abc-gz"`): a different representation has its own strong ETag (RFC
/// 9110 §8.8.3).
pub fn gzip_etag(etag: &str) -> String {
    match etag.strip_suffix('"') {
        Some(open) => format!("{open}-gz\""),
        None => format!("{etag}-gz"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn accept_encoding_table() {
        // (Accept-Encoding values, gzip accepted)
        let table: [(&[&str], bool); 13] = [
            (&[], false),
            (&["gzip"], true),
            (&["gzip, deflate, br"], true),
            (&["br;q=1.0, GZIP;q=0.5"], true),
            (&["x-gzip"], true),
            (&["identity"], false),
            (&["deflate, br"], false),
            (&["gzip;q=0"], false),
            (&["gzip; q=0.000"], false),
            (&["*"], true),
            (&["*;q=0.1, gzip;q=0"], false),
            (&["br", "gzip"], true),
            (&["gzip;q=bogus"], false),
        ];
        for (values, want) in table {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::ACCEPT_ENCODING, HeaderValue::from_static(v));
            }
            assert_eq!(accepts_gzip(&h), want, "{values:?}");
        }
    }

    #[test]
    fn gzip_once_compresses_once_and_skips_small_or_incompressible_bodies() {
        let metrics = Metrics::new();
        let body = br#"{"messages":["gg wp","gg wp","gg wp","gg wp","gg wp"]}"#.repeat(20);
        let once = GzipOnce::default();
        let a = once.get(&body, 100, &metrics).expect("compressed").clone();
        let b = once.get(&body, 100, &metrics).expect("shared");
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same bytes");
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&a[..]), &mut plain).unwrap();
        assert_eq!(plain, body);
        let count = |o: &str| metrics.http_gzip.with_label_values(&[o]).get();
        assert_eq!((count("compressed"), count("shared")), (1, 1));
        assert!(GzipOnce::default().get(b"{}", 100, &metrics).is_none());
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..400)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert!(GzipOnce::default().get(&noise, 100, &metrics).is_none());
        assert_eq!(count("not_smaller"), 1);
    }

    #[test]
    fn the_gzip_etag_is_its_own() {
        assert_eq!(gzip_etag("\"ab12\""), "\"ab12-gz\"");
        assert_eq!(gzip_etag("W/\"x\""), "W/\"x-gz\"");
    }
}
