//! Wire types of the API contract (`docs/architecture.md`, "API") and the
//! stored, pre-encoded form.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// What a message is; drives default priority and how the page renders it.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Danmaku,
    Gift,
    System,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Danmaku => "danmaku",
            Kind::Gift => "gift",
            Kind::System => "system",
        }
    }
}

/// Delivery bucket. Declaration order is rank: whitelist first.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Whitelist,
    High,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Whitelist, Priority::High, Priority::Low];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Whitelist => "whitelist",
            Priority::High => "high",
            Priority::Low => "low",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
#[serde(deny_unknown_fields)]
pub struct UserRef {
    pub id: String,
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
#[serde(deny_unknown_fields)]
pub struct Gift {
    pub gift_id: String,
    pub count: u32,
    /// Value of one gift in the platform's smallest unit.
    #[serde(default)]
    pub value: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum StyleMode {
    Scroll,
    Top,
    Bottom,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Style {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<StyleMode>,
}

/// A message as the contract defines it. `seq` is 0 until the store assigns it.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct Message {
    pub id: String,
    #[serde(default)]
    pub seq: u64,
    pub room: String,
    pub kind: Kind,
    pub priority: Priority,
    pub user: UserRef,
    #[serde(default)]
    pub text: String,
    /// Server timestamp (unix ms) stamped once by the front.
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gift: Option<Gift>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style: Option<Style>,
}

impl Message {
    /// Encodes the message once, with its sequence, for every later reader.
    pub fn into_stored(mut self, seq: u64) -> StoredMessage {
        self.seq = seq;
        let json = serde_json::to_vec(&self).expect("message serialises");
        StoredMessage {
            seq,
            priority: self.priority,
            ts: self.ts,
            id: self.id,
            json: Bytes::from(json),
        }
    }
}

/// A stored message: the few fields readers filter on, plus its encoded JSON
/// (which already carries `seq`), so frames are built by concatenation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: u64,
    pub priority: Priority,
    pub ts: u64,
    pub id: String,
    pub json: Bytes,
}

#[cfg(test)]
impl StoredMessage {
    /// A message for unit tests: id `id<seq>`, JSON `{"seq":<seq>}`.
    pub fn for_test(seq: u64, priority: Priority, ts: u64) -> StoredMessage {
        StoredMessage {
            seq,
            priority,
            ts,
            id: format!("id{seq}"),
            json: Bytes::from(format!(r#"{{"seq":{seq}}}"#)),
        }
    }
}

/// Room names are path segments and key parts: keep them boring.
pub fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= 64
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Unix ms by the process's clock, corrected towards the store's
/// ([`crate::clock`]): what `ts` is stamped with and delays are measured by.
pub use crate::clock::now_ms;

pub fn new_message_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_json_carries_seq_and_contract_fields() {
        let m = Message {
            id: "a".into(),
            seq: 0,
            room: "r1".into(),
            kind: Kind::Danmaku,
            priority: Priority::Low,
            user: UserRef {
                id: "u".into(),
                name: "n".into(),
            },
            text: "hi".into(),
            ts: 5,
            offset_ms: None,
            gift: None,
            style: None,
        };
        let s = m.into_stored(7);
        let v: serde_json::Value = serde_json::from_slice(&s.json).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(v["kind"], "danmaku");
        assert_eq!(v["priority"], "low");
        assert_eq!(v["user"]["name"], "n");
        assert!(v.get("gift").is_none());
    }

    #[test]
    fn room_names() {
        assert!(valid_room("r1"));
        assert!(valid_room("live_room-9"));
        assert!(!valid_room(""));
        assert!(!valid_room("a/b"));
        assert!(!valid_room(&"x".repeat(65)));
    }
}
