//! Control notices: what changed, numbered by the cluster-wide version.
//!
//! On the wire (Redis pub/sub and the change log) a notice is
//! `"<version> <json>"`, the JSON tagged by `kind`, so a node can skip a kind
//! it does not know (an older node during a rolling upgrade) and still
//! advance its version.

use serde::{Deserialize, Serialize};

/// A change every node must see. Each names its room so a node that does not
/// serve the room ignores it at no cost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    /// The room's settings changed: re-read them.
    Settings { room: String },
    /// The room's mutes changed: re-read them.
    Mutes { room: String },
    /// `user` was banned from `room`: re-read the room's mutes and close the
    /// user's sockets in the room.
    Ban { room: String, user: String },
    /// Messages were retracted: tell the room's viewers, drop them from caches.
    Retract { room: String, ids: Vec<String> },
    /// A live of `room` was deleted from the archive: drop its replay caches.
    LiveDeleted { room: String, live: String },
    /// A kind this node does not know (sent by a newer node).
    #[serde(other)]
    Unknown,
}

impl Notice {
    pub fn room(&self) -> Option<&str> {
        match self {
            Notice::Settings { room }
            | Notice::Mutes { room }
            | Notice::Ban { room, .. }
            | Notice::Retract { room, .. }
            | Notice::LiveDeleted { room, .. } => Some(room),
            Notice::Unknown => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Notice::Settings { .. } => "settings",
            Notice::Mutes { .. } => "mutes",
            Notice::Ban { .. } => "ban",
            Notice::Retract { .. } => "retract",
            Notice::LiveDeleted { .. } => "live_deleted",
            Notice::Unknown => "unknown",
        }
    }
}

/// A notice with its place in the cluster-wide order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionedNotice {
    pub version: u64,
    pub notice: Notice,
}

impl VersionedNotice {
    pub fn encode(&self) -> String {
        format!("{} {}", self.version, encode_body(&self.notice))
    }

    /// Parses `"<version> <json>"`; `None` for anything else.
    pub fn decode(wire: &str) -> Option<VersionedNotice> {
        let (version, body) = wire.split_once(' ')?;
        Some(VersionedNotice {
            version: version.parse().ok()?,
            notice: serde_json::from_str(body).ok()?,
        })
    }
}

/// The JSON of a notice (what engines number and store).
pub fn encode_body(notice: &Notice) -> String {
    serde_json::to_string(notice).expect("notices serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_unknown_kinds() {
        let n = VersionedNotice {
            version: 42,
            notice: Notice::Ban {
                room: "r 1".into(),
                user: "u:x".into(),
            },
        };
        assert_eq!(VersionedNotice::decode(&n.encode()), Some(n));
        let future = VersionedNotice::decode(r#"7 {"kind":"future_thing","room":"r"}"#).unwrap();
        assert_eq!(future.version, 7);
        assert_eq!(future.notice, Notice::Unknown);
        for bad in [
            "",
            "x {}",
            "7",
            "7 {",
            "-1 {\"kind\":\"settings\",\"room\":\"r\"}",
        ] {
            assert_eq!(VersionedNotice::decode(bad), None, "{bad:?}");
        }
    }
}
