//! Hub-written WebSocket viewers (BENCHMARKS.md, "direct writes").
//!
//! A viewer in step with its room (its cursor at the hub's, nothing queued)
//! leaves the broadcast ring: the hub writes each frame's shared WebSocket
//! bytes to its socket itself, one non-blocking write per viewer, and no task
//! is woken per viewer per frame. Anything else — a gap, an epoch change, a
//! socket that stops taking bytes — detaches the viewer, and its own task
//! carries on from its cursor through the ring and the store as before.
//!
//! Exactly-once across the hand-over rests on two numbers kept under the
//! viewer's lock by whoever writes: its cursor and the `no` of the last
//! broadcast frame it has taken. The hub attaches a viewer only just before
//! broadcasting a frame, and only if that viewer has taken every frame before
//! it; from then on the hub writes and the task drops what the ring brings.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::Frame;
pub mod socket;

use socket::{Push, SharedSocket};

pub struct DirectViewer {
    pub socket: Arc<SharedSocket>,
    state: Mutex<DirectState>,
    attached: AtomicBool,
    /// Woken when the hub attaches or detaches this viewer.
    pub changed: Notify,
}

/// What the viewer has been sent, whoever sent it.
pub struct DirectState {
    pub epoch: Arc<str>,
    pub cursor: u64,
    /// `Frame::no` of the last broadcast frame taken (sent or skipped).
    pub frame_no: u64,
    attached: bool,
    /// Asked the hub to take over; withdrawn on close.
    wants: bool,
    closed: bool,
    /// Why the hub last handed the viewer back.
    detached: Option<Detach>,
}

impl DirectState {
    pub fn attached(&self) -> bool {
        self.attached
    }

    pub fn detached(&self) -> Option<Detach> {
        self.detached
    }
}

/// Why the hub gave a viewer back to its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detach {
    /// The frame does not continue the viewer's stream (gap or new epoch).
    OutOfStep,
    /// The socket's backlog is full: the viewer reads too slowly.
    Backlog,
    Closed,
}

impl Detach {
    /// Every reason, in the order of `DirectStats::detached`.
    pub const ALL: [Detach; 3] = [Detach::OutOfStep, Detach::Backlog, Detach::Closed];

    pub fn label(self) -> &'static str {
        match self {
            Detach::OutOfStep => "out_of_step",
            Detach::Backlog => "backlog",
            Detach::Closed => "closed",
        }
    }
}

/// What one frame's direct fan-out did.
#[derive(Default, Debug)]
pub struct DirectStats {
    pub written: u64,
    pub queued: u64,
    pub messages: u64,
    pub detached: [u64; 3],
}

impl DirectViewer {
    pub fn new(socket: Arc<SharedSocket>, epoch: Arc<str>, cursor: u64, frame_no: u64) -> Self {
        DirectViewer {
            socket,
            state: Mutex::new(DirectState {
                epoch,
                cursor,
                frame_no,
                attached: false,
                wants: false,
                closed: false,
                detached: None,
            }),
            attached: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    /// The viewer's state, locked: its task sends and records under it.
    pub fn lock(&self) -> parking_lot::MutexGuard<'_, DirectState> {
        self.state.lock()
    }

    pub fn is_attached(&self) -> bool {
        self.attached.load(Ordering::Acquire)
    }

    /// Marks the request made; `false` if one is pending already.
    pub fn mark_wanting(&self) -> bool {
        let mut st = self.state.lock();
        if st.wants || st.attached || st.closed {
            return false;
        }
        st.wants = true;
        true
    }

    /// Forgets a request (made to a hub that has since been replaced).
    pub fn withdraw(&self) {
        self.state.lock().wants = false;
    }

    /// The task takes its viewer back (shutdown, connection end); `close`:
    /// for good. Returns whether the hub was writing to it until now.
    pub fn take_back(&self, close: bool) -> bool {
        let mut st = self.state.lock();
        let was = st.attached;
        st.attached = false;
        st.wants = false;
        st.closed |= close;
        self.attached.store(false, Ordering::Release);
        was
    }

    /// Attaches if the viewer has taken every frame before the one about to
    /// be broadcast (`next_from`, `last_no`); `None`: keep the request.
    fn try_attach(&self, epoch: &str, next_from: u64, last_no: u64) -> Option<bool> {
        let mut st = self.state.lock();
        if st.closed || !st.wants {
            return Some(false);
        }
        if st.frame_no != last_no || st.cursor != next_from || *st.epoch != *epoch {
            return None;
        }
        st.attached = true;
        st.wants = false;
        self.attached.store(true, Ordering::Release);
        drop(st);
        self.changed.notify_one();
        Some(true)
    }

    /// Writes `frame` if it continues the viewer's stream.
    fn deliver(&self, frame: &Frame, stats: &mut DirectStats) {
        let mut st = self.state.lock();
        if !st.attached {
            return;
        }
        let late_only = frame.from == st.cursor && frame.to == st.cursor;
        if *frame.epoch == *st.epoch && frame.to <= st.cursor && !late_only {
            st.frame_no = frame.no;
            return;
        }
        let outcome = if *frame.epoch != *st.epoch || frame.from != st.cursor {
            Err(Detach::OutOfStep)
        } else {
            match self.socket.push(&frame.full.ws_frame) {
                Push::Written => {
                    stats.written += 1;
                    Ok(())
                }
                Push::Queued => {
                    stats.queued += 1;
                    Ok(())
                }
                Push::Full => Err(Detach::Backlog),
                Push::Closed => Err(Detach::Closed),
            }
        };
        match outcome {
            Ok(()) => {
                st.cursor = frame.to;
                st.frame_no = frame.no;
                stats.messages += frame.full.count as u64;
            }
            Err(why) => {
                st.attached = false;
                st.detached = Some(why);
                self.attached.store(false, Ordering::Release);
                drop(st);
                stats.detached[why as usize] += 1;
                self.changed.notify_one();
            }
        }
    }
}

/// A hub's direct viewers and pending requests.
#[derive(Default)]
pub struct DirectList {
    members: Vec<Arc<DirectViewer>>,
    requests: Vec<Arc<DirectViewer>>,
    /// `members` as of the last change, shared with the fan-out loop.
    snapshot: Option<Arc<[Arc<DirectViewer>]>>,
    /// Set by a detach: members to drop on the next pass.
    gone: Arc<AtomicUsize>,
}

impl DirectList {
    pub fn request(&mut self, viewer: Arc<DirectViewer>) {
        self.requests.push(viewer);
    }

    /// Drops detached members; attaches the requests that are in step with
    /// the frame about to be broadcast (called under the hub's position lock,
    /// right before that broadcast). Returns the members to write it to, and
    /// how many of them joined now (they still hold a ring receiver that
    /// this broadcast counts, until their task lets it go).
    pub fn prepare(
        &mut self,
        epoch: &str,
        next_from: u64,
        last_no: u64,
    ) -> (Option<Arc<[Arc<DirectViewer>]>>, usize) {
        self.prune();
        let mut joined = 0;
        let members = &mut self.members;
        self.requests
            .retain(|r| match r.try_attach(epoch, next_from, last_no) {
                None => true,
                Some(attached) => {
                    if attached {
                        members.push(r.clone());
                        joined += 1;
                    }
                    false
                }
            });
        if joined > 0 {
            self.refresh_snapshot();
        }
        (self.snapshot.clone(), joined)
    }

    /// Drops members that are no longer attached (and closed requests).
    pub fn prune(&mut self) {
        if self.gone.swap(0, Ordering::AcqRel) == 0 {
            return;
        }
        let before = self.members.len();
        self.members.retain(|m| m.is_attached());
        self.requests.retain(|r| !r.lock().closed);
        if self.members.len() != before {
            self.refresh_snapshot();
        }
    }

    fn refresh_snapshot(&mut self) {
        self.snapshot = (!self.members.is_empty()).then(|| self.members.clone().into());
    }

    /// Counts a detach done outside the fan-out (the task took its viewer back).
    pub fn note_gone(&self) {
        self.gone.fetch_add(1, Ordering::AcqRel);
    }

    pub fn gone_counter(&self) -> Arc<AtomicUsize> {
        self.gone.clone()
    }
}

/// Writes `frame` to `members` in chunks, yielding between chunks so one
/// big room's fan-out does not hold the node's other work for a whole pass.
pub async fn fan_out(
    frame: &Frame,
    members: &[Arc<DirectViewer>],
    gone: &AtomicUsize,
) -> DirectStats {
    const CHUNK: usize = 256;
    let mut stats = DirectStats::default();
    for (i, chunk) in members.chunks(CHUNK).enumerate() {
        if i > 0 {
            tokio::task::yield_now().await;
        }
        for viewer in chunk {
            viewer.deliver(frame, &mut stats);
        }
    }
    let detached: u64 = stats.detached.iter().sum();
    if detached > 0 {
        gone.fetch_add(detached as usize, Ordering::AcqRel);
    }
    stats
}
