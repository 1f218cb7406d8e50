//! Processor role: consumes the bus, writes the live store, commits only after
//! the write succeeded (so a crash redelivers; the store's id dedup makes the
//! redelivery harmless).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, BusConsumer, Delivery};
use crate::message::{now_ms, Message};
use crate::metrics::Metrics;
use crate::store::{AppendOutcome, LiveStore};

pub struct Processor {
    pub bus: Arc<dyn Bus>,
    pub store: Arc<dyn LiveStore>,
    pub metrics: Arc<Metrics>,
    pub batch_max: usize,
    /// While asked, nothing is consumed (maintenance; tests of back-pressure).
    pub pause: Arc<PauseGate>,
}

/// Asks the processor to stop consuming, and tells when it has.
#[derive(Default)]
pub struct PauseGate {
    wanted: AtomicBool,
    holding: AtomicBool,
}

impl PauseGate {
    /// Sets the wish and waits (bounded) until the processor follows it, so
    /// no poll in flight slips through after `pause(true)` returns.
    pub async fn set(&self, paused: bool) {
        self.wanted.store(paused, Ordering::Release);
        for _ in 0..400 {
            if self.holding.load(Ordering::Acquire) == paused {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::warn!(paused, "processor did not follow the pause request in 2 s");
    }
}

const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl Processor {
    /// Runs until `shutdown`, then drains what the bus still holds.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut consumer = match self.join(&shutdown).await {
            Some(c) => c,
            None => return,
        };
        loop {
            let hold = self.pause.wanted.load(Ordering::Acquire) && !shutdown.is_cancelled();
            self.pause.holding.store(hold, Ordering::Release);
            if hold {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            let polled = consumer
                .poll(self.batch_max, Duration::from_millis(100))
                .await;
            let batch = match polled {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "bus poll failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if batch.is_empty() {
                if shutdown.is_cancelled() {
                    tracing::info!("processor drained; stopping");
                    return;
                }
                continue;
            }
            self.store_batch(&batch).await;
            if let Err(e) = consumer.commit(&batch).await {
                // Uncommitted deliveries come again; the store dedups them.
                tracing::warn!(error = %e, "bus commit failed");
            }
            self.metrics.bus_pending.set(self.bus.pending() as i64);
        }
    }

    async fn join(&self, shutdown: &CancellationToken) -> Option<Box<dyn BusConsumer>> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.bus.consumer().await {
                Ok(c) => return Some(c),
                Err(e) => tracing::warn!(error = %e, "joining the bus failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return None,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Writes a polled batch room by room, keeping bus order within a room,
    /// retrying each room until the store takes it.
    async fn store_batch(&self, batch: &[Delivery]) {
        let mut rooms: Vec<(&str, Vec<Message>)> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for d in batch {
            let i = *index.entry(d.message.room.as_str()).or_insert_with(|| {
                rooms.push((d.message.room.as_str(), Vec::new()));
                rooms.len() - 1
            });
            rooms[i].1.push(d.message.clone());
        }
        let mut updated = Vec::with_capacity(rooms.len());
        for (room, messages) in rooms {
            self.append_with_retry(room, messages).await;
            updated.push(room.to_string());
        }
        // Best effort: fronts poll anyway, a lost notice only adds latency.
        if let Err(e) = self.store.notify_updated(&updated).await {
            tracing::debug!(error = %e, "room-updated notice failed");
        }
    }

    /// Retries until the store takes the batch, even while shutting down:
    /// these messages were acknowledged to their senders.
    async fn append_with_retry(&self, room: &str, messages: Vec<Message>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let timer = self.metrics.store_append_seconds.start_timer();
            let result = self.store.append(room, messages.clone()).await;
            timer.observe_duration();
            match result {
                Ok(outcomes) => {
                    let now = now_ms();
                    for (outcome, m) in outcomes.iter().zip(&messages) {
                        match outcome {
                            AppendOutcome::Stored { .. } => {
                                self.metrics.stored.inc();
                                self.metrics
                                    .process_delay_seconds
                                    .observe(now.saturating_sub(m.ts) as f64 / 1000.0);
                            }
                            AppendOutcome::Duplicate { .. } => self.metrics.store_duplicates.inc(),
                        }
                    }
                    return;
                }
                Err(e) => {
                    self.metrics
                        .store_errors
                        .with_label_values(&["append"])
                        .inc();
                    tracing::warn!(room, error = %e, "store append failed; retrying");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
