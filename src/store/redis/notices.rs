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
//!
//! Under Sentinel the task subscribes through the primary of the moment and
//! moves as soon as the store switches to another one: the old primary may
//! still be alive (demoted, or cut off from the sentinels), and a
//! subscription left there would hear nothing the new one publishes
//! (`docs/architecture.md`, "Failover").

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ::redis::aio::{PubSubSink, PubSubStream};
use ::redis::{Client, RedisError};
use futures_util::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use super::control::CONTROL_CHANNEL;
use super::sentinel::Primary;
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

/// Where the subscriber subscribes. (An enum, not a "which client now"
/// closure: under Sentinel the subscriber must also learn *when* to move,
/// while its subscription on the old primary still looks healthy.)
pub(super) enum NoticeSource {
    /// These nodes, in turn (one for a single Redis; a Cluster's listed
    /// nodes): the next one after a subscription is lost or cannot be made.
    Nodes(Vec<Client>),
    /// The Sentinel primary of the moment: a switch ends the subscription
    /// and the next one is made through the new primary.
    Primary(Arc<Primary>),
}

impl NoticeSource {
    /// The client for attempt number `turn`, and under Sentinel a receiver
    /// that changes when the primary does (taken before the client is read,
    /// so a switch in between is seen, not missed).
    fn pick(&self, turn: usize) -> Option<(Client, Option<watch::Receiver<u64>>)> {
        match self {
            NoticeSource::Nodes(nodes) => {
                let client = nodes.get(turn % nodes.len().max(1))?;
                Some((client.clone(), None))
            }
            NoticeSource::Primary(primary) => {
                let switches = primary.switches();
                Some((primary.client(), Some(switches)))
            }
        }
    }
}

/// Resolves when the primary switches (never without a primary to follow,
/// or once the store that announces switches is gone).
async fn switched(switches: &mut Option<watch::Receiver<u64>>) {
    if let Some(rx) = switches {
        if rx.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

/// Why a subscription ended.
#[derive(Debug)]
enum Ended {
    /// The connection failed (closed, or a ping unanswered).
    Lost(String),
    /// The store switched to another primary.
    Moved,
}

/// The receiving side of notices, shared by the clones of one store. The
/// subscriber task is spawned on the first `updates()` call and aborted when
/// the last clone of the store is dropped.
pub(super) struct Notices {
    tx: broadcast::Sender<Arc<RoomNotice>>,
    control_tx: broadcast::Sender<Arc<VersionedNotice>>,
    /// Where to subscribe.
    source: Arc<NoticeSource>,
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
                                self.source.clone(),
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
/// each time through the next node of `source` (round robin), and at once
/// through the new primary when a Sentinel primary switches.
/// `live` holds while subscribed; each new subscription sends [`ALL_ROOMS`]
/// (what was published before it is lost). Runs until aborted.
async fn listen(source: Arc<NoticeSource>, tx: Senders, live: Arc<AtomicBool>) {
    let mut delay = NOTICE_MIN_BACKOFF;
    let mut failures: u32 = 0;
    let mut ever_subscribed = false;
    let mut turn: usize = 0;
    loop {
        let Some((client, mut switches)) = source.pick(turn) else {
            tracing::error!("no redis node to subscribe to notices through");
            return;
        };
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
                // on is missed; what came before (while down, before the
                // first subscription, or on the old primary) may have been.
                let _ = tx.updated.send(Arc::new(RoomNotice::name_only(ALL_ROOMS)));
                ever_subscribed = true;
                failures = 0;
                let since = Instant::now();
                let ended = pump_updates(sink, stream, &tx, &mut switches).await;
                live.store(false, Ordering::Release);
                match ended {
                    Ended::Moved => {
                        tracing::info!(
                            channel = UPDATED_CHANNEL,
                            old = %node,
                            "redis primary switched; moving the notice subscription to it"
                        );
                        delay = NOTICE_MIN_BACKOFF;
                        continue;
                    }
                    Ended::Lost(reason) => tracing::warn!(
                        channel = UPDATED_CHANNEL,
                        %node,
                        %reason,
                        "redis notice subscription lost; reconnecting"
                    ),
                }
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
        // A switch cuts the wait short: the new primary is worth trying now.
        tokio::select! {
            _ = tokio::time::sleep(delay) => delay = (delay * 2).min(NOTICE_MAX_BACKOFF),
            _ = switched(&mut switches) => delay = NOTICE_MIN_BACKOFF,
        }
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

/// Forwards notices until the connection is lost (and why) or the primary
/// switches.
async fn pump_updates(
    mut sink: PubSubSink,
    mut stream: PubSubStream,
    tx: &Senders,
    switches: &mut Option<watch::Receiver<u64>>,
) -> Ended {
    let mut health =
        tokio::time::interval_at(Instant::now() + NOTICE_PING_EVERY, NOTICE_PING_EVERY);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return Ended::Lost("connection closed".to_string());
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
                    Ok(Err(e)) => return Ended::Lost(format!("ping failed: {e}")),
                    Err(_) => return Ended::Lost(format!("no ping answer within {NOTICE_TIMEOUT:?}")),
                }
            }
            // The old primary may still answer (demoted, or cut off from the
            // sentinels): its subscription would stay open and hear nothing
            // published on the new one.
            _ = switched(switches) => return Ended::Moved,
        }
    }
}

impl Notices {
    pub(super) fn new(source: NoticeSource) -> Self {
        Notices {
            tx: broadcast::channel(UPDATES_CAPACITY).0,
            control_tx: broadcast::channel(UPDATES_CAPACITY).0,
            source: Arc::new(source),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_nodes_are_tried_in_turn_and_never_move() {
        let nodes: Vec<Client> = ["redis://127.0.0.1:1", "redis://127.0.0.1:2"]
            .iter()
            .map(|u| Client::open(*u).unwrap())
            .collect();
        let source = NoticeSource::Nodes(nodes);
        let table = [(0, "127.0.0.1:1"), (1, "127.0.0.1:2"), (2, "127.0.0.1:1")];
        for (turn, want) in table {
            let (client, switches) = source.pick(turn).expect("a node");
            assert_eq!(client.get_connection_info().addr().to_string(), want);
            assert!(switches.is_none(), "fixed nodes never switch");
        }
        assert!(NoticeSource::Nodes(Vec::new()).pick(0).is_none());
    }

    #[test]
    fn a_switch_ends_the_wait_and_nothing_else_does() {
        use futures_util::FutureExt;
        // No primary to follow: never.
        assert!(switched(&mut None).now_or_never().is_none());
        let announce = watch::Sender::new(0u64);
        let mut switches = Some(announce.subscribe());
        assert!(switched(&mut switches).now_or_never().is_none());
        announce.send_modify(|n| *n += 1);
        assert!(switched(&mut switches).now_or_never().is_some());
        // Seen once: the next wait is for the next switch.
        assert!(switched(&mut switches).now_or_never().is_none());
        // The store gone: no switch will come, and none is made up.
        drop(announce);
        assert!(switched(&mut switches).now_or_never().is_none());
    }
}
