//! Presence (docs/architecture.md, "Presence"): how many viewers each room
//! has, on this node and over the cluster.
//!
//! Each node counts its own viewers per room in a [`RoomPresence`] (streams
//! and held long-polls). Every `presence_interval_ms` an [`Exchange`] round
//! publishes those counts to the live store (kept `presence_ttl_s`, so a dead
//! node's counts expire) and takes back each room's total over all live nodes.
//! The total is the room's online figure: it sets the room's rationing budget
//! and its size class ([`SizeClass`]: big rooms are served from each node's
//! cache of recent frames, not from the store).
//!
//! Presence knows rooms only through [`Counted`] (the fan-out's hub implements
//! it): it imports nothing from the fan-out, the fronts or the HTTP layer.

mod exchange;
mod top;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub use exchange::Exchange;
pub use top::{top_n, TopRooms, TOP_ROOMS};

/// A room whose viewers presence counts.
pub trait Counted: Send + Sync {
    fn room(&self) -> &str;
    fn presence(&self) -> &RoomPresence;
}

/// What kind of viewer joins or leaves a room's count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer {
    /// A WebSocket or SSE stream (subscribed, or written to by the hub).
    Stream,
    /// A long-poll request held open.
    Poll,
}

/// Whether a room is served from the store or from each node's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeClass {
    Small,
    /// Viewers read this node's cache of recent frames, not the store.
    Big,
}

/// The size class for `total` viewers over the cluster, with hysteresis: a
/// room becomes big at `threshold` and small again only below half of it, so
/// a room hovering at the threshold does not flip every round.
pub fn size_class(was: SizeClass, total: usize, threshold: usize) -> SizeClass {
    let big = match was {
        SizeClass::Big => total * 2 >= threshold,
        SizeClass::Small => total >= threshold,
    };
    if big {
        SizeClass::Big
    } else {
        SizeClass::Small
    }
}

/// One room's viewer counts on this node, and the cluster figure last exchanged.
#[derive(Default)]
pub struct RoomPresence {
    streams: AtomicUsize,
    pollers: AtomicUsize,
    /// Viewers over all fronts, as last exchanged (0 until the first round).
    cluster: AtomicUsize,
    big: AtomicBool,
}

impl RoomPresence {
    fn counter(&self, viewer: Viewer) -> &AtomicUsize {
        match viewer {
            Viewer::Stream => &self.streams,
            Viewer::Poll => &self.pollers,
        }
    }

    pub fn join(&self, viewer: Viewer) {
        self.counter(viewer).fetch_add(1, Ordering::AcqRel);
    }

    pub fn leave(&self, viewer: Viewer) {
        self.counter(viewer).fetch_sub(1, Ordering::AcqRel);
    }

    /// Viewers of this room on this node (streams and held polls).
    pub fn online(&self) -> usize {
        self.streams.load(Ordering::Acquire) + self.pollers.load(Ordering::Acquire)
    }

    /// Viewers over all fronts, as last exchanged (at least this node's).
    pub fn cluster_online(&self) -> usize {
        self.cluster.load(Ordering::Acquire).max(self.online())
    }

    pub fn size_class(&self) -> SizeClass {
        if self.big.load(Ordering::Acquire) {
            SizeClass::Big
        } else {
            SizeClass::Small
        }
    }

    pub fn is_big(&self) -> bool {
        self.size_class() == SizeClass::Big
    }

    /// Records the cluster total of an exchange round; returns the new size
    /// class if it changed.
    pub fn record_total(&self, total: usize, threshold: usize) -> Option<SizeClass> {
        self.cluster.store(total, Ordering::Release);
        let was = self.size_class();
        let now = size_class(was, total, threshold);
        if now == was {
            return None;
        }
        self.big.store(now == SizeClass::Big, Ordering::Release);
        Some(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SizeClass::{Big, Small};

    #[test]
    fn size_class_has_hysteresis() {
        // (was, total, threshold) -> now
        let table = [
            (Small, 99, 100, Small),
            (Small, 100, 100, Big),
            (Big, 50, 100, Big),
            (Big, 49, 100, Small),
            (Small, 50, 100, Small),
            (Small, 1, 1, Big),
            (Big, 0, 1, Small),
        ];
        for (was, total, threshold, now) in table {
            assert_eq!(
                size_class(was, total, threshold),
                now,
                "{was:?} at {total}/{threshold}"
            );
        }
    }

    #[test]
    fn counts_and_the_cluster_figure() {
        let p = RoomPresence::default();
        p.join(Viewer::Stream);
        p.join(Viewer::Poll);
        p.join(Viewer::Poll);
        p.leave(Viewer::Poll);
        assert_eq!(p.online(), 2);
        assert_eq!(p.cluster_online(), 2, "at least this node's before a round");
        assert_eq!(p.record_total(7, 5), Some(Big));
        assert_eq!(p.record_total(6, 5), None);
        assert_eq!(p.cluster_online(), 6);
        assert!(p.is_big());
        assert_eq!(p.record_total(2, 5), Some(Small));
        assert_eq!(p.cluster_online(), 2);
    }
}
