//! Bans close a user's open WebSocket sessions in a room (close code 1008),
//! on every node: the ban's notice reaches each node's [`Kicks`], and every
//! session of the room whose viewer is the banned user closes. A session
//! learns its user from its token (at connect or from a later `auth`), so it
//! checks the kick against the user it has when the kick arrives.

use std::sync::Arc;

use tokio::sync::broadcast;

/// Kicks not yet seen by a session before it counts as lagging; a lagging
/// session skips them (bans are rare; a banned user is also muted, so a
/// missed kick leaves a socket that can watch but not post).
const CAPACITY: usize = 256;

/// One ban to carry out on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kick {
    pub room: String,
    pub user: String,
}

/// This node's kick channel: one sender, a receiver per WebSocket session.
pub struct Kicks {
    tx: broadcast::Sender<Arc<Kick>>,
}

impl Default for Kicks {
    fn default() -> Self {
        Kicks {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Kicks {
    /// Closes `user`'s sessions in `room`; the number of sessions told
    /// (each checks whether it is the user's).
    pub fn kick(&self, room: &str, user: &str) -> usize {
        self.tx
            .send(Arc::new(Kick {
                room: room.to_string(),
                user: user.to_string(),
            }))
            .unwrap_or(0)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Kick>> {
        self.tx.subscribe()
    }
}

/// The next kick of `room`'s `user` (as the session knows it now); pending
/// for ever once the channel is closed (the node is going away).
pub async fn next_kick(
    kicks: &mut broadcast::Receiver<Arc<Kick>>,
    room: &str,
    user: impl Fn() -> Option<String>,
) {
    loop {
        match kicks.recv().await {
            Ok(kick) if kick.room == room && user().as_deref() == Some(kick.user.as_str()) => {
                return
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}
