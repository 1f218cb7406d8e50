//! The hub's half of direct writes: which viewers it writes to, attaching
//! in-step requests right before a broadcast, and writing each frame's
//! shared bytes to them (see the module invariant in `super`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::shards::Members;
use super::socket::Push;
use super::viewer::{Detach, DirectStats, DirectViewer};
use crate::fanout::feed::late_only;
use crate::fanout::Frame;

impl DirectViewer {
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
        if *frame.epoch == *st.epoch && frame.to <= st.cursor && !late_only(frame, st.cursor) {
            st.frame_no = frame.no;
            return;
        }
        let outcome = if *frame.epoch != *st.epoch || frame.from != st.cursor {
            Err(Detach::OutOfStep)
        } else {
            let (bytes, encoding) = frame.full.ws_frame_for(self.deflate);
            match self.socket.push(bytes) {
                Push::Written => {
                    stats.written += 1;
                    stats.count_bytes(encoding, bytes.len());
                    Ok(())
                }
                Push::Queued => {
                    stats.queued += 1;
                    stats.count_bytes(encoding, bytes.len());
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
    /// `members` as of the last change, shared with the fan-out (and its shards).
    snapshot: Option<Members>,
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
    ) -> (Option<Members>, usize) {
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
        self.snapshot = (!self.members.is_empty()).then(|| Members {
            viewers: self.members.clone().into(),
            deflate: self.members.iter().find_map(|m| m.deflate),
        });
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
