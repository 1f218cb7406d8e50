//! Front role, viewer side: the three transports over the room's hub.

pub mod poll;
pub mod sse;
pub mod ws;

use prometheus::IntGaugeVec;
use serde::Deserialize;

/// Query of the streaming transports.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    pub cursor: Option<u64>,
    pub epoch: Option<String>,
    /// Viewer token for sending over the WebSocket (browsers cannot set headers).
    pub token: Option<String>,
}

/// Counts an open viewer connection while alive.
pub struct ConnGuard {
    gauge: prometheus::IntGauge,
}

impl ConnGuard {
    pub fn new(gauges: &IntGaugeVec, transport: &str) -> Self {
        let gauge = gauges.with_label_values(&[transport]);
        gauge.inc();
        ConnGuard { gauge }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}
