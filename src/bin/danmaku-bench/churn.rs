//! Viewers that behave as real ones do (`fanout --slow-viewers`,
//! `--resume-every`): slow readers on a bad link, and viewers that leave and
//! come back by cursor. Both must cost the server nothing lasting and lose
//! nothing: a slow reader is cut (`1008 slow consumer`, docs/protocol.md §5)
//! and resumes exactly where it was; a resumed viewer gets every seq once.

use std::time::Duration;

use tokio::time::Instant;

/// What the run's WebSocket viewers do besides reading.
#[derive(Clone, Copy, Debug, Default)]
pub struct Churn {
    /// The first `slow_viewers` WebSocket viewers (by index) read in bursts
    /// through a small receive buffer.
    pub slow_viewers: usize,
    /// How long a slow viewer stops reading after each second of reading.
    pub slow_stall: Duration,
    /// Every WebSocket viewer leaves and resumes by cursor this often
    /// (staggered by index); `None`: never.
    pub resume_every: Option<Duration>,
}

/// Receive buffer of a slow viewer's socket: a phone on a bad link, not a
/// loopback socket whose autotuned buffers hold minutes of a small room.
pub const SLOW_RCVBUF: u32 = 4096;

/// A slow viewer reads this long between stalls.
const SLOW_READS_FOR: Duration = Duration::from_secs(1);

impl Churn {
    pub fn is_slow(&self, viewer: usize) -> bool {
        viewer < self.slow_viewers
    }

    /// The receive buffer viewer `viewer` asks for (`None`: the system's).
    pub fn rcvbuf(&self, viewer: usize) -> Option<u32> {
        self.is_slow(viewer).then_some(SLOW_RCVBUF)
    }

    /// When viewer `viewer` next leaves and resumes, from `now`: a golden-
    /// ratio share of the interval on the first time, so resumes spread
    /// evenly over the viewers instead of arriving together.
    pub fn next_resume(&self, viewer: usize, now: Instant, first: bool) -> Option<Instant> {
        let every = self.resume_every?;
        let share = if first {
            0.5 + (viewer as f64 * 0.618_034).fract()
        } else {
            1.0
        };
        Some(now + every.mul_f64(share))
    }

    /// When a slow viewer that read until `now` stalls next.
    pub fn next_stall(&self, now: Instant) -> Instant {
        now + SLOW_READS_FOR
    }
}

/// Why a WebSocket connection of a viewer ended, and whether it resumes.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEnd {
    /// The run is over.
    Stopped,
    /// Its time to leave and resume came (`--resume-every`).
    Leave,
    /// The server closed it with a code that asks for a resume by cursor
    /// (`1001`, `1008`): `r.ended` holds the reason until the resume works.
    Cut,
    /// Anything else: the viewer is done (`r.ended` says why).
    Ended,
}

/// Close codes after which docs/protocol.md says to reconnect with the cursor.
pub fn resumable(code: u16) -> bool {
    matches!(code, 1001 | 1008)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_spread_over_the_interval_and_slow_viewers_come_first() {
        let c = Churn {
            slow_viewers: 2,
            slow_stall: Duration::from_secs(6),
            resume_every: Some(Duration::from_secs(10)),
        };
        let now = Instant::now();
        let firsts: Vec<Duration> = (0..100)
            .map(|i| c.next_resume(i, now, true).unwrap() - now)
            .collect();
        assert!(firsts
            .iter()
            .all(|d| *d >= Duration::from_secs(5) && *d < Duration::from_secs(15)));
        // Spread: no tenth of the range holds more than a fifth of the viewers.
        for tenth in 0..10 {
            let lo = Duration::from_secs(5) + Duration::from_secs(1) * tenth;
            let n = firsts
                .iter()
                .filter(|d| **d >= lo && **d < lo + Duration::from_secs(1))
                .count();
            assert!(n <= 20, "{n} viewers resume in second {tenth}");
        }
        assert_eq!(
            c.next_resume(3, now, false),
            Some(now + Duration::from_secs(10))
        );
        assert_eq!((c.rcvbuf(1), c.rcvbuf(2)), (Some(SLOW_RCVBUF), None));
        assert_eq!(Churn::default().next_resume(0, now, true), None);
        assert!(resumable(1008) && resumable(1001) && !resumable(1000) && !resumable(1011));
    }
}
