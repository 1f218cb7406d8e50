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

/// WebSocket / SSE `Origin` allow-list (empty list: any origin). Requests
/// without an Origin (non-browser clients) are not affected.
pub fn check_origin(
    allowed: &[String],
    headers: &axum::http::HeaderMap,
) -> Result<(), crate::error::ApiError> {
    if allowed.is_empty() {
        return Ok(());
    }
    let Some(origin) = headers.get("origin").and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    if allowed.iter().any(|a| a == origin) {
        Ok(())
    } else {
        Err(crate::error::ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this origin may not open viewer streams",
        ))
    }
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

    #[test]
    fn origin_allow_list() {
        let mut h = axum::http::HeaderMap::new();
        assert!(
            check_origin(&["https://a.example".into()], &h).is_ok(),
            "no Origin"
        );
        h.insert("origin", "https://b.example".parse().unwrap());
        assert!(check_origin(&[], &h).is_ok(), "empty list allows all");
        let e = check_origin(&["https://a.example".into()], &h).unwrap_err();
        assert_eq!(e.code, "origin_not_allowed");
    }
}
