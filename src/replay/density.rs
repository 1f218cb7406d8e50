//! Density control of replay windows: a window of a flooded room is rationed
//! per viewer as the live was (`fanout::ration::ration_by_second`: per second
//! of offset, whitelist always, high and low within the room's budget, low
//! shed first). The selection is a pure function of the window and the
//! rules, so every viewer and every front gets the same one, and it is what
//! the front cache holds (keyed by the rules' [`Density`]).

use serde::Deserialize;

use crate::archive::ArchivedMessage;
use crate::fanout::ration::ration_by_second;
use crate::message::Priority;
use crate::rooms::RationRules;

/// What a window's selection depends on: a cache key part, so a room whose
/// budget changes gets windows rationed by the new rules at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Density {
    budget_per_s: u32,
    high_per_s: u32,
}

impl Density {
    pub(super) fn of(rules: &RationRules) -> Density {
        Density {
            budget_per_s: rules.budget_per_s,
            high_per_s: rules.high_budget(),
        }
    }
}

/// The window's messages a viewer gets under `rules` (still by offset, seq),
/// and how many were left out.
pub(super) fn ration(
    rules: &RationRules,
    rows: Vec<ArchivedMessage>,
) -> (Vec<ArchivedMessage>, u64) {
    // No second over budget (the common case): nothing to parse.
    if busiest_second(&rows) <= rules.budget_per_s as usize {
        return (rows, 0);
    }
    let at: Vec<(u64, Priority)> = rows
        .iter()
        .map(|m| (m.offset_ms / 1000, priority(&m.json)))
        .collect();
    let keep = ration_by_second(rules, &at, |m| *m);
    let before = rows.len();
    let kept: Vec<ArchivedMessage> = rows
        .into_iter()
        .zip(keep)
        .filter_map(|(m, k)| k.then_some(m))
        .collect();
    let shed = (before - kept.len()) as u64;
    (kept, shed)
}

/// Messages in the fullest second of offset (`rows` by offset).
fn busiest_second(rows: &[ArchivedMessage]) -> usize {
    rows.chunk_by(|a, b| a.offset_ms / 1000 == b.offset_ms / 1000)
        .map(<[_]>::len)
        .max()
        .unwrap_or(0)
}

/// A stored message's priority (from its JSON; the archive keeps no column
/// for it). Unreadable: low, the first to be shed.
fn priority(json: &[u8]) -> Priority {
    #[derive(Deserialize)]
    struct OnlyPriority {
        priority: Priority,
    }
    serde_json::from_slice::<OnlyPriority>(json)
        .map(|m| m.priority)
        .unwrap_or(Priority::Low)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn row(seq: u64, offset_ms: u64, priority: &str) -> ArchivedMessage {
        ArchivedMessage {
            seq,
            offset_ms,
            ts: 0,
            json: Bytes::from(format!(
                r#"{{"id":"m{seq}","seq":{seq},"room":"r","kind":"danmaku","priority":"{priority}","user":{{"id":"u","name":"priority\":\"whitelist"}},"text":"x","ts":1}}"#
            )),
        }
    }

    #[test]
    fn a_flooded_second_keeps_the_budget_whitelist_and_high_first() {
        let rules = RationRules {
            budget_per_s: 3,
            high_share: 0.34, // high 1, low 2
            max_lag_ms: 5000,
        };
        let mut rows = vec![];
        for seq in 1..=10 {
            rows.push(row(seq, 100 + seq, "low"));
        }
        rows.push(row(11, 200, "high"));
        rows.push(row(12, 300, "whitelist"));
        rows.push(row(13, 1500, "low")); // the next second: within budget
        rows.sort_by_key(|m| (m.offset_ms, m.seq));
        let (kept, shed) = ration(&rules, rows.clone());
        let seqs: Vec<u64> = kept.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 2, 11, 12, 13]);
        assert_eq!(shed, 8);
        // Deterministic: the same input, the same selection.
        assert_eq!(ration(&rules, rows).0, kept);
    }

    #[test]
    fn a_window_with_no_second_over_budget_is_whole() {
        let rules = RationRules {
            budget_per_s: 2,
            high_share: 0.5,
            max_lag_ms: 5000,
        };
        // 6 low over 3 seconds, 2 a second: at the budget, nothing shed.
        let rows: Vec<_> = (0..6).map(|i| row(i + 1, i * 500, "low")).collect();
        assert_eq!(busiest_second(&rows), 2);
        assert_eq!(ration(&rules, rows.clone()), (rows, 0));
    }

    #[test]
    fn priorities_come_from_the_json_and_unreadable_is_low() {
        assert_eq!(priority(&row(1, 0, "high").json), Priority::High);
        assert_eq!(priority(&row(1, 0, "low").json), Priority::Low);
        assert_eq!(priority(b"{}"), Priority::Low);
        assert_eq!(priority(b"not json"), Priority::Low);
    }
}
