//! A room's hub on this node: where the room's stream stands, its cache of
//! recent frames, and what viewers take from it (subscriptions, long-poll
//! waiters, cache reads). The hub task's work is in `tick.rs` and
//! `broadcast.rs`; starting and stopping hubs in `registry.rs`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{broadcast, watch};

use super::cache::{retract_cached, CachedFrames, SharedAnswer};
use super::carried::Carried;
use super::combo::Combiner;
use super::direct::{DirectList, DirectViewer};
use super::online::OnlineAnnounced;
use super::Frame;
use crate::message::StoredMessage;
use crate::presence::{Counted, RoomPresence, Viewer};

pub struct Hub {
    pub room: String,
    pub(super) tx: broadcast::Sender<Arc<Frame>>,
    /// `to` of the last broadcast frame, for long-poll waiters.
    pub(super) cursor_tx: watch::Sender<u64>,
    pub(super) position: Mutex<Position>,
    /// Viewers here and over the cluster; the room's size class (big rooms:
    /// viewers read this node's cache, not the store).
    pub(super) presence: RoomPresence,
    /// Per-viewer budget (messages/s) the last tick rationed with.
    pub(super) budget_per_s: AtomicU32,
    /// A notice arrived since the last read that the hub cannot take from:
    /// read the store.
    pub(super) dirty: AtomicBool,
    /// Messages notices brought, not broadcast yet (see `carried`).
    pub(super) carried: Mutex<Carried>,
    /// Gifts held for a combo (only the hub task uses it).
    pub(super) combos: Mutex<Combiner>,
    /// WebSocket viewers the hub writes to itself (see `direct`).
    pub(super) direct: Mutex<DirectList>,
    /// Retracted ids the next tick announces (`retract_waiting`: any).
    pub(super) retract_pending: Mutex<Vec<String>>,
    pub(super) retract_waiting: AtomicBool,
    /// The online count last announced to the viewers (only the hub task uses it).
    pub(super) online_announced: Mutex<OnlineAnnounced>,
    /// The long-poll answer that is the newest frame, shared (big rooms).
    newest_answer: Mutex<Option<Arc<SharedAnswer>>>,
}

/// Where the room's stream stands for this hub. Only the hub task moves it.
pub(super) struct Position {
    pub epoch: Arc<str>,
    /// Highest seq taken from the store.
    pub read_cursor: u64,
    /// `to` of the last broadcast frame: where a new subscriber joins.
    pub sent_cursor: u64,
    /// Seqs the rationer still holds (delayed high, low awaiting rollover).
    pub undecided: Arc<[u64]>,
    /// Recent frames, oldest first: the local cache big rooms are served from.
    pub recent: VecDeque<Arc<Frame>>,
    pub recent_messages: usize,
    /// `Frame::no` of the last frame broadcast (0: none yet).
    pub last_frame_no: u64,
    pub stopped: bool,
}

impl Position {
    /// Starts over on a new stream (the store lost the old one).
    pub fn reset(&mut self, epoch: &str) {
        self.epoch = Arc::from(epoch);
        self.read_cursor = 0;
        self.sent_cursor = 0;
        self.undecided = Arc::from([]);
        self.recent.clear();
        self.recent_messages = 0;
    }

    /// Takes retracted messages out of the local cache.
    pub fn retract_cached(&mut self, room: &str, ids: &[String]) {
        let removed = retract_cached(&mut self.recent, room, ids);
        self.recent_messages = self.recent_messages.saturating_sub(removed);
    }

    /// Keeps `frame` in the local cache, dropping the oldest frames past
    /// `limit` messages (the newest frame always stays).
    pub fn keep_recent(&mut self, frame: Arc<Frame>, limit: usize) {
        self.recent_messages += frame.messages.len();
        self.recent.push_back(frame);
        while self.recent.len() > 1 && self.recent_messages > limit {
            if let Some(old) = self.recent.pop_front() {
                self.recent_messages -= old.messages.len();
            }
        }
    }
}

/// A stream subscription: frames after `cursor` arrive on `frames`.
pub struct Subscription {
    pub frames: broadcast::Receiver<Arc<Frame>>,
    pub epoch: Arc<str>,
    pub cursor: u64,
    /// Seqs at or below `cursor` that the hub will still deliver itself.
    pub undecided: Arc<[u64]>,
    /// `Frame::no` of the last frame broadcast before this subscription.
    pub frame_no: u64,
    _guard: CountGuard,
}

/// Counts a stream viewer in the room's online figure while alive.
pub struct StreamGuard(#[allow(dead_code)] CountGuard);

/// A long-poll waiter: wakes when the hub broadcasts past `cursor`.
pub struct PollWaiter {
    pub changed: watch::Receiver<u64>,
    pub epoch: Arc<str>,
    pub cursor: u64,
    _guard: CountGuard,
}

impl PollWaiter {
    pub fn hub(&self) -> &Arc<Hub> {
        &self._guard.hub
    }
}

/// What the local cache holds after a cursor.
pub struct CacheRead {
    pub epoch: Arc<str>,
    /// Where the reader stands after taking `messages`.
    pub cursor: u64,
    pub messages: Vec<StoredMessage>,
    /// The reader's cursor is older than the cache: something in between is not here.
    pub gap: bool,
    /// When the answer is exactly one broadcast frame, its pre-encoded bytes.
    pub single: Option<Arc<Frame>>,
}

/// Counts one viewer in its hub's presence while alive (and keeps the hub).
struct CountGuard {
    hub: Arc<Hub>,
    viewer: Viewer,
}

impl CountGuard {
    fn join(hub: &Arc<Hub>, viewer: Viewer) -> CountGuard {
        hub.presence.join(viewer);
        CountGuard {
            hub: hub.clone(),
            viewer,
        }
    }
}

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.hub.presence.leave(self.viewer);
    }
}

impl Counted for Hub {
    fn room(&self) -> &str {
        &self.room
    }

    fn presence(&self) -> &RoomPresence {
        &self.presence
    }
}

impl Hub {
    /// `carried`: most messages from notices held while a hole waits.
    pub(super) fn new(room: &str, epoch: &str, cursor: u64, ring: usize, carried: usize) -> Hub {
        Hub {
            room: room.to_string(),
            tx: broadcast::channel(ring.max(1)).0,
            cursor_tx: watch::channel(cursor).0,
            position: Mutex::new(Position {
                epoch: Arc::from(epoch),
                read_cursor: cursor,
                sent_cursor: cursor,
                undecided: Arc::from([]),
                recent: VecDeque::new(),
                recent_messages: 0,
                last_frame_no: 0,
                stopped: false,
            }),
            presence: RoomPresence::default(),
            budget_per_s: AtomicU32::new(0),
            dirty: AtomicBool::new(true),
            carried: Mutex::new(Carried::new(epoch, carried)),
            combos: Mutex::new(Combiner::default()),
            direct: Mutex::new(DirectList::default()),
            retract_pending: Mutex::new(Vec::new()),
            retract_waiting: AtomicBool::new(false),
            online_announced: Mutex::new(OnlineAnnounced::default()),
            newest_answer: Mutex::new(None),
        }
    }

    /// Retracts `ids` on this hub: cache reads omit them from now on, and
    /// the hub's next tick sends the viewers a retract frame (the hub task
    /// alone publishes, so the frame takes its place among the batches).
    pub fn retract(&self, ids: &[String]) {
        self.position.lock().retract_cached(&self.room, ids);
        self.retract_pending.lock().extend_from_slice(ids);
        self.retract_waiting.store(true, Ordering::Release);
    }

    /// Asks the hub to write to `viewer` itself from the next frame on that
    /// the viewer is in step with (see `direct`).
    pub fn request_direct(&self, viewer: Arc<DirectViewer>) {
        if viewer.mark_wanting() {
            self.direct.lock().request(viewer);
        }
    }

    /// A viewer's task took it back from the hub.
    pub fn direct_left(&self) {
        self.direct.lock().note_gone();
    }

    /// Counts one more stream viewer (a directly written one holds this
    /// instead of a subscription).
    pub fn stream_guard(self: &Arc<Self>) -> StreamGuard {
        StreamGuard(CountGuard::join(self, Viewer::Stream))
    }

    /// Viewers of this room on this node (streams and held polls).
    pub fn online(&self) -> usize {
        self.presence.online()
    }

    /// Viewers over all fronts, as last exchanged (at least this node's).
    pub fn cluster_online(&self) -> usize {
        self.presence.cluster_online()
    }

    pub fn is_big(&self) -> bool {
        self.presence.is_big()
    }

    /// The newest frame's fan-out is less than half done.
    pub(super) fn fanout_behind(&self) -> bool {
        self.position
            .lock()
            .recent
            .back()
            .is_some_and(|f| f.fanout_behind())
    }

    /// Subscribes at the current position; `None` if the hub has stopped.
    pub fn subscribe(self: &Arc<Self>) -> Option<Subscription> {
        let pos = self.position.lock();
        if pos.stopped {
            return None;
        }
        Some(Subscription {
            _guard: CountGuard::join(self, Viewer::Stream),
            frames: self.tx.subscribe(),
            epoch: pos.epoch.clone(),
            cursor: pos.sent_cursor,
            undecided: pos.undecided.clone(),
            frame_no: pos.last_frame_no,
        })
    }

    pub fn poll_waiter(self: &Arc<Self>) -> Option<PollWaiter> {
        let pos = self.position.lock();
        if pos.stopped {
            return None;
        }
        Some(PollWaiter {
            _guard: CountGuard::join(self, Viewer::Poll),
            changed: self.cursor_tx.subscribe(),
            epoch: pos.epoch.clone(),
            cursor: pos.sent_cursor,
        })
    }

    /// The cached frames after `after` (whole frames, at most `limit`
    /// messages unless one frame alone is bigger), shared: nothing is copied.
    pub fn cached_frames_after(&self, after: u64, limit: usize) -> CachedFrames {
        let pos = self.position.lock();
        CachedFrames::after(
            &pos.recent,
            pos.epoch.clone(),
            pos.sent_cursor,
            after,
            limit,
        )
    }

    /// The long-poll answer that is exactly `frame` (the newest cached one)
    /// with the room's online count now: made once per (frame, count) and
    /// shared with every poll that gets the same.
    pub fn newest_answer(&self, frame: &Arc<Frame>) -> Arc<SharedAnswer> {
        let online = self.cluster_online();
        let mut newest = self.newest_answer.lock();
        match &*newest {
            Some(answer) if answer.is_for(frame, online) => answer.clone(),
            _ => {
                let answer = Arc::new(SharedAnswer::new(frame, online));
                *newest = Some(answer.clone());
                answer
            }
        }
    }

    /// `cached_frames_after` with the messages copied out, for callers that
    /// need them owned (none when one whole frame answers: `single`).
    pub fn cached_after(&self, after: u64, limit: usize) -> CacheRead {
        let frames = self.cached_frames_after(after, limit);
        let single = frames.single().cloned();
        let messages = match single {
            Some(_) => Vec::new(),
            None => frames.messages().cloned().collect(),
        };
        CacheRead {
            cursor: frames.cursor,
            gap: frames.gap,
            epoch: frames.epoch,
            messages,
            single,
        }
    }

    /// Stops the hub if nobody uses it (checked under the position lock, so a
    /// concurrent subscribe either sees `stopped` or keeps the hub alive).
    pub(super) fn try_stop(&self) -> bool {
        let mut pos = self.position.lock();
        if self.online() == 0 && self.tx.receiver_count() == 0 {
            pos.stopped = true;
            true
        } else {
            false
        }
    }

    /// Where the next store read starts.
    pub(super) fn read_position(&self) -> (Arc<str>, u64) {
        let pos = self.position.lock();
        (pos.epoch.clone(), pos.read_cursor)
    }

    pub(super) fn budget_per_s(&self) -> u32 {
        self.budget_per_s.load(Ordering::Relaxed)
    }
}
