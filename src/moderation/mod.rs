//! Moderation (`docs/architecture.md`, "Control plane"): what operators and
//! moderators do to a live room — mute and ban users, retract messages. Each
//! action is cluster state written through the control plane port, announced
//! by a notice every node applies, logged with who did it and counted.

pub mod mutes;
pub mod retract;

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::front::kicks::Kicks;
use crate::store::control::Notice;
use retract::Retractor;

/// Carries out on this node the moderation notices every node applies
/// (`control::Control::subscribe`): a retraction's frames and replay-cache
/// drop, a ban's closing of the user's sockets. Runs until `stopping`.
pub async fn carry_out(
    mut notices: broadcast::Receiver<Arc<Notice>>,
    retractor: Arc<Retractor>,
    kicks: Arc<Kicks>,
    stopping: CancellationToken,
) {
    loop {
        let notice = tokio::select! {
            _ = stopping.cancelled() => return,
            notice = notices.recv() => notice,
        };
        match notice {
            Ok(notice) => match &*notice {
                Notice::Retract { room, ids } => {
                    if let Err(e) = retractor.apply(room, ids.clone()).await {
                        tracing::warn!(room, error = %e, "retraction: replay cache not dropped");
                    }
                }
                Notice::Ban { room, user } => {
                    kicks.kick(room, user);
                }
                _ => {}
            },
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "moderation notices lagged; some were not carried out"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
