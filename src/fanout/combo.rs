//! Gift combos: repeated gifts of one user and one gift id within a short
//! window reach viewers as one message with the total count.
//!
//! The store keeps every event (each is acknowledged, stored, counted and
//! replayed on its own); only the hub's shared frames merge them. A room's
//! hub runs one [`Combiner`] over each tick's rationed selection, before the
//! frame is encoded, so the merge costs once per room per node, not once per
//! viewer.
//!
//! Rules:
//! - only `high` gifts are combined (the default priority of a gift); a
//!   whitelisted gift is always delivered at once, like every whitelist message;
//! - the first gift of a (user, gift id) opens a combo and is held; same-key
//!   gifts arriving while it is open join it; the combo is emitted once
//!   `window_ms` has passed since it opened (hub clock), or at the hub's final
//!   tick (shutdown), so a held gift is never lost;
//! - a combo of one event is emitted unchanged (its stored bytes); a combo of
//!   N > 1 events is the first event's message with `gift.count` = the sum of
//!   the counts and an added `"combo": {"events": N}`, keeping the first
//!   event's `id`, `seq` and `ts`;
//! - held seqs are "undecided": a viewer catching up from the store leaves
//!   them to the hub, exactly as for the rationer's backlog.

use std::collections::HashMap;

use bytes::Bytes;
use memchr::memmem;
use serde::Deserialize;

use crate::message::{Priority, StoredMessage};

/// What a combined gift's key and count are read from (the stored JSON).
#[derive(Deserialize)]
struct GiftFields {
    kind: String,
    user: UserId,
    gift: Option<GiftIdCount>,
}

#[derive(Deserialize)]
struct UserId {
    id: String,
}

#[derive(Deserialize)]
struct GiftIdCount {
    gift_id: String,
    count: u64,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct ComboKey {
    user_id: String,
    gift_id: String,
}

#[derive(Debug)]
struct Combo {
    first: StoredMessage,
    /// Hub clock when the combo opened.
    opened_ms: u64,
    events: u32,
    total: u64,
    /// Seqs of the events after the first (merged into it).
    merged: Vec<u64>,
}

/// One tick's outcome besides the messages.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComboStats {
    /// Combos of two or more events emitted this tick.
    pub combos: u64,
    /// Events folded into an earlier event of their combo this tick.
    pub merged: u64,
}

#[derive(Default, Debug)]
pub struct Combiner {
    open: HashMap<ComboKey, Combo>,
}

impl Combiner {
    /// Gifts held for a combo.
    pub fn is_holding(&self) -> bool {
        !self.open.is_empty()
    }

    /// Seqs of every held gift (a catching-up reader must leave them to the hub).
    pub fn held_seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.open
            .values()
            .flat_map(|c| std::iter::once(c.first.seq).chain(c.merged.iter().copied()))
    }

    /// Forgets everything held (the stream they belong to was replaced).
    pub fn clear(&mut self) {
        self.open.clear();
    }

    /// Applies combos to one tick's selection (ordered whitelist, high, low,
    /// seq within each). Returns what to send now, in the same order, and
    /// what was merged. `window_ms == 0` turns combos off; `flush` emits
    /// everything held (the hub's last tick).
    pub fn apply(
        &mut self,
        now_ms: u64,
        window_ms: u64,
        flush: bool,
        messages: Vec<StoredMessage>,
    ) -> (Vec<StoredMessage>, ComboStats) {
        let mut stats = ComboStats::default();
        if window_ms == 0 && self.open.is_empty() {
            return (messages, stats);
        }
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            let fields = if window_ms > 0 { combinable(&m) } else { None };
            let Some((key, count)) = fields else {
                out.push(m);
                continue;
            };
            match self.open.get_mut(&key) {
                Some(combo) => {
                    combo.events += 1;
                    combo.total = combo.total.saturating_add(count);
                    combo.merged.push(m.seq);
                }
                None => {
                    self.open.insert(
                        key,
                        Combo {
                            first: m,
                            opened_ms: now_ms,
                            events: 1,
                            total: count,
                            merged: Vec::new(),
                        },
                    );
                }
            }
        }
        let due: Vec<ComboKey> = self
            .open
            .iter()
            .filter(|(_, c)| flush || now_ms >= c.opened_ms.saturating_add(window_ms))
            .map(|(k, _)| k.clone())
            .collect();
        if due.is_empty() {
            return (out, stats);
        }
        for key in due {
            let combo = self.open.remove(&key).expect("due combo is open");
            if combo.events > 1 {
                stats.combos += 1;
                stats.merged += combo.merged.len() as u64;
            }
            out.push(combo.into_message());
        }
        // Emitted combos carry their first event's (older) seq: restore the
        // batch order whitelist, high, low, then seq.
        out.sort_by_key(|m| (m.priority, m.seq));
        (out, stats)
    }
}

impl Combo {
    fn into_message(self) -> StoredMessage {
        if self.events == 1 {
            return self.first;
        }
        let mut first = self.first;
        match merged_json(&first.json, self.total, self.events) {
            Some(json) => first.json = json,
            None => tracing::warn!(id = %first.id, "gift combo: stored JSON not mergeable"),
        }
        first
    }
}

/// `(key, count)` of a high gift; `None` for anything else. A byte scan
/// skips the JSON parse for every message that is not a gift.
fn combinable(m: &StoredMessage) -> Option<(ComboKey, u64)> {
    if m.priority != Priority::High || memmem::find(&m.json, br#""kind":"gift""#).is_none() {
        return None;
    }
    let f: GiftFields = serde_json::from_slice(&m.json).ok()?;
    let gift = f.gift.filter(|_| f.kind == "gift")?;
    Some((
        ComboKey {
            user_id: f.user.id,
            gift_id: gift.gift_id,
        },
        gift.count,
    ))
}

/// The first event's JSON with `gift.count` = `total` (at most `u32::MAX`,
/// the contract's range) and `"combo": {"events": events}`.
fn merged_json(json: &[u8], total: u64, events: u32) -> Option<Bytes> {
    let mut v: serde_json::Value = serde_json::from_slice(json).ok()?;
    let obj = v.as_object_mut()?;
    let gift = obj.get_mut("gift")?.as_object_mut()?;
    gift.insert("count".into(), total.min(u32::MAX as u64).into());
    obj.insert("combo".into(), serde_json::json!({ "events": events }));
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gift(seq: u64, user: &str, gift_id: &str, count: u32, p: Priority) -> StoredMessage {
        let json = serde_json::json!({
            "id": format!("m{seq}"), "seq": seq, "room": "r", "kind": "gift",
            "priority": p.as_str(), "user": {"id": user, "name": "N"}, "text": "",
            "ts": 1, "gift": {"gift_id": gift_id, "count": count, "value": 5},
        });
        StoredMessage {
            seq,
            priority: p,
            ts: 1,
            id: format!("m{seq}"),
            json: Bytes::from(serde_json::to_vec(&json).unwrap()),
        }
    }

    fn low(seq: u64) -> StoredMessage {
        StoredMessage {
            seq,
            priority: Priority::Low,
            ts: 1,
            id: format!("m{seq}"),
            json: Bytes::from(format!(
                r#"{{"seq":{seq},"kind":"danmaku","priority":"low","user":{{"id":"u","name":"n"}}}}"#
            )),
        }
    }

    fn json(m: &StoredMessage) -> serde_json::Value {
        serde_json::from_slice(&m.json).unwrap()
    }

    #[test]
    fn repeated_gifts_merge_into_one_message_after_the_window() {
        let mut c = Combiner::default();
        let (out, _) = c.apply(
            1000,
            3000,
            false,
            vec![
                gift(1, "a", "rose", 1, Priority::High),
                low(2),
                gift(3, "a", "rose", 2, Priority::High),
            ],
        );
        assert_eq!(out.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2]);
        assert_eq!(c.held_seqs().collect::<Vec<_>>(), vec![1, 3]);
        let (out, _) = c.apply(
            2000,
            3000,
            false,
            vec![gift(4, "a", "rose", 3, Priority::High)],
        );
        assert!(out.is_empty());
        let (out, stats) = c.apply(4000, 3000, false, vec![low(5)]);
        assert_eq!(
            stats,
            ComboStats {
                combos: 1,
                merged: 2
            }
        );
        assert_eq!(out.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 5]);
        let v = json(&out[0]);
        assert_eq!(v["gift"]["count"], 6);
        assert_eq!(v["gift"]["value"], 5);
        assert_eq!(v["combo"]["events"], 3);
        assert_eq!(v["id"], "m1");
        assert!(!c.is_holding());
    }

    #[test]
    fn other_keys_whitelist_and_single_gifts_are_not_merged() {
        let mut c = Combiner::default();
        let wl = gift(3, "a", "rose", 1, Priority::Whitelist);
        let input = vec![
            wl.clone(),
            gift(1, "a", "rose", 1, Priority::High),
            gift(2, "b", "rose", 1, Priority::High),
            gift(4, "a", "car", 1, Priority::High),
        ];
        let (out, _) = c.apply(0, 3000, false, input);
        assert_eq!(out, vec![wl], "whitelist is never held");
        let (out, stats) = c.apply(3000, 3000, false, vec![]);
        assert_eq!(stats.combos, 0);
        assert_eq!(out.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 4]);
        // A single gift goes out byte for byte as stored.
        assert_eq!(out[0], gift(1, "a", "rose", 1, Priority::High));
    }

    #[test]
    fn flush_emits_everything_and_zero_window_is_off() {
        let mut c = Combiner::default();
        c.apply(
            0,
            3000,
            false,
            vec![gift(1, "a", "rose", 1, Priority::High)],
        );
        let (out, _) = c.apply(1, 3000, true, vec![gift(2, "a", "rose", 1, Priority::High)]);
        assert_eq!(out.len(), 1);
        assert_eq!(json(&out[0])["gift"]["count"], 2);
        let mut off = Combiner::default();
        let input = vec![
            gift(1, "a", "rose", 1, Priority::High),
            gift(2, "a", "rose", 1, Priority::High),
        ];
        let (out, _) = off.apply(0, 0, false, input.clone());
        assert_eq!(out, input);
    }

    #[test]
    fn emitted_combos_keep_batch_order() {
        let mut c = Combiner::default();
        c.apply(0, 100, false, vec![gift(1, "a", "rose", 1, Priority::High)]);
        let (out, _) = c.apply(
            100,
            100,
            false,
            vec![
                gift(5, "w", "rose", 1, Priority::Whitelist),
                gift(6, "b", "car", 1, Priority::High),
                low(7),
            ],
        );
        // b's car opens its own combo; a's rose is due.
        let order: Vec<(Priority, u64)> = out.iter().map(|m| (m.priority, m.seq)).collect();
        assert_eq!(
            order,
            vec![
                (Priority::Whitelist, 5),
                (Priority::High, 1),
                (Priority::Low, 7)
            ]
        );
    }
}
