//! Moderation (`docs/architecture.md`, "Control plane"): what operators and
//! moderators do to a live room — mute and ban users, retract messages. Each
//! action is cluster state written through the control plane port, announced
//! by a notice every node applies, logged with who did it and counted.

pub mod mutes;
pub mod retract;
