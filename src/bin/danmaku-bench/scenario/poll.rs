//! `poll`: long-poll clients on a room, following the stream or hammering the
//! cache; the fan-out measurement (`fanout::run_load`) with long-poll clients,
//! optionally beside held WebSocket viewers that keep the room big.

use super::fanout::{run_load, LoadSpec};
use crate::cli::PollArgs;
use crate::viewer::Transport;

pub async fn run(a: &PollArgs, threads: usize) -> anyhow::Result<serde_json::Value> {
    let spec = LoadSpec {
        hold_ws: a.hold_ws,
        clients: a.clients,
        transport: Transport::Poll,
        mode: a.mode,
        wait_ms: a.wait_ms,
        churn: Default::default(),
    };
    run_load("poll", &a.common, &a.load, spec, threads).await
}
