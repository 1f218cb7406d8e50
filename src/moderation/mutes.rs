//! Mutes and bans. A room mute refuses the user's posts in that room on
//! every node (`403 muted`), a global mute in every room; a ban is a room
//! mute that also closes the user's open sockets in the room (1008).

use std::sync::Arc;

use crate::auth::moderator::Actor;
use crate::control::Control;
use crate::message::now_ms;
use crate::metrics::Metrics;
use crate::store::control::{Mute, MuteScope, Notice};
use crate::store::StoreError;

/// The longest mute or ban (a year); longer is refused as a mistake.
pub const MAX_DURATION_S: u64 = 365 * 24 * 3600;
/// Mutes one listing returns at most.
pub const LIST_LIMIT: usize = 1000;

pub struct Mutes {
    control: Arc<Control>,
    metrics: Arc<Metrics>,
}

/// What a mute or ban did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Muted {
    /// Absent for a global mute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    pub user: String,
    pub until_ms: u64,
    pub by: String,
}

fn scope_room(scope: &MuteScope) -> Option<String> {
    match scope {
        MuteScope::Room(room) => Some(room.clone()),
        MuteScope::Global => None,
    }
}

impl Mutes {
    pub fn new(control: Arc<Control>, metrics: Arc<Metrics>) -> Mutes {
        Mutes { control, metrics }
    }

    /// Mutes `user` in `scope` for `duration_s` (1..=[`MAX_DURATION_S`]).
    pub async fn mute(
        &self,
        scope: &MuteScope,
        user: &str,
        duration_s: u64,
        by: &Actor,
    ) -> Result<Muted, StoreError> {
        let until_ms = now_ms() + duration_s * 1000;
        self.control.plane().mute(scope, user, until_ms).await?;
        if let MuteScope::Room(room) = scope {
            self.control
                .publish(Notice::Mutes { room: room.clone() })
                .await?;
        }
        self.done("mute", scope, user, by);
        Ok(Muted {
            room: scope_room(scope),
            user: user.to_string(),
            until_ms,
            by: by.to_string(),
        })
    }

    /// Lifts a mute; false if there was none in force.
    pub async fn unmute(
        &self,
        scope: &MuteScope,
        user: &str,
        by: &Actor,
    ) -> Result<bool, StoreError> {
        let was = self.control.plane().unmute(scope, user).await?;
        if let MuteScope::Room(room) = scope {
            self.control
                .publish(Notice::Mutes { room: room.clone() })
                .await?;
        }
        if was {
            self.done("unmute", scope, user, by);
        }
        Ok(was)
    }

    /// Mutes `user` in `room` and has every node close the user's sockets
    /// there.
    pub async fn ban(
        &self,
        room: &str,
        user: &str,
        duration_s: u64,
        by: &Actor,
    ) -> Result<Muted, StoreError> {
        let scope = MuteScope::Room(room.to_string());
        let until_ms = now_ms() + duration_s * 1000;
        self.control.plane().mute(&scope, user, until_ms).await?;
        self.control
            .publish(Notice::Ban {
                room: room.to_string(),
                user: user.to_string(),
            })
            .await?;
        self.done("ban", &scope, user, by);
        Ok(Muted {
            room: Some(room.to_string()),
            user: user.to_string(),
            until_ms,
            by: by.to_string(),
        })
    }

    pub async fn list(&self, scope: &MuteScope) -> Result<Vec<Mute>, StoreError> {
        self.control.plane().mutes(scope, LIST_LIMIT).await
    }

    fn done(&self, action: &'static str, scope: &MuteScope, user: &str, by: &Actor) {
        self.metrics
            .moderation_actions
            .with_label_values(&[action])
            .inc();
        match scope {
            MuteScope::Room(room) => tracing::info!(action, %by, room, user, "moderation"),
            MuteScope::Global => tracing::info!(action, %by, room = "*", user, "moderation"),
        }
    }
}
