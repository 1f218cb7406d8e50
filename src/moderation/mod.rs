//! Moderation (DESIGN §3.9): operators' and moderators' actions on rooms and their messages.

pub mod retract;
