//! Notices over Redis pub/sub, received by one background task per store
//! that keeps a dedicated subscriber connection and reconnects with backoff
//! (`docs/redis-keys.md`, "Notices"): "room updated" on [`UPDATED_CHANNEL`]
//! (data plane, best effort) and control notices on [`CONTROL_CHANNEL`]
//! (numbered; a node that missed some catches up from the change log).
//!
//! On a Redis Cluster classic `PUBLISH` reaches the subscribers of every
//! node, so the task subscribes through one listed node and moves on to the
//! next listed one whenever a subscription cannot be made or is lost
//! (`docs/architecture.md`, "Redis Cluster").

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ::redis::aio::{PubSubSink, PubSubStream};
use ::redis::{Client, RedisError};
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::control::CONTROL_CHANNEL;
use super::{unavailable, RedisStore};
use crate::store::control::VersionedNotice;
use crate::store::notice::{self, RoomNotice};
use crate::store::{StoreError, ALL_ROOMS};

/// Pub/sub channel of "room updated" notices: one PUBLISH per `notify` call,
/// carrying each room's stored batch when it fits (see `store::notice` for
/// the payload; the older form, room names joined by `'\n'`, is still read).
pub const UPDATED_CHANNEL: &str = "dm:updated";

/// Capacity of the in-process broadcast of received notices (as the memory
/// engine's): a receiver that falls further behind gets `Lagged`.
const UPDATES_CAPACITY: usize = 4096;

/// Reconnect backoff of the notice subscriber.
const NOTICE_MIN_BACKOFF: Duration = Duration::from_millis(100);
const NOTICE_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Bound on connecting + subscribing, and on a health-check PING's answer.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle subscriber PINGs, so a half-open connection is noticed.
const NOTICE_PING_EVERY: Duration = Duration::from_secs(15);

/// The client a (re)subscription connects with: asked again on every
/// attempt, so that the subscriber follows a Sentinel failover.
pub(super) type ClientOf = Arc<dyn Fn() -> Client + Send + Sync>;

/// The receiving side of notices, shared by the clones of one store. The
/// subscriber task is spawned on the first `updates()` call and aborted when
/// the last clone of the store is dropped.
pub(super) struct Notices {
    tx: broadcast::Sender<Arc<RoomNotice>>,
    control_tx: broadcast::Sender<Arc<VersionedNotice>>,
    /// The nodes to subscribe through, tried in turn (one for a single
    /// Redis; the primary of the moment with Sentinel).
    nodes: Arc<[ClientOf]>,
    /// True while the subscriber holds its subscription (`notices_live`).
    live: Arc<AtomicBool>,
    /// Where to spawn the task when `updates()` is called outside a runtime.
    runtime: Option<tokio::runtime::Handle>,
    task: OnceLock<tokio::task::AbortHandle>,
}

impl Notices {
    pub(super) fn subscribe(&self) -> broadcast::Receiver<Arc<RoomNotice>> {
        let rx = self.tx.subscribe();
        self.ensure_listening();
        rx
    }

    /// Whether notices reach this node now (see `LiveStore::notices_live`).
    pub(super) fn live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    pub(super) fn subscribe_control(&self) -> broadcast::Receiver<Arc<VersionedNotice>> {
        let rx = self.control_tx.subscribe();
        self.ensure_listening();
        rx
    }

    fn ensure_listening(&self) {
        if self.task.get().is_none() {
            let runtime = tokio::runtime::Handle::try_current()
                .ok()
                .or_else(|| self.runtime.clone());
            match runtime {
                Some(runtime) => {
                    self.task.get_or_init(|| {
                        runtime
                            .spawn(listen(
                                self.nodes.clone(),
                                self.senders(),
                                self.live.clone(),
                            ))
                            .abort_handle()
                    });
                }
                None => tracing::error!("no tokio runtime: redis notices are not received"),
            }
        }
    }

    fn senders(&self) -> Senders {
        Senders {
            updated: self.tx.clone(),
            control: self.control_tx.clone(),
        }
    }
}

impl Drop for Notices {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

/// Where received notices go, by channel.
#[derive(Clone)]
struct Senders {
    updated: broadcast::Sender<Arc<RoomNotice>>,
    control: broadcast::Sender<Arc<VersionedNotice>>,
}

/// Keeps one pub/sub connection subscribed to both channels and forwards
/// each notice to its sender, reconnecting with backoff (100 ms
/// doubling to 5 s) whenever the connection is lost or cannot be made,
/// each time through the next of `nodes` (round robin).
/// `live` holds while subscribed; each new subscription sends [`ALL_ROOMS`]
/// (what was published before it is lost). Runs until aborted.
async fn listen(nodes: Arc<[ClientOf]>, tx: Senders, live: Arc<AtomicBool>) {
    let mut delay = NOTICE_MIN_BACKOFF;
    let mut failures: u32 = 0;
    let mut ever_subscribed = false;
    let mut turn: usize = 0;
    loop {
        let Some(client_of) = nodes.get(turn % nodes.len().max(1)) else {
            tracing::error!("no redis node to subscribe to notices through");
            return;
        };
        let client = client_of();
        // Host and port only: the URL may hold a password.
        let node = client.get_connection_info().addr().to_string();
        turn = turn.wrapping_add(1);
        match subscribe_updates(&client).await {
            Ok((sink, stream)) => {
                if ever_subscribed {
                    tracing::info!(
                        channel = UPDATED_CHANNEL,
                        %node,
                        failed_attempts = failures,
                        "redis notice subscription restored"
                    );
                } else {
                    tracing::debug!(channel = UPDATED_CHANNEL, %node, "subscribed to redis notices");
                }
                live.store(true, Ordering::Release);
                // Subscribed before anyone reads: nothing published from here
                // on is missed; what came before (while down, or before the
                // first subscription) may have been.
                let _ = tx.updated.send(Arc::new(RoomNotice::name_only(ALL_ROOMS)));
                ever_subscribed = true;
                failures = 0;
                let since = Instant::now();
                let reason = pump_updates(sink, stream, &tx).await;
                live.store(false, Ordering::Release);
                tracing::warn!(
                    channel = UPDATED_CHANNEL,
                    %node,
                    %reason,
                    "redis notice subscription lost; reconnecting"
                );
                // A connection that held for a while starts the backoff over;
                // one that drops right after subscribing keeps backing off.
                if since.elapsed() >= NOTICE_MAX_BACKOFF {
                    delay = NOTICE_MIN_BACKOFF;
                }
            }
            Err(reason) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(
                        channel = UPDATED_CHANNEL,
                        %node,
                        %reason,
                        "cannot subscribe to redis notices; retrying with backoff"
                    );
                } else {
                    tracing::debug!(
                        channel = UPDATED_CHANNEL,
                        %reason,
                        attempt = failures,
                        "redis notice subscription still failing"
                    );
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(NOTICE_MAX_BACKOFF);
    }
}

async fn subscribe_updates(client: &Client) -> Result<(PubSubSink, PubSubStream), String> {
    let attempt = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub
            .subscribe(&[UPDATED_CHANNEL, CONTROL_CHANNEL])
            .await?;
        Ok::<_, RedisError>(pubsub.split())
    };
    match tokio::time::timeout(NOTICE_TIMEOUT, attempt).await {
        Ok(Ok(split)) => Ok(split),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {NOTICE_TIMEOUT:?}")),
    }
}

/// Forwards notices until the connection is lost; returns why it was.
async fn pump_updates(mut sink: PubSubSink, mut stream: PubSubStream, tx: &Senders) -> String {
    let mut health =
        tokio::time::interval_at(Instant::now() + NOTICE_PING_EVERY, NOTICE_PING_EVERY);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return "connection closed".to_string();
                };
                let Ok(payload) = std::str::from_utf8(msg.get_payload_bytes()) else {
                    tracing::warn!("skipping a non-UTF-8 redis notice");
                    continue;
                };
                if msg.get_channel_name() == CONTROL_CHANNEL {
                    match VersionedNotice::decode(payload) {
                        // No receiver is fine: nothing cached can be stale.
                        Some(notice) => drop(tx.control.send(Arc::new(notice))),
                        None => tracing::warn!(payload = %payload.escape_debug(), "skipping an unreadable control notice"),
                    }
                    continue;
                }
                let Some(rooms) = notice::decode(payload) else {
                    tracing::warn!("skipping an unreadable room notice");
                    continue;
                };
                for room in rooms {
                    // No receiver left is fine: notices are best effort.
                    let _ = tx.updated.send(Arc::new(room));
                }
            }
            _ = health.tick() => {
                match tokio::time::timeout(NOTICE_TIMEOUT, sink.ping::<::redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return format!("ping failed: {e}"),
                    Err(_) => return format!("no ping answer within {NOTICE_TIMEOUT:?}"),
                }
            }
        }
    }
}

impl Notices {
    pub(super) fn new(nodes: Vec<ClientOf>) -> Self {
        Notices {
            tx: broadcast::channel(UPDATES_CAPACITY).0,
            control_tx: broadcast::channel(UPDATES_CAPACITY).0,
            nodes: nodes.into(),
            live: Arc::new(AtomicBool::new(false)),
            runtime: tokio::runtime::Handle::try_current().ok(),
            task: OnceLock::new(),
        }
    }
}

impl RedisStore {
    pub(super) async fn notices_publish(&self, rooms: Vec<RoomNotice>) -> Result<(), StoreError> {
        // Room names never hold '\n' (see `valid_room`); one that did would
        // be split apart by receivers of the older form, so it is left out.
        let mut rooms: Vec<RoomNotice> = rooms
            .into_iter()
            .filter(|r| {
                let sendable = !r.is_all_rooms() && !r.room.contains('\n');
                if !sendable {
                    tracing::warn!(room = %r.room.escape_debug(), "not notifying an unsendable room name");
                }
                sendable
            })
            .collect();
        if rooms.is_empty() || self.notice_fault.drops_next() {
            return Ok(());
        }
        notice::bound(&mut rooms, self.config.notice_max_bytes);
        ::redis::cmd("PUBLISH")
            .arg(UPDATED_CHANNEL)
            .arg(notice::encode(&rooms))
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }
}
