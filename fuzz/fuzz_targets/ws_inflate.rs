//! The read path of a WebSocket that negotiated permessage-deflate
//! (`fanout::direct::inflate::ClientInflate`): arbitrary client bytes (the
//! first input byte picks how reads cut them). No panic; the output is the
//! same however the reads cut the input; it never grows past what the
//! input's frames may inflate to (each message at most the limit).
#![no_main]

use danmaku::fanout::direct::inflate::ClientInflate;
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 4096;

fn run(stream: &[u8], chunk: usize) -> (Vec<u8>, bool) {
    let mut inflate = ClientInflate::new(LIMIT);
    let mut out = Vec::new();
    for c in stream.chunks(chunk.max(1)) {
        inflate.feed(c);
        out.extend_from_slice(inflate.pending());
        let n = inflate.pending().len();
        inflate.consume(n);
    }
    (out, inflate.refused())
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let whole = run(stream, stream.len());
    assert_eq!(run(stream, cut as usize % 32 + 1), whole, "reads cut differently");
    // A frame has a 6-byte header at least (masked); each yields at most
    // one message of LIMIT bytes and its 14-byte header.
    let frames = stream.len() / 6 + 1;
    assert!(whole.0.len() <= stream.len() + frames * (LIMIT + 14));
});
