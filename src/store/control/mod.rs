//! Control plane port (`docs/architecture.md`, "Control plane"): the cluster
//! state operators and moderators set — room settings, mutes (per room and
//! global), and the notices that tell every node a piece of it changed.
//!
//! Contract every engine keeps:
//! - **Written once, kept.** A write returns once the state is durable in the
//!   store (Redis when distributed, this process's memory when embedded); it
//!   survives a restart of the node that wrote it (not of the embedded store).
//! - **One hash tag per command.** Room state lives under the room's tag
//!   (`{room}`), a user's cross-room state (global mute, post rate) under its
//!   own (`{u:<user>}`), the notice log under `{ctl}`; no script touches two.
//! - **Notices are ordered and numbered.** [`ControlPlane::publish`] gives each
//!   notice the next cluster-wide version and keeps the last ones in a log, so
//!   a node that missed some (a lost subscription) catches up with one
//!   [`ControlPlane::changes_since`] call, never by re-reading rooms.
//! - **The post gate is one command.** [`ControlPlane::admit_post`] checks the
//!   user's global mute and takes a token from the user's cluster-wide bucket
//!   in one round trip; room mutes are checked from the node's cache.

pub mod gcra;
pub mod memory;
mod notice;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;

pub use notice::{encode_body, Notice, VersionedNotice};

use super::StoreError;
pub use crate::rooms::SettingsChange;

/// Where a mute applies.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MuteScope {
    Room(String),
    /// Every room.
    Global,
}

/// One muted user and until when (unix ms).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Mute {
    pub user: String,
    pub until_ms: u64,
}

/// A room's control state as stored: what a node caches for the room.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoomControl {
    /// Settings as set by operators: field name → JSON value (a field not
    /// present keeps its default).
    pub settings: Vec<(String, String)>,
    /// Room mutes still in force.
    pub mutes: Vec<Mute>,
}

/// The answer of the cluster-wide post gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostGate {
    Open,
    /// Muted in every room until then (unix ms).
    Muted {
        until_ms: u64,
    },
    /// Over the user's rate; may post again after this long.
    Limited {
        retry_after_ms: u64,
    },
}

/// A user's cluster-wide post rate: `burst` posts at once, then `rate_per_s`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PostRate {
    pub rate_per_s: f64,
    pub burst: f64,
}

/// What a node that may have missed notices must apply.
#[derive(Clone, Debug, PartialEq)]
pub enum Changes {
    /// The newest version; the notices after the asked one, oldest first.
    Since {
        version: u64,
        notices: Vec<VersionedNotice>,
    },
    /// The log no longer reaches back that far: drop every cached room.
    TooOld { version: u64 },
}

#[async_trait]
pub trait ControlPlane: Send + Sync + 'static {
    /// A room's settings and mutes in force (one command).
    async fn load_room(&self, room: &str) -> Result<RoomControl, StoreError>;

    /// Applies a settings change (fields not named keep their value). Does
    /// not notify: the caller publishes [`Notice::Settings`].
    async fn change_settings(&self, room: &str, change: &SettingsChange) -> Result<(), StoreError>;

    /// Mutes `user` in `scope` until `until_ms` (unix ms), replacing an
    /// earlier mute there. Does not notify.
    async fn mute(&self, scope: &MuteScope, user: &str, until_ms: u64) -> Result<(), StoreError>;

    /// Lifts a mute; false if there was none in force. Does not notify.
    async fn unmute(&self, scope: &MuteScope, user: &str) -> Result<bool, StoreError>;

    /// Mutes in force in `scope`, at most `limit`, soonest to end first.
    async fn mutes(&self, scope: &MuteScope, limit: usize) -> Result<Vec<Mute>, StoreError>;

    /// The per-post gate: the user's global mute, then a token from the
    /// user's bucket (shared by every node). One command.
    async fn admit_post(&self, user: &str, rate: PostRate) -> Result<PostGate, StoreError>;

    /// Numbers `notice`, keeps it in the change log and sends it to every
    /// node (this one included). Returns its version.
    async fn publish(&self, notice: &Notice) -> Result<u64, StoreError>;

    /// Notices as they arrive from any node (best effort: a receiver that
    /// lags or a lost subscription is made good by [`Self::changes_since`]).
    fn notices(&self) -> broadcast::Receiver<Arc<VersionedNotice>>;

    /// The newest version and what came after `after` (one command when
    /// nothing did).
    async fn changes_since(&self, after: u64) -> Result<Changes, StoreError>;
}
