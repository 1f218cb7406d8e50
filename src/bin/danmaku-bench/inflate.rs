//! Client side of permessage-deflate: a compressed message inflated from
//! an empty window (the server answers `server_no_context_takeover`), with
//! one decompressor per thread reset per message, so ten thousand viewers
//! keep no inflate state each.

use std::cell::RefCell;

use flate2::{Decompress, FlushDecompress};

/// The empty block a sync flush ends with, which the sender drops.
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Largest message the bench accepts inflated.
const MAX_MESSAGE: usize = 64 << 20;

thread_local! {
    static INFLATE: RefCell<(Decompress, Vec<u8>)> = RefCell::new((Decompress::new(false), Vec::new()));
}

/// The message's payload (RSV1 set, fragments joined) inflated.
pub fn message(payload: &[u8]) -> Result<Vec<u8>, String> {
    INFLATE.with(|cell| {
        let (d, input) = &mut *cell.borrow_mut();
        d.reset(false);
        input.clear();
        input.extend_from_slice(payload);
        input.extend_from_slice(&SYNC_TAIL);
        let mut out = Vec::with_capacity(payload.len() * 6 + 256);
        loop {
            let at = d.total_in() as usize;
            d.decompress_vec(&input[at..], &mut out, FlushDecompress::Sync)
                .map_err(|e| e.to_string())?;
            if d.total_in() as usize == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if out.len() > MAX_MESSAGE {
                return Err("message over 64 MiB".into());
            }
            out.reserve(out.capacity());
        }
    })
}
