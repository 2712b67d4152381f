//! A connection's writer: drains the outbox with vectored writes, sends the
//! keep-alive pings, and gives up on a peer that stopped answering.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use fastwebsockets::OpCode;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::debug;

use super::Connection;
use crate::outbox::{self, Next};

/// Most frames handed to one vectored write.
const MAX_IOVECS: usize = 64;

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
    let mut sampled: u32 = 0;
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
                // The clock is read for one write in DELIVERY_SAMPLE: a read
                // per write (with shared atomics) cost 100 x 10 and rpc ~12%
                // (a read is ~28 ns on the VMs measured).
                let timed = timing.handed_over.is_some() && {
                    sampled += 1;
                    sampled % DELIVERY_SAMPLE == 1
                };
                let (delivery, since_read) = if timed {
                    let now = Instant::now();
                    let since = |at: Option<Instant>| at.map(|at| now.saturating_duration_since(at));
                    (since(timing.handed_over), since(timing.read_at))
                } else {
                    (None, None)
                };
                c.metrics.written(bytes, delivery, since_read);
                if next == Next::Finish {
                    let _ = write.shutdown().await;
                    return false;
                }
            }
        }
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
