//! Messages a hub got from "room updated" notices (which carry the stored
//! batch, see `crate::store::notice`) and has not broadcast yet: a bounded
//! buffer by seq. The hub task takes them once they follow its read cursor;
//! a seq missing before them (a lost notice, another processor's batch
//! still on its way) is a hole, which the read policy lets wait briefly and
//! then fills with one store read. The router adds, the hub task takes:
//! both under the hub's lock, never across an await.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::read_policy::Pending;
use crate::message::StoredMessage;
use crate::store::StoredBatch;

pub(super) struct Carried {
    /// The stream the hub follows: a batch of another epoch is not taken.
    epoch: Arc<str>,
    /// By seq, with when each arrived.
    messages: BTreeMap<u64, (StoredMessage, Instant)>,
    /// Most messages held; past it the buffer is emptied and the hub reads.
    capacity: usize,
    /// When the room last showed news: a batch arrived, or a read found
    /// messages.
    last_news: Instant,
    /// A read found nothing new since `last_news`: the stream's tail is
    /// known. While not, the notice after the news may have been lost
    /// (see [`Carried::unverified`]).
    verified: bool,
}

impl Carried {
    pub fn new(epoch: &str, capacity: usize) -> Carried {
        Carried {
            epoch: Arc::from(epoch),
            messages: BTreeMap::new(),
            capacity: capacity.max(1),
            last_news: Instant::now(),
            verified: true,
        }
    }

    /// Adds a notice's batch. `false`: the hub must read the store instead
    /// (the batch is of another epoch, or the buffer overflowed).
    pub fn offer(&mut self, batch: &StoredBatch, now: Instant) -> bool {
        self.last_news = now;
        self.verified = false;
        if batch.epoch != self.epoch {
            return false;
        }
        for m in &batch.messages {
            self.messages
                .entry(m.seq)
                .or_insert_with(|| (m.clone(), now));
        }
        if self.messages.len() > self.capacity {
            self.messages.clear();
            return false;
        }
        true
    }

    /// What the buffer holds for a hub at `cursor` (for the read policy).
    pub fn pending(&self, cursor: u64, now: Instant) -> Pending {
        match self.messages.range(cursor + 1..).next() {
            None => Pending::Nothing,
            Some((&seq, (_, at))) => {
                let waited = now.saturating_duration_since(*at);
                if seq == cursor + 1 {
                    Pending::Next { waited }
                } else {
                    Pending::Hole { waited }
                }
            }
        }
    }

    /// Takes the messages that follow `cursor` without a hole, at most
    /// `limit`, in seq order (and forgets those at or below `cursor`).
    pub fn take(&mut self, cursor: u64, limit: usize) -> Vec<StoredMessage> {
        self.forget_through(cursor);
        let mut out = Vec::new();
        let mut next = cursor + 1;
        while out.len() < limit {
            match self.messages.first_entry() {
                Some(e) if *e.key() == next => {
                    out.push(e.remove().0);
                    next += 1;
                }
                _ => break,
            }
        }
        out
    }

    /// Unless a read found the tail quiet since the room's last news: how
    /// long ago that news was. A lost notice at the end of a burst leaves
    /// no hole behind it to see, so once the room has been quiet a while,
    /// one read makes sure (the policy's `unverified`).
    pub fn unverified(&self, now: Instant) -> Option<Duration> {
        (!self.verified).then(|| now.saturating_duration_since(self.last_news))
    }

    /// A store read ended: it found messages (`news`; a failed read counts
    /// as news too, nothing is known), or the tail is verified quiet.
    pub fn read_done(&mut self, news: bool, now: Instant) {
        if news {
            self.last_news = now;
            self.verified = false;
        } else {
            self.verified = true;
        }
    }

    /// Forgets what a store read already delivered.
    pub fn forget_through(&mut self, cursor: u64) {
        self.messages = self.messages.split_off(&(cursor + 1));
    }

    /// The hub follows a new stream: nothing of the old one is taken.
    pub fn reset(&mut self, epoch: &str) {
        self.epoch = Arc::from(epoch);
        self.messages.clear();
    }
}

/// How long a hole waits for its notice before a store read fills it.
pub(super) fn hole_wait(tick: Duration) -> Duration {
    tick * 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Priority;

    fn m(seq: u64) -> StoredMessage {
        StoredMessage::for_test(seq, Priority::Low, 0)
    }

    fn batch(epoch: &str, seqs: impl IntoIterator<Item = u64>) -> StoredBatch {
        StoredBatch {
            epoch: Arc::from(epoch),
            messages: seqs.into_iter().map(m).collect(),
        }
    }

    fn seqs(messages: &[StoredMessage]) -> Vec<u64> {
        messages.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn takes_what_follows_the_cursor_and_stops_at_a_hole() {
        let t0 = Instant::now();
        let mut c = Carried::new("e", 100);
        assert!(c.offer(&batch("e", [6, 7]), t0));
        assert!(c.offer(&batch("e", [3, 4, 5]), t0), "out of order is fine");
        assert!(c.offer(&batch("e", [9]), t0));
        assert_eq!(
            c.pending(2, t0),
            Pending::Next {
                waited: Duration::ZERO
            }
        );
        assert_eq!(seqs(&c.take(2, 3)), [3, 4, 5], "at most the limit");
        assert_eq!(seqs(&c.take(5, 100)), [6, 7]);
        let later = t0 + Duration::from_millis(150);
        assert_eq!(
            c.pending(7, later),
            Pending::Hole {
                waited: Duration::from_millis(150)
            }
        );
        assert!(c.take(7, 100).is_empty(), "8 is missing");
        c.forget_through(8); // a read filled the hole
        assert_eq!(seqs(&c.take(8, 100)), [9]);
        assert_eq!(c.pending(9, later), Pending::Nothing);
    }

    #[test]
    fn news_stays_unverified_until_a_read_finds_the_tail_quiet() {
        let t0 = Instant::now();
        let mut c = Carried::new("e", 100);
        assert_eq!(c.unverified(t0), None, "a new hub reads anyway");
        assert!(c.offer(&batch("e", [1]), t0));
        let later = t0 + Duration::from_millis(700);
        assert_eq!(c.unverified(later), Some(Duration::from_millis(700)));
        c.read_done(true, later);
        assert_eq!(
            c.unverified(later),
            Some(Duration::ZERO),
            "a read with news"
        );
        c.read_done(false, later);
        assert_eq!(c.unverified(later), None, "a read that found nothing new");
        assert!(!c.offer(&batch("other", [1]), later));
        assert!(c.unverified(later).is_some(), "any notice is news");
    }

    #[test]
    fn what_the_cursor_passed_is_forgotten_and_duplicates_are_kept_once() {
        let t0 = Instant::now();
        let mut c = Carried::new("e", 100);
        assert!(c.offer(&batch("e", [1, 2, 3]), t0));
        assert!(c.offer(&batch("e", [2, 3, 4]), t0));
        assert_eq!(
            c.pending(2, t0),
            Pending::Next {
                waited: Duration::ZERO
            }
        );
        assert_eq!(seqs(&c.take(2, 100)), [3, 4]);
    }

    #[test]
    fn another_epoch_or_an_overflow_asks_for_a_read() {
        let t0 = Instant::now();
        let mut c = Carried::new("e", 3);
        assert!(!c.offer(&batch("other", [1]), t0));
        assert_eq!(c.pending(0, t0), Pending::Nothing);
        assert!(c.offer(&batch("e", [1, 2, 3]), t0));
        assert!(!c.offer(&batch("e", [4]), t0), "4 messages > capacity 3");
        assert_eq!(c.pending(0, t0), Pending::Nothing, "emptied");
        c.reset("other");
        assert!(c.offer(&batch("other", [1]), t0));
        assert!(
            !c.offer(&batch("e", [2]), t0),
            "the old stream's late notice"
        );
    }
}
