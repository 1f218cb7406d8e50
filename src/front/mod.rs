//! Front role, viewer side: the three transports over the room's hub
//! (docs/architecture.md, "Roles"). Transport logic only: the HTTP handlers
//! that open these sessions (upgrade, origin, per-address slots, tokens)
//! live in `crate::http::viewer`.

pub mod kicks;
pub mod poll;
pub mod sse;
pub mod ws;
pub mod ws_extensions;

use std::sync::Arc;

use prometheus::IntGaugeVec;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::control::Control;
use crate::fanout::HubRegistry;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::rooms::RoomDirectory;
use crate::store::LiveStore;

/// The handles a viewer session uses; cheap to clone.
#[derive(Clone)]
pub struct Viewers {
    pub config: Arc<Config>,
    pub auth: Arc<Authenticator>,
    /// WebSocket sends go through ingest like HTTP posts.
    pub ingest: Arc<Ingest>,
    pub hubs: Arc<HubRegistry>,
    pub store: Arc<dyn LiveStore>,
    pub rooms: Arc<RoomDirectory>,
    /// Room settings loaded before a watcher is let in (`private`).
    pub control: Arc<Control>,
    pub metrics: Arc<Metrics>,
    /// Viewer connections per client address.
    pub viewer_slots: Arc<PerIpLimiter>,
    /// Bans to carry out: the banned user's sessions close (1008).
    pub kicks: Arc<kicks::Kicks>,
    /// Cancelled first: no new streams, no sends.
    pub stopping: CancellationToken,
    /// Cancelled last: sessions close with a reason.
    pub closing: CancellationToken,
}

/// Query of the streaming transports.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    pub cursor: Option<u64>,
    pub epoch: Option<String>,
    /// Viewer token: for sending over the WebSocket, and for watching a
    /// private room (browsers cannot set headers on WebSocket / EventSource).
    pub token: Option<String>,
}

/// A private room's watcher: when its token runs out.
pub type Expiry = Option<std::pin::Pin<Box<tokio::time::Sleep>>>;

/// Resolves when the token's deadline passes; never without one.
pub async fn token_expiry(expiry: &mut Expiry) {
    match expiry {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The monotonic instant of a unix time in seconds (now if past).
pub fn until_instant(until_s: u64) -> tokio::time::Instant {
    let now_ms = crate::message::now_ms();
    tokio::time::Instant::now()
        + std::time::Duration::from_millis(until_s.saturating_mul(1000).saturating_sub(now_ms))
}

/// What a watcher's ping timer finds about its room (a cached settings
/// read, no store access): the room may have turned private, or public,
/// while it watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recheck {
    /// Public now: the token's expiry does not matter.
    Public,
    /// Private now, and the token names the room: stay until it runs out.
    Private,
    /// Private now, and the watcher has no token naming the room: close.
    Leave,
}

pub fn recheck(
    rooms: &RoomDirectory,
    room: &str,
    viewer: Option<&crate::auth::ViewerClaims>,
) -> Recheck {
    let private = rooms.cached(room).is_some_and(|s| s.settings.private);
    match (private, viewer) {
        (false, _) => Recheck::Public,
        (true, Some(v)) if crate::auth::access::names_room(v, room) => Recheck::Private,
        (true, _) => Recheck::Leave,
    }
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

/// Open viewer connections (streams and held polls) per client address.
pub struct PerIpLimiter {
    counts: std::sync::Arc<dashmap::DashMap<std::net::IpAddr, usize>>,
    max: usize,
    /// What is counted, for the error message ("viewer connections").
    what: &'static str,
}

/// One connection's slot; freed when dropped.
#[derive(Debug)]
pub struct IpSlot {
    counts: std::sync::Arc<dashmap::DashMap<std::net::IpAddr, usize>>,
    ip: std::net::IpAddr,
}

impl PerIpLimiter {
    pub fn new(max: usize, what: &'static str) -> Self {
        PerIpLimiter {
            counts: Default::default(),
            max,
            what,
        }
    }

    /// A slot for `ip`, or 429 `too_many_connections` past the limit.
    pub fn acquire(&self, ip: std::net::IpAddr) -> Result<IpSlot, crate::error::ApiError> {
        let mut n = self.counts.entry(ip).or_insert(0);
        if *n >= self.max {
            return Err(crate::error::ApiError::too_many(
                "too_many_connections",
                format!("at most {} {} per address", self.max, self.what),
                5,
            ));
        }
        *n += 1;
        Ok(IpSlot {
            counts: self.counts.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        // Remove the entry at zero so idle addresses hold no memory.
        self.counts.remove_if_mut(&self.ip, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

/// The close reason of a server shutdown, with the delay this viewer should
/// wait before resuming elsewhere: uniform in `[0, spread_ms]`, so a
/// restarted node's viewers spread their return over the other nodes
/// (docs/protocol.md, §4 and §7).
pub fn shutdown_reason(spread_ms: u64) -> (String, u64) {
    let after = if spread_ms == 0 {
        0
    } else {
        rand::random::<u64>() % (spread_ms + 1)
    };
    (
        format!("server shutting down; retry_after_ms={after}"),
        after,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_slots_are_bounded_and_freed() {
        let l = PerIpLimiter::new(2, "viewer connections");
        let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let a = l.acquire(ip).unwrap();
        let _b = l.acquire(ip).unwrap();
        assert_eq!(l.acquire(ip).unwrap_err().code, "too_many_connections");
        assert!(l.acquire("127.0.0.2".parse().unwrap()).is_ok());
        drop(a);
        assert!(l.acquire(ip).is_ok());
    }
}
