//! Live store port (`docs/architecture.md`, "Live store"): per-room,
//! per-bucket sequenced buffers.
//!
//! The trait is async, batched and fallible so a Redis engine (sorted sets,
//! one Lua script per append) fits behind it unchanged.

pub mod control;
pub mod memory;
pub mod notice;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;

use crate::message::{Message, StoredMessage};
pub use notice::{RoomNotice, StoredBatch};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// The store health gate's state (Redis engine, `store/redis/health.rs`),
/// for the metrics: whether calls fail at once now, and how often the store
/// has been found unreachable since this process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreHealth {
    pub unreachable: bool,
    pub trips: u64,
}

/// The current end of a room's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamHead {
    /// Random id of this incarnation of the stream; changes if the store lost it.
    pub epoch: String,
    /// Highest sequence assigned so far (0 = none yet).
    pub seq: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    Stored {
        seq: u64,
    },
    /// The message id was already stored (a redelivery); nothing was written.
    Duplicate {
        seq: u64,
    },
}

/// What [`LiveStore::append_in_epoch`] did with a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The epoch of the stream the batch went into (a notice carrying the
    /// batch names it, so fronts never mix two streams' seqs).
    pub epoch: String,
    /// One per message, in batch order.
    pub outcomes: Vec<AppendOutcome>,
}

/// Messages of one room after a cursor, merged over buckets in seq order.
#[derive(Clone, Debug)]
pub struct StreamRead {
    pub epoch: String,
    pub head: u64,
    pub messages: Vec<StoredMessage>,
    /// Where a reader stands after taking `messages`: the last seq returned if
    /// the read was cut by its limit, otherwise `min(head, until)`.
    pub cursor: u64,
    /// Messages after the requested cursor were already trimmed away.
    pub gap: bool,
}

/// A message taken out of a room's stream by [`LiveStore::retract`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retraction {
    pub seq: u64,
    /// The message as it was stored; `None` if it had left its bucket
    /// already (trimmed, or retracted before).
    pub message: Option<StoredMessage>,
}

/// How many retractions a room's record keeps (the newest).
pub const RETRACTIONS_KEPT: usize = 1000;

/// Result of claiming an idempotency / dedup key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key was free and now holds the given value.
    Won,
    /// The key is already held; its current value.
    Held(String),
}

#[async_trait]
pub trait LiveStore: Send + Sync + 'static {
    /// Appends a batch of messages of one room. Each gets the next sequence,
    /// atomically; a message id already stored is not stored again. Also
    /// answers the epoch of the stream written, read in the same atomic step.
    async fn append_in_epoch(
        &self,
        room: &str,
        batch: Vec<Message>,
    ) -> Result<Appended, StoreError>;

    /// [`LiveStore::append_in_epoch`] without the epoch.
    async fn append(
        &self,
        room: &str,
        batch: Vec<Message>,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        Ok(self.append_in_epoch(room, batch).await?.outcomes)
    }

    /// The stream head; creates the stream (and its epoch) if it does not exist.
    async fn head(&self, room: &str) -> Result<StreamHead, StoreError>;

    /// Messages with `after < seq <= until`, at most `limit`, in seq order.
    async fn read_range(
        &self,
        room: &str,
        after: u64,
        until: u64,
        limit: usize,
    ) -> Result<StreamRead, StoreError>;

    /// Takes message `id` out of `room`'s stream (a moderator's retraction):
    /// every later read omits it, while a cursor still passes its seq (a
    /// removed message is not a trimmed one: no `gap`). The retraction is
    /// recorded (seq → id, the newest [`RETRACTIONS_KEPT`]), and the id stays
    /// known, so a redelivery is a duplicate, never stored again. The id is
    /// looked up among the room's recent ids (the `dedup_window`): `None` if
    /// it is not there, and then nothing changed. Retracting an id again
    /// answers its seq again, without the message.
    async fn retract(&self, room: &str, id: &str) -> Result<Option<Retraction>, StoreError>;

    /// `SET key value NX EX ttl`: claims `key` unless held.
    async fn claim(&self, key: &str, value: &str, ttl: Duration) -> Result<Claim, StoreError>;

    /// The value of a claimed / set key, if present.
    async fn get_value(&self, key: &str) -> Result<Option<String>, StoreError>;

    /// Sets a key's value for `ttl` (whether claimed or not).
    async fn set_claim(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError>;

    /// Frees a claim (the claimed work failed and may be retried).
    async fn release(&self, key: &str) -> Result<(), StoreError>;

    /// Cheap liveness check for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The store's own clock (unix ms), the one clock every node can read,
    /// which [`crate::clock`] corrects this process's clock towards; `None`
    /// when the store is this process (embedded: its clock is ours).
    async fn clock_ms(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// Presence (`docs/architecture.md`, "Presence"): publishes this node's viewer count per room
    /// (kept `ttl`, so a dead node's counts expire) and returns the
    /// cluster-wide count of each room in `local` (sum over live nodes), in
    /// the same order.
    async fn exchange_presence(
        &self,
        node: &str,
        local: &[(String, u64)],
        ttl: Duration,
    ) -> Result<Vec<u64>, StoreError>;

    /// "Room updated" notice from a processor to every front, in one
    /// publish: per room, the batch just stored when it fits in
    /// `store.notice_max_bytes` (else the name only; see [`notice::bound`]).
    /// Hubs read on notices only (quiet rooms cost no reads), so an engine
    /// either delivers every notice while [`LiveStore::notices_live`]
    /// holds, or says it may have lost some (see [`LiveStore::updates`]).
    /// Under the test fault `store.fault_drop_notice_every` = n, every nth
    /// call publishes nothing.
    async fn notify(&self, rooms: Vec<RoomNotice>) -> Result<(), StoreError>;

    /// [`LiveStore::notify`] with room names only: fronts read the store.
    async fn notify_updated(&self, rooms: &[String]) -> Result<(), StoreError> {
        self.notify(rooms.iter().map(|r| RoomNotice::name_only(r)).collect())
            .await
    }

    /// Notices published by any processor, one per room, in publish order.
    /// [`ALL_ROOMS`] (an empty name) means notices may have been missed (the
    /// subscription was restored after a loss): any room may have changed.
    /// A receiver that lags behind gets `Lagged`, which means the same.
    fn updates(&self) -> tokio::sync::broadcast::Receiver<std::sync::Arc<RoomNotice>>;

    /// Whether notices reach this node now. While they do not (a lost
    /// subscription), hubs fall back to reading on a timer
    /// (`fanout.read_interval_ms`) so viewers still get news, late.
    fn notices_live(&self) -> bool {
        true
    }

    /// The health gate's state; an engine without one (the embedded store,
    /// which is this process) is never unreachable.
    fn health(&self) -> StoreHealth {
        StoreHealth::default()
    }
}

/// The notice meaning "any room may have changed" (see [`LiveStore::updates`]).
pub const ALL_ROOMS: &str = "";
