//! A connection's writer: drains the outbox with vectored writes, sends the
//! keep-alive pings, and gives up on a peer that stopped answering. And the
//! plain TCP socket it shares with the tasks that write through the outbox
//! ([`SharedSocket`]).

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::task::{Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use fastwebsockets::OpCode;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tracing::debug;

use super::Connection;
use crate::metrics::Metrics;
use crate::outbox::{self, MAX_IOVECS, Next, Outbox, Timing, WriteThrough};

/// One write of data frames in this many (the first of each connection
/// among them) is timed for `wsroom_delivery_duration_seconds` and
/// `wsroom_message_duration_seconds`.
const DELIVERY_SAMPLE: u32 = 8;

/// Writes until the outbox finishes (true: the peer is gone, false: our
/// close frame was written).
pub(super) async fn write_loop<W: AsyncWrite + Unpin>(write: &mut W, c: &Connection<'_>) -> bool {
    let interval = c.config.ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut batch: Vec<Bytes> = Vec::new();
    let mut sampled = 0;
    loop {
        tokio::select! {
            // In this order, without a random draw for each poll: the
            // ping's timer first, so a peer kept busy with frames still gets
            // its pings (and is checked for answers).
            biased;
            _ = ping.tick() => {
                let last_seen = Duration::from_millis(c.last_seen.load(Relaxed));
                if c.start.elapsed().saturating_sub(last_seen) > interval * 2 {
                    debug!("peer stopped answering pings");
                    c.outbox.abort();
                    return true;
                }
                c.outbox.push_control(outbox::encode(OpCode::Ping, b""));
            }
            (next, timing) = c.outbox.take_timed(&mut batch) => {
                if next == Next::Abort {
                    return true;
                }
                let bytes = batch.iter().map(Bytes::len).sum();
                // A peer that cannot take our bytes for as long as it may be
                // silent is as good as gone.
                // The timer is armed only for a write the socket did not
                // take at once (most are taken: no clock read, no timer).
                let wrote = {
                    let mut writing = std::pin::pin!(write_all(write, &mut batch));
                    match poll_once(writing.as_mut()).await {
                        Some(done) => Ok(done),
                        None => tokio::time::timeout(interval * 2, writing).await,
                    }
                };
                batch.clear();
                if !matches!(wrote, Ok(Ok(()))) {
                    c.outbox.abort();
                    return true;
                }
                record_write(c.metrics, bytes, timing, &mut sampled);
                if next == Next::Finish {
                    let _ = write.shutdown().await;
                    return false;
                }
            }
        }
    }
}

/// Counts a write of `bytes` for the metrics. The clock is read for one
/// write of data frames in [`DELIVERY_SAMPLE`] (counted by `sampled`): a
/// read per write (with shared atomics) cost 100 x 10 and rpc ~12% (a read
/// is ~28 ns on the VMs measured).
fn record_write(metrics: &Metrics, bytes: usize, timing: Timing, sampled: &mut u32) {
    let timed = timing.handed_over.is_some() && {
        *sampled = sampled.wrapping_add(1);
        *sampled % DELIVERY_SAMPLE == 1
    };
    let (delivery, since_read) = if timed {
        let now = Instant::now();
        let since = |at: Option<Instant>| at.map(|at| now.saturating_duration_since(at));
        (since(timing.handed_over), since(timing.read_at))
    } else {
        (None, None)
    };
    metrics.written(bytes, delivery, since_read);
}

/// A plain TCP connection's write half, shared by its writer task
/// ([`SharedWrite`]) and the tasks that write through its outbox. A room
/// that sends a client a message writes it to the socket itself when the
/// client's writer is idle: no wake-up of the connection's task (and of
/// its reader with it) for each message, only for what the socket did not
/// take at once.
pub(super) struct SharedSocket {
    half: OwnedWriteHalf,
    metrics: Arc<Metrics>,
    sampled: AtomicU32,
}

impl SharedSocket {
    pub(super) fn new(half: OwnedWriteHalf, metrics: Arc<Metrics>) -> SharedSocket {
        SharedSocket {
            half,
            metrics,
            sampled: AtomicU32::new(0),
        }
    }
}

impl WriteThrough for SharedSocket {
    fn try_write(&self, frames: &[IoSlice<'_>]) -> io::Result<usize> {
        self.half.try_write_vectored(frames)
    }

    fn written(&self, bytes: usize, timing: Timing) {
        // Writes through one socket come from its room's batches, one at a
        // time (the room's lock); were two to race, only which write is
        // timed would change.
        let mut sampled = self.sampled.load(Relaxed);
        record_write(&self.metrics, bytes, timing, &mut sampled);
        self.sampled.store(sampled, Relaxed);
    }
}

/// Lets the outbox's senders write to the socket for as long as it lives:
/// the socket closes when the connection's task ends, however it ends.
pub(super) struct WriteThroughGuard<'a>(&'a Outbox);

impl<'a> WriteThroughGuard<'a> {
    pub(super) fn new(outbox: &'a Outbox, socket: Arc<SharedSocket>) -> WriteThroughGuard<'a> {
        outbox.set_write_through(Some(socket));
        WriteThroughGuard(outbox)
    }
}

impl Drop for WriteThroughGuard<'_> {
    fn drop(&mut self) {
        self.0.set_write_through(None);
    }
}

/// The writer task's side of a [`SharedSocket`].
pub(super) struct SharedWrite(pub(super) Arc<SharedSocket>);

impl AsyncWrite for SharedWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let half = &self.0.half;
        loop {
            ready!(half.as_ref().poll_write_ready(cx))?;
            // A `WouldBlock` clears the readiness: the next poll waits.
            match half.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        let socket = socket2::SockRef::from(self.0.half.as_ref());
        Poll::Ready(socket.shutdown(std::net::Shutdown::Write))
    }
}

/// Polls `future` once: its output if it is ready at once.
async fn poll_once<F: Future>(future: Pin<&mut F>) -> Option<F::Output> {
    let mut future = Some(future);
    std::future::poll_fn(|cx| match future.take() {
        Some(mut f) => match f.as_mut().poll(cx) {
            Poll::Ready(output) => Poll::Ready(Some(output)),
            Poll::Pending => Poll::Ready(None),
        },
        None => Poll::Ready(None),
    })
    .await
}

/// Writes every frame of `batch`, as few syscalls as the socket allows.
///
/// The `IoSlice`s live on the heap for the duration of the write only: kept
/// in the future they would cost every idle connection a kilobyte.
pub async fn write_all<W: AsyncWrite + Unpin>(
    write: &mut W,
    batch: &mut [Bytes],
) -> std::io::Result<()> {
    let mut i = 0;
    while i < batch.len() {
        let end = batch.len().min(i + MAX_IOVECS);
        let slices: Vec<IoSlice<'_>> = batch[i..end].iter().map(|b| IoSlice::new(b)).collect();
        let mut written = write.write_vectored(&slices).await?;
        drop(slices);
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 && i < batch.len() {
            let len = batch[i].len();
            if written >= len {
                written -= len;
                i += 1;
            } else {
                batch[i].advance(written);
                written = 0;
            }
        }
    }
    write.flush().await
}
