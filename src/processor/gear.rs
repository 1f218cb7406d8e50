//! The processor half of gears (see `docs/architecture.md`, "Gears"): per
//! (room, kind), the processor measures the delay `now − ts` and shifts the
//! gear; what a gear means and how fronts read it is in [`crate::gears`].
//!
//! Shifts use hysteresis (down only below half the threshold that raised it)
//! and a minimum dwell, so the gear does not flap.
//!
//! What fronts are told ([`Shared`]: gear and delay) is written when a gear
//! shifts or a (room, kind) falls behind, refreshed each second while it is
//! raised or behind, and written once more when it is on time again; a
//! (room, kind) on time in gear 1 costs no write at all. "Behind" is a delay
//! past `gears.up_ms[0]`, the one that asks for gear 2.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::config::GearConfig;
pub use crate::gears::{Gear, Shared};
use crate::message::Kind;

/// One (room, kind)'s gear state on a processor.
#[derive(Debug, Clone)]
pub struct GearState {
    pub gear: Gear,
    /// Smoothed delay (ms).
    pub delay_ms: f64,
    changed_at: Instant,
    seen_at: Instant,
    /// Fronts were last told a raised gear or a delay (so they must be told
    /// when it is over).
    told: bool,
}

impl GearState {
    /// Raised above gear 1, or behind (a delay that asks for gear 2): fronts
    /// must know.
    fn worth_telling(&self, up_ms: &[u64; 3]) -> bool {
        self.gear > 1 || self.delay_ms > up_ms[0] as f64
    }

    fn shared(&self) -> Shared {
        Shared {
            gear: self.gear,
            delay_ms: self.delay_ms.round() as u64,
        }
    }
}

/// A shift the caller should log, count and publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shift {
    pub from: Gear,
    pub to: Gear,
}

pub struct Gearbox {
    config: GearConfig,
    states: HashMap<(String, Kind), GearState>,
}

impl Gearbox {
    pub fn new(config: GearConfig) -> Self {
        Gearbox {
            config,
            states: HashMap::new(),
        }
    }

    pub fn gear(&self, room: &str, kind: Kind) -> Gear {
        self.states
            .get(&(room.to_string(), kind))
            .map_or(1, |s| s.gear)
    }

    /// Feeds the delay seen for a (room, kind) batch; returns a shift if any.
    pub fn observe(
        &mut self,
        room: &str,
        kind: Kind,
        delay_ms: u64,
        now: Instant,
    ) -> Option<Shift> {
        let cfg = &self.config;
        let state = self
            .states
            .entry((room.to_string(), kind))
            .or_insert_with(|| GearState {
                gear: 1,
                delay_ms: delay_ms as f64,
                changed_at: now - Duration::from_millis(cfg.min_dwell_ms),
                seen_at: now,
                told: false,
            });
        state.seen_at = now;
        // EWMA, fast enough to react within a batch or two.
        state.delay_ms = 0.5 * state.delay_ms + 0.5 * delay_ms as f64;
        let target = target_gear(&cfg.up_ms, state.gear, state.delay_ms);
        if target == state.gear
            || now.duration_since(state.changed_at) < Duration::from_millis(cfg.min_dwell_ms)
        {
            return None;
        }
        // One gear at a time, so every step is visible and reversible.
        let to = if target > state.gear {
            state.gear + 1
        } else {
            state.gear - 1
        };
        let shift = Shift {
            from: state.gear,
            to,
        };
        state.gear = to;
        state.changed_at = now;
        Some(shift)
    }

    /// What to tell fronts right after an observation of (room, kind): on a
    /// shift, or when it has just fallen behind (not once per batch).
    pub fn tell_now(&mut self, room: &str, kind: Kind, shifted: bool) -> Option<Shared> {
        let state = self.states.get_mut(&(room.to_string(), kind))?;
        let worth = state.worth_telling(&self.config.up_ms);
        if !shifted && (!worth || state.told) {
            return None;
        }
        state.told = worth;
        Some(state.shared())
    }

    /// What to tell fronts each second: every raised or behind (room, kind)
    /// (a refresh within the share TTL), and once more each one that was
    /// told and is now back on time in gear 1.
    pub fn tell_each_second(&mut self) -> Vec<(String, Kind, Shared)> {
        let mut out = Vec::new();
        for ((room, kind), s) in self.states.iter_mut() {
            let worth = s.worth_telling(&self.config.up_ms);
            if worth || s.told {
                s.told = worth;
                out.push((room.clone(), *kind, s.shared()));
            }
        }
        out
    }

    /// A raised or behind (room, kind) that got no traffic for a second has
    /// no delay (nothing of it waits): let it shift down and its delay decay
    /// as if it had seen none. Returns the shifts.
    pub fn idle_tick(&mut self, now: Instant) -> Vec<(String, Kind, Shift)> {
        let quiet: Vec<(String, Kind)> = self
            .states
            .iter()
            .filter(|(_, s)| {
                s.worth_telling(&self.config.up_ms)
                    && now.duration_since(s.seen_at) >= Duration::from_secs(1)
            })
            .map(|(k, _)| k.clone())
            .collect();
        quiet
            .into_iter()
            .filter_map(|(room, kind)| {
                let shift = self.observe(&room, kind, 0, now)?;
                Some((room, kind, shift))
            })
            .collect()
    }

    /// Forgets quiet (room, kind)s back in gear 1 and on time (bounded
    /// memory).
    pub fn forget_idle(&mut self, older_than: Duration, now: Instant) {
        self.states
            .retain(|_, s| s.gear > 1 || s.told || now.duration_since(s.seen_at) < older_than);
    }
}

/// The gear the delay asks for: up when past `up_ms[g-1]`, down only when
/// below half of the threshold that raised the current gear.
fn target_gear(up_ms: &[u64; 3], current: Gear, delay_ms: f64) -> Gear {
    let mut g = current;
    while g < 4 && delay_ms > up_ms[(g - 1) as usize] as f64 {
        g += 1;
    }
    while g > 1 && delay_ms < up_ms[(g - 2) as usize] as f64 / 2.0 {
        g -= 1;
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> GearConfig {
        GearConfig {
            up_ms: [250, 1000, 3000],
            min_dwell_ms: 1000,
            spread_partitions: 0,
            workers: 4,
            share_ttl_s: 10,
        }
    }

    #[test]
    fn shifts_up_one_step_per_dwell_and_down_with_hysteresis() {
        let mut g = Gearbox::new(cfg());
        let t0 = Instant::now();
        assert_eq!(g.observe("r", Kind::Danmaku, 10, t0), None);
        // A flood: delay far past every threshold.
        let s = g.observe("r", Kind::Danmaku, 10_000, t0 + Duration::from_millis(10));
        assert_eq!(s, Some(Shift { from: 1, to: 2 }));
        // Within the dwell: no further shift.
        assert_eq!(
            g.observe("r", Kind::Danmaku, 10_000, t0 + Duration::from_millis(500)),
            None
        );
        let s = g.observe("r", Kind::Danmaku, 10_000, t0 + Duration::from_millis(1100));
        assert_eq!(s, Some(Shift { from: 2, to: 3 }));
        let s = g.observe("r", Kind::Danmaku, 10_000, t0 + Duration::from_millis(2200));
        assert_eq!(s, Some(Shift { from: 3, to: 4 }));
        assert_eq!(g.gear("r", Kind::Danmaku), 4);
        // Other kinds keep their own gear.
        assert_eq!(g.gear("r", Kind::Gift), 1);
        // Delay just under the gear-4 threshold but above half of it: stays.
        for i in 0..10 {
            g.observe(
                "r",
                Kind::Danmaku,
                2000,
                t0 + Duration::from_millis(3300 + i * 10),
            );
        }
        assert_eq!(g.gear("r", Kind::Danmaku), 4);
        // Quiet again: steps down one gear per dwell back to 1.
        let mut t = t0 + Duration::from_millis(4000);
        for expect in [3, 2, 1] {
            g.observe("r", Kind::Danmaku, 5, t);
            assert_eq!(g.gear("r", Kind::Danmaku), expect);
            g.observe("r", Kind::Danmaku, 5, t + Duration::from_millis(10));
            assert_eq!(g.gear("r", Kind::Danmaku), expect, "dwell holds");
            t += Duration::from_millis(1100);
        }
        assert!(
            g.tell_each_second().is_empty(),
            "never told: nothing to undo"
        );
    }

    /// Fronts hear of a shift or a fall behind at once, of a raised or
    /// behind (room, kind) each second, and once more when it is on time.
    #[test]
    fn tells_fronts_of_shifts_and_delays_once_each_and_each_second() {
        let mut g = Gearbox::new(cfg());
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let (r, k) = ("r", Kind::Danmaku);
        g.observe(r, k, 10, t0);
        assert_eq!(g.tell_now(r, k, false), None, "on time in gear 1: silent");
        assert!(g.tell_each_second().is_empty());
        let shift = g.observe(r, k, 1000, ms(10));
        assert_eq!(shift, Some(Shift { from: 1, to: 2 }));
        let told = g.tell_now(r, k, true).unwrap();
        assert_eq!((told.gear, told.delay_ms), (2, 505), "EWMA of 10 and 1000");
        g.observe(r, k, 1000, ms(20));
        assert_eq!(g.tell_now(r, k, false), None, "already told");
        let each = g.tell_each_second();
        assert_eq!(
            each,
            vec![(
                r.to_string(),
                k,
                Shared {
                    gear: 2,
                    delay_ms: 753
                }
            )]
        );
        // Back down to gear 1 (told: a shift), then behind within the dwell.
        let mut t = 1100;
        while g.observe(r, k, 0, ms(t)).is_none() {
            t += 10;
        }
        assert_eq!(g.gear(r, k), 1);
        assert_eq!(g.tell_now(r, k, true).map(|s| s.gear), Some(1));
        g.observe(r, k, 900, ms(t + 10));
        let told = g.tell_now(r, k, false).expect("fell behind: told at once");
        assert_eq!(told.gear, 1);
        assert!(told.delay_ms > 250, "{told:?}");
        assert_eq!(g.tell_now(r, k, false), None);
        assert_eq!(g.tell_each_second().len(), 1, "refreshed while behind");
        // On time again (still within the dwell, so no shift): told once.
        for i in 0..5 {
            g.observe(r, k, 0, ms(t + 20 + i));
        }
        assert_eq!(g.gear(r, k), 1);
        assert_eq!(g.tell_now(r, k, false), None);
        let last = g.tell_each_second();
        assert_eq!(last.len(), 1);
        assert!(last[0].2.delay_ms <= 250, "{last:?}");
        assert!(g.tell_each_second().is_empty());
    }

    #[test]
    fn idle_behind_room_kinds_decay_to_on_time() {
        let mut g = Gearbox::new(GearConfig {
            up_ms: [250, 100_000, 200_000],
            min_dwell_ms: 600_000,
            ..cfg()
        });
        let t0 = Instant::now();
        // First observation: the dwell has passed, so it shifts to gear 2
        // once; afterwards the long dwell keeps it there.
        g.observe("r", Kind::Danmaku, 4000, t0);
        assert_eq!(g.gear("r", Kind::Danmaku), 2);
        let mut seconds = 0;
        while g
            .tell_each_second()
            .iter()
            .any(|(_, _, s)| s.delay_ms > 250)
        {
            seconds += 1;
            assert!(seconds < 10, "delay never decayed");
            g.idle_tick(t0 + Duration::from_secs(seconds));
        }
        assert_eq!(seconds, 4, "4000 halves to 250 in four quiet seconds");
    }

    #[test]
    fn target_gear_hysteresis() {
        let up = [250, 1000, 3000];
        assert_eq!(target_gear(&up, 1, 200.0), 1);
        assert_eq!(target_gear(&up, 1, 300.0), 2);
        assert_eq!(target_gear(&up, 1, 5000.0), 4);
        assert_eq!(target_gear(&up, 2, 200.0), 2, "above half of 250");
        assert_eq!(target_gear(&up, 2, 100.0), 1);
        assert_eq!(target_gear(&up, 4, 1600.0), 4);
        assert_eq!(target_gear(&up, 4, 1400.0), 3);
    }
}
