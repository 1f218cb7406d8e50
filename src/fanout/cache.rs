//! Reading a big room's local cache of recent frames (docs/architecture.md,
//! "Big rooms"): which frames follow a cursor, and an answer encoded from
//! them. Frames are taken as shared `Arc`s and their messages borrowed, never
//! copied: a multi-frame long-poll answer is encoded straight from the frames
//! (BENCHMARKS.md F4).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use super::frame::{encode_batch, with_online, Frame};
use super::gzip::GzipOnce;
use crate::message::StoredMessage;

/// A big room's long-poll answer that is exactly its newest frame, with the
/// room's online count: encoded once per (frame, count) and shared by every
/// poll that gets it, as is its gzip form (`Hub::newest_answer`).
pub struct SharedAnswer {
    frame: Arc<Frame>,
    online: usize,
    /// The batch JSON with `"online"`.
    pub json: Bytes,
    pub gzip: GzipOnce,
}

impl SharedAnswer {
    pub fn new(frame: &Arc<Frame>, online: usize) -> SharedAnswer {
        SharedAnswer {
            json: Bytes::from(with_online(frame.full.json.to_vec(), online)),
            frame: frame.clone(),
            online,
            gzip: GzipOnce::default(),
        }
    }

    /// Whether this is the answer for `frame` (the very frame: a retraction
    /// replaces a cached frame by a copy with the same cursors) and `online`.
    pub fn is_for(&self, frame: &Arc<Frame>, online: usize) -> bool {
        Arc::ptr_eq(&self.frame, frame) && self.online == online
    }

    pub fn count(&self) -> usize {
        self.frame.full.count
    }
}

/// Takes the messages `ids` names out of the cached frames (a retraction):
/// each frame that held one is replaced by a copy without it, at the same
/// place, so readers neither see it nor find a gap. Returns how many
/// messages left the cache.
pub fn retract_cached(recent: &mut VecDeque<Arc<Frame>>, room: &str, ids: &[String]) -> usize {
    let mut removed = 0;
    for frame in recent.iter_mut() {
        let n = frame
            .messages
            .iter()
            .filter(|m| ids.contains(&m.id))
            .count();
        if n > 0 {
            *frame = Arc::new(frame.without(room, ids));
            removed += n;
        }
    }
    removed
}

/// The cached frames after a cursor.
pub struct CachedFrames {
    pub epoch: Arc<str>,
    /// Where the reader stands after taking these frames.
    pub cursor: u64,
    /// The reader's cursor is older than the cache: something in between is not here.
    pub gap: bool,
    /// Oldest first. A frame straddling `after` contributes only what is newer.
    frames: Vec<Arc<Frame>>,
    after: u64,
    /// The answer is exactly the newest frame, as broadcast.
    whole_newest: bool,
}

impl CachedFrames {
    /// The frames of `recent` (oldest first; `sent_cursor` is the newest's
    /// `to`) after `after`: whole frames, at most `limit` messages unless one
    /// frame alone is bigger.
    pub fn after(
        recent: &VecDeque<Arc<Frame>>,
        epoch: Arc<str>,
        sent_cursor: u64,
        after: u64,
        limit: usize,
    ) -> CachedFrames {
        let start = recent.partition_point(|f| f.to <= after);
        let mut read = CachedFrames {
            epoch,
            cursor: after.min(sent_cursor),
            gap: false,
            frames: Vec::new(),
            after,
            whole_newest: false,
        };
        let Some(first) = recent.get(start) else {
            return read;
        };
        read.gap = first.from > after;
        read.whole_newest = first.from == after && start + 1 == recent.len();
        let mut taken = 0;
        for frame in recent.iter().skip(start) {
            if taken > 0 && taken + frame.messages.len() > limit {
                break;
            }
            taken += read.frame_messages(frame).count();
            read.cursor = frame.to;
            read.frames.push(frame.clone());
        }
        read
    }

    /// When the answer is exactly the newest broadcast frame: its
    /// pre-encoded bytes answer as they are.
    /// (Not a frame a retraction emptied: nothing to answer with.)
    pub fn single(&self) -> Option<&Arc<Frame>> {
        self.frames
            .first()
            .filter(|f| self.whole_newest && !f.messages.is_empty())
    }

    /// The messages of the answer, in frame order.
    pub fn messages(&self) -> impl Iterator<Item = &StoredMessage> + Clone {
        self.frames.iter().flat_map(|f| self.frame_messages(f))
    }

    pub fn message_count(&self) -> usize {
        self.messages().count()
    }

    /// The batch JSON of the answer (as `encode_batch` of its messages).
    pub fn encode(&self, room: &str, reset: bool) -> Vec<u8> {
        encode_batch(room, &self.epoch, self.cursor, self.messages(), reset)
    }

    /// What one frame contributes. Only a frame straddling `after` (a cursor
    /// that is not a frame boundary) is filtered: a later frame keeps late
    /// messages (held-back high, combos) whose seqs are at or below `after`.
    fn frame_messages<'a>(
        &self,
        frame: &'a Frame,
    ) -> impl Iterator<Item = &'a StoredMessage> + Clone + use<'a> {
        let after = self.after;
        let straddles = frame.from < after;
        frame
            .messages
            .iter()
            .filter(move |m| !straddles || m.seq > after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Priority;

    fn m(seq: u64) -> StoredMessage {
        StoredMessage::for_test(seq, Priority::Low, 1)
    }

    /// Frames (from, to, seqs), oldest first.
    fn cache(frames: &[(u64, u64, &[u64])]) -> VecDeque<Arc<Frame>> {
        frames
            .iter()
            .map(|&(from, to, seqs)| {
                let msgs: Vec<StoredMessage> = seqs.iter().map(|&s| m(s)).collect();
                Arc::new(Frame::encode("r1", Arc::from("e1"), from, to, &msgs))
            })
            .collect()
    }

    fn seqs(read: &CachedFrames) -> Vec<u64> {
        read.messages().map(|m| m.seq).collect()
    }

    fn read_after(recent: &VecDeque<Arc<Frame>>, after: u64, limit: usize) -> CachedFrames {
        let sent = recent.back().map_or(0, |f| f.to);
        CachedFrames::after(recent, Arc::from("e1"), sent, after, limit)
    }

    #[test]
    fn frames_after_a_cursor_within_the_limit() {
        // The middle frame is late-only: a held-back message below its cursor.
        let recent = cache(&[(0, 3, &[1, 2, 3]), (3, 3, &[2]), (3, 6, &[4, 5, 6])]);
        let all = read_after(&recent, 0, 100);
        assert_eq!(seqs(&all), vec![1, 2, 3, 2, 4, 5, 6]);
        assert_eq!(
            (all.cursor, all.gap, all.single().is_none()),
            (6, false, true)
        );
        let one = read_after(&recent, 0, 4);
        assert_eq!(
            (seqs(&one), one.cursor),
            (vec![1, 2, 3, 2], 3),
            "whole frames"
        );
        let first_only = read_after(&recent, 0, 1);
        assert_eq!(seqs(&first_only), vec![1, 2, 3], "one frame even if bigger");
        let straddling = read_after(&recent, 1, 100);
        assert_eq!(seqs(&straddling), vec![2, 3, 2, 4, 5, 6], "late kept");
        assert_eq!(straddling.message_count(), 6);
        let newest = read_after(&recent, 3, 100);
        assert_eq!(newest.single().map(|f| f.to), Some(6), "the newest frame");
        assert_eq!(seqs(&newest), vec![4, 5, 6]);
        let none = read_after(&recent, 6, 100);
        assert_eq!((none.message_count(), none.cursor), (0, 6));
        let future = read_after(&recent, 9, 100);
        assert_eq!(future.cursor, 6, "a cursor from the future is clamped");
        let gap = read_after(&cache(&[(4, 6, &[5, 6])]), 2, 100);
        assert!(gap.gap && gap.single().is_none());
    }

    #[test]
    fn retracted_messages_leave_the_cache_without_a_gap() {
        let mut recent = cache(&[(0, 2, &[1, 2]), (2, 4, &[3, 4]), (4, 5, &[5])]);
        let ids = ["id3".to_string(), "id5".to_string(), "id9".to_string()];
        assert_eq!(retract_cached(&mut recent, "r1", &ids), 2);
        let all = read_after(&recent, 0, 100);
        assert_eq!((seqs(&all), all.cursor, all.gap), (vec![1, 2, 4], 5, false));
        let last = read_after(&recent, 4, 100);
        assert_eq!(last.message_count(), 0, "the emptied frame stays, empty");
        assert!(!last.gap && last.single().is_none());
        assert_eq!(retract_cached(&mut recent, "r1", &ids), 0, "idempotent");
    }

    #[test]
    fn the_answer_is_the_batch_of_its_messages() {
        let recent = cache(&[(0, 2, &[1, 2]), (2, 4, &[3, 4]), (4, 5, &[5])]);
        let read = read_after(&recent, 1, 100);
        let owned: Vec<StoredMessage> = read.messages().cloned().collect();
        for reset in [false, true] {
            assert_eq!(
                read.encode("r1", reset),
                encode_batch("r1", "e1", 5, &owned, reset)
            );
        }
        let newest = read_after(&recent, 4, 100);
        let frame = newest.single().expect("newest frame");
        assert_eq!(newest.encode("r1", false), frame.full.json);
        let shared = SharedAnswer::new(frame, 7);
        let v: serde_json::Value = serde_json::from_slice(&shared.json).unwrap();
        assert_eq!(
            (v["cursor"].as_u64(), v["online"].as_u64()),
            (Some(5), Some(7))
        );
        assert_eq!(shared.count(), 1);
        assert!(shared.is_for(frame, 7));
        assert!(!shared.is_for(frame, 8), "another count");
        let copy = Arc::new(frame.without("r1", &[]));
        assert!(
            !shared.is_for(&copy, 7),
            "another frame with the same cursors"
        );
    }
}
