//! Counters, a lock-free latency histogram, the fast batch scanner and the
//! per-viewer sequence tracker.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::LazyLock;
use std::time::Instant;

use memchr::memmem::Finder;

/// The tool's clock: microseconds since it started (monotonic). Publishers
/// stamp it into the text; viewers subtract it from their receive time.
pub static BASE: LazyLock<Instant> = LazyLock::new(Instant::now);

#[inline]
pub fn now_us() -> u64 {
    BASE.elapsed().as_micros() as u64
}

/// Log-linear histogram of microseconds: exact below 64, then 32 buckets
/// per power of two (≤ 3.2 % relative error), lock-free (relaxed atomics).
pub struct Hist {
    buckets: Box<[AtomicU64]>,
}

const SUB: u32 = 32;
const LINEAR: u64 = 64;
const BUCKETS: usize = (LINEAR as usize) + 57 * SUB as usize;

impl Default for Hist {
    fn default() -> Self {
        Hist {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Hist {
    #[inline]
    fn index(v: u64) -> usize {
        if v < LINEAR {
            return v as usize;
        }
        let e = 63 - v.leading_zeros(); // >= 6
        let m = (v >> (e - 5)) & (SUB as u64 - 1);
        (LINEAR as usize + (e as usize - 6) * SUB as usize + m as usize).min(BUCKETS - 1)
    }

    /// The upper bound of a bucket (what a percentile reports).
    fn upper(i: usize) -> u64 {
        if i < LINEAR as usize {
            return i as u64;
        }
        let k = i - LINEAR as usize;
        let e = (k / SUB as usize) as u32 + 6;
        let m = (k % SUB as usize) as u64;
        ((SUB as u64 + m + 1) << (e - 5)) - 1
    }

    #[inline]
    pub fn record(&self, v: u64) {
        self.buckets[Self::index(v)].fetch_add(1, Relaxed);
    }

    /// Adds `other`'s counts (one class's latency over several fronts).
    pub fn add(&self, other: &Hist) {
        for (a, b) in self.buckets.iter().zip(other.buckets.iter()) {
            a.fetch_add(b.load(Relaxed), Relaxed);
        }
    }

    pub fn reset(&self) {
        for b in self.buckets.iter() {
            b.store(0, Relaxed);
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// The value at quantile `q` (0..=1), in the histogram's unit; 0 if empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper(i);
            }
        }
        Self::upper(BUCKETS - 1)
    }

    pub fn max(&self) -> u64 {
        self.buckets
            .iter()
            .rposition(|b| b.load(Relaxed) > 0)
            .map_or(0, Self::upper)
    }
}

/// Totals over every connection, read by the sampler.
#[derive(Default)]
pub struct Counters {
    /// Messages received by viewers (one message reaching one viewer).
    pub deliveries: AtomicU64,
    /// Batches received by viewers (WebSocket messages, SSE events, poll answers).
    pub frames: AtomicU64,
    /// Bytes read from viewer sockets (framing included).
    pub bytes: AtomicU64,
    /// Long-poll answers (poll transport only).
    pub responses: AtomicU64,
    /// Snapshot revalidations answered `304 Not Modified`.
    pub not_modified: AtomicU64,
    /// Snapshot requests answered `200` (a first fetch, or the room changed).
    pub snapshot_ok: AtomicU64,
    /// Snapshot requests answered with any other status, or that failed.
    pub request_errors: AtomicU64,
    pub connected: AtomicU64,
    pub connect_errors: AtomicU64,
    /// Viewers whose connection ended before the run did.
    pub dropped: AtomicU64,
    pub published: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub publish_errors: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            deliveries: self.deliveries.load(Relaxed),
            frames: self.frames.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            responses: self.responses.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            not_modified: self.not_modified.load(Relaxed),
            snapshot_ok: self.snapshot_ok.load(Relaxed),
            request_errors: self.request_errors.load(Relaxed),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    pub deliveries: u64,
    pub frames: u64,
    pub bytes: u64,
    pub responses: u64,
    pub accepted: u64,
    pub not_modified: u64,
    pub snapshot_ok: u64,
    pub request_errors: u64,
}

static SEQ: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"seq\":"));
static CURSOR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"cursor\":"));
static MESSAGES: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"messages\":["));
static TEXT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"text\":\""));

/// The stamp publishers put at the start of the text: `bench:<send µs>:`.
pub const STAMP: &[u8] = b"bench:";

#[inline]
pub fn parse_u64(d: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    let mut n = 0;
    while n < d.len() && d[n].is_ascii_digit() {
        v = v.wrapping_mul(10).wrapping_add((d[n] - b'0') as u64);
        n += 1;
    }
    (n > 0).then_some((v, n))
}

/// What a batch (`{"type":"batch",…,"cursor":N,…,"messages":[…]}`) or a
/// hello holds, found by scanning for `"cursor":`, `"seq":` and the stamp
/// instead of parsing JSON.
pub struct Scan {
    pub cursor: Option<u64>,
    pub messages: u64,
}

/// Scans `json`, appending every message's seq to `seqs`; with `latency`,
/// records `now_us - stamp` for each stamped message into it.
#[inline]
pub fn scan_batch(json: &[u8], seqs: &mut Vec<u64>, latency: Option<(&Hist, u64)>) -> Scan {
    let mut scan = Scan {
        cursor: None,
        messages: 0,
    };
    // "cursor" precedes "messages" in every frame the server encodes.
    let head_end = MESSAGES.find(json).unwrap_or(json.len());
    if let Some(p) = CURSOR.find(&json[..head_end]) {
        scan.cursor = parse_u64(&json[p + 9..]).map(|(v, _)| v);
    }
    let mut at = head_end;
    while let Some(p) = SEQ.find(&json[at..]) {
        let start = at + p + 6;
        let Some((seq, n)) = parse_u64(&json[start..]) else {
            at = start;
            continue;
        };
        seqs.push(seq);
        scan.messages += 1;
        at = start + n;
        if let Some((hist, now)) = latency {
            // "text" follows "seq" in every message (id, seq, room, kind, priority, user, text).
            if let Some(t) = TEXT.find(&json[at..(at + 512).min(json.len())]) {
                let s = at + t + 8;
                if json[s..].starts_with(STAMP) {
                    if let Some((sent, m)) = parse_u64(&json[s + STAMP.len()..]) {
                        hist.record(now.saturating_sub(sent));
                        at = s + STAMP.len() + m;
                    }
                }
            }
        }
    }
    scan
}

/// One viewer's view of its room's sequence: every seq must arrive once.
/// Seqs within a batch are sorted before checking (a batch is ordered by
/// priority bucket, not by seq); between batches order is by seq.
#[derive(Default, Debug, Clone)]
pub struct SeqTrack {
    /// Where the viewer joined (hello cursor, or first seq − 1).
    pub start: Option<u64>,
    /// Highest seq (or batch cursor) seen.
    pub last: u64,
    pub received: u64,
    /// Seqs skipped over (not received when a higher one was).
    pub gaps: u64,
    /// Seqs at or below `last` that were not a known gap: received twice.
    pub dups: u64,
    /// Gaps later filled (out of order, not lost); bounded list.
    pub late: u64,
    missing: Vec<u64>,
}

const MAX_TRACKED_MISSING: usize = 4096;

impl SeqTrack {
    pub fn join(&mut self, cursor: u64) {
        if self.start.is_none() {
            self.start = Some(cursor);
            self.last = cursor;
        }
    }

    /// Checks one batch's seqs (sorted in place).
    pub fn batch(&mut self, seqs: &mut [u64]) {
        if seqs.is_empty() {
            return;
        }
        if !seqs.is_sorted() {
            seqs.sort_unstable();
        }
        if self.start.is_none() {
            self.join(seqs[0] - 1);
        }
        for &s in seqs.iter() {
            self.received += 1;
            if s > self.last {
                if s > self.last + 1 {
                    self.gaps += s - self.last - 1;
                    for m in self.last + 1..s {
                        if self.missing.len() >= MAX_TRACKED_MISSING {
                            break;
                        }
                        self.missing.push(m);
                    }
                }
                self.last = s;
            } else if let Some(i) = self.missing.iter().position(|&m| m == s) {
                self.missing.swap_remove(i);
                self.gaps -= 1;
                self.late += 1;
            } else {
                self.dups += 1;
            }
        }
    }

    /// Lost = gaps never filled + what the room had beyond this viewer's last.
    pub fn lost(&self, room_max: u64) -> u64 {
        self.gaps + room_max.saturating_sub(self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hist_quantiles_are_close() {
        let h = Hist::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 50_000.0).abs() / 50_000.0 < 0.04, "{p50}");
        let p99 = h.quantile(0.99) as f64;
        assert!((p99 - 99_000.0).abs() / 99_000.0 < 0.04, "{p99}");
        assert_eq!(h.count(), 100_000);
        for i in 0..BUCKETS - 1 {
            assert!(Hist::upper(i) < Hist::upper(i + 1));
            assert_eq!(Hist::index(Hist::upper(i)), i);
        }
    }

    #[test]
    fn scan_finds_cursor_seqs_and_stamps() {
        let json = br#"{"type":"batch","room":"r1","epoch":"e","cursor":12,"messages":[{"id":"a","seq":11,"room":"r1","kind":"danmaku","priority":"low","user":{"id":"u","name":"\"seq\":5"},"text":"bench:1000:0:1 x","ts":1},{"id":"b","seq":12,"room":"r1","kind":"gift","priority":"high","user":{"id":"u","name":"n"},"text":"","ts":1}]}"#;
        let h = Hist::default();
        let mut seqs = vec![];
        let s = scan_batch(json, &mut seqs, Some((&h, 1500)));
        assert_eq!(s.cursor, Some(12));
        assert_eq!(seqs, vec![11, 12]);
        assert_eq!(h.count(), 1);
        assert_eq!(h.quantile(0.5), 503); // bucket upper bound around 500
    }

    #[test]
    fn seq_track_counts_gaps_dups_and_late() {
        let mut t = SeqTrack::default();
        t.join(10);
        t.batch(&mut [12, 11]);
        t.batch(&mut [15]);
        assert_eq!(t.gaps, 2);
        t.batch(&mut [13, 15]);
        assert_eq!((t.gaps, t.late, t.dups), (1, 1, 1));
        assert_eq!(t.lost(17), 1 + 2);
    }
}
