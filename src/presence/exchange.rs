//! The presence round: publish this node's counts, take back the cluster's,
//! update each room's figure and size class, refill the top-N metric.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Counted, SizeClass, TopRooms};
use crate::config::FanoutConfig;
use crate::metrics::Metrics;
use crate::store::LiveStore;

/// Exchanges this node's viewer counts with the other nodes through the store.
pub struct Exchange {
    store: Arc<dyn LiveStore>,
    metrics: Arc<Metrics>,
    node_id: String,
    every: Duration,
    ttl: Duration,
    big_room_threshold: usize,
    top: TopRooms,
}

impl Exchange {
    pub fn new(
        store: Arc<dyn LiveStore>,
        metrics: Arc<Metrics>,
        node_id: String,
        config: &FanoutConfig,
    ) -> Self {
        Exchange {
            top: TopRooms::new(metrics.top_room_online.clone()),
            store,
            metrics,
            node_id,
            every: Duration::from_millis(config.presence_interval_ms.max(100)),
            ttl: Duration::from_secs(config.presence_ttl_s.max(1)),
            big_room_threshold: config.big_room_threshold,
        }
    }

    /// One round every `presence_interval_ms` over the rooms `rooms()` lists,
    /// until `stop` is cancelled.
    pub async fn run<R, F>(&self, stop: &CancellationToken, rooms: F)
    where
        R: Counted,
        F: Fn() -> Vec<Arc<R>>,
    {
        let mut every = tokio::time::interval(self.every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => self.round(&rooms()).await,
            }
        }
    }

    /// Publishes the counts of `rooms`, records the totals the store answers
    /// (a failed exchange keeps the last ones) and refills the top-N metric.
    pub async fn round<R: Counted>(&self, rooms: &[Arc<R>]) {
        let local: Vec<(String, u64)> = rooms
            .iter()
            .map(|r| (r.room().to_string(), r.presence().online() as u64))
            .collect();
        let totals = match self
            .store
            .exchange_presence(&self.node_id, &local, self.ttl)
            .await
        {
            Ok(t) => t,
            Err(e) => {
                self.metrics
                    .store_errors
                    .with_label_values(&["presence"])
                    .inc();
                tracing::warn!(error = %e, "presence exchange failed; keeping last counts");
                return;
            }
        };
        let mut big = Vec::new();
        for (r, total) in rooms.iter().zip(totals) {
            let total = total as usize;
            let presence = r.presence();
            if let Some(class) = presence.record_total(total, self.big_room_threshold) {
                let big = class == SizeClass::Big;
                tracing::info!(room = %r.room(), online = total, big, "room size class changed");
            }
            if presence.is_big() {
                big.push((r.room(), total));
            }
        }
        self.top.refill(big);
    }

    /// A room's hub stopped on this node: its top-N series goes now, not at
    /// the next round.
    pub fn forget(&self, room: &str) {
        self.top.forget(room);
    }
}
