//! Fan-out (docs/architecture.md, "Fan-out"): one hub per room per node.
//! Every tick the hub takes the room's new messages from the live store,
//! rations them, encodes one frame and hands the same bytes to every viewer:
//! through a bounded broadcast ring, or written by the hub itself to
//! WebSocket viewers that are in step (`direct`).
//!
//! Where each part lives:
//! - `hub`: a room's hub — its position, cache of recent frames, and what
//!   viewers take from it (subscriptions, poll waiters, cache reads);
//! - `read_policy`: when a tick reads the store or takes what notices
//!   carried (a pure decision); `carried`: those messages, by seq;
//! - `tick`: the hub task's tick — store reads, epoch changes;
//! - `broadcast`: select → encode (outside any lock) → publish, then the
//!   hub's own writes;
//! - `registry`: the node's hubs (start, idle stop, shutdown), notices,
//!   presence rounds (counting itself is in `crate::presence`);
//! - `feed`: one streaming viewer's view of the room (ring and catch-up);
//! - `direct`: the viewers the hub writes to itself, and the hand-over;
//! - `ration`, `combo`: what viewers get; `frame`, `cache`: the shared bytes;
//!   `gzip`: HTTP answers' gzip form, made once and shared;
//! - `online`: the room's online count announced to its viewers;
//! - `retractions`: retracted messages (retract frames, long-poll's
//!   `"retracted"`, the snapshot mark; `HubRegistry::retract`).

mod broadcast;
pub mod cache;
mod carried;
pub mod combo;
pub mod deflate;
pub mod direct;
pub mod feed;
pub mod frame;
pub mod gzip;
mod hub;
mod online;
pub mod ration;
mod read_policy;
mod registry;
pub mod retractions;
mod tick;

pub use frame::Frame;
pub use hub::{CacheRead, Hub, PollWaiter, StreamGuard, Subscription};
pub use registry::{HubRegistry, RoomStats};
