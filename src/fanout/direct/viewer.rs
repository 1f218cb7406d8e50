//! One directly written viewer: the state both writers keep under its lock
//! (see the module invariant in `super`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::socket::SharedSocket;
use crate::fanout::deflate::{WsDeflate, WsEncoding};

pub struct DirectViewer {
    pub socket: Arc<SharedSocket>,
    /// The viewer negotiated permessage-deflate: both writers send it each
    /// frame's shared compressed bytes (`Encoded::ws_frame_for`).
    pub deflate: Option<WsDeflate>,
    pub(super) state: Mutex<DirectState>,
    pub(super) attached: AtomicBool,
    /// Woken when the hub attaches or detaches this viewer.
    pub changed: Notify,
}

/// What the viewer has been sent, whoever sent it.
pub struct DirectState {
    pub epoch: Arc<str>,
    pub cursor: u64,
    /// `Frame::no` of the last broadcast frame taken (sent or skipped).
    pub frame_no: u64,
    pub(super) attached: bool,
    /// Asked the hub to take over; withdrawn on close.
    pub(super) wants: bool,
    pub(super) closed: bool,
    /// Why the hub last handed the viewer back.
    pub(super) detached: Option<Detach>,
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
    /// Bytes written (or queued) by encoding, in the order of `WsEncoding::ALL`.
    pub bytes: [u64; 2],
}

impl DirectStats {
    pub fn count_bytes(&mut self, encoding: WsEncoding, n: usize) {
        self.bytes[encoding as usize] += n as u64;
    }

    /// Adds another shard's figures for the same frame.
    pub fn add(&mut self, other: &DirectStats) {
        self.written += other.written;
        self.queued += other.queued;
        self.messages += other.messages;
        for (a, b) in self.detached.iter_mut().zip(other.detached) {
            *a += b;
        }
        for (a, b) in self.bytes.iter_mut().zip(other.bytes) {
            *a += b;
        }
    }
}

impl DirectViewer {
    pub fn new(
        socket: Arc<SharedSocket>,
        deflate: Option<WsDeflate>,
        epoch: Arc<str>,
        cursor: u64,
        frame_no: u64,
    ) -> Self {
        DirectViewer {
            socket,
            deflate,
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
}
