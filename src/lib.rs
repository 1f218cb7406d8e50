//! danmaku — a broadcaster of live-room danmaku, chat and gift events.
//!
//! Roles (`front`, `processor`, `archiver`, `replay`) talk through ports
//! (`bus`, `store`, `archive`) with embedded engines by default; `http` is
//! the only layer that knows the router and axum's extractors, and `app`
//! wires it all. See docs/architecture.md.

pub mod app;
pub mod archive;
pub mod archiver;
pub mod auth;
pub mod bus;
pub mod clock;
pub mod config;
pub mod control;
pub mod error;
pub mod fanout;
pub mod flight;
pub mod front;
pub mod gears;
pub mod http;
pub mod ingest;
pub mod json;
pub mod log_throttle;
pub mod message;
pub mod metrics;
pub mod moderation;
pub mod presence;
pub mod processor;
pub mod replay;
pub mod rooms;
pub mod store;
pub mod text;
