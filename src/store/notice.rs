//! What a "room updated" notice carries (`docs/redis-keys.md`, "Notices"):
//! per room, the batch the processor just stored there (messages with their
//! seqs, and the stream's epoch) when it fits in `store.notice_max_bytes`,
//! otherwise the room's name only. Fronts take carried messages without a
//! store read; a name alone means "read the store".

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Deserialize;

use crate::message::{Message, StoredMessage};

/// One room's part of a notice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomNotice {
    /// [`super::ALL_ROOMS`] (empty): notices may have been missed, any room
    /// may have changed.
    pub room: Arc<str>,
    /// The batch just stored, when the notice carries it.
    pub stored: Option<StoredBatch>,
}

/// Messages of one room as stored (seq set, the bytes a read returns), in
/// seq order, and the epoch of the stream they were stored in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBatch {
    pub epoch: Arc<str>,
    pub messages: Vec<StoredMessage>,
}

impl RoomNotice {
    /// "Read the store": the room changed, the notice carries nothing.
    pub fn name_only(room: &str) -> RoomNotice {
        RoomNotice {
            room: Arc::from(room),
            stored: None,
        }
    }

    pub fn is_all_rooms(&self) -> bool {
        *self.room == *super::ALL_ROOMS
    }

    /// Bytes of carried message JSON.
    fn carried_bytes(&self) -> usize {
        self.stored
            .as_ref()
            .map_or(0, |b| b.messages.iter().map(|m| m.json.len()).sum())
    }
}

/// Keeps a notice within `max_bytes` of carried message JSON: rooms whose
/// batch no longer fits (in order) are sent by name only, and fronts read
/// them from the store. 0 carries nothing.
pub fn bound(notices: &mut [RoomNotice], max_bytes: usize) {
    let mut used = 0usize;
    for notice in notices {
        let bytes = notice.carried_bytes();
        if notice.stored.is_some() && (max_bytes == 0 || used + bytes > max_bytes) {
            notice.stored = None;
        } else {
            used += bytes;
        }
    }
}

/// Test fault `store.fault_drop_notice_every`: drops every nth notice on
/// purpose (0: never), so tests can prove fronts fill the holes.
#[derive(Debug, Default)]
pub struct NoticeFault {
    every: u64,
    sent: AtomicU64,
}

impl NoticeFault {
    pub fn new(every: u64) -> NoticeFault {
        NoticeFault {
            every,
            sent: AtomicU64::new(0),
        }
    }

    /// Whether this notice is to be dropped.
    pub fn drops_next(&self) -> bool {
        self.every > 0 && (self.sent.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(self.every)
    }
}

/// The wire form over Redis: `{"rooms":[{"room":..,"epoch":..,"messages":
/// [<stored JSON>,..]},{"room":..}]}`. The messages are the stored bytes,
/// concatenated (no re-encoding on the processor).
pub fn encode(notices: &[RoomNotice]) -> String {
    let mut out = String::from("{\"rooms\":[");
    for (i, notice) in notices.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"room\":");
        out.push_str(&json_string(&notice.room));
        if let Some(batch) = &notice.stored {
            out.push_str(",\"epoch\":");
            out.push_str(&json_string(&batch.epoch));
            out.push_str(",\"messages\":[");
            for (j, m) in batch.messages.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                // Stored JSON is UTF-8 (serde_json wrote it).
                out.push_str(&String::from_utf8_lossy(&m.json));
            }
            out.push(']');
        }
        out.push('}');
    }
    out.push_str("]}");
    out
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

#[derive(Deserialize)]
struct Wire {
    rooms: Vec<WireRoom>,
}

#[derive(Deserialize)]
struct WireRoom {
    room: String,
    #[serde(default)]
    epoch: Option<String>,
    #[serde(default)]
    messages: Vec<Message>,
}

/// Reads a payload of [`encode`], or the older form (room names joined by
/// `'\n'`; a room name never starts with `{`). Each message is encoded
/// again by `Message::into_stored`, which gives back the stored bytes.
/// `None`: unreadable.
pub fn decode(payload: &str) -> Option<Vec<RoomNotice>> {
    if !payload.starts_with('{') {
        return Some(
            payload
                .split('\n')
                .filter(|r| *r != super::ALL_ROOMS)
                .map(RoomNotice::name_only)
                .collect(),
        );
    }
    let wire: Wire = serde_json::from_str(payload).ok()?;
    Some(
        wire.rooms
            .into_iter()
            .filter(|r| r.room != super::ALL_ROOMS)
            .map(|r| RoomNotice {
                stored: r.epoch.map(|epoch| StoredBatch {
                    epoch: Arc::from(epoch),
                    messages: r
                        .messages
                        .into_iter()
                        .map(|m| {
                            let seq = m.seq;
                            m.into_stored(seq)
                        })
                        .collect(),
                }),
                room: Arc::from(r.room),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Gift, Kind, Priority, UserRef};

    fn stored(id: &str, seq: u64) -> StoredMessage {
        Message {
            id: id.into(),
            seq: 0,
            room: "r".into(),
            kind: Kind::Gift,
            priority: Priority::High,
            user: UserRef {
                id: "u\"1".into(),
                name: "名字".into(),
            },
            text: "a\nb {\"rooms\"".into(),
            ts: 1_700_000_000_123,
            offset_ms: None,
            gift: Some(Gift {
                gift_id: "g".into(),
                count: 2,
                value: 5,
            }),
            style: None,
        }
        .into_stored(seq)
    }

    fn carrying(room: &str, seqs: &[u64]) -> RoomNotice {
        RoomNotice {
            room: Arc::from(room),
            stored: Some(StoredBatch {
                epoch: Arc::from("e1"),
                messages: seqs.iter().map(|s| stored(&format!("m{s}"), *s)).collect(),
            }),
        }
    }

    #[test]
    fn a_payload_gives_back_the_stored_bytes() {
        let notices = vec![carrying("a", &[3, 4]), RoomNotice::name_only("b")];
        let back = decode(&encode(&notices)).unwrap();
        assert_eq!(back, notices);
    }

    #[test]
    fn the_older_form_names_rooms() {
        let back = decode("a\nb").unwrap();
        assert_eq!(
            back,
            vec![RoomNotice::name_only("a"), RoomNotice::name_only("b")]
        );
        assert_eq!(decode("{not json"), None);
    }

    #[test]
    fn past_the_bound_rooms_go_by_name() {
        let one = stored("m1", 1).json.len();
        let mut notices = vec![
            carrying("a", &[1]),
            carrying("b", &[2, 3]),
            carrying("c", &[4]),
        ];
        bound(&mut notices, 2 * one);
        let carried: Vec<bool> = notices.iter().map(|n| n.stored.is_some()).collect();
        assert_eq!(carried, [true, false, true], "b alone is too big after a");
        bound(&mut notices, 0);
        assert!(
            notices.iter().all(|n| n.stored.is_none()),
            "0 carries nothing"
        );
    }

    #[test]
    fn the_fault_drops_every_nth() {
        let fault = NoticeFault::new(3);
        let dropped: Vec<bool> = (0..6).map(|_| fault.drops_next()).collect();
        assert_eq!(dropped, [false, false, true, false, false, true]);
        assert!(!(0..10).any(|_| NoticeFault::new(0).drops_next()));
    }
}
