//! Per-room settings (budgets, ratios, whitelist users, blocked words) and
//! room mutes as this node holds them: a cache of the cluster state
//! (`docs/architecture.md`, "Control plane"), filled and kept current by
//! `control/`; defaults from config for what a room does not set.

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::{DashMap, DashSet};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::config::RationConfig;
use crate::text::BlockedWords;

/// What one room's viewers get per second (the rules themselves are in
/// `fanout/ration.rs`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RationRules {
    /// Messages per viewer per second, whitelist excluded.
    pub budget_per_s: u32,
    /// Part of the budget reserved for high (0..=1).
    pub high_share: f64,
    /// High waiting longer than this (from its server timestamp) is dropped.
    pub max_lag_ms: u64,
}

impl RationRules {
    pub fn high_budget(&self) -> u32 {
        ((self.budget_per_s as f64) * self.high_share.clamp(0.0, 1.0)).round() as u32
    }

    pub fn low_budget(&self) -> u32 {
        self.budget_per_s.saturating_sub(self.high_budget())
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct RoomSettings {
    /// Fixed per-viewer budget (messages/s); absent → by room size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_per_s: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_share: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_max_lag_ms: Option<u64>,
    /// Users whose danmaku goes to the whitelist bucket in this room.
    #[serde(default)]
    pub whitelist_users: Vec<String>,
    /// Viewers whose token's `vip` level is at least this post as high here
    /// (0: VIPs not ranked); absent → `ingest.vip_high_level`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip_high_level: Option<u32>,
    /// Extra blocked words for this room (case-insensitive), besides the global ones.
    #[serde(default)]
    pub blocked_words: Vec<String>,
    /// Watching needs a viewer token whose `rooms` claim names the room
    /// (`auth::access`); absent → public.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
    /// `blocked_words` folded for matching (`crate::text`), set with them.
    #[serde(skip)]
    pub blocked: BlockedWords,
}

/// Highest `vip_high_level` a room may set (platforms' levels are small).
pub const MAX_VIP_LEVEL: u32 = 1000;

/// A partial update: omitted fields keep their value; `null` clears an option.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RoomSettingsPatch {
    #[serde(default, with = "double_option")]
    pub budget_per_s: Option<Option<u32>>,
    #[serde(default, with = "double_option")]
    pub high_share: Option<Option<f64>>,
    #[serde(default, with = "double_option")]
    pub high_max_lag_ms: Option<Option<u64>>,
    #[serde(default)]
    pub whitelist_users: Option<Vec<String>>,
    #[serde(default, with = "double_option")]
    pub vip_high_level: Option<Option<u32>>,
    #[serde(default)]
    pub blocked_words: Option<Vec<String>>,
    #[serde(default)]
    pub private: Option<bool>,
}

mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

impl RoomSettingsPatch {
    /// Checks ranges; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(Some(b)) = self.budget_per_s {
            if b > 10_000 {
                return Err("budget_per_s must be at most 10000".into());
            }
        }
        if let Some(Some(s)) = self.high_share {
            if !(0.0..=1.0).contains(&s) {
                return Err("high_share must be within 0..=1".into());
            }
        }
        if let Some(Some(l)) = self.high_max_lag_ms {
            if l > 60_000 {
                return Err("high_max_lag_ms must be at most 60000".into());
            }
        }
        if let Some(Some(l)) = self.vip_high_level {
            if l > MAX_VIP_LEVEL {
                return Err(format!("vip_high_level must be at most {MAX_VIP_LEVEL}"));
            }
        }
        for list in [&self.whitelist_users, &self.blocked_words]
            .into_iter()
            .flatten()
        {
            if list.len() > 1000 || list.iter().any(|w| w.is_empty() || w.len() > 64) {
                return Err("lists hold at most 1000 entries of 1-64 bytes".into());
            }
        }
        Ok(())
    }
}

impl RoomSettings {
    /// Settings from their stored fields (name → JSON value). A field that no
    /// longer parses (written by another version) is left out with a warning
    /// rather than losing the room's other settings.
    pub fn from_fields(fields: &[(String, String)]) -> RoomSettings {
        let mut map = serde_json::Map::new();
        for (name, json) in fields {
            let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else {
                tracing::warn!(field = %name, "skipping an unreadable room setting");
                continue;
            };
            let alone = serde_json::Map::from_iter([(name.clone(), value.clone())]);
            if serde_json::from_value::<RoomSettings>(alone.into()).is_err() {
                tracing::warn!(field = %name, "skipping an invalid room setting");
                continue;
            }
            map.insert(name.clone(), value);
        }
        let mut settings: RoomSettings = serde_json::from_value(map.into()).unwrap_or_default();
        settings.blocked_words = settings
            .blocked_words
            .iter()
            .map(|w| w.to_lowercase())
            .collect();
        settings.blocked = BlockedWords::new(settings.blocked_words.iter().map(String::as_str));
        settings
    }
}

/// The stored form of a validated patch body: fields to set (name, JSON
/// value) and fields to clear (`null`). Generic over the fields, so a new
/// setting needs no code here.
pub fn patch_fields(body: &serde_json::Map<String, serde_json::Value>) -> SettingsChange {
    let mut fields = SettingsChange::default();
    for (name, value) in body {
        if value.is_null() {
            fields.clear.push(name.clone());
        } else {
            fields.set.push((name.clone(), value.to_string()));
        }
    }
    fields
}

/// A settings change as stored: fields to set (name, JSON value) and fields
/// to clear; fields not named keep their value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SettingsChange {
    pub set: Vec<(String, String)>,
    pub clear: Vec<String>,
}

/// One room as this node holds it.
#[derive(Debug, Default)]
pub struct RoomState {
    pub settings: Arc<RoomSettings>,
    /// Room mutes: user → until (unix ms); may hold mutes that ran out.
    pub mutes: HashMap<String, u64>,
}

impl RoomState {
    /// Until when `user` is muted in this room, if the mute is in force at `now_ms`.
    pub fn muted_until(&self, user: &str, now_ms: u64) -> Option<u64> {
        self.mutes
            .get(user)
            .copied()
            .filter(|until| *until > now_ms)
    }
}

/// This node's cache of room state. Reads are synchronous (hub ticks ration
/// with it); a room read before it was loaded gets the defaults and is put
/// on the wanted list, which `control/` loads from the cluster state.
pub struct RoomDirectory {
    rooms: DashMap<String, Arc<RoomState>>,
    defaults: RationConfig,
    empty: Arc<RoomState>,
    /// Rooms read while not cached, for the loader.
    wanted: DashSet<String>,
    /// Wakes the loader when a room is wanted.
    wake: Notify,
}

impl RoomDirectory {
    pub fn new(defaults: RationConfig) -> Self {
        RoomDirectory {
            rooms: DashMap::new(),
            defaults,
            empty: Arc::new(RoomState::default()),
            wanted: DashSet::new(),
            wake: Notify::new(),
        }
    }

    /// The room's state (defaults until loaded; a miss asks the loader).
    pub fn state(&self, room: &str) -> Arc<RoomState> {
        match self.rooms.get(room) {
            Some(state) => state.clone(),
            None => {
                if self.wanted.insert(room.to_string()) {
                    self.wake.notify_one();
                }
                self.empty.clone()
            }
        }
    }

    pub fn get(&self, room: &str) -> Arc<RoomSettings> {
        self.state(room).settings.clone()
    }

    /// The cached state, without asking the loader.
    pub fn cached(&self, room: &str) -> Option<Arc<RoomState>> {
        self.rooms.get(room).map(|s| s.clone())
    }

    pub fn insert(&self, room: &str, state: RoomState) -> Arc<RoomState> {
        let state = Arc::new(state);
        self.rooms.insert(room.to_string(), state.clone());
        self.wanted.remove(room);
        state
    }

    /// Forgets one room: loaded again when next read.
    pub fn forget(&self, room: &str) {
        self.rooms.remove(room);
    }

    /// Forgets every room (the node may have missed changes): each is
    /// loaded again when next read.
    pub fn clear(&self) {
        self.rooms.clear();
    }

    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Takes the rooms wanted since the last call.
    pub fn take_wanted(&self) -> Vec<String> {
        let rooms: Vec<String> = self.wanted.iter().map(|r| r.clone()).collect();
        for room in &rooms {
            self.wanted.remove(room);
        }
        rooms
    }

    /// Resolves once a room is wanted (or was since the last call).
    pub async fn wanted_changed(&self) {
        self.wake.notified().await;
    }

    /// The rules for a room of `online` viewers.
    pub fn rules(&self, room: &str, online: usize) -> RationRules {
        let s = self.get(room);
        RationRules {
            budget_per_s: s
                .budget_per_s
                .unwrap_or_else(|| self.defaults.budget_for(online)),
            high_share: s.high_share.unwrap_or(self.defaults.high_share),
            max_lag_ms: s.high_max_lag_ms.unwrap_or(self.defaults.high_max_lag_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn stored(dir: &RoomDirectory, room: &str, body: &str) {
        let patch: RoomSettingsPatch = serde_json::from_str(body).unwrap();
        patch.validate().unwrap();
        let body: serde_json::Map<String, serde_json::Value> = serde_json::from_str(body).unwrap();
        // What an engine stores: the fields merged over what was there.
        let mut fields: Vec<(String, String)> = dir
            .cached(room)
            .map(|s| {
                let v = serde_json::to_value(&*s.settings).unwrap();
                v.as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let change = patch_fields(&body);
        fields
            .retain(|(k, _)| !change.clear.contains(k) && !change.set.iter().any(|(s, _)| s == k));
        fields.extend(change.set);
        dir.insert(
            room,
            RoomState {
                settings: Arc::new(RoomSettings::from_fields(&fields)),
                mutes: HashMap::new(),
            },
        );
    }

    #[test]
    fn stored_fields_merge_and_rules_follow_room_size() {
        let dir = RoomDirectory::new(Config::embedded().ration);
        let small = dir.rules("r", 1);
        let big = dir.rules("r", 1_000_000);
        assert!(
            big.budget_per_s < small.budget_per_s,
            "bigger room → smaller budget"
        );
        assert_eq!(
            dir.take_wanted(),
            vec!["r".to_string()],
            "a miss asks the loader"
        );
        stored(&dir, "r", r#"{"budget_per_s":30,"blocked_words":["Foo"]}"#);
        assert_eq!(dir.rules("r", 1_000_000).budget_per_s, 30);
        stored(&dir, "r", r#"{"budget_per_s":null}"#);
        assert_eq!(dir.rules("r", 1).budget_per_s, small.budget_per_s);
        assert_eq!(dir.get("r").blocked_words, vec!["foo"]);
        assert!(dir.get("r").blocked.found_in(&crate::text::fold("ＦＯＯ")));
        assert!(dir.take_wanted().is_empty(), "cached rooms are not wanted");
        let bad: RoomSettingsPatch = serde_json::from_str(r#"{"high_share":2}"#).unwrap();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn unreadable_stored_fields_are_skipped_alone() {
        let fields = vec![
            ("budget_per_s".to_string(), "\"lots\"".to_string()),
            ("high_share".to_string(), "0.5".to_string()),
            ("no_longer_a_setting".to_string(), "1".to_string()),
            ("blocked_words".to_string(), "not json".to_string()),
        ];
        let s = RoomSettings::from_fields(&fields);
        assert_eq!(s.budget_per_s, None);
        assert_eq!(s.high_share, Some(0.5));
        assert!(s.blocked_words.is_empty());
    }

    #[test]
    fn room_mutes_end_on_time() {
        let state = RoomState {
            settings: Arc::default(),
            mutes: HashMap::from([("u".to_string(), 1_000)]),
        };
        assert_eq!(state.muted_until("u", 999), Some(1_000));
        assert_eq!(state.muted_until("u", 1_000), None);
        assert_eq!(state.muted_until("v", 0), None);
    }
}
