//! This node's view of the cluster control state (`docs/architecture.md`,
//! "Control plane"): room settings and mutes cached in [`RoomDirectory`],
//! kept current by notices from the [`ControlPlane`] port.
//!
//! The rule that keeps quiet rooms free: a node reads a room's control state
//! only when it uses the room (a post, a hub) and again only when a notice
//! says the room changed. A missed notice is made good by one
//! `changes_since` call per `control.catch_up_ms` (one command while nothing
//! changed), never by re-reading rooms; if the change log no longer reaches
//! back, the cache is dropped and rooms load again as they are used.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::flight::Flights;
use crate::metrics::Metrics;
use crate::rooms::{RoomDirectory, RoomSettings, RoomState};
use crate::store::control::{Changes, ControlPlane, Notice, VersionedNotice};
use crate::store::StoreError;

/// How long the loader waits after a failed load before trying wanted rooms again.
const LOAD_RETRY: Duration = Duration::from_millis(500);
/// Notices forwarded to the roles above (retractions, bans).
const FORWARD_CAPACITY: usize = 1024;

pub struct Control {
    plane: Arc<dyn ControlPlane>,
    rooms: Arc<RoomDirectory>,
    metrics: Arc<Metrics>,
    catch_up: Duration,
    /// Every applied notice, for the roles that act on it (a hub sends a
    /// retract frame, closes a banned user's sockets).
    forward: broadcast::Sender<Arc<Notice>>,
    /// First loads of a room in flight: a room's first N readers (viewers
    /// joining, replay reads) make one control-plane read, not N.
    loading: Flights<String, Result<Arc<RoomState>, String>>,
}

impl Control {
    pub fn new(
        plane: Arc<dyn ControlPlane>,
        rooms: Arc<RoomDirectory>,
        metrics: Arc<Metrics>,
        catch_up: Duration,
    ) -> Arc<Control> {
        Arc::new(Control {
            plane,
            rooms,
            metrics,
            catch_up,
            forward: broadcast::channel(FORWARD_CAPACITY).0,
            loading: Flights::new(),
        })
    }

    /// A node on the embedded engine (unit tests and benches).
    pub fn in_memory(ration: crate::config::RationConfig, metrics: Arc<Metrics>) -> Arc<Control> {
        Control::new(
            Arc::new(crate::store::control::memory::MemoryControl::new()),
            Arc::new(RoomDirectory::new(ration)),
            metrics,
            Duration::from_secs(1),
        )
    }

    pub fn plane(&self) -> &Arc<dyn ControlPlane> {
        &self.plane
    }

    pub fn rooms(&self) -> &Arc<RoomDirectory> {
        &self.rooms
    }

    /// Notices applied on this node, for roles to act on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Notice>> {
        self.forward.subscribe()
    }

    /// The room's state: cached, or loaded now (one command).
    pub async fn room(&self, room: &str) -> Result<Arc<RoomState>, StoreError> {
        if let Some(state) = self.rooms.cached(room) {
            return Ok(state);
        }
        let load = || async {
            let loaded = self.reload(room).await;
            loaded.map_err(|e| match e {
                StoreError::Unavailable(why) => why,
            })
        };
        let (loaded, _) = self.loading.run(room.to_string(), load).await;
        loaded.map_err(StoreError::Unavailable)
    }

    /// Reads the room's state from the cluster and caches it.
    pub async fn reload(&self, room: &str) -> Result<Arc<RoomState>, StoreError> {
        let stored = self.plane.load_room(room).await?;
        let state = RoomState {
            settings: Arc::new(RoomSettings::from_fields(&stored.settings)),
            mutes: stored
                .mutes
                .into_iter()
                .map(|m| (m.user, m.until_ms))
                .collect(),
        };
        Ok(self.rooms.insert(room, state))
    }

    /// Publishes a change to every node and applies it here at once, so the
    /// writer reads its own write (the notice coming back reloads again:
    /// harmless).
    pub async fn publish(&self, notice: Notice) -> Result<(), StoreError> {
        self.plane.publish(&notice).await?;
        if let Some(room) = notice.room() {
            if !matches!(notice, Notice::Retract { .. }) {
                self.reload(room).await?;
            }
        }
        Ok(())
    }

    /// Starts following notices until `stopping`: applies each in version
    /// order, catches up with the change log when one was missed (a gap in
    /// versions, a lagging receiver, a lost subscription: checked every
    /// `catch_up`), and loads rooms read before they were cached. Call it
    /// before the node serves: the version it starts from is read here, so
    /// no change made after a room was first loaded can be missed.
    pub async fn start(self: &Arc<Self>, stopping: CancellationToken) -> JoinHandle<()> {
        // Subscribe before reading the version, so nothing falls in between.
        let notices = self.plane.notices();
        let seen = match self.plane.changes_since(u64::MAX).await {
            Ok(Changes::Since { version, .. } | Changes::TooOld { version }) => version,
            Err(e) => {
                tracing::warn!(error = %e, "control state unreachable at start; catching up later");
                0
            }
        };
        tokio::spawn(self.clone().follow(notices, seen, stopping))
    }

    async fn follow(
        self: Arc<Self>,
        mut notices: broadcast::Receiver<Arc<VersionedNotice>>,
        mut seen: u64,
        stopping: CancellationToken,
    ) {
        let mut catch_up = tokio::time::interval(self.catch_up);
        catch_up.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopping.cancelled() => return,
                received = notices.recv() => match received {
                    Ok(n) if n.version <= seen => {}
                    Ok(n) if n.version == seen + 1 => {
                        self.apply(&n).await;
                        seen = n.version;
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.catch_up(&mut seen).await;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = catch_up.tick() => self.catch_up(&mut seen).await,
                _ = self.rooms.wanted_changed() => {
                    if !self.load_wanted().await {
                        tokio::time::sleep(LOAD_RETRY).await;
                    }
                }
            }
        }
    }

    /// Loads the rooms read before they were cached; false if a load failed.
    async fn load_wanted(&self) -> bool {
        for room in self.rooms.take_wanted() {
            if let Err(e) = self.reload(&room).await {
                tracing::debug!(room, error = %e, "room control state not loaded; defaults meanwhile");
                return false;
            }
        }
        true
    }

    async fn catch_up(&self, seen: &mut u64) {
        match self.plane.changes_since(*seen).await {
            Ok(Changes::Since { version, notices }) => {
                if !notices.is_empty() {
                    self.metrics
                        .control_catchups
                        .with_label_values(&["applied"])
                        .inc();
                    tracing::info!(
                        from = *seen,
                        to = version,
                        missed = notices.len(),
                        "control notices caught up from the change log"
                    );
                }
                for n in notices.iter().filter(|n| n.version > *seen) {
                    self.apply(n).await;
                }
                *seen = version.max(*seen);
            }
            Ok(Changes::TooOld { version }) => {
                self.metrics
                    .control_catchups
                    .with_label_values(&["reset"])
                    .inc();
                tracing::warn!(
                    from = *seen,
                    to = version,
                    rooms = self.rooms.len(),
                    "missed more control notices than the log keeps; dropping cached room state"
                );
                self.rooms.clear();
                *seen = version;
            }
            Err(e) => {
                self.metrics
                    .control_catchups
                    .with_label_values(&["failed"])
                    .inc();
                tracing::debug!(error = %e, "control catch-up failed; retrying");
            }
        }
    }

    /// Re-reads what the notice changed (only for rooms cached here: quiet
    /// rooms cost nothing) and forwards it to the roles.
    async fn apply(&self, n: &VersionedNotice) {
        self.metrics
            .control_notices
            .with_label_values(&[n.notice.kind()])
            .inc();
        let reread = matches!(
            n.notice,
            Notice::Settings { .. } | Notice::Mutes { .. } | Notice::Ban { .. }
        );
        if let Some(room) = n.notice.room().filter(|_| reread) {
            if self.rooms.cached(room).is_some() {
                if let Err(e) = self.reload(room).await {
                    // Stale until it loads: drop it so the next use loads it.
                    tracing::warn!(room, error = %e, "room control state not re-read; dropped from the cache");
                    self.rooms.forget(room);
                }
            }
        }
        if n.notice != Notice::Unknown {
            let _ = self.forward.send(Arc::new(n.notice.clone()));
        }
    }
}

#[cfg(test)]
mod tests;
