//! Embedded engine of [`ControlPlane`]: the cluster is this process. State is
//! kept in memory (an embedded node's restart forgets it, as it forgets the
//! embedded live store); notices go straight to this process's receivers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::broadcast;

use super::{
    gcra, Changes, ControlPlane, Mute, MuteScope, Notice, PostGate, PostRate, RoomControl,
    SettingsChange, VersionedNotice,
};
use crate::message::now_ms;
use crate::store::StoreError;

/// Notices kept for [`ControlPlane::changes_since`] (as the Redis log).
pub const LOG_CAPACITY: usize = 10_000;
const NOTICES_CAPACITY: usize = 4096;

#[derive(Default)]
struct State {
    settings: HashMap<String, BTreeMap<String, String>>,
    mutes: HashMap<MuteScope, HashMap<String, u64>>,
    /// Each user's GCRA arrival time (ms).
    post_tat: HashMap<String, f64>,
    /// When `post_tat` was last swept of users whose bucket is full again.
    post_swept_ms: u64,
    version: u64,
    log: std::collections::VecDeque<VersionedNotice>,
}

pub struct MemoryControl {
    state: Mutex<State>,
    notices: broadcast::Sender<Arc<VersionedNotice>>,
}

impl Default for MemoryControl {
    fn default() -> Self {
        MemoryControl {
            state: Mutex::new(State::default()),
            notices: broadcast::channel(NOTICES_CAPACITY).0,
        }
    }
}

impl MemoryControl {
    pub fn new() -> Self {
        Self::default()
    }
}

/// How often `admit_post` drops the state of users whose bucket is full
/// again (so the map holds recent posters, not every user ever seen).
const SWEEP_EVERY_MS: u64 = 5_000;

fn in_force(mutes: Option<&HashMap<String, u64>>, now: u64, limit: usize) -> Vec<Mute> {
    let mut out: Vec<Mute> = mutes
        .into_iter()
        .flatten()
        .filter(|(_, until)| **until > now)
        .map(|(user, until)| Mute {
            user: user.clone(),
            until_ms: *until,
        })
        .collect();
    out.sort_by(|a, b| a.until_ms.cmp(&b.until_ms).then(a.user.cmp(&b.user)));
    out.truncate(limit);
    out
}

#[async_trait]
impl ControlPlane for MemoryControl {
    async fn load_room(&self, room: &str) -> Result<RoomControl, StoreError> {
        let state = self.state.lock();
        Ok(RoomControl {
            settings: state
                .settings
                .get(room)
                .map(|s| s.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            mutes: in_force(
                state.mutes.get(&MuteScope::Room(room.to_string())),
                now_ms(),
                usize::MAX,
            ),
        })
    }

    async fn change_settings(&self, room: &str, change: &SettingsChange) -> Result<(), StoreError> {
        let mut state = self.state.lock();
        let fields = state.settings.entry(room.to_string()).or_default();
        for (k, v) in &change.set {
            fields.insert(k.clone(), v.clone());
        }
        for k in &change.clear {
            fields.remove(k);
        }
        Ok(())
    }

    async fn mute(&self, scope: &MuteScope, user: &str, until_ms: u64) -> Result<(), StoreError> {
        self.state
            .lock()
            .mutes
            .entry(scope.clone())
            .or_default()
            .insert(user.to_string(), until_ms);
        Ok(())
    }

    async fn unmute(&self, scope: &MuteScope, user: &str) -> Result<bool, StoreError> {
        let mut state = self.state.lock();
        let until = state.mutes.get_mut(scope).and_then(|m| m.remove(user));
        Ok(until.is_some_and(|u| u > now_ms()))
    }

    async fn mutes(&self, scope: &MuteScope, limit: usize) -> Result<Vec<Mute>, StoreError> {
        Ok(in_force(
            self.state.lock().mutes.get(scope),
            now_ms(),
            limit,
        ))
    }

    async fn admit_post(&self, user: &str, rate: PostRate) -> Result<PostGate, StoreError> {
        let now = now_ms();
        let mut state = self.state.lock();
        if let Some(until) = state
            .mutes
            .get(&MuteScope::Global)
            .and_then(|m| m.get(user))
            .filter(|until| **until > now)
        {
            return Ok(PostGate::Muted { until_ms: *until });
        }
        if now >= state.post_swept_ms + SWEEP_EVERY_MS {
            state.post_swept_ms = now;
            state.post_tat.retain(|_, tat| *tat > now as f64);
        }
        let tat = state.post_tat.get(user).copied().unwrap_or(0.0);
        match gcra::admit(tat, now as f64, rate) {
            Ok(next) => {
                state.post_tat.insert(user.to_string(), next);
                Ok(PostGate::Open)
            }
            Err(retry_after_ms) => Ok(PostGate::Limited { retry_after_ms }),
        }
    }

    async fn publish(&self, notice: &Notice) -> Result<u64, StoreError> {
        let versioned = {
            let mut state = self.state.lock();
            state.version += 1;
            let versioned = VersionedNotice {
                version: state.version,
                notice: notice.clone(),
            };
            state.log.push_back(versioned.clone());
            if state.log.len() > LOG_CAPACITY {
                state.log.pop_front();
            }
            versioned
        };
        let version = versioned.version;
        // No receiver yet is fine: nothing is cached that could be stale.
        let _ = self.notices.send(Arc::new(versioned));
        Ok(version)
    }

    fn notices(&self) -> broadcast::Receiver<Arc<VersionedNotice>> {
        self.notices.subscribe()
    }

    async fn changes_since(&self, after: u64) -> Result<Changes, StoreError> {
        let state = self.state.lock();
        let version = state.version;
        if after >= version {
            return Ok(Changes::Since {
                version,
                notices: Vec::new(),
            });
        }
        match state.log.front() {
            Some(oldest) if oldest.version <= after + 1 => Ok(Changes::Since {
                version,
                notices: state
                    .log
                    .iter()
                    .filter(|n| n.version > after)
                    .cloned()
                    .collect(),
            }),
            _ => Ok(Changes::TooOld { version }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn settings_mutes_gate_and_log() {
        let c = MemoryControl::new();
        c.change_settings(
            "r",
            &SettingsChange {
                set: vec![("budget_per_s".into(), "30".into())],
                clear: vec![],
            },
        )
        .await
        .unwrap();
        let room = MuteScope::Room("r".into());
        c.mute(&room, "u1", now_ms() + 60_000).await.unwrap();
        c.mute(&room, "gone", now_ms() - 1).await.unwrap();
        let loaded = c.load_room("r").await.unwrap();
        assert_eq!(loaded.settings, vec![("budget_per_s".into(), "30".into())]);
        assert_eq!(loaded.mutes.len(), 1, "expired mutes are not in force");
        assert!(c.unmute(&room, "u1").await.unwrap());
        assert!(!c.unmute(&room, "u1").await.unwrap());

        let rate = PostRate {
            rate_per_s: 1.0,
            burst: 2.0,
        };
        assert_eq!(c.admit_post("u2", rate).await.unwrap(), PostGate::Open);
        assert_eq!(c.admit_post("u2", rate).await.unwrap(), PostGate::Open);
        assert!(matches!(
            c.admit_post("u2", rate).await.unwrap(),
            PostGate::Limited { .. }
        ));
        c.mute(&MuteScope::Global, "u3", now_ms() + 5_000)
            .await
            .unwrap();
        assert!(matches!(
            c.admit_post("u3", rate).await.unwrap(),
            PostGate::Muted { .. }
        ));

        let mut rx = c.notices();
        let v = c
            .publish(&Notice::Settings { room: "r".into() })
            .await
            .unwrap();
        assert_eq!(rx.recv().await.unwrap().version, v);
        match c.changes_since(0).await.unwrap() {
            Changes::Since { version, notices } => {
                assert_eq!(version, v);
                assert_eq!(notices.len(), 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_trimmed_log_asks_for_a_full_reload() {
        let c = MemoryControl::new();
        for _ in 0..LOG_CAPACITY + 5 {
            c.publish(&Notice::Mutes { room: "r".into() })
                .await
                .unwrap();
        }
        assert!(matches!(
            c.changes_since(1).await.unwrap(),
            Changes::TooOld { .. }
        ));
        let recent = c.changes_since(LOG_CAPACITY as u64).await.unwrap();
        assert!(matches!(recent, Changes::Since { ref notices, .. } if notices.len() == 5));
    }
}
