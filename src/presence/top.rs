//! The one per-room metric, bounded (docs/architecture.md, "Metrics"):
//! `danmaku_top_room_online{room}` holds the cluster online figure of at most
//! [`TOP_ROOMS`] big rooms with a hub on this node, the biggest, refilled each
//! presence round. Every room's figures are in the admin API instead
//! (`HubRegistry::room_stats`).

use parking_lot::Mutex;
use prometheus::IntGaugeVec;

pub use crate::metrics::TOP_ROOMS;

/// The `n` biggest of `rooms` (room, online), biggest first; ties by name,
/// so the same figures always give the same series.
pub fn top_n(mut rooms: Vec<(&str, usize)>, n: usize) -> Vec<(&str, usize)> {
    let order = |a: &(&str, usize), b: &(&str, usize)| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0));
    if n == 0 {
        return Vec::new();
    }
    if rooms.len() > n {
        rooms.select_nth_unstable_by(n - 1, order);
        rooms.truncate(n);
    }
    rooms.sort_unstable_by(order);
    rooms
}

/// A room-labelled gauge that never holds more than [`TOP_ROOMS`] series.
pub struct TopRooms {
    gauge: IntGaugeVec,
    /// Rooms with a series now.
    shown: Mutex<Vec<String>>,
}

impl TopRooms {
    pub fn new(gauge: IntGaugeVec) -> Self {
        TopRooms {
            gauge,
            shown: Mutex::new(Vec::new()),
        }
    }

    /// Replaces the series with the biggest of `rooms`: series that stay are
    /// overwritten in place (a scrape never sees the gauge empty mid-round).
    pub fn refill(&self, rooms: Vec<(&str, usize)>) {
        let top = top_n(rooms, TOP_ROOMS);
        let mut shown = self.shown.lock();
        for old in shown.iter() {
            if !top.iter().any(|(room, _)| room == old) {
                let _ = self.gauge.remove_label_values(&[old.as_str()]);
            }
        }
        shown.clear();
        for (room, online) in top {
            self.gauge
                .with_label_values(&[room])
                .set(online.min(i64::MAX as usize) as i64);
            shown.push(room.to_string());
        }
    }

    /// Drops `room`'s series, if it has one.
    pub fn forget(&self, room: &str) {
        let mut shown = self.shown.lock();
        if let Some(i) = shown.iter().position(|r| r == room) {
            shown.swap_remove(i);
            let _ = self.gauge.remove_label_values(&[room]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    #[test]
    fn top_n_takes_the_biggest_in_a_stable_order() {
        type Rooms<'a> = &'a [(&'a str, usize)];
        // (rooms, n) -> expected
        let table: [(Rooms, usize, Rooms); 5] = [
            (&[], 3, &[]),
            (&[("a", 1)], 0, &[]),
            (&[("a", 1), ("b", 5), ("c", 3)], 2, &[("b", 5), ("c", 3)]),
            (&[("b", 2), ("a", 2), ("c", 2)], 2, &[("a", 2), ("b", 2)]),
            (&[("a", 1), ("b", 2)], 5, &[("b", 2), ("a", 1)]),
        ];
        for (rooms, n, want) in table {
            assert_eq!(top_n(rooms.to_vec(), n), want.to_vec(), "{rooms:?} top {n}");
        }
    }

    fn series(gauge: &IntGaugeVec) -> Vec<(String, i64)> {
        use prometheus::core::Collector;
        let mut out: Vec<(String, i64)> = gauge.collect()[0]
            .get_metric()
            .iter()
            .map(|m| {
                let room = m.get_label()[0].value().to_string();
                (room, m.get_gauge().get_value() as i64)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn refill_keeps_at_most_the_top_rooms() {
        let gauge = IntGaugeVec::new(Opts::new("t", "t"), &["room"]).unwrap();
        let top = TopRooms::new(gauge.clone());
        let names: Vec<String> = (0..3 * TOP_ROOMS).map(|i| format!("r{i:02}")).collect();
        let rooms: Vec<(&str, usize)> = names.iter().map(|n| n.as_str()).zip(0..).collect();
        top.refill(rooms.clone());
        let got = series(&gauge);
        assert_eq!(got.len(), TOP_ROOMS);
        assert_eq!(
            got[0],
            (format!("r{:02}", 2 * TOP_ROOMS), 2 * TOP_ROOMS as i64)
        );

        // The next round: a smaller set replaces the old series entirely.
        top.refill(vec![("r00", 7), ("new", 3)]);
        assert_eq!(
            series(&gauge),
            vec![("new".to_string(), 3), ("r00".to_string(), 7)]
        );
        top.forget("new");
        assert_eq!(series(&gauge), vec![("r00".to_string(), 7)]);
        top.refill(Vec::new());
        assert!(series(&gauge).is_empty());
    }
}
