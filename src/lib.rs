//! danmaku — a broadcaster of live-room danmaku, chat and gift events.
//!
//! Roles (`front`, `processor`, `archiver`) talk through ports
//! (`bus`, `store`) with embedded engines by default; see DESIGN.md.

pub mod api;
pub mod app;
pub mod archive;
pub mod auth;
pub mod bus;
pub mod config;
pub mod error;
pub mod fanout;
pub mod front;
pub mod gears;
pub mod http_listener;
pub mod ingest;
pub mod message;
pub mod metrics;
pub mod processor;
pub mod replay;
pub mod rooms;
pub mod store;
