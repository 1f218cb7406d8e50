//! What the handlers are given: [`AppState`] (built by `app`) and the
//! narrower views each feature's handlers take through `FromRef`, so a
//! handler names only the handles it uses.

use std::sync::Arc;

use axum::extract::FromRef;
use tokio_util::sync::CancellationToken;

use crate::auth::moderator::Moderators;
use crate::auth::Authenticator;
use crate::bus::Bus;
use crate::config::Config;
use crate::control::Control;
use crate::fanout::HubRegistry;
use crate::front::kicks::Kicks;
use crate::front::{PerIpLimiter, Viewers};
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::moderation::mutes::Mutes;
use crate::moderation::retract::Retractor;
use crate::replay::Replay;
use crate::rooms::RoomDirectory;
use crate::store::LiveStore;

/// Everything request handlers may need; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub Arc<AppInner>);

pub struct AppInner {
    pub config: Arc<Config>,
    pub auth: Arc<Authenticator>,
    pub ingest: Arc<Ingest>,
    pub store: Arc<dyn LiveStore>,
    pub bus: Arc<dyn Bus>,
    pub hubs: Arc<HubRegistry>,
    pub rooms: Arc<RoomDirectory>,
    /// This node's view of the cluster control state (settings, mutes).
    pub control: Arc<Control>,
    /// Verifies moderator tokens.
    pub moderators: Arc<Moderators>,
    pub mutes: Arc<Mutes>,
    pub retractor: Arc<Retractor>,
    pub metrics: Arc<Metrics>,
    /// Viewer connections per client address.
    pub viewer_slots: Arc<PerIpLimiter>,
    /// Bans carried out on this node's WebSocket sessions.
    pub kicks: Arc<Kicks>,
    /// Replay reads (cache → replay Redis → archive) and the archive.
    pub replay: Arc<Replay>,
    /// Cancelled on a shutdown signal, `server.drain_ms` before `stopping`:
    /// `/readyz` answers 503 so load balancers stop sending new viewers
    /// while this node still serves everyone.
    pub draining: CancellationToken,
    /// Cancelled first: stop taking new work (posts get 503).
    pub stopping: CancellationToken,
    /// Cancelled last: viewer sessions close with a reason.
    pub closing: CancellationToken,
}

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// The viewer transports (WebSocket, long-poll, SSE).
impl FromRef<AppState> for Viewers {
    fn from_ref(s: &AppState) -> Viewers {
        Viewers {
            config: s.config.clone(),
            auth: s.auth.clone(),
            ingest: s.ingest.clone(),
            hubs: s.hubs.clone(),
            store: s.store.clone(),
            rooms: s.rooms.clone(),
            control: s.control.clone(),
            metrics: s.metrics.clone(),
            viewer_slots: s.viewer_slots.clone(),
            kicks: s.kicks.clone(),
            stopping: s.stopping.clone(),
            closing: s.closing.clone(),
        }
    }
}

/// The write endpoints: danmaku posts, gift events, demo tokens.
#[derive(Clone)]
pub struct IngestState {
    pub config: Arc<Config>,
    pub auth: Arc<Authenticator>,
    pub ingest: Arc<Ingest>,
    pub metrics: Arc<Metrics>,
    pub stopping: CancellationToken,
}

impl FromRef<AppState> for IngestState {
    fn from_ref(s: &AppState) -> IngestState {
        IngestState {
            config: s.config.clone(),
            auth: s.auth.clone(),
            ingest: s.ingest.clone(),
            metrics: s.metrics.clone(),
            stopping: s.stopping.clone(),
        }
    }
}

/// Room settings (operators).
#[derive(Clone)]
pub struct AdminState {
    pub config: Arc<Config>,
    pub hubs: Arc<HubRegistry>,
    pub rooms: Arc<RoomDirectory>,
    pub control: Arc<Control>,
}

impl FromRef<AppState> for AdminState {
    fn from_ref(s: &AppState) -> AdminState {
        AdminState {
            config: s.config.clone(),
            hubs: s.hubs.clone(),
            rooms: s.rooms.clone(),
            control: s.control.clone(),
        }
    }
}

/// Mutes and bans (operators and moderators).
#[derive(Clone)]
pub struct ModerationState {
    pub config: Arc<Config>,
    pub moderators: Arc<Moderators>,
    pub mutes: Arc<Mutes>,
    pub retractor: Arc<Retractor>,
}

impl FromRef<AppState> for ModerationState {
    fn from_ref(s: &AppState) -> ModerationState {
        ModerationState {
            config: s.config.clone(),
            moderators: s.moderators.clone(),
            mutes: s.mutes.clone(),
            retractor: s.retractor.clone(),
        }
    }
}

/// Lives and replay: the archive side.
#[derive(Clone)]
pub struct ArchiveState {
    pub config: Arc<Config>,
    pub replay: Arc<Replay>,
    /// Carries live-end markers.
    pub bus: Arc<dyn Bus>,
    /// Private rooms' lives: who may list them (`watch_gate`).
    pub auth: Arc<Authenticator>,
    pub control: Arc<Control>,
}

impl FromRef<AppState> for ArchiveState {
    fn from_ref(s: &AppState) -> ArchiveState {
        ArchiveState {
            config: s.config.clone(),
            replay: s.replay.clone(),
            bus: s.bus.clone(),
            auth: s.auth.clone(),
            control: s.control.clone(),
        }
    }
}

/// The CDN-edge snapshot.
#[derive(Clone)]
pub struct SnapshotState {
    pub config: Arc<Config>,
    pub hubs: Arc<HubRegistry>,
    pub store: Arc<dyn LiveStore>,
    pub metrics: Arc<Metrics>,
    /// Private rooms: who may read (`watch_gate`).
    pub auth: Arc<Authenticator>,
    pub control: Arc<Control>,
}

impl FromRef<AppState> for SnapshotState {
    fn from_ref(s: &AppState) -> SnapshotState {
        SnapshotState {
            config: s.config.clone(),
            hubs: s.hubs.clone(),
            store: s.store.clone(),
            metrics: s.metrics.clone(),
            auth: s.auth.clone(),
            control: s.control.clone(),
        }
    }
}
