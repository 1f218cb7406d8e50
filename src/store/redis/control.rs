//! Redis engine of the control plane port (`docs/redis-keys.md`, "Control
//! plane"): room settings and mutes under the room's tag, a user's global
//! mute and post rate under `{u:<user>}`, the notice counter and log under
//! `{ctl}`. Every script touches one tag.

use std::sync::{Arc, LazyLock};

use ::redis::Script;
use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{unavailable, RedisStore};
use crate::message::now_ms;
use crate::store::control::{
    gcra, Changes, ControlPlane, Mute, MuteScope, Notice, PostGate, PostRate, RoomControl,
    SettingsChange, VersionedNotice,
};
use crate::store::StoreError;

/// Pub/sub channel of control notices (`"<version> <json>"`).
pub const CONTROL_CHANNEL: &str = "dm:control";
/// Notices kept in the change log, as the memory engine's.
const LOG_CAPACITY: usize = crate::store::control::memory::LOG_CAPACITY;
const VERSION_KEY: &str = "dm:{ctl}:version";
const LOG_KEY: &str = "dm:{ctl}:log";
/// Global mutes in force, for listing: score = until (ms), member = user.
const GLOBAL_MUTES_KEY: &str = "dm:{ctl}:mutes";

static ADMIT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("admit.lua")));
static NOTE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("note.lua")));
static SINCE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("since.lua")));
static ROOM_MUTE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("room_mute.lua")));

fn settings_key(room: &str) -> String {
    format!("dm:{{{room}}}:settings")
}

fn room_mutes_key(room: &str) -> String {
    format!("dm:{{{room}}}:mutes")
}

fn user_mute_key(user: &str) -> String {
    format!("dm:{{u:{user}}}:mute")
}

fn user_rate_key(user: &str) -> String {
    format!("dm:{{u:{user}}}:rate")
}

fn in_force(fields: Vec<(String, u64)>, now: u64, limit: usize) -> Vec<Mute> {
    let mut mutes: Vec<Mute> = fields
        .into_iter()
        .filter(|(_, until)| *until > now)
        .map(|(user, until_ms)| Mute { user, until_ms })
        .collect();
    mutes.sort_by(|a, b| a.until_ms.cmp(&b.until_ms).then(a.user.cmp(&b.user)));
    mutes.truncate(limit);
    mutes
}

#[async_trait]
impl ControlPlane for RedisStore {
    async fn load_room(&self, room: &str) -> Result<RoomControl, StoreError> {
        let (settings, mutes): (Vec<(String, String)>, Vec<(String, u64)>) = ::redis::pipe()
            .atomic()
            .hgetall(settings_key(room))
            .hgetall(room_mutes_key(room))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(RoomControl {
            settings,
            mutes: in_force(mutes, now_ms(), usize::MAX),
        })
    }

    async fn change_settings(&self, room: &str, change: &SettingsChange) -> Result<(), StoreError> {
        let key = settings_key(room);
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        if !change.set.is_empty() {
            pipe.hset_multiple(&key, &change.set).ignore();
        }
        if !change.clear.is_empty() {
            pipe.hdel(&key, &change.clear).ignore();
        }
        pipe.query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    async fn mute(&self, scope: &MuteScope, user: &str, until_ms: u64) -> Result<(), StoreError> {
        match scope {
            MuteScope::Room(room) => {
                let _: i64 = ROOM_MUTE
                    .key(room_mutes_key(room))
                    .arg(user)
                    .arg(until_ms)
                    .invoke_async(&mut self.conn())
                    .await
                    .map_err(unavailable)?;
            }
            MuteScope::Global => {
                // The user's key is what posts are checked against; the
                // index only lists. Written in that order, so a listed mute
                // is always enforced.
                ::redis::cmd("SET")
                    .arg(user_mute_key(user))
                    .arg(until_ms)
                    .arg("PXAT")
                    .arg(until_ms)
                    .query_async::<()>(&mut self.conn())
                    .await
                    .map_err(unavailable)?;
                ::redis::cmd("ZADD")
                    .arg(GLOBAL_MUTES_KEY)
                    .arg(until_ms)
                    .arg(user)
                    .query_async::<()>(&mut self.conn())
                    .await
                    .map_err(unavailable)?;
            }
        }
        Ok(())
    }

    async fn unmute(&self, scope: &MuteScope, user: &str) -> Result<bool, StoreError> {
        match scope {
            MuteScope::Room(room) => {
                let was: i64 = ROOM_MUTE
                    .key(room_mutes_key(room))
                    .arg(user)
                    .arg(0)
                    .invoke_async(&mut self.conn())
                    .await
                    .map_err(unavailable)?;
                Ok(was == 1)
            }
            MuteScope::Global => {
                let removed: i64 = ::redis::cmd("DEL")
                    .arg(user_mute_key(user))
                    .query_async(&mut self.conn())
                    .await
                    .map_err(unavailable)?;
                ::redis::cmd("ZREM")
                    .arg(GLOBAL_MUTES_KEY)
                    .arg(user)
                    .query_async::<()>(&mut self.conn())
                    .await
                    .map_err(unavailable)?;
                Ok(removed == 1)
            }
        }
    }

    async fn mutes(&self, scope: &MuteScope, limit: usize) -> Result<Vec<Mute>, StoreError> {
        let now = now_ms();
        let fields: Vec<(String, u64)> = match scope {
            MuteScope::Room(room) => ::redis::cmd("HGETALL")
                .arg(room_mutes_key(room))
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?,
            MuteScope::Global => {
                let (listed,): (Vec<(String, u64)>,) = ::redis::pipe()
                    .atomic()
                    .cmd("ZREMRANGEBYSCORE")
                    .arg(GLOBAL_MUTES_KEY)
                    .arg("-inf")
                    .arg(now)
                    .ignore()
                    .cmd("ZRANGE")
                    .arg(GLOBAL_MUTES_KEY)
                    .arg(0)
                    .arg(i64::try_from(limit.max(1) - 1).unwrap_or(-1))
                    .arg("WITHSCORES")
                    .query_async(&mut self.conn())
                    .await
                    .map_err(unavailable)?;
                listed
            }
        };
        Ok(in_force(fields, now, limit))
    }

    async fn admit_post(&self, user: &str, rate: PostRate) -> Result<PostGate, StoreError> {
        let (interval, tolerance) = gcra::params(rate);
        let answer: Vec<u64> = ADMIT
            .key(user_mute_key(user))
            .key(user_rate_key(user))
            .arg(interval)
            .arg(tolerance)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(match answer.as_slice() {
            [1, until_ms] => PostGate::Muted {
                until_ms: *until_ms,
            },
            [2, retry_after_ms] => PostGate::Limited {
                retry_after_ms: *retry_after_ms,
            },
            _ => PostGate::Open,
        })
    }

    async fn publish(&self, notice: &Notice) -> Result<u64, StoreError> {
        NOTE.key(VERSION_KEY)
            .key(LOG_KEY)
            .arg(crate::store::control::encode_body(notice))
            .arg(CONTROL_CHANNEL)
            .arg(LOG_CAPACITY)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    fn notices(&self) -> broadcast::Receiver<Arc<VersionedNotice>> {
        self.notices.subscribe_control()
    }

    async fn changes_since(&self, after: u64) -> Result<Changes, StoreError> {
        // The usual answer is "nothing new": one plain GET (the script runs
        // only when there is something to read), so an idle node's catch-up
        // costs Redis one command.
        let version: Option<u64> = ::redis::cmd("GET")
            .arg(VERSION_KEY)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let version = version.unwrap_or(0);
        if version <= after {
            return Ok(Changes::Since {
                version,
                notices: Vec::new(),
            });
        }
        let answer: Vec<String> = SINCE
            .key(VERSION_KEY)
            .key(LOG_KEY)
            .arg(after)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let Some((version, rest)) = answer.split_first() else {
            return Err(StoreError::Unavailable("redis: empty since answer".into()));
        };
        let version: u64 = version
            .parse()
            .map_err(|_| StoreError::Unavailable(format!("redis: bad version {version:?}")))?;
        if rest.first().map(String::as_str) == Some("too_old") {
            return Ok(Changes::TooOld { version });
        }
        let notices = rest
            .iter()
            .filter_map(|wire| {
                let decoded = VersionedNotice::decode(wire);
                if decoded.is_none() {
                    tracing::warn!(wire = %wire.escape_debug(), "skipping an unreadable control notice");
                }
                decoded
            })
            .collect();
        Ok(Changes::Since { version, notices })
    }
}
