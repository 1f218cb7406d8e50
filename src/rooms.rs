//! Per-room settings (budgets, ratios, whitelist users, blocked words) that
//! operators change at run time through the admin API; defaults from config.

use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

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

    fn apply(self, s: &mut RoomSettings) {
        if let Some(v) = self.budget_per_s {
            s.budget_per_s = v;
        }
        if let Some(v) = self.high_share {
            s.high_share = v;
        }
        if let Some(v) = self.high_max_lag_ms {
            s.high_max_lag_ms = v;
        }
        if let Some(v) = self.whitelist_users {
            s.whitelist_users = v;
        }
        if let Some(v) = self.vip_high_level {
            s.vip_high_level = v;
        }
        if let Some(v) = self.blocked_words {
            s.blocked = BlockedWords::new(v.iter().map(String::as_str));
            s.blocked_words = v.into_iter().map(|w| w.to_lowercase()).collect();
        }
    }
}

pub struct RoomDirectory {
    rooms: DashMap<String, Arc<RoomSettings>>,
    defaults: RationConfig,
    empty: Arc<RoomSettings>,
}

impl RoomDirectory {
    pub fn new(defaults: RationConfig) -> Self {
        RoomDirectory {
            rooms: DashMap::new(),
            defaults,
            empty: Arc::new(RoomSettings::default()),
        }
    }

    pub fn get(&self, room: &str) -> Arc<RoomSettings> {
        self.rooms
            .get(room)
            .map(|s| s.clone())
            .unwrap_or_else(|| self.empty.clone())
    }

    pub fn update(&self, room: &str, patch: RoomSettingsPatch) -> Arc<RoomSettings> {
        let mut next = (*self.get(room)).clone();
        patch.apply(&mut next);
        let next = Arc::new(next);
        self.rooms.insert(room.to_string(), next.clone());
        next
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

    #[test]
    fn patch_merges_and_rules_follow_room_size() {
        let dir = RoomDirectory::new(Config::embedded().ration);
        let small = dir.rules("r", 1);
        let big = dir.rules("r", 1_000_000);
        assert!(
            big.budget_per_s < small.budget_per_s,
            "bigger room → smaller budget"
        );
        let patch: RoomSettingsPatch =
            serde_json::from_str(r#"{"budget_per_s":30,"blocked_words":["Foo"]}"#).unwrap();
        patch.validate().unwrap();
        dir.update("r", patch);
        assert_eq!(dir.rules("r", 1_000_000).budget_per_s, 30);
        let patch: RoomSettingsPatch = serde_json::from_str(r#"{"budget_per_s":null}"#).unwrap();
        dir.update("r", patch);
        assert_eq!(dir.rules("r", 1).budget_per_s, small.budget_per_s);
        assert_eq!(dir.get("r").blocked_words, vec!["foo"]);
        assert!(dir.get("r").blocked.found_in(&crate::text::fold("ＦＯＯ")));
        let bad: RoomSettingsPatch = serde_json::from_str(r#"{"high_share":2}"#).unwrap();
        assert!(bad.validate().is_err());
    }
}
