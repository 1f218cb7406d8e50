//! Direct writes: the hub writes frames straight to in-step WebSocket
//! viewers' sockets (BENCHMARKS.md, "direct writes"; docs/architecture.md,
//! "Exactly-once hand-over").
//!
//! # The invariant: every frame reaches the viewer exactly once
//!
//! A viewer's frames come from exactly one writer at a time — its own task
//! (ring and store reads, [`task_side`]) or its room's hub (`hub_side`) —
//! and the hand-over between them is decided by two numbers kept in
//! [`DirectState`], under the viewer's lock, by whoever writes:
//!
//! - `cursor`: the seq the viewer has everything up to (its stream position,
//!   with `epoch`), and
//! - `frame_no`: the `Frame::no` of the last broadcast frame it has taken
//!   (sent, or skipped because it held nothing new).
//!
//! Who may write when:
//!
//! - **The task** writes while the viewer is not attached, always under the
//!   lock (so a hub write cannot pass it), and records the new cursor, epoch
//!   and `frame_no` with each write. It asks the hub to take over
//!   ([`task_side::request_direct`]) only when its feed is in step (nothing
//!   to catch up) and the socket's backlog is empty.
//! - **The hub** attaches a requesting viewer only just before broadcasting
//!   a frame, and only if the viewer has taken every frame before it (its
//!   `frame_no` is the hub's last, its cursor the frame's `from`, same
//!   epoch). From then on the hub writes, and every ring frame the task
//!   still reads is the hub's to send: the task drops it.
//! - **Anything else** — a gap, a new epoch, a socket that stops taking
//!   bytes ([`Detach`]) — makes the hub hand the viewer back: the task
//!   carries on from the recorded cursor through the ring and the store,
//!   and drops the ring frames whose `no` is at most the recorded
//!   `frame_no` (the hub wrote or skipped them).
//!
//! Both writers share one [`socket::SharedSocket`], whose backlog keeps
//! their bytes in order and never splits a frame. A viewer that negotiated
//! permessage-deflate is sent each frame's shared compressed bytes by
//! whichever writer writes (`Encoded::ws_frame_for`), and its compressed
//! messages are inflated in the socket's read path ([`inflate`]).
//!
//! A big room's hub writes a frame through several tasks at once
//! ([`shards`]): each viewer is in one shard for the frame, and the hub
//! waits for every shard before its next frame, so "the hub" above means
//! the hub and its shards, and nothing else changes.
//!
//! Layout: [`socket`] the shared client socket; `viewer` the per-viewer
//! state both sides lock; `hub_side` the hub's list and its fan-out;
//! [`shards`] that fan-out split over the worker threads;
//! [`task_side`] the viewer task's half (its source, the switch between
//! sources, sending in order with the hub).

mod hub_side;
pub mod inflate;
pub mod shards;
pub mod socket;
pub mod task_side;
mod viewer;

pub use hub_side::{fan_out, DirectList};
pub use viewer::{Detach, DirectState, DirectStats, DirectViewer};
