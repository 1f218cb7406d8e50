//! A client socket that two writers share in order: the connection's own
//! stack (hyper, then tungstenite once upgraded) and a room's hub, which
//! writes each pre-encoded frame to its WebSocket viewers itself (one
//! `write(2)` per viewer, no per-viewer task woken; BENCHMARKS.md).
//!
//! Order is kept with a small backlog: what a non-blocking write could not
//! take waits there, and every later write goes behind it. Once a socket may
//! take hub writes (`enable_pushes`), a write through the stack is taken
//! whole or not at all, so a hub frame can never land inside another frame.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::inflate::ClientInflate;

pub struct SharedSocket {
    stream: TcpStream,
    backlog: Mutex<Vec<u8>>,
    /// Most bytes the backlog holds before a push is refused (`Full`).
    backlog_limit: usize,
    pushes: AtomicBool,
    /// Bytes written out of the backlog so far (a flush's progress).
    backlog_written: AtomicU64,
    /// Woken when a push leaves bytes in the backlog: the connection's task
    /// flushes them (see [`SharedSocket::flush_backlog`]).
    pub backlog_waiting: Notify,
    /// Set (to a message's byte limit) once the connection negotiated
    /// permessage-deflate: the stack's reads go through a [`ClientInflate`].
    inflate_limit: AtomicUsize,
}

/// What became of a pushed frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    /// On the wire (in the kernel's buffer).
    Written,
    /// Behind earlier bytes in the backlog; the connection's task flushes it.
    Queued,
    /// The backlog is at its limit: the frame was not taken.
    Full,
    /// The connection is broken.
    Closed,
}

impl SharedSocket {
    pub fn new(stream: TcpStream, backlog_limit: usize) -> Arc<Self> {
        Arc::new(SharedSocket {
            stream,
            backlog: Mutex::new(Vec::new()),
            backlog_limit,
            pushes: AtomicBool::new(false),
            backlog_written: AtomicU64::new(0),
            backlog_waiting: Notify::new(),
            inflate_limit: AtomicUsize::new(0),
        })
    }

    /// The connection negotiated permessage-deflate: from the next read on,
    /// compressed client messages reach the stack inflated (at most `limit`
    /// bytes each). Called before the upgrade's answer is written, so the
    /// first byte read after it is a frame's first.
    pub fn inflate_client_messages(&self, limit: usize) {
        self.inflate_limit.store(limit.max(1), Ordering::Release);
    }

    /// Bytes written out of the backlog so far.
    pub fn backlog_written(&self) -> u64 {
        self.backlog_written.load(Ordering::Relaxed)
    }

    /// Ends both directions now (writers still holding the socket get errors).
    pub fn shutdown(&self) {
        use std::os::fd::AsRawFd;
        // SAFETY: shutdown(2) on a descriptor this socket owns.
        unsafe { libc::shutdown(self.stream.as_raw_fd(), libc::SHUT_RDWR) };
    }

    /// From now on frames may be pushed, and stack writes are taken whole.
    pub fn enable_pushes(&self) {
        self.pushes.store(true, Ordering::Release);
    }

    pub fn backlog_len(&self) -> usize {
        self.backlog.lock().len()
    }

    /// Writes one whole frame now, or queues it behind the backlog. Never
    /// blocks; never splits the frame from the bytes around it.
    pub fn push(&self, frame: &[u8]) -> Push {
        let mut backlog = self.backlog.lock();
        if !backlog.is_empty() {
            if let Err(e) = self.write_backlog(&mut backlog) {
                return broken(e);
            }
        }
        if !backlog.is_empty() {
            if backlog.len() + frame.len() > self.backlog_limit {
                return Push::Full;
            }
            backlog.extend_from_slice(frame);
            return Push::Queued;
        }
        let written = match self.stream.try_write(frame) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return broken(e),
        };
        if written == frame.len() {
            return Push::Written;
        }
        backlog.extend_from_slice(&frame[written..]);
        drop(backlog);
        self.backlog_waiting.notify_one();
        Push::Queued
    }

    /// Writes the backlog until it is empty (waiting for the socket as needed).
    pub async fn flush_backlog(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush_backlog(cx)).await
    }

    fn poll_flush_backlog(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            {
                let mut backlog = self.backlog.lock();
                self.write_backlog(&mut backlog)?;
                if backlog.is_empty() {
                    return Poll::Ready(Ok(()));
                }
            }
            ready!(self.stream.poll_write_ready(cx))?;
        }
    }

    /// Writes what the socket takes of the backlog without waiting.
    fn write_backlog(&self, backlog: &mut Vec<u8>) -> io::Result<()> {
        while !backlog.is_empty() {
            match self.stream.try_write(backlog) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    backlog.drain(..n);
                    self.backlog_written.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        if backlog.capacity() > 16 << 10 {
            // A burst is over: an idle connection keeps no big buffer.
            *backlog = Vec::new();
        }
        Ok(())
    }

    /// A write from the connection's stack (`bufs` in order).
    fn poll_write_parts(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        loop {
            let mut backlog = self.backlog.lock();
            self.write_backlog(&mut backlog)?;
            let whole = self.pushes.load(Ordering::Acquire);
            if backlog.is_empty() {
                let n = match self.stream.try_write_vectored(bufs) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) => return Poll::Ready(Err(e)),
                };
                if n == total || (n > 0 && !whole) {
                    return Poll::Ready(Ok(n));
                }
                if whole {
                    // Keep the rest here: a push must not come between.
                    append_from(&mut backlog, bufs, n);
                    return Poll::Ready(Ok(total));
                }
            } else if whole && backlog.len() + total <= self.backlog_limit {
                append_from(&mut backlog, bufs, 0);
                return Poll::Ready(Ok(total));
            }
            drop(backlog);
            ready!(self.stream.poll_write_ready(cx))?;
        }
    }
}

fn broken(e: io::Error) -> Push {
    tracing::debug!(error = %e, "push to a broken socket");
    Push::Closed
}

/// Appends `bufs` from byte `skip` on.
fn append_from(backlog: &mut Vec<u8>, bufs: &[io::IoSlice<'_>], mut skip: usize) {
    for b in bufs {
        if skip >= b.len() {
            skip -= b.len();
            continue;
        }
        backlog.extend_from_slice(&b[skip..]);
        skip = 0;
    }
}

/// The connection stack's handle on a [`SharedSocket`].
pub struct StackIo {
    socket: Arc<SharedSocket>,
    /// The read path's rewriting of compressed client messages, made at the
    /// first read after [`SharedSocket::inflate_client_messages`].
    inflate: Option<Box<ClientInflate>>,
}

impl StackIo {
    pub fn new(socket: Arc<SharedSocket>) -> Self {
        StackIo {
            socket,
            inflate: None,
        }
    }

    /// A read through the [`ClientInflate`]: what it has ready, else what
    /// the socket gives, rewritten.
    fn poll_read_inflated(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let inflate = self.inflate.as_mut().expect("inflating");
        loop {
            let ready = inflate.pending();
            if !ready.is_empty() || buf.remaining() == 0 {
                let n = ready.len().min(buf.remaining());
                buf.put_slice(&ready[..n]);
                inflate.consume(n);
                return Poll::Ready(Ok(()));
            }
            ready!(self.socket.stream.poll_read_ready(cx))?;
            // Client messages are small and rare: a stack buffer will do.
            let mut raw = [0u8; 2048];
            match self.socket.stream.try_read(&mut raw) {
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(n) => inflate.feed(&raw[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncRead for StackIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.inflate.is_none() {
            let limit = this.socket.inflate_limit.load(Ordering::Acquire);
            if limit > 0 {
                this.inflate = Some(Box::new(ClientInflate::new(limit)));
            }
        }
        if this.inflate.is_some() {
            return this.poll_read_inflated(cx, buf);
        }
        loop {
            ready!(this.socket.stream.poll_read_ready(cx))?;
            // SAFETY: as tokio's own TcpStream does: read(2) only writes into
            // the buffer, and only the `n` bytes it wrote are marked filled.
            // (Zero-filling hyper's whole read buffer on every read is what
            // this avoids.)
            let unfilled = unsafe {
                &mut *(buf.unfilled_mut() as *mut [std::mem::MaybeUninit<u8>] as *mut [u8])
            };
            match this.socket.stream.try_read(unfilled) {
                Ok(n) => {
                    // SAFETY: the kernel initialised these `n` bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for StackIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.socket.poll_write_parts(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.socket.poll_write_parts(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.socket.poll_flush_backlog(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.socket.poll_flush_backlog(cx))?;
        use std::os::fd::AsRawFd;
        // SAFETY: shutdown(2) on a descriptor this socket owns.
        if unsafe { libc::shutdown(self.socket.stream.as_raw_fd(), libc::SHUT_WR) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::NotConnected {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair(limit: usize) -> (Arc<SharedSocket>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, client) = tokio::join!(listener.accept(), client);
        (
            SharedSocket::new(accepted.unwrap().0, limit),
            client.unwrap(),
        )
    }

    #[tokio::test]
    async fn pushes_and_stack_writes_arrive_whole_and_in_order() {
        let (socket, mut client) = pair(1 << 20).await;
        socket.enable_pushes();
        let mut stack = StackIo::new(socket.clone());
        // Fill the kernel's buffers so later writes queue in the backlog.
        let big = vec![b'a'; 4 << 20];
        let mut pushed = 0usize;
        while socket.push(&big[..64 << 10]) == Push::Written {
            pushed += 64 << 10;
        }
        pushed += 64 << 10; // the one that queued (whole or in part)
        stack.write_all(b"STACK").await.unwrap();
        assert_eq!(socket.push(b"PUSH"), Push::Queued);
        assert_eq!(
            socket.push(&big),
            Push::Full,
            "over the limit: refused whole"
        );
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        stack.shutdown().await.unwrap();
        let all = reader.await.unwrap();
        assert_eq!(all.len(), pushed + 5 + 4);
        assert!(all[..pushed].iter().all(|&b| b == b'a'));
        assert_eq!(&all[pushed..], b"STACKPUSH");
    }
}
