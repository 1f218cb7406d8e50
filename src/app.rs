//! Wiring: builds the engines behind the ports, starts the roles of `serve`,
//! and shuts them down in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::archive::metrics::ArchiveMetrics;
use crate::archiver::Archiver;
use crate::auth::moderator::Moderators;
use crate::auth::Authenticator;
use crate::bus::{kafka::KafkaBus, memory::MemoryBus, Bus};
use crate::config::{BusEngine, Config, StoreEngine};
use crate::control::Control;
use crate::fanout::HubRegistry;
use crate::front::kicks::Kicks;
use crate::http::listener::ListenerLimits;
use crate::http::{AppInner, AppState};
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::moderation::mutes::Mutes;
use crate::moderation::retract::Retractor;
use crate::processor::{PauseGate, Processor};
use crate::rooms::RoomDirectory;
use crate::store::control::{memory::MemoryControl, ControlPlane};
use crate::store::{memory::MemoryStore, redis::RedisStore, LiveStore};

/// Which roles a process runs (docs/architecture.md, "Roles").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Every role in one process.
    Serve,
    /// Viewer-facing: ingest, hubs, transports.
    Front,
    /// Bus → live store.
    Processor,
    /// Stored log → archive (replay).
    Archiver,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Serve => "serve",
            Role::Front => "front",
            Role::Processor => "processor",
            Role::Archiver => "archiver",
        }
    }

    fn runs_front(self) -> bool {
        matches!(self, Role::Serve | Role::Front)
    }

    fn runs_processor(self) -> bool {
        matches!(self, Role::Serve | Role::Processor)
    }

    fn runs_archiver(self, config: &Config) -> bool {
        match self {
            Role::Serve => config.archive.run_archiver,
            Role::Archiver => true,
            _ => false,
        }
    }
}

/// A running `serve` node.
pub struct Server {
    addr: SocketAddr,
    state: AppState,
    http: JoinHandle<std::io::Result<()>>,
    /// `server.internal_listen`'s address and server, when set.
    internal: Option<(SocketAddr, JoinHandle<std::io::Result<()>>)>,
    processor: Option<JoinHandle<()>>,
    archiver: Option<JoinHandle<()>>,
    processor_pause: Arc<PauseGate>,
    memory_store: Option<Arc<MemoryStore>>,
    housekeeping: JoinHandle<()>,
}

impl Server {
    /// Binds `server.listen` and starts every role of `serve`.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        Self::start_role(config, Role::Serve).await
    }

    /// Starts one role (or all of them with `Role::Serve`).
    pub async fn start_role(config: Config, role: Role) -> anyhow::Result<Server> {
        let metrics = Arc::new(Metrics::new());
        crate::clock::set_test_offset_ms(config.server.clock_offset_ms);
        let Stores {
            live: store,
            memory: memory_store,
            control: plane,
        } = Stores::connect(&config, &metrics).await?;
        // Agree with the store's clock before stamping anything.
        sync_clock(&*store, &metrics).await;
        let archive_metrics = Arc::new(ArchiveMetrics::new());
        // The processor role neither serves replay nor copies: it gets an
        // empty in-memory archive rather than a connection to the real one.
        let mut archive_config = config.archive.clone();
        if role == Role::Processor {
            archive_config.url = "sqlite::memory:".into();
        }
        let archive = crate::archive::connect(&archive_config)
            .await
            .context("connecting to the archive")?;
        let replay = Arc::new(crate::replay::Replay::new(
            archive.clone(),
            &config.store.replay_redis_url,
            config.archive.clone(),
            archive_metrics.clone(),
        )?);
        let stored = stored_log(&config, role).await?;
        // The archiver alone never uses the ingest bus: its bus is the stored
        // log (readiness pings it), or, embedded, an idle in-process one.
        let bus: Arc<dyn Bus> = match (&stored, role) {
            (Some(log), Role::Archiver) => log.clone(),
            _ if config.bus.engine == BusEngine::Kafka && role != Role::Archiver => {
                let kafka = KafkaBus::connect(&config.bus)
                    .await
                    .context("connecting to the kafka bus")?;
                Arc::new(kafka)
            }
            _ => Arc::new(MemoryBus::new(config.bus.partitions, config.bus.capacity)),
        };
        let stopping = CancellationToken::new();
        let draining = CancellationToken::new();
        let closing = CancellationToken::new();
        let rooms = Arc::new(RoomDirectory::new(config.ration.clone()));
        let control = Control::new(
            plane,
            rooms.clone(),
            metrics.clone(),
            Duration::from_millis(config.store.control_catch_up_ms.max(10)),
        );
        let hubs = HubRegistry::new(
            store.clone(),
            metrics.clone(),
            rooms.clone(),
            config.fanout.clone(),
            std::time::Duration::from_millis(config.ration.lite_after_ms),
            node_id(&config),
        );
        let kicks = Arc::new(Kicks::default());
        let retractor = Arc::new(Retractor::new(
            store.clone(),
            control.clone(),
            hubs.clone(),
            replay.clone(),
            metrics.clone(),
        ));
        if role.runs_front() {
            hubs.start_background();
            tokio::spawn(crate::moderation::carry_out(
                control.subscribe(),
                retractor.clone(),
                kicks.clone(),
                stopping.clone(),
            ));
            control.start(stopping.clone()).await;
        }
        // Archive retention, and deleted lives' replay caches (fronts).
        if role != Role::Processor {
            tokio::spawn(replay.clone().follow(
                control.clone(),
                role.runs_front().then(|| control.subscribe()),
                stopping.clone(),
            ));
        }
        let auth = Arc::new(Authenticator::with_metrics(&config.auth, &metrics));
        tokio::spawn(auth.clone().watch_key_file(stopping.clone()));
        let state = AppState(Arc::new(AppInner {
            auth,
            ingest: Arc::new(
                Ingest::new(
                    config.ingest.clone(),
                    bus.clone(),
                    store.clone(),
                    metrics.clone(),
                    control.clone(),
                )
                .with_gear_spread(config.gears.spread_partitions)
                .with_claim_takeover_after(
                    crate::ingest::idempotency::takeover_after(Duration::from_millis(
                        config.bus.publish_timeout_ms,
                    )),
                ),
            ),
            rooms,
            moderators: Arc::new(Moderators::new(
                &config.auth.admin_token,
                config.auth.jwt_leeway_s,
            )),
            mutes: Arc::new(Mutes::new(control.clone(), metrics.clone())),
            retractor,
            kicks,
            control,
            store: store.clone(),
            bus: bus.clone(),
            hubs,
            metrics: metrics.clone(),
            viewer_slots: Arc::new(crate::front::PerIpLimiter::new(
                config.server.max_viewer_connections_per_ip,
                "viewer connections",
            )),
            replay,
            draining,
            stopping: stopping.clone(),
            closing,
            config: Arc::new(config),
        }));

        let processor_pause = Arc::new(PauseGate::default());
        let archiver = match (&stored, role.runs_archiver(&state.config)) {
            (Some(log), true) => {
                let archiver = Archiver {
                    archive,
                    stored: log.clone(),
                    metrics: archive_metrics,
                    config: state.config.archive.clone(),
                };
                Some(tokio::spawn(archiver.run(stopping.clone())))
            }
            _ => None,
        };
        let processor = Processor {
            bus,
            store,
            stored: stored.filter(|_| role.runs_processor()),
            metrics,
            batch_max: state.config.processor.batch_max,
            gears: state.config.gears.clone(),
            pause: processor_pause.clone(),
        };
        let processor = role
            .runs_processor()
            .then(|| tokio::spawn(processor.run(stopping.clone())));

        let listener = tokio::net::TcpListener::bind(state.config.listen_addr()?)
            .await
            .with_context(|| format!("binding {}", state.config.server.listen))?;
        let addr = listener.local_addr()?;
        let internal_listener = match state.config.internal_listen_addr()? {
            Some(at) => Some(
                tokio::net::TcpListener::bind(at)
                    .await
                    .with_context(|| format!("binding server.internal_listen {at}"))?,
            ),
            None => None,
        };
        let routers = crate::http::routers(state.clone(), role.runs_front());
        let limits = ListenerLimits::from_config(&state.config.server, &state.config.fanout);
        let mut internal = None;
        if let (Some(listener), Some(app)) = (internal_listener, routers.internal) {
            let at = listener.local_addr()?;
            // Operators and scrapers connect directly: no PROXY header.
            let limits = ListenerLimits {
                proxy_protocol: false,
                ..limits.clone()
            };
            let serving = tokio::spawn(crate::http::listener::serve(
                listener,
                app,
                limits,
                state.metrics.clone(),
                stopping.clone(),
            ));
            tracing::info!(addr = %at, "internal listener (metrics, readiness, admin)");
            internal = Some((at, serving));
        }
        let http = tokio::spawn(crate::http::listener::serve(
            listener,
            routers.public,
            limits,
            state.metrics.clone(),
            stopping.clone(),
        ));
        let housekeeping = tokio::spawn(housekeeping(state.clone(), memory_store.clone()));
        tracing::info!(
            %addr,
            role = role.name(),
            store = %state.config.store.engine,
            bus = %state.config.bus.engine,
            archive = %state.config.archive.url.split('@').next_back().unwrap_or(""),
            "danmaku serving"
        );
        Ok(Server {
            addr,
            state,
            http,
            internal,
            processor,
            archiver,
            processor_pause,
            memory_store,
            housekeeping,
        })
    }

    /// Stops (or resumes) consuming the bus: maintenance, and tests of
    /// back-pressure and shedding.
    /// Returns once the processor follows.
    pub async fn pause_processor(&self, paused: bool) {
        self.processor_pause.set(paused).await;
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The internal listener's address (`server.internal_listen`), if any.
    pub fn internal_addr(&self) -> Option<SocketAddr> {
        self.internal.as_ref().map(|(at, _)| *at)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The embedded store, for tests that simulate a store failover.
    pub fn memory_store(&self) -> Option<&Arc<MemoryStore>> {
        self.memory_store.as_ref()
    }

    /// Answer `/readyz` 503 for `server.drain_ms` (load balancers drain the
    /// node), stop taking work, drain the bus into the store, flush hubs,
    /// then close viewer sessions with a reason and wait for them (bounded).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let grace = Duration::from_millis(self.state.config.server.shutdown_grace_ms);
        let drain = Duration::from_millis(self.state.config.server.drain_ms);
        self.state.draining.cancel();
        if !drain.is_zero() {
            tracing::info!(drain_ms = drain.as_millis() as u64, "draining: /readyz 503");
            tokio::time::sleep(drain).await;
        }
        tracing::info!("shutting down: no new work");
        self.state.stopping.cancel();
        if let Some(processor) = self.processor {
            if tokio::time::timeout(grace, processor).await.is_err() {
                tracing::warn!("processor did not drain within the grace period");
            }
        }
        if let Some(archiver) = self.archiver {
            // A copy stops between batches; what it committed is kept.
            if tokio::time::timeout(grace, archiver).await.is_err() {
                tracing::warn!("archiver did not stop within the grace period");
            }
        }
        self.state.hubs.flush_and_stop().await;
        tracing::info!("closing viewer sessions");
        self.state.closing.cancel();
        self.housekeeping.abort();
        match tokio::time::timeout(grace, self.http).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "http server error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "http task failed"),
            Err(_) => tracing::warn!("connections still open after the grace period"),
        }
        // Upgraded connections (WebSocket) left the HTTP server's tracking at
        // the upgrade: wait for the sessions themselves to send their close,
        // or exiting would cut them without one.
        if !viewer_sessions_ended(&self.state.metrics, grace).await {
            tracing::warn!("viewer sessions still open after the grace period");
        }
        if let Some((_, internal)) = self.internal {
            // Scrapes and admin calls are short: a grace is plenty.
            let _ = tokio::time::timeout(grace, internal).await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// The stored log (processor → archiver; `crate::bus`) for the roles that
/// use it: on Kafka, its own topic for the processor and the archiver, so
/// they can run apart; embedded, an in-process bus, only when this process
/// runs both (nothing else could read or write it).
async fn stored_log(config: &Config, role: Role) -> anyhow::Result<Option<Arc<dyn Bus>>> {
    let archiver = role.runs_archiver(config);
    let processor = role.runs_processor();
    if config.bus.engine == BusEngine::Kafka {
        if !(archiver || processor) {
            return Ok(None);
        }
        let kafka = KafkaBus::connect(&config.bus.stored())
            .await
            .context("connecting to the kafka stored log")?;
        return Ok(Some(Arc::new(kafka)));
    }
    if archiver && processor {
        return Ok(Some(Arc::new(MemoryBus::new(
            config.bus.partitions,
            config.bus.capacity,
        ))));
    }
    if archiver {
        tracing::warn!(
            "an archiver on the embedded bus has nothing to archive: use bus.engine = \"kafka\""
        );
    }
    Ok(None)
}

/// The live store and the control plane: one Redis engine behind both ports
/// when distributed, the embedded engines otherwise.
struct Stores {
    live: Arc<dyn LiveStore>,
    /// The embedded live store, for sweeps and failover tests.
    memory: Option<Arc<MemoryStore>>,
    control: Arc<dyn ControlPlane>,
}

impl Stores {
    async fn connect(config: &Config, metrics: &Metrics) -> anyhow::Result<Stores> {
        if config.store.engine == StoreEngine::Redis {
            let redis = RedisStore::connect(&config.store.redis_url, config.store.clone())
                .await
                .context("connecting to the redis live store")?;
            redis.count_primary_switches_in(metrics.redis_primary_switches.clone());
            Ok(Stores {
                live: Arc::new(redis.clone()),
                memory: None,
                control: Arc::new(redis),
            })
        } else {
            let memory = Arc::new(MemoryStore::new(config.store.clone()));
            Ok(Stores {
                live: memory.clone(),
                memory: Some(memory),
                control: Arc::new(MemoryControl::new()),
            })
        }
    }
}

/// This front's presence name: configured, or random per process.
fn node_id(config: &Config) -> String {
    if config.server.node_id.is_empty() {
        format!("node-{:08x}", rand::random::<u32>())
    } else {
        config.server.node_id.clone()
    }
}

/// Waits (up to `within`) until no viewer session (WebSocket, SSE,
/// long-poll) is open on this node; whether none is.
async fn viewer_sessions_ended(metrics: &Metrics, within: Duration) -> bool {
    let open = || {
        ["ws", "sse", "poll"]
            .iter()
            .map(|t| metrics.connections.with_label_values(&[*t]).get())
            .sum::<i64>()
    };
    let deadline = tokio::time::Instant::now() + within;
    while open() > 0 {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Re-estimates the correction of this host's clock towards the store's
/// (`crate::clock`) from a few readings; keeps the last estimate when the
/// store does not answer quickly (or has no clock of its own).
async fn sync_clock(store: &dyn LiveStore, metrics: &Metrics) {
    /// A reading slower than this (a busy host, a queued command) would
    /// make the estimate worse than the last one: skipped.
    const MAX_RTT_MS: u64 = 20;
    let mut samples = Vec::with_capacity(5);
    for _ in 0..5 {
        let sent_ms = crate::clock::host_ms();
        let reading = tokio::time::timeout(Duration::from_secs(1), store.clock_ms()).await;
        let received_ms = crate::clock::host_ms();
        match reading {
            Ok(Ok(Some(store_ms))) => samples.push(crate::clock::ClockSample {
                sent_ms,
                store_ms,
                received_ms,
            }),
            Ok(Ok(None)) => return,
            _ => {}
        }
    }
    if let Some(correction) = crate::clock::estimate_correction(&samples, MAX_RTT_MS) {
        crate::clock::set_correction_ms(correction);
        metrics.clock_correction_ms.set(correction);
    }
}

/// Periodic sweeps: idle rate-limit state, store retention, gauges, the
/// clock's correction.
async fn housekeeping(state: AppState, memory_store: Option<Arc<MemoryStore>>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        every.tick().await;
        sync_clock(&*state.store, &state.metrics).await;
        state.ingest.sweep();
        if let Some(store) = &memory_store {
            store.sweep();
        }
        state.metrics.bus_pending.set(state.bus.pending() as i64);
    }
}
