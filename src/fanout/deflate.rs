//! permessage-deflate (RFC 7692) on the server's side: a frame's JSON
//! compressed once into a whole WebSocket frame (RSV1 set) that every
//! viewer who negotiated the extension shares. No context takeover: each
//! message is compressed from an empty window, so the bytes do not depend
//! on what a connection was sent before, and no connection keeps a
//! compressor (one per worker thread, reset per frame).

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress};

use crate::metrics::Metrics;

/// How frames are compressed for viewers that negotiated permessage-deflate
/// (`fanout.ws_compression_*`): the same for the whole process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WsDeflate {
    /// Frames whose JSON is shorter go out plain (RSV1 is per message).
    pub min_bytes: usize,
    /// zlib level 1 (fastest) to 9 (smallest).
    pub level: u32,
}

/// Which of a frame's WebSocket encodings went on the wire (the
/// `encoding` label of `danmaku_ws_bytes_total`, `metrics::WS_ENCODINGS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsEncoding {
    Plain = 0,
    Deflate = 1,
}

impl WsEncoding {
    /// Counts `n` bytes written to a viewer in this encoding.
    pub fn count(self, metrics: &Metrics, n: usize) {
        metrics.ws_bytes[self as usize].inc_by(n as u64);
    }
}

/// The empty stored block a sync flush ends with; RFC 7692 §7.2.1 has the
/// sender drop it and the receiver put it back.
pub const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

thread_local! {
    /// This thread's compressor (with its level) and output scratch.
    static COMPRESSOR: RefCell<Option<(u32, Compress, Vec<u8>)>> = const { RefCell::new(None) };
}

/// `payload` as one final, compressed WebSocket text frame (FIN, RSV1,
/// opcode 1; unmasked, so the bytes suit every viewer). `None` when the
/// payload is under `min_bytes` or compressing it saves nothing.
pub fn deflate_text_frame(payload: &[u8], cfg: WsDeflate) -> Option<Bytes> {
    if payload.len() < cfg.min_bytes {
        return None;
    }
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let fresh = !matches!(&*cell, Some((level, ..)) if *level == cfg.level);
        if fresh {
            let level = Compression::new(cfg.level.clamp(1, 9));
            *cell = Some((cfg.level, Compress::new(level, false), Vec::new()));
        }
        let (_, compress, scratch) = cell.as_mut().expect("set above");
        compress.reset();
        scratch.clear();
        // Deflate's worst case is a few bytes per 16 KiB block over the input.
        scratch.reserve(payload.len() + payload.len() / 1000 + 64);
        let mut input = payload;
        loop {
            let before = compress.total_in();
            compress
                .compress_vec(input, scratch, FlushCompress::Sync)
                .ok()?;
            input = &input[(compress.total_in() - before) as usize..];
            // Done when every byte is in and the flush had room to finish.
            if input.is_empty() && scratch.len() < scratch.capacity() {
                break;
            }
            scratch.reserve(scratch.capacity().max(256));
        }
        let body = scratch.strip_suffix(&SYNC_TAIL).unwrap_or(scratch);
        if body.len() >= payload.len() {
            return None;
        }
        let mut frame = Vec::with_capacity(body.len() + 10);
        crate::fanout::frame::ws_header(&mut frame, 0xC1, body.len());
        frame.extend_from_slice(body);
        if scratch.capacity() > 256 << 10 {
            // One huge frame does not pin a big buffer on the thread.
            *scratch = Vec::new();
        }
        Some(Bytes::from(frame))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Decompress, FlushDecompress};

    fn inflate(body: &[u8]) -> Vec<u8> {
        let mut input = body.to_vec();
        input.extend_from_slice(&SYNC_TAIL);
        let mut d = Decompress::new(false);
        let mut out = Vec::with_capacity(1 << 20);
        d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap();
        out
    }

    #[test]
    fn a_frame_inflates_back_to_its_payload_and_is_the_same_every_time() {
        let payload: Vec<u8> = (0..300)
            .flat_map(|i| format!(r#"{{"seq":{i},"text":"弹幕 hello {i}"}},"#).into_bytes())
            .collect();
        let cfg = WsDeflate {
            min_bytes: 64,
            level: 6,
        };
        let frame = deflate_text_frame(&payload, cfg).expect("worth it");
        assert_eq!(frame[0], 0xC1, "FIN, RSV1, text");
        let (hdr, len) = match frame[1] {
            126 => (4, u16::from_be_bytes([frame[2], frame[3]]) as usize),
            127 => (
                10,
                u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
            ),
            n => (2, n as usize),
        };
        assert_eq!(frame.len(), hdr + len);
        assert!(len * 4 < payload.len(), "{len} of {}", payload.len());
        assert_eq!(inflate(&frame[hdr..]), payload);
        // No context taken over: the next frame's bytes are the same again.
        assert_eq!(deflate_text_frame(&payload, cfg).unwrap(), frame);
        // Another level on the same thread.
        let fast = deflate_text_frame(&payload, WsDeflate { level: 1, ..cfg }).unwrap();
        assert_eq!(inflate(&fast[hdr..]), payload);
    }

    #[test]
    fn small_or_incompressible_payloads_stay_plain() {
        let cfg = WsDeflate {
            min_bytes: 64,
            level: 6,
        };
        assert!(deflate_text_frame(b"{\"type\":\"batch\"}", cfg).is_none());
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        assert!(deflate_text_frame(&noise, cfg).is_none());
    }
}
