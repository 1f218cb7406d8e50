//! Compressed client messages (permessage-deflate, RSV1) made plain before
//! tungstenite reads them: tungstenite has no permessage-deflate and would
//! refuse RSV1 as a protocol error. [`ClientInflate`] sits in the socket's
//! read path (`socket::StackIo`) of a connection that negotiated the
//! extension and rewrites the byte stream frame by frame:
//!
//! - frames tungstenite can read as they are (control frames, plain
//!   messages, anything it must refuse itself) pass through untouched,
//!   payload streamed, never buffered;
//! - a message whose first frame has RSV1 is collected (its fragments
//!   unmasked), inflated from an empty window (the server asked for
//!   `client_no_context_takeover`), and handed on as one frame with RSV1
//!   clear and a zero mask (tungstenite requires client frames masked; a
//!   zero key leaves the payload as it is).
//!
//! Bounds: neither the compressed message nor what it inflates to may pass
//! `limit` (the WebSocket reader's own message limit). Past it, tungstenite
//! is handed a frame header announcing `limit + 1` bytes, which it refuses
//! before reading any payload (the session closes with 1009), and the rest
//! of the input is dropped. A malformed compressed message (bad deflate
//! data, a new message inside one, a continuation with RSV bits) is handed
//! on as an empty frame with RSV2 set, which tungstenite refuses as a
//! protocol error (1002).

use flate2::{Decompress, FlushDecompress, Status};

use crate::fanout::deflate::SYNC_TAIL;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const RSV_ALL: u8 = 0x70;

pub struct ClientInflate {
    /// Most bytes a message may have, compressed or inflated.
    limit: usize,
    /// A frame header read so far (at most 14 bytes).
    head: Vec<u8>,
    state: State,
    /// The compressed message being collected: its opcode and payload.
    message: Option<(u8, Vec<u8>)>,
    /// Bytes for tungstenite, from `out_at` on.
    out: Vec<u8>,
    out_at: usize,
}

enum State {
    /// Reading a frame header into `head`.
    Header,
    /// Copying `left` payload bytes of a frame that passes through.
    Pass { left: u64 },
    /// Unmasking `left` payload bytes of a compressed message's frame;
    /// `at`: the place in the mask; `fin`: the message ends with it.
    Collect {
        left: u64,
        mask: [u8; 4],
        at: usize,
        fin: bool,
    },
    /// A refusal was handed on: the rest of the input is dropped.
    Refused,
}

/// Why a compressed message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    TooBig,
    Protocol,
}

impl ClientInflate {
    pub fn new(limit: usize) -> Self {
        ClientInflate {
            limit,
            head: Vec::new(),
            state: State::Header,
            message: None,
            out: Vec::new(),
            out_at: 0,
        }
    }

    /// Bytes ready for tungstenite.
    pub fn pending(&self) -> &[u8] {
        &self.out[self.out_at..]
    }

    /// Marks `n` of the pending bytes as handed on.
    pub fn consume(&mut self, n: usize) {
        self.out_at += n;
        if self.out_at == self.out.len() {
            self.out.clear();
            self.out_at = 0;
            if self.out.capacity() > 16 << 10 {
                self.out = Vec::new(); // an idle connection keeps no big buffer
            }
        }
    }

    /// Whether a refusal was handed on (nothing more will follow).
    pub fn refused(&self) -> bool {
        matches!(self.state, State::Refused)
    }

    /// Takes bytes read from the client.
    pub fn feed(&mut self, mut input: &[u8]) {
        while !input.is_empty() {
            match &mut self.state {
                State::Refused => return,
                State::Header => {
                    let need = header_len(&self.head);
                    let take = (need - self.head.len()).min(input.len());
                    self.head.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.head.len() == header_len(&self.head) {
                        self.on_header();
                    }
                }
                State::Pass { left } => {
                    let take = (*left).min(input.len() as u64) as usize;
                    *left -= take as u64;
                    self.out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if *left == 0 {
                        self.state = State::Header;
                    }
                }
                State::Collect {
                    left,
                    mask,
                    at,
                    fin,
                } => {
                    let take = (*left).min(input.len() as u64) as usize;
                    *left -= take as u64;
                    let payload = &mut self.message.as_mut().expect("collecting").1;
                    payload.extend(
                        input[..take]
                            .iter()
                            .enumerate()
                            .map(|(i, b)| b ^ mask[(*at + i) & 3]),
                    );
                    *at = (*at + take) & 3;
                    input = &input[take..];
                    if *left == 0 {
                        let fin = *fin;
                        self.state = State::Header;
                        if fin {
                            self.finish_message();
                        }
                    }
                }
            }
        }
    }

    /// A whole header is in `head`: decides what becomes of its frame.
    fn on_header(&mut self) {
        let (b0, b1) = (self.head[0], self.head[1]);
        let opcode = b0 & 0x0f;
        let masked = b1 & 0x80 != 0;
        let len = payload_len(&self.head);
        let mask: [u8; 4] = if masked {
            self.head[self.head.len() - 4..]
                .try_into()
                .expect("4 bytes")
        } else {
            [0; 4]
        };
        let collecting = self.message.is_some();
        let compressed_start = b0 & RSV1 != 0 && matches!(opcode, OP_TEXT | OP_BINARY);
        let collect = match opcode {
            OP_TEXT | OP_BINARY if collecting => return self.refuse(Refusal::Protocol),
            OP_CONTINUATION if collecting => {
                if b0 & RSV_ALL != 0 || !masked {
                    return self.refuse(Refusal::Protocol);
                }
                true
            }
            // Unmasked: tungstenite refuses it as it is.
            _ => compressed_start && masked,
        };
        if !collect {
            self.out.extend_from_slice(&self.head);
            self.head.clear();
            self.state = State::Pass { left: len };
            if len == 0 {
                self.state = State::Header;
            }
            return;
        }
        self.head.clear();
        let so_far = self.message.as_ref().map_or(0, |(_, p)| p.len() as u64);
        if so_far.saturating_add(len) > self.limit as u64 {
            return self.refuse(Refusal::TooBig);
        }
        let message = self.message.get_or_insert_with(|| (opcode, Vec::new()));
        message.1.reserve(len as usize);
        let fin = b0 & FIN != 0;
        self.state = State::Collect {
            left: len,
            mask,
            at: 0,
            fin,
        };
        if len == 0 {
            self.state = State::Header;
            if fin {
                self.finish_message();
            }
        }
    }

    /// Inflates the collected message and hands it on as one plain frame.
    fn finish_message(&mut self) {
        let (opcode, mut payload) = self.message.take().expect("a message was collected");
        payload.extend_from_slice(&SYNC_TAIL);
        match inflate(&payload, self.limit) {
            Ok(plain) => {
                masked_header(&mut self.out, FIN | opcode, plain.len() as u64);
                self.out.extend_from_slice(&plain);
            }
            Err(why) => self.refuse(why),
        }
    }

    /// Hands tungstenite what it refuses, and drops everything after.
    fn refuse(&mut self, why: Refusal) {
        self.message = None;
        self.head.clear();
        match why {
            // A header over its limit: refused before any payload is read.
            Refusal::TooBig => masked_header(&mut self.out, FIN | OP_TEXT, self.limit as u64 + 1),
            // An empty frame with RSV2: a protocol error once read.
            Refusal::Protocol => masked_header(&mut self.out, FIN | 0x20 | OP_TEXT, 0),
        }
        self.state = State::Refused;
    }
}

/// A masked frame header with a zero mask key.
fn masked_header(out: &mut Vec<u8>, first: u8, len: u64) {
    out.push(first);
    match len {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= u16::MAX as u64 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
    out.extend_from_slice(&[0; 4]);
}

/// How long the header that starts with `head` is (2 until its second
/// byte is known).
fn header_len(head: &[u8]) -> usize {
    let Some(&b1) = head.get(1) else { return 2 };
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

fn payload_len(head: &[u8]) -> u64 {
    match head[1] & 0x7f {
        126 => u16::from_be_bytes([head[2], head[3]]) as u64,
        127 => u64::from_be_bytes(head[2..10].try_into().expect("8 bytes")),
        n => n as u64,
    }
}

/// Raw DEFLATE `input` inflated from an empty window, at most `limit` bytes.
fn inflate(input: &[u8], limit: usize) -> Result<Vec<u8>, Refusal> {
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity((input.len() * 4).min(limit + 1));
    loop {
        if out.len() == out.capacity() {
            if out.len() > limit {
                return Err(Refusal::TooBig);
            }
            out.reserve((out.len().max(256)).min(limit + 1 - out.len()));
        }
        let (in_before, out_before) = (d.total_in(), d.total_out());
        let status = d
            .decompress_vec(
                &input[in_before as usize..],
                &mut out,
                FlushDecompress::Sync,
            )
            .map_err(|_| Refusal::Protocol)?;
        if out.len() > limit {
            return Err(Refusal::TooBig);
        }
        let all_in = d.total_in() as usize == input.len();
        let moved = d.total_in() != in_before || d.total_out() != out_before;
        // Done at the stream's end, or with every byte in and room left over
        // (nothing more to come out); stuck without progress: truncated.
        if status == Status::StreamEnd
            || (all_in && out.len() < out.capacity())
            || !moved && out.len() < out.capacity()
        {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    const LIMIT: usize = 1 << 16;

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(data.len() + 64);
        c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
        assert!(out.ends_with(&SYNC_TAIL));
        out.truncate(out.len() - 4);
        out
    }

    /// A masked client frame.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = Vec::new();
        masked_header(&mut out, first, payload.len() as u64);
        let at = out.len() - 4;
        out[at..].copy_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    /// Feeds `input` in chunks of `chunk` bytes; returns what comes out.
    fn run(input: &[u8], chunk: usize) -> (Vec<u8>, bool) {
        let mut inf = ClientInflate::new(LIMIT);
        let mut all = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            inf.feed(c);
            all.extend_from_slice(inf.pending());
            let n = inf.pending().len();
            inf.consume(n);
        }
        (all, inf.refused())
    }

    /// The frame tungstenite gets for a plain message.
    fn plain(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        masked_header(&mut out, first, payload.len() as u64);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn compressed_messages_come_out_plain_and_the_rest_untouched() {
        let text = br#"{"type":"send","client_msg_id":"c1","text":"hello hello hello"}"#;
        let big: Vec<u8> = text.iter().copied().cycle().take(3000).collect();
        let z = deflate(&big);
        let mut input = frame(FIN | RSV1 | OP_TEXT, &deflate(text));
        input.extend(frame(FIN | OP_TEXT, b"plain"));
        // Fragmented: RSV1 on the first frame only, a ping in between.
        input.extend(frame(RSV1 | OP_TEXT, &z[..10]));
        input.extend(frame(FIN | 0x9, b"p"));
        input.extend(frame(OP_CONTINUATION, &z[10..]));
        input.extend(frame(FIN | OP_CONTINUATION, &[]));
        let mut want = plain(FIN | OP_TEXT, text);
        want.extend(frame(FIN | OP_TEXT, b"plain"));
        want.extend(frame(FIN | 0x9, b"p"));
        want.extend(plain(FIN | OP_TEXT, &big));
        for chunk in [1, 2, 3, 7, 64, 4096] {
            assert_eq!(
                run(&input, chunk),
                (want.clone(), false),
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn a_deflate_bomb_is_refused_as_too_big() {
        let bomb = deflate(&vec![b'a'; LIMIT + 1]);
        assert!(bomb.len() < 1024);
        let (out, refused) = run(&frame(FIN | RSV1 | OP_TEXT, &bomb), 100);
        assert!(refused);
        let mut want = Vec::new();
        masked_header(&mut want, FIN | OP_TEXT, LIMIT as u64 + 1);
        assert_eq!(out, want);
        // Exactly the limit still passes.
        let (out, refused) = run(
            &frame(FIN | RSV1 | OP_TEXT, &deflate(&vec![b'a'; LIMIT])),
            100,
        );
        assert!(!refused);
        assert_eq!(payload_len(&out), LIMIT as u64);
    }

    #[test]
    fn a_compressed_message_over_the_limit_is_refused_at_its_header() {
        let mut input = Vec::new();
        masked_header(&mut input, FIN | RSV1 | OP_TEXT, LIMIT as u64 + 1);
        let (out, refused) = run(&input, 3);
        assert!(refused);
        assert_eq!(payload_len(&out), LIMIT as u64 + 1);
    }

    #[test]
    fn malformed_compressed_messages_are_protocol_errors() {
        let refusal = {
            let mut r = Vec::new();
            masked_header(&mut r, FIN | 0x20 | OP_TEXT, 0);
            r
        };
        let garbage = frame(FIN | RSV1 | OP_TEXT, &[0xff, 0xff, 0xff, 0xff]);
        let mut nested = frame(RSV1 | OP_TEXT, &deflate(b"abc"));
        nested.extend(frame(FIN | OP_TEXT, b"x"));
        let mut rsv_cont = frame(RSV1 | OP_TEXT, &deflate(b"abc"));
        rsv_cont.extend(frame(FIN | RSV1 | OP_CONTINUATION, b""));
        for input in [garbage, nested, rsv_cont] {
            assert_eq!(run(&input, 5), (refusal.clone(), true));
        }
    }

    #[test]
    fn frames_tungstenite_refuses_itself_pass_through() {
        // RSV1 on a control frame, on an unmasked frame, on a continuation
        // outside a compressed message.
        let mut input = frame(FIN | RSV1 | 0x9, b"x");
        input.extend(frame(FIN | RSV1 | OP_CONTINUATION, b"y"));
        input.extend([FIN | RSV1 | OP_TEXT, 1, b'z']);
        assert_eq!(run(&input, 4), (input.clone(), false));
    }

    proptest::proptest! {
        /// Any byte stream comes out the same however it is cut into reads.
        #[test]
        fn the_output_does_not_depend_on_how_reads_cut_the_input(
            input in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            chunk in 1usize..40,
        ) {
            let whole = run(&input, input.len().max(1));
            proptest::prop_assert_eq!(run(&input, chunk), whole);
        }

        /// Messages compressed or not, fragmented anyhow, come out as
        /// tungstenite expects them: one plain masked frame per compressed
        /// message, plain frames untouched.
        #[test]
        fn compressed_messages_round_trip(
            messages in proptest::collection::vec(
                (proptest::collection::vec(proptest::num::u8::ANY, 0..300), proptest::bool::ANY, 1usize..4),
                1..6,
            ),
            chunk in 1usize..64,
        ) {
            let mut input = Vec::new();
            let mut want = Vec::new();
            for (text, compress, pieces) in &messages {
                if *compress {
                    let z = deflate(text);
                    let size = z.len().div_ceil(*pieces).max(1);
                    let parts: Vec<&[u8]> = if z.is_empty() { vec![&z[..]] } else { z.chunks(size).collect() };
                    for (i, part) in parts.iter().enumerate() {
                        let fin = if i + 1 == parts.len() { FIN } else { 0 };
                        let first = if i == 0 { RSV1 | OP_BINARY } else { OP_CONTINUATION };
                        input.extend(frame(fin | first, part));
                    }
                    want.extend(plain(FIN | OP_BINARY, text));
                } else {
                    input.extend(frame(FIN | OP_BINARY, text));
                    want.extend(frame(FIN | OP_BINARY, text));
                }
            }
            proptest::prop_assert_eq!(run(&input, chunk), (want, false));
        }
    }
}
