//! Store health gate (`docs/architecture.md`, "Live store", "Store health gate"):
//! while Redis is unreachable, store calls fail at once instead of each
//! waiting out the response timeout, and a fresh connection replaces the
//! one a partition left stuck.
//!
//! Rules:
//! - a call that fails with a transport error (a timeout, an I/O or
//!   connection error: [`is_transport`]) on the connection in use now marks
//!   the store **unreachable**; a script or logic error (`NOSCRIPT`,
//!   `WRONGTYPE`, a Lua error, a refused write) never does, nor a failure
//!   on a connection already replaced;
//! - a `PING` (the readiness check, [`GatedConn::ping`]; on a cluster, of
//!   the listed nodes as below) unanswered within [`PING_TIMEOUT`] counts as
//!   a timeout: it is the cheapest command, so
//!   when it waits that long Redis is not serving, and a load balancer's
//!   `/readyz` polls then trip the gate about a second into a partition
//!   instead of the first call's full response timeout (5 s);
//! - on a Redis Cluster ([`Scope::AnyMaster`]) such a failure only makes the
//!   store **suspect**: one master away must not fail the rooms of the
//!   others. The prober then `PING`s every node listed in the URL, each on a
//!   connection of its own: any `PONG` clears the suspicion, none marks the
//!   store unreachable. (Not the cluster client's own `PING` of all masters:
//!   with one master frozen it was seen stalling about half the time.);
//! - while unreachable, every call fails at once with
//!   `StoreError::Unavailable` ("unreachable since … (probing)", a 503
//!   `store_unavailable`), and every [`PROBE_EVERY`] the prober opens a
//!   **fresh** connection (to the current primary under Sentinel) and
//!   `PING`s it, each bounded by [`PROBE_TIMEOUT`] (on a cluster: `PING`s
//!   the listed nodes as above, then opens a fresh cluster connection);
//! - only a probe's `PONG` makes the store healthy again, and its
//!   connection is swapped in first, so the old one (which may wait on TCP
//!   retransmission backoff after a partition heals) is dropped. (A cluster
//!   whose nodes answer but whose fresh connection fails is healthy again on
//!   its old connection: its client reconnects node by node.)
//!
//! The transitions are [`next`], a pure function; [`Gate`] holds the state
//! (one atomic load per call while healthy), counts trips for the metrics
//! and logs one line per transition.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionLike, ConnectionManager};
use ::redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};
use parking_lot::{Mutex, RwLock};

use super::conn::{manager_config, RedisConn, Topology};
use super::sentinel::Primary;
use crate::store::StoreHealth;

/// How often the prober looks at the gate, and probes while it is not healthy.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// Bound on opening a probe's connection, and on its `PING`.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Bound on opening a fresh cluster connection (it asks a node for the slot
/// map, then connects to every master).
const CLUSTER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on the readiness `PING` before it counts as a timeout: under
/// `/readyz`'s own 1 s bound on the check, which would drop the call unseen.
const PING_TIMEOUT: Duration = Duration::from_millis(800);

/// Which failures may mark the store unreachable at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scope {
    /// A single Redis or a Sentinel primary: one server holds every room.
    Whole,
    /// A Redis Cluster: a failed call is one master's; the store is
    /// unreachable only when no master answers.
    AnyMaster,
}

/// The gate's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum State {
    Healthy = 0,
    /// A cluster call failed in transport: the prober asks any master.
    Suspect = 1,
    /// Calls fail at once; the prober reconnects.
    Unreachable = 2,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Suspect,
            2 => State::Unreachable,
            _ => State::Healthy,
        }
    }
}

/// What the gate learns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Event {
    /// A call failed. `transport`: a timeout or an I/O or connection error
    /// ([`is_transport`]); `current`: on the connection in use now (not one
    /// the prober has replaced since the call began).
    CallFailed { transport: bool, current: bool },
    /// The prober's `PING` was answered (on a fresh connection, now in use,
    /// or, when suspect, by any master of the cluster).
    ProbeAnswered,
    /// The prober's connection or `PING` failed or timed out.
    ProbeFailed,
}

/// The gate's transitions (see the module's rules).
pub(super) fn next(state: State, event: Event, scope: Scope) -> State {
    match (state, event) {
        (
            State::Healthy,
            Event::CallFailed {
                transport: true,
                current: true,
            },
        ) => match scope {
            Scope::Whole => State::Unreachable,
            Scope::AnyMaster => State::Suspect,
        },
        (State::Suspect | State::Unreachable, Event::ProbeAnswered) => State::Healthy,
        (State::Suspect, Event::ProbeFailed) => State::Unreachable,
        // A healthy store is not probed; a stray answer changes nothing.
        // Nothing but a probe's answer clears an unreachable store.
        (state, _) => state,
    }
}

/// A timeout, an I/O error or a lost connection (to a cluster node too):
/// the server did not answer. Anything the server answered (a script or
/// type error, `READONLY`, `BUSY`, …) or the client refused is not.
pub(super) fn is_transport(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Io | ErrorKind::ClusterConnectionNotFound
    )
}

/// Where the store's connection comes from, and where a fresh one goes.
pub(super) enum Source {
    /// A single Redis or a Redis Cluster: the gate holds the connection.
    Fixed {
        topology: Topology,
        conn: RwLock<RedisConn>,
    },
    /// A Sentinel primary: [`Primary`] holds it (and swaps it when the
    /// sentinels fail over); a fresh one goes there, if the primary is
    /// still the one probed.
    Sentinel(Arc<Primary>),
}

impl Source {
    fn scope(&self) -> Scope {
        match self {
            Source::Fixed {
                topology: Topology::Cluster { .. },
                ..
            } => Scope::AnyMaster,
            _ => Scope::Whole,
        }
    }

    /// Whether a suspect store is reachable: on a cluster, any listed node
    /// answers; elsewhere (never suspect) the connection in use answers.
    async fn verify(&self) -> Result<(), String> {
        if let Source::Fixed {
            topology: Topology::Cluster { nodes, .. },
            ..
        } = self
        {
            return any_node_answers(nodes).await;
        }
        match tokio::time::timeout(PROBE_TIMEOUT, self.conn().ping()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer in {PROBE_TIMEOUT:?}")),
        }
    }

    fn conn(&self) -> RedisConn {
        match self {
            Source::Fixed { conn, .. } => conn.read().clone(),
            Source::Sentinel(primary) => RedisConn::Single(primary.conn()),
        }
    }

    /// Opens a fresh connection, `PING`s it, and on the `PONG` puts it in
    /// use. Each step bounded by [`PROBE_TIMEOUT`].
    async fn reconnect(&self) -> Result<(), String> {
        async fn bounded<T>(
            what: &str,
            f: impl std::future::Future<Output = Result<T, RedisError>>,
        ) -> Result<T, String> {
            match tokio::time::timeout(PROBE_TIMEOUT, f).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(format!("{what}: {e}")),
                Err(_) => Err(format!("{what}: no answer in {PROBE_TIMEOUT:?}")),
            }
        }
        async fn pong(mut conn: RedisConn) -> Result<RedisConn, String> {
            let pong = bounded("ping", conn.ping()).await?;
            if pong == "PONG" {
                Ok(conn)
            } else {
                Err(format!("ping answered {pong:?}"))
            }
        }
        match self {
            Source::Fixed {
                topology: topology @ Topology::Cluster { nodes, .. },
                conn,
            } => {
                any_node_answers(nodes).await?;
                match tokio::time::timeout(CLUSTER_CONNECT_TIMEOUT, topology.connect()).await {
                    Ok(Ok(fresh)) => *conn.write() = fresh,
                    Ok(Err(e)) => tracing::debug!(error = %e, "fresh redis cluster connection"),
                    Err(_) => tracing::debug!("fresh redis cluster connection: timed out"),
                }
                Ok(())
            }
            Source::Fixed { topology, conn } => {
                let fresh = pong(bounded("connect", topology.connect()).await?).await?;
                *conn.write() = fresh;
                Ok(())
            }
            Source::Sentinel(primary) => {
                let (addr, client) = primary.target();
                let manager = ConnectionManager::new_with_config(client, manager_config());
                let fresh = pong(RedisConn::Single(bounded("connect", manager).await?)).await?;
                let RedisConn::Single(fresh) = fresh else {
                    unreachable!("opened as a single connection")
                };
                // Moved meanwhile: the watcher connected to the new primary.
                primary.renew(&addr, fresh);
                Ok(())
            }
        }
    }
}

/// Any of a cluster's listed `nodes` answers `PING`, each asked on a
/// connection of its own within [`PROBE_TIMEOUT`]; else why not.
async fn any_node_answers(nodes: &[::redis::Client]) -> Result<(), String> {
    let pings = nodes.iter().map(|client| {
        Box::pin(async move {
            let ask = async {
                let mut c = client.get_multiplexed_async_connection().await?;
                ::redis::cmd("PING").query_async::<String>(&mut c).await
            };
            match tokio::time::timeout(PROBE_TIMEOUT, ask).await {
                Ok(Ok(pong)) if pong == "PONG" => Ok(()),
                Ok(Ok(other)) => Err(format!("ping answered {other:?}")),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer in {PROBE_TIMEOUT:?}")),
            }
        })
    });
    match futures_util::future::select_ok(pings).await {
        Ok(_) => Ok(()),
        Err(last) => Err(format!("no cluster node answered PING (the last: {last})")),
    }
}

/// The gate: the state, the connection source, the prober's bookkeeping.
pub(super) struct Gate {
    source: Source,
    scope: Scope,
    /// [`State`] as a `u8`: the hot path's one load.
    state: AtomicU8,
    /// Bumped each time the prober swaps a connection in: failures of
    /// calls begun before are not about the connection in use.
    generation: AtomicU64,
    trips: AtomicU64,
    /// When the store became unreachable; transitions happen under it.
    since: Mutex<Option<Instant>>,
}

impl Gate {
    /// The gate over `source`, with its prober running until the gate is
    /// dropped.
    pub(super) fn start(source: Source) -> Arc<Gate> {
        let gate = Arc::new(Gate {
            scope: source.scope(),
            source,
            state: AtomicU8::new(State::Healthy as u8),
            generation: AtomicU64::new(0),
            trips: AtomicU64::new(0),
            since: Mutex::new(None),
        });
        tokio::spawn(probe(Arc::downgrade(&gate)));
        gate
    }

    /// The connection to issue calls on, through the gate.
    pub(super) fn conn(self: &Arc<Self>) -> GatedConn {
        // The generation first: a connection swapped in after it was read
        // is at worst blamed on the old one (its failure then ignored).
        let generation = self.generation.load(Ordering::Acquire);
        GatedConn {
            conn: self.source.conn(),
            gate: self.clone(),
            generation,
        }
    }

    /// The Sentinel primary the store follows, if the URL names one.
    pub(super) fn sentinel_primary(&self) -> Option<&Arc<Primary>> {
        match &self.source {
            Source::Sentinel(primary) => Some(primary),
            Source::Fixed { .. } => None,
        }
    }

    pub(super) fn health(&self) -> StoreHealth {
        StoreHealth {
            unreachable: self.state() == State::Unreachable,
            trips: self.trips.load(Ordering::Relaxed),
        }
    }

    fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Fails at once while unreachable.
    fn admit(&self) -> Result<(), RedisError> {
        if self.state() != State::Unreachable {
            return Ok(());
        }
        let ago = self
            .since
            .lock()
            .map_or(Duration::ZERO, |since| since.elapsed());
        Err(std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            format!("unreachable since {:.1}s ago (probing)", ago.as_secs_f64()),
        )
        .into())
    }

    /// Learns from a call's result on a connection of `generation`.
    fn observe<T>(&self, result: &Result<T, RedisError>, generation: u64) {
        if let Err(e) = result {
            let event = Event::CallFailed {
                transport: is_transport(e),
                current: generation == self.generation.load(Ordering::Acquire),
            };
            self.apply(event, Some(e));
        }
    }

    fn apply(&self, event: Event, cause: Option<&dyn std::fmt::Display>) {
        let mut since = self.since.lock();
        let was = self.state();
        let now = next(was, event, self.scope);
        if now == was {
            return;
        }
        self.state.store(now as u8, Ordering::Release);
        match now {
            State::Unreachable => {
                *since = Some(Instant::now());
                self.trips.fetch_add(1, Ordering::Relaxed);
                let cause = cause.map(ToString::to_string).unwrap_or_default();
                tracing::warn!(
                    %cause,
                    "redis store unreachable: calls fail at once while a fresh connection is probed"
                );
            }
            State::Healthy if was == State::Unreachable => {
                let outage = since.take().map_or(Duration::ZERO, |s| s.elapsed());
                tracing::info!(
                    outage_s = outage.as_secs_f64(),
                    "redis store reachable again on a fresh connection"
                );
            }
            State::Healthy | State::Suspect => {}
        }
    }
}

/// Looks at the gate every [`PROBE_EVERY`] and probes while it is not
/// healthy; ends once the gate (the store) is dropped.
async fn probe(gate: Weak<Gate>) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(gate) = gate.upgrade() else { return };
        let outcome = match gate.state() {
            State::Healthy => continue,
            State::Suspect => gate.source.verify().await,
            State::Unreachable => {
                let swapped = gate.source.reconnect().await;
                if swapped.is_ok() {
                    gate.generation.fetch_add(1, Ordering::AcqRel);
                }
                swapped
            }
        };
        match outcome {
            Ok(()) => gate.apply(Event::ProbeAnswered, None),
            Err(reason) => {
                tracing::debug!(%reason, "redis store probe failed");
                gate.apply(Event::ProbeFailed, Some(&reason));
            }
        }
    }
}

/// A connection whose calls pass the gate: refused at once while the store
/// is unreachable, their failures reported to it.
pub(super) struct GatedConn {
    conn: RedisConn,
    gate: Arc<Gate>,
    generation: u64,
}

impl GatedConn {
    /// The readiness `PING` through the gate: [`RedisConn::ping`] bounded
    /// by [`PING_TIMEOUT`] (a timeout when it is not answered by then); on a
    /// cluster, any listed node answering on a connection of its own (the
    /// cluster client's `PING` of all masters stalls at times while one is
    /// frozen, which would take every front out of the load balancer).
    pub(super) async fn ping(&mut self) -> Result<String, RedisError> {
        self.gate.admit()?;
        let timed_out = |why: String| -> RedisError {
            std::io::Error::new(std::io::ErrorKind::TimedOut, why).into()
        };
        let result = if let Source::Fixed {
            topology: Topology::Cluster { nodes, .. },
            ..
        } = &self.gate.source
        {
            any_node_answers(nodes)
                .await
                .map(|()| "PONG".to_string())
                .map_err(timed_out)
        } else {
            match tokio::time::timeout(PING_TIMEOUT, self.conn.ping()).await {
                Ok(answer) => answer,
                Err(_) => Err(timed_out(format!("PING unanswered in {PING_TIMEOUT:?}"))),
            }
        };
        self.gate.observe(&result, self.generation);
        result
    }

    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.conn, RedisConn::Cluster(_))
    }
}

impl ConnectionLike for GatedConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            self.gate.admit()?;
            let result = self.conn.req_packed_command(cmd).await;
            self.gate.observe(&result, self.generation);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            self.gate.admit()?;
            let result = self.conn.req_packed_commands(pipeline, offset, count).await;
            self.gate.observe(&result, self.generation);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transitions, every state × event × scope that matters.
    #[test]
    fn transitions() {
        use Event::*;
        use Scope::*;
        use State::*;
        let fail = |transport, current| CallFailed { transport, current };
        let table = [
            // (state, event, scope, next)
            // A timeout / I/O error on the connection in use trips.
            (Healthy, fail(true, true), Whole, Unreachable),
            // … on a cluster, only a suspicion the prober checks.
            (Healthy, fail(true, true), AnyMaster, Suspect),
            // A script / logic error never trips.
            (Healthy, fail(false, true), Whole, Healthy),
            (Healthy, fail(false, true), AnyMaster, Healthy),
            // A failure on a connection already replaced does not.
            (Healthy, fail(true, false), Whole, Healthy),
            (Healthy, fail(true, false), AnyMaster, Healthy),
            // Probes of a healthy store change nothing.
            (Healthy, ProbeAnswered, Whole, Healthy),
            (Healthy, ProbeFailed, Whole, Healthy),
            (Healthy, ProbeFailed, AnyMaster, Healthy),
            // Suspect: any master answering clears it, none trips.
            (Suspect, ProbeAnswered, AnyMaster, Healthy),
            (Suspect, ProbeFailed, AnyMaster, Unreachable),
            (Suspect, fail(true, true), AnyMaster, Suspect),
            (Suspect, fail(false, true), AnyMaster, Suspect),
            // Unreachable: only a probe's PONG clears it.
            (Unreachable, ProbeAnswered, Whole, Healthy),
            (Unreachable, ProbeAnswered, AnyMaster, Healthy),
            (Unreachable, ProbeFailed, Whole, Unreachable),
            (Unreachable, ProbeFailed, AnyMaster, Unreachable),
            (Unreachable, fail(true, true), Whole, Unreachable),
            (Unreachable, fail(false, true), Whole, Unreachable),
            (Unreachable, fail(true, false), Whole, Unreachable),
        ];
        for (state, event, scope, want) in table {
            assert_eq!(
                next(state, event, scope),
                want,
                "{state:?} + {event:?} on {scope:?}"
            );
        }
    }

    /// Which errors are the server not answering.
    #[test]
    fn transport_errors() {
        use std::io::ErrorKind as Io;
        let io = |k: Io| RedisError::from(std::io::Error::new(k, "x"));
        let server = |text: &str| {
            ::redis::parse_redis_value(text.as_bytes())
                .unwrap()
                .extract_error()
                .unwrap_err()
        };
        let table: Vec<(RedisError, bool)> = vec![
            (io(Io::TimedOut), true),
            (io(Io::ConnectionReset), true),
            (io(Io::BrokenPipe), true),
            (io(Io::UnexpectedEof), true),
            (
                RedisError::from((ErrorKind::ClusterConnectionNotFound, "no node")),
                true,
            ),
            (server("-NOSCRIPT No matching script.\r\n"), false),
            (
                server("-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"),
                false,
            ),
            (server("-ERR user_script:1: Script attempted to access nonexistent global variable\r\n"), false),
            (server("-READONLY You can't write against a read only replica.\r\n"), false),
            (server("-BUSY Redis is busy running a script.\r\n"), false),
            (
                RedisError::from((ErrorKind::UnexpectedReturnType, "not an integer")),
                false,
            ),
        ];
        for (e, want) in table {
            assert_eq!(is_transport(&e), want, "{e}");
        }
    }
}
