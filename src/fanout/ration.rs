//! Priority rationing (docs/architecture.md, "Rationing"): what one room's
//! viewers get per second.
//!
//! Rules, per one-second window of the hub's clock:
//! - whitelist is always delivered and uses no budget;
//! - high gets `high_share` of the budget; beyond it, high waits in a backlog
//!   for the next windows' share (oldest first) and is dropped only once it is
//!   older than `max_lag_ms`;
//! - low gets the rest of the budget as it arrives, plus, at the window's last
//!   tick, whatever high left unused (rollover); low beyond that is dropped;
//! - a batch is ordered whitelist, high, low (seq order within each).
//!
//! The selection is a pure function of (state, clock, rules, input), so every
//! node that feeds the same input at the same tick picks the same messages.

use std::collections::VecDeque;

use crate::message::{Priority, StoredMessage};

/// The rules are room settings (`crate::rooms`), resolved per tick.
pub use crate::rooms::RationRules;

#[derive(Default, Debug)]
pub struct Rationer {
    window: u64,
    high_used: u32,
    low_used: u32,
    high_backlog: VecDeque<StoredMessage>,
    /// Low over its share this window, waiting for the rollover decision.
    low_waiting: Vec<StoredMessage>,
}

/// What one tick delivers, and what it gave up.
#[derive(Default, Debug)]
pub struct Selection {
    pub messages: Vec<StoredMessage>,
    /// Per bucket: delivered now.
    pub delivered: [u64; 3],
    /// Low dropped by rationing.
    pub rationed_low: u64,
    /// High dropped after waiting past the lag bound.
    pub expired_high: u64,
}

impl Rationer {
    /// Seqs considered but not yet delivered or dropped (high backlog, low
    /// waiting for rollover): a catching-up reader must leave them to the hub.
    pub fn undecided(&self) -> Vec<u64> {
        self.high_backlog
            .iter()
            .chain(self.low_waiting.iter())
            .map(|m| m.seq)
            .collect()
    }

    pub fn has_undecided(&self) -> bool {
        !self.high_backlog.is_empty() || !self.low_waiting.is_empty()
    }

    /// One tick at `now_ms` (ticks every `tick_ms`), with new messages in seq order.
    pub fn tick(
        &mut self,
        now_ms: u64,
        tick_ms: u64,
        rules: &RationRules,
        input: Vec<StoredMessage>,
    ) -> Selection {
        let mut sel = Selection::default();
        let window = now_ms / 1000;
        if window != self.window {
            // A window ended without its last tick (a late tick): its waiting low
            // never got rollover budget.
            sel.rationed_low += self.low_waiting.len() as u64;
            self.low_waiting.clear();
            self.window = window;
            self.high_used = 0;
            self.low_used = 0;
        }
        let high_budget = rules.high_budget();
        let low_budget = rules.low_budget();

        let mut whitelist = Vec::new();
        let mut low = Vec::new();
        for m in input {
            match m.priority {
                Priority::Whitelist => whitelist.push(m),
                Priority::High => self.high_backlog.push_back(m),
                Priority::Low => {
                    if self.low_used < low_budget {
                        self.low_used += 1;
                        low.push(m);
                    } else {
                        self.low_waiting.push(m);
                    }
                }
            }
        }
        let too_old = now_ms.saturating_sub(rules.max_lag_ms);
        while self.high_backlog.front().is_some_and(|m| m.ts < too_old) {
            self.high_backlog.pop_front();
            sel.expired_high += 1;
        }
        let mut high = Vec::new();
        while self.high_used < high_budget {
            let Some(m) = self.high_backlog.pop_front() else {
                break;
            };
            self.high_used += 1;
            high.push(m);
        }
        let last_tick_of_window = (now_ms + tick_ms) / 1000 != window;
        if last_tick_of_window {
            let rollover = if self.high_backlog.is_empty() {
                high_budget.saturating_sub(self.high_used) as usize
            } else {
                0
            };
            let take = rollover.min(self.low_waiting.len());
            self.low_used += take as u32;
            let mut waiting = std::mem::take(&mut self.low_waiting);
            sel.rationed_low += (waiting.len() - take) as u64;
            waiting.truncate(take);
            low.extend(waiting);
            low.sort_by_key(|m| m.seq);
        }
        sel.delivered = [whitelist.len() as u64, high.len() as u64, low.len() as u64];
        sel.messages = whitelist;
        sel.messages.extend(high);
        sel.messages.extend(low);
        sel
    }
}

/// Stateless rationing of a catch-up read (a viewer resuming from an older
/// cursor): per second of server timestamp, whitelist and high all (they are
/// late already), low up to its share plus what high left of its share.
pub fn ration_catch_up(rules: &RationRules, messages: Vec<StoredMessage>) -> Vec<StoredMessage> {
    let mut out = Vec::with_capacity(messages.len());
    let mut i = 0;
    while i < messages.len() {
        let second = messages[i].ts / 1000;
        let end = messages[i..]
            .iter()
            .position(|m| m.ts / 1000 != second)
            .map_or(messages.len(), |p| i + p);
        let group = &messages[i..end];
        let high = group
            .iter()
            .filter(|m| m.priority == Priority::High)
            .count() as u32;
        let low_allowed =
            rules.low_budget() as usize + rules.high_budget().saturating_sub(high) as usize;
        let mut low_taken = 0;
        for m in group {
            if m.priority != Priority::Low {
                out.push(m.clone());
            } else if low_taken < low_allowed {
                low_taken += 1;
                out.push(m.clone());
            }
        }
        i = end;
    }
    out
}

/// Stateless rationing of an archived stretch (a replay window), per second
/// of `at(item).0` (offset): whitelist all, using no budget; high up to its
/// share; low up to its share plus what high left of its share (the live's
/// rollover); then high over its share takes what low left (in the live it
/// would have waited for a later share; replay shows it at its own offset).
/// So per second high + low stay within the budget, low is shed first.
/// Returns which items to keep (a pure function of the rules and the
/// priorities: every front keeps the same ones).
pub fn ration_by_second<T>(
    rules: &RationRules,
    items: &[T],
    at: impl Fn(&T) -> (u64, Priority),
) -> Vec<bool> {
    let mut keep = vec![false; items.len()];
    let mut i = 0;
    while i < items.len() {
        let second = at(&items[i]).0;
        let end = items[i..]
            .iter()
            .position(|m| at(m).0 != second)
            .map_or(items.len(), |p| i + p);
        let count = |p: Priority| items[i..end].iter().filter(|m| at(m).1 == p).count();
        let budget = rules.budget_per_s as usize;
        let high_share = rules.high_budget() as usize;
        let high_wanted = count(Priority::High);
        let high_in_share = high_wanted.min(high_share);
        let low_taken =
            count(Priority::Low).min(rules.low_budget() as usize + (high_share - high_in_share));
        let high_taken = high_wanted.min(budget.saturating_sub(low_taken));
        let (mut high_left, mut low_left) = (high_taken, low_taken);
        for (k, m) in keep[i..end].iter_mut().zip(&items[i..end]) {
            let left = match at(m).1 {
                Priority::Whitelist => {
                    *k = true;
                    continue;
                }
                Priority::High => &mut high_left,
                Priority::Low => &mut low_left,
            };
            if *left > 0 {
                *left -= 1;
                *k = true;
            }
        }
        i = end;
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn m(seq: u64, p: Priority, ts: u64) -> StoredMessage {
        StoredMessage {
            seq,
            priority: p,
            ts,
            id: seq.to_string(),
            json: Bytes::new(),
        }
    }

    fn rules(budget: u32, share: f64) -> RationRules {
        RationRules {
            budget_per_s: budget,
            high_share: share,
            max_lag_ms: 5000,
        }
    }

    #[test]
    fn whitelist_always_then_high_share_then_low_with_rollover() {
        let r = rules(10, 0.6); // high 6, low 4
        let mut rat = Rationer::default();
        let mut input = vec![];
        let mut seq = 0;
        let mut push = |p, n: usize, input: &mut Vec<StoredMessage>| {
            for _ in 0..n {
                seq += 1;
                input.push(m(seq, p, 10_000));
            }
        };
        push(Priority::Low, 20, &mut input);
        push(Priority::Whitelist, 3, &mut input);
        push(Priority::High, 2, &mut input);
        // First tick of second 10: low gets its 4, high its 2, whitelist 3.
        let s = rat.tick(10_000, 100, &r, input);
        assert_eq!(s.delivered, [3, 2, 4]);
        let order: Vec<Priority> = s.messages.iter().map(|m| m.priority).collect();
        assert!(
            order.windows(2).all(|w| w[0] <= w[1]),
            "whitelist, high, low"
        );
        // Last tick of the window: high left 4 unused → 4 more low, the rest dropped.
        let s = rat.tick(10_900, 100, &r, vec![]);
        assert_eq!(s.delivered, [0, 0, 4]);
        assert_eq!(s.rationed_low, 12);
    }

    #[test]
    fn high_over_share_waits_and_expires_past_lag() {
        let r = rules(2, 0.5); // high 1/s
        let mut rat = Rationer::default();
        let input = (1..=4).map(|s| m(s, Priority::High, 0)).collect();
        let s = rat.tick(0, 100, &r, input);
        assert_eq!(s.delivered[1], 1);
        assert_eq!(rat.undecided(), vec![2, 3, 4]);
        let s = rat.tick(1000, 100, &r, vec![]);
        assert_eq!(s.messages[0].seq, 2);
        // Past the 5 s lag the rest is dropped, counted.
        let s = rat.tick(5001, 100, &r, vec![]);
        assert_eq!(s.expired_high, 2);
        assert!(!rat.has_undecided());
    }

    #[test]
    fn catch_up_keeps_whitelist_and_high() {
        let r = rules(3, 0.34); // high 1, low 2
        let mut msgs = vec![m(1, Priority::High, 0), m(2, Priority::High, 10)];
        msgs.extend((3..10).map(|s| m(s, Priority::Low, 20)));
        msgs.push(m(10, Priority::Whitelist, 30));
        let out = ration_catch_up(&r, msgs);
        let low = out.iter().filter(|m| m.priority == Priority::Low).count();
        assert_eq!(low, 2);
        assert_eq!(out.len(), 5);
    }

    #[test]
    fn replay_seconds_keep_whitelist_then_high_then_low() {
        let r = rules(4, 0.5); // high 2, low 2
        let p = |k: u8| [Priority::Whitelist, Priority::High, Priority::Low][k as usize];
        // Second 0: 3 whitelist, 3 high, 5 low → all whitelist, 2 high + 2 low
        // in their shares, and nothing left for the third high.
        // Second 1: 1 high, 5 low → low takes the unused high share (3 low).
        // Second 2: 5 high, no low → high takes low's unused share (4 high).
        let items: Vec<(u64, Priority)> = [
            (0, 2),
            (0, 0),
            (0, 1),
            (0, 2),
            (0, 1),
            (0, 0),
            (0, 2),
            (0, 1),
            (0, 2),
            (0, 2),
            (0, 0),
            (1, 2),
            (1, 1),
            (1, 2),
            (1, 2),
            (1, 2),
            (1, 2),
            (2, 1),
            (2, 1),
            (2, 1),
            (2, 1),
            (2, 1),
        ]
        .iter()
        .map(|&(s, k)| (s, p(k)))
        .collect();
        let keep = ration_by_second(&r, &items, |m| *m);
        let kept = |second: u64, prio: Priority| {
            items
                .iter()
                .zip(&keep)
                .filter(|(m, k)| **k && m.0 == second && m.1 == prio)
                .count()
        };
        assert_eq!(
            [Priority::Whitelist, Priority::High, Priority::Low].map(|p| kept(0, p)),
            [3, 2, 2]
        );
        assert_eq!([kept(1, Priority::High), kept(1, Priority::Low)], [1, 3]);
        assert_eq!(kept(2, Priority::High), 4);
        // The first ones of each bucket are kept (in order).
        let low0: Vec<bool> = items
            .iter()
            .zip(&keep)
            .filter(|(m, _)| m.0 == 0 && m.1 == Priority::Low)
            .map(|(_, k)| *k)
            .collect();
        assert_eq!(low0, [true, true, false, false, false]);
    }

    proptest! {
        /// Over any stream of ticks: whitelist always delivered at once; high
        /// never dropped unless expired; per window, high ≤ its share and
        /// high + low ≤ budget; nothing delivered twice; batches ordered.
        #[test]
        fn rationing_rules_hold(
            budget in 0u32..40,
            share in 0.0f64..=1.0,
            ticks in proptest::collection::vec(
                proptest::collection::vec(0u8..3, 0..30), 1..60),
        ) {
            let r = RationRules { budget_per_s: budget, high_share: share, max_lag_ms: 5000 };
            let mut rat = Rationer::default();
            let mut seq = 0u64;
            let mut seen = std::collections::HashSet::new();
            let mut per_window: std::collections::HashMap<u64, (u32, u32)> = Default::default();
            let (mut high_in, mut high_out, mut high_expired) = (0u64, 0u64, 0u64);
            for (i, kinds) in ticks.iter().enumerate() {
                let now = 1_000_000 + i as u64 * 100;
                let input: Vec<_> = kinds.iter().map(|k| {
                    seq += 1;
                    let p = [Priority::Whitelist, Priority::High, Priority::Low][*k as usize];
                    m(seq, p, now)
                }).collect();
                let wl_in: Vec<u64> = input.iter().filter(|m| m.priority == Priority::Whitelist).map(|m| m.seq).collect();
                high_in += input.iter().filter(|m| m.priority == Priority::High).count() as u64;
                let s = rat.tick(now, 100, &r, input);
                let wl_out: Vec<u64> = s.messages.iter().filter(|m| m.priority == Priority::Whitelist).map(|m| m.seq).collect();
                prop_assert_eq!(wl_in, wl_out);
                prop_assert!(s.messages.windows(2).all(|w| w[0].priority <= w[1].priority));
                for msg in &s.messages {
                    prop_assert!(seen.insert(msg.seq), "delivered twice");
                }
                let w = per_window.entry(now / 1000).or_default();
                w.0 += s.delivered[1] as u32;
                w.1 += s.delivered[2] as u32;
                prop_assert!(w.0 <= r.high_budget());
                prop_assert!(w.0 + w.1 <= r.budget_per_s);
                high_out += s.delivered[1];
                high_expired += s.expired_high;
            }
            let waiting = rat.high_backlog.len() as u64;
            prop_assert_eq!(high_in, high_out + high_expired + waiting);
        }

        /// Replay rationing: per second whitelist all kept, high + low within
        /// the budget, low kept only when every high of its second is, and
        /// no budget left unused while something was shed.
        #[test]
        fn replay_rationing_rules_hold(
            budget in 0u32..40,
            share in 0.0f64..=1.0,
            items in proptest::collection::vec((0u64..5, 0u8..3), 0..200),
        ) {
            let r = RationRules { budget_per_s: budget, high_share: share, max_lag_ms: 5000 };
            let mut items: Vec<(u64, Priority)> = items.into_iter()
                .map(|(s, k)| (s, [Priority::Whitelist, Priority::High, Priority::Low][k as usize]))
                .collect();
            items.sort_by_key(|m| m.0);
            let keep = ration_by_second(&r, &items, |m| *m);
            for second in 0..5 {
                let of = |p: Priority| items.iter().zip(&keep)
                    .filter(move |(m, _)| m.0 == second && m.1 == p);
                prop_assert!(of(Priority::Whitelist).all(|(_, k)| *k));
                let high_kept = of(Priority::High).filter(|(_, k)| **k).count();
                let low_kept = of(Priority::Low).filter(|(_, k)| **k).count();
                let shed = of(Priority::High).chain(of(Priority::Low)).filter(|(_, k)| !**k).count();
                prop_assert!(high_kept + low_kept <= budget as usize);
                if low_kept > 0 {
                    prop_assert!(high_kept >= of(Priority::High).count().min(r.high_budget() as usize));
                }
                if shed > 0 {
                    prop_assert_eq!(high_kept + low_kept, budget as usize);
                }
            }
        }
    }
}
