//! A connection's outgoing queue: whole WebSocket frames (header and payload
//! in one shared [`Bytes`]) waiting for the connection's writer.
//!
//! The room pushes without ever waiting (what it sent during a batch of
//! events, under one lock); the writer takes everything queued at once and
//! writes it with one vectored write. An outbox whose client is on another
//! node has no writer: a [`Collector`] (the link to that node) takes the
//! frames of all its outboxes at once instead. The queue is bounded in
//! bytes: a push that would pass the bound drops what is queued and leaves
//! only a close frame (1013), so a slow client costs at most the bound.
//!
//! An outbox whose socket can be written from any task ([`WriteThrough`])
//! is written by the task that hands it frames, when its writer is idle
//! and nothing is queued: the writer task is woken only for what the
//! socket did not take at once.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload};
use smallvec::SmallVec;
use tokio::sync::Notify;

/// Close code sent to a client whose queue overflowed (1013: try again later).
pub const CLOSE_TOO_SLOW: u16 = 1013;

/// Frames a server-to-client message (unmasked, final) into one buffer.
pub fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut head = [0u8; 10];
    let n = Frame::new(true, opcode, None, Payload::Borrowed(payload)).fmt_head(&mut head);
    let mut buf = BytesMut::with_capacity(n + payload.len());
    buf.put_slice(&head[..n]);
    buf.put_slice(payload);
    buf.freeze()
}

/// A close frame with a code and a reason cut to the 123 bytes a control
/// frame allows (at a character boundary).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OpCode::Close, &payload)
}

/// Why a push was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue was over its bound: the client is being closed with 1013.
    Overflow,
    /// The connection is already closing.
    Closed,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Bytes>,
    bytes: usize,
    /// A close frame is queued; nothing more is accepted.
    closing: bool,
    /// The writer must stop without writing anything more.
    aborted: bool,
    /// The answer to the client's latest ping, not yet taken by the writer.
    /// One at most: a client that sends pings and reads nothing would
    /// otherwise grow the queue without bound, uncounted (RFC 6455 5.5.3
    /// allows answering only the latest ping).
    pong: Option<Bytes>,
    /// Who takes the frames when it is not a writer task, and the key it
    /// knows this outbox by.
    collector: Option<(Weak<dyn Collector>, u64)>,
    /// The collector was told of frames it has not taken yet.
    signalled: bool,
    /// The socket, for the task that hands frames over to write them.
    through: Option<Arc<dyn WriteThrough>>,
    /// The writer task took frames and has not finished writing them: no
    /// one else may write to the socket meanwhile.
    writing: bool,
    /// The rest of a frame whose beginning was written through: the writer
    /// writes it before anything else, and an overflow does not drop it
    /// (the client would read a cut frame).
    started: Option<Bytes>,
    /// When the oldest data frame queued now was handed over.
    since: Option<Instant>,
    /// When the client message that frame answers was read, if it answers
    /// one.
    read_at: Option<Instant>,
}

/// When the oldest data frame of a batch taken from an outbox was handed
/// over, and when the message it answers was read.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    pub handed_over: Option<Instant>,
    pub read_at: Option<Instant>,
}

/// A connection's socket, written without waiting by the task that hands
/// its outbox frames (see [`Outbox::push_all_at_end`]).
pub trait WriteThrough: Send + Sync {
    /// Writes what the socket takes at once, without waiting: how many
    /// bytes it took.
    fn try_write(&self, frames: &[IoSlice<'_>]) -> io::Result<usize>;
    /// `bytes` of data frames handed over as `timing` says were written.
    fn written(&self, bytes: usize, timing: Timing);
}

/// Most frames handed to one vectored write.
pub const MAX_IOVECS: usize = 64;

/// Most outboxes one batch writes through: a batch that reaches more
/// clients wakes their writers, which the runtime spreads over its threads
/// (1 x 100 written from the sender's task alone made a quarter fewer
/// deliveries a second, for the same CPU).
const WRITE_THROUGH_MAX: usize = 16;

/// Most bytes one write-through hands the kernel (at least one frame).
const WRITE_THROUGH_BYTES: usize = 64 * 1024;

/// Takes the frames of many outboxes (see [`Outbox::collect_by`]): told
/// once when one has frames (by the keys it gave them), then calls
/// [`Outbox::try_take`].
pub trait Collector: Send + Sync {
    fn ready(&self, keys: &[u64]);
}

/// Collectors' wakes held back while a room hands out a batch of frames
/// ([`Outbox::push_all_held`]), and given when it is done ([`Wakes::run`]):
/// a collector then finds every one of its outboxes' copies at once, and
/// sends a broadcast's frame once.
/// It also reads the clock for the batch, once, for the frames' wait
/// (`wsroom_delivery_duration_seconds`).
#[derive(Default)]
pub struct Wakes {
    collectors: Vec<(Weak<dyn Collector>, u64)>,
    /// Outboxes to write through (their writers idle, when pushed to).
    through: Vec<Arc<Outbox>>,
    at: Option<Instant>,
    /// When the oldest client message handled in this batch was read.
    read_at: Option<Instant>,
}

impl Wakes {
    pub fn shrink(&mut self) {
        self.collectors.shrink_to_fit();
        self.through.shrink_to_fit();
    }

    /// When this batch of frames was handed out.
    fn now(&mut self) -> Instant {
        *self.at.get_or_insert_with(Instant::now)
    }

    /// A client message read at `at` is part of this batch.
    pub fn message_read_at(&mut self, at: Instant) {
        self.read_at.get_or_insert(at);
    }

    /// The room's batch of events is over: its frames are all handed out.
    pub fn end_batch(&mut self) {
        self.read_at = None;
    }

    /// The frames are all handed out: writes them through where the
    /// outbox's writer is idle, and wakes the collectors and writers.
    pub fn run(&mut self) {
        if self.through.len() <= WRITE_THROUGH_MAX {
            for outbox in self.through.drain(..) {
                outbox.write_through();
            }
        } else {
            for outbox in self.through.drain(..) {
                outbox.wake.notify_one();
            }
        }
        self.run_collectors();
    }

    /// Wakes the collectors only: for frames handed out in the middle of a
    /// guest's call, whose writes through wait for [`Wakes::run`].
    pub fn run_collectors(&mut self) {
        self.at = None;
        if self.collectors.is_empty() {
            return;
        }
        let mut keys = Vec::new();
        let mut wakes = self.collectors.drain(..).peekable();
        while let Some((collector, key)) = wakes.next() {
            keys.push(key);
            while let Some((_, key)) = wakes.next_if(|(c, _)| Weak::ptr_eq(c, &collector)) {
                keys.push(key);
            }
            if let Some(collector) = collector.upgrade() {
                collector.ready(&keys);
            }
            keys.clear();
        }
    }
}

impl State {
    fn overflow(&mut self) {
        self.frames.clear();
        self.bytes = 0;
        // The close frame's wait is not the dropped frames'.
        self.since = None;
        self.read_at = None;
        self.closing = true;
        self.frames.push_back(close_frame(
            CLOSE_TOO_SLOW,
            "outgoing queue full: client too slow",
        ));
    }
}

pub struct Outbox {
    state: Mutex<State>,
    wake: Notify,
    limit: usize,
}

/// What the writer should do after writing the frames it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// The last frame taken was a close frame: finish the connection.
    Finish,
    /// Stop at once, the connection is gone.
    Abort,
}

impl Outbox {
    pub fn new(limit: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock guards plain data and no code panics while holding it;
        // recover the data if a panic ever poisoned it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes whoever takes the frames, after releasing the lock.
    fn wake(&self, s: MutexGuard<'_, State>) {
        if let Some((collector, key)) = self.signal(s)
            && let Some(collector) = collector.upgrade()
        {
            collector.ready(&[key]);
        }
    }

    /// Releases the lock and wakes the writer, or returns the wake its
    /// collector is owed (none if one is already).
    fn signal(&self, mut s: MutexGuard<'_, State>) -> Option<(Weak<dyn Collector>, u64)> {
        if s.collector.is_none() {
            drop(s);
            self.wake.notify_one();
            return None;
        }
        if s.signalled {
            return None;
        }
        s.signalled = true;
        s.collector.clone()
    }

    /// Hands the frames to `collector` instead of a writer task, as `key`
    /// (told at once if some are already queued).
    pub fn collect_by(&self, collector: Weak<dyn Collector>, key: u64) {
        let mut s = self.lock();
        s.collector = Some((collector, key));
        s.signalled = false;
        if !s.frames.is_empty() || s.aborted {
            self.wake(s);
        }
    }

    /// What [`Outbox::take`] would return, without waiting: `None` when
    /// nothing is queued.
    pub fn try_take(&self, batch: &mut Vec<Bytes>) -> Option<Next> {
        let mut s = self.lock();
        s.signalled = false;
        s.since = None;
        Self::take_queued(&mut s, batch)
    }

    fn take_queued(s: &mut State, batch: &mut Vec<Bytes>) -> Option<Next> {
        if s.aborted {
            return Some(Next::Abort);
        }
        if s.frames.is_empty() && s.pong.is_none() && s.started.is_none() {
            return None;
        }
        // The rest of a frame begun first, then the pong: it never follows a
        // close frame.
        batch.extend(s.started.take());
        batch.extend(s.pong.take());
        batch.extend(s.frames.drain(..));
        s.bytes = 0;
        Some(if s.closing {
            Next::Finish
        } else {
            Next::Continue
        })
    }

    /// Queues a data frame, refusing it past the bound, and wakes the writer.
    pub fn push(&self, frame: Bytes) -> Result<(), Refused> {
        self.push_all(std::iter::once(frame))
    }

    /// Queues data frames in order under one lock and wakes the writer once.
    /// The bound applies frame by frame, as if each were pushed alone: one
    /// that would pass it drops everything queued and leaves only a close
    /// frame (1013). A single frame larger than the bound still goes to a
    /// client with nothing queued.
    pub fn push_all(&self, frames: impl IntoIterator<Item = Bytes>) -> Result<(), Refused> {
        let mut wakes = Wakes::default();
        let pushed = self.push_all_held(frames, &mut wakes);
        wakes.run_collectors();
        pushed
    }

    /// [`Outbox::push_all`], but a collector's wake is added to `wakes`.
    pub fn push_all_held(
        &self,
        frames: impl IntoIterator<Item = Bytes>,
        wakes: &mut Wakes,
    ) -> Result<(), Refused> {
        let s = self.queue(frames, wakes)?;
        wakes.collectors.extend(self.signal(s));
        Ok(())
    }

    /// [`Outbox::push_all_held`] at the end of a batch: when the writer is
    /// idle, the frames are written through when `wakes` runs instead.
    pub fn push_all_at_end(
        self: &Arc<Self>,
        frames: impl IntoIterator<Item = Bytes>,
        wakes: &mut Wakes,
    ) -> Result<(), Refused> {
        let s = self.queue(frames, wakes)?;
        // Past the most a batch writes through, the writers are woken (at
        // once, from here on).
        if s.through.is_some() && !s.writing && wakes.through.len() <= WRITE_THROUGH_MAX {
            drop(s);
            wakes.through.push(self.clone());
        } else {
            wakes.collectors.extend(self.signal(s));
        }
        Ok(())
    }

    /// Queues `frames` as [`Outbox::push_all`] says, and returns the lock
    /// to wake whoever writes them (on an overflow too, for the close frame).
    fn queue(
        &self,
        frames: impl IntoIterator<Item = Bytes>,
        wakes: &mut Wakes,
    ) -> Result<MutexGuard<'_, State>, Refused> {
        let mut s = self.lock();
        if s.closing || s.aborted {
            return Err(Refused::Closed);
        }
        let mut result = Ok(());
        for frame in frames {
            if s.bytes + frame.len() > self.limit && !s.frames.is_empty() {
                s.overflow();
                result = Err(Refused::Overflow);
                break;
            }
            s.bytes += frame.len();
            s.frames.push_back(frame);
        }
        // (After an overflow only the close frame is queued: no wait of a
        // room's frames to report.)
        if result.is_ok() && s.since.is_none() && !s.frames.is_empty() {
            s.since = Some(wakes.now());
            s.read_at = wakes.read_at;
        }
        match result {
            Ok(()) => Ok(s),
            Err(refused) => {
                wakes.collectors.extend(self.signal(s));
                Err(refused)
            }
        }
    }

    /// Lets the task that hands this outbox frames write them to `socket`
    /// itself when the writer is idle (`None`: no more).
    pub fn set_write_through(&self, socket: Option<Arc<dyn WriteThrough>>) {
        self.lock().through = socket;
    }

    /// Writes what is queued to the socket now, without waiting, if the
    /// writer is idle; wakes the writer for what the socket did not take.
    /// Under the lock: a push meanwhile queues behind what is being written.
    fn write_through(&self) {
        let mut s = self.lock();
        if s.writing
            || s.aborted
            || s.closing
            || s.frames.is_empty()
            || s.pong.is_some()
            || s.started.is_some()
        {
            // The writer has them, or was told (a pong, or the rest of a
            // frame, is its to write first).
            return;
        }
        let Some(socket) = s.through.clone() else {
            return;
        };
        let wrote = {
            // Bounded, as the lock is held through the copy into the kernel:
            // a larger batch's rest is the writer's. On the stack (this runs
            // for nearly every message, never in a guest's call): no
            // allocation for the usual few frames.
            let mut bytes = 0;
            let slices: SmallVec<[IoSlice<'_>; 8]> = s
                .frames
                .iter()
                .take(MAX_IOVECS)
                .take_while(|frame| {
                    let first = bytes == 0;
                    bytes += frame.len();
                    first || bytes <= WRITE_THROUGH_BYTES
                })
                .map(|frame| IoSlice::new(frame))
                .collect();
            socket.try_write(&slices)
        };
        let Ok(mut written) = wrote else {
            // Would block, or failed: the writer waits for the socket, or
            // meets the error and ends the connection.
            drop(s);
            self.wake.notify_one();
            return;
        };
        let total = written;
        while written > 0 {
            let Some(mut front) = s.frames.pop_front() else {
                break;
            };
            s.bytes = s.bytes.saturating_sub(front.len());
            if written >= front.len() {
                written -= front.len();
            } else {
                front.advance(written);
                s.started = Some(front);
                written = 0;
            }
        }
        let left = !s.frames.is_empty() || s.started.is_some();
        // What is left is the writer's to time.
        let timing = if left {
            Timing::default()
        } else {
            Timing {
                handed_over: s.since.take(),
                read_at: s.read_at.take(),
            }
        };
        drop(s);
        socket.written(total, timing);
        if left {
            self.wake.notify_one();
        }
    }

    /// The bound, in bytes of queued frames.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Drops what is queued and leaves only a close frame (1013), as a push
    /// past the bound does: for frames gathered elsewhere that would pass it.
    pub fn overflow(&self) {
        let mut s = self.lock();
        if s.closing || s.aborted {
            return;
        }
        s.overflow();
        self.wake(s);
    }

    /// Queues the answer to a ping, replacing one not yet written.
    pub fn push_pong(&self, frame: Bytes) {
        let mut s = self.lock();
        if s.closing || s.aborted {
            return;
        }
        s.pong = Some(frame);
        self.wake(s);
    }

    /// Queues the server's own keep-alive ping (one an interval); not
    /// counted against the bound.
    pub fn push_control(&self, frame: Bytes) {
        let mut s = self.lock();
        if s.closing || s.aborted {
            return;
        }
        s.frames.push_back(frame);
        self.wake(s);
    }

    /// Queues a close frame after everything already queued; later pushes are
    /// refused. Does nothing if the connection is already closing.
    pub fn close(&self, code: u16, reason: &str) {
        self.close_raw(close_frame(code, reason));
    }

    /// Queues an already framed close frame (the echo of a client's close).
    pub fn close_raw(&self, frame: Bytes) {
        let mut s = self.lock();
        if s.closing || s.aborted {
            return;
        }
        s.closing = true;
        s.frames.push_back(frame);
        self.wake(s);
    }

    /// Drops everything queued and stops the writer: the peer is gone.
    pub fn abort(&self) {
        let mut s = self.lock();
        s.aborted = true;
        s.pong = None;
        s.started = None;
        s.frames.clear();
        s.bytes = 0;
        s.since = None;
        s.read_at = None;
        self.wake(s);
    }

    /// Waits until something is queued, then moves all of it into `batch`.
    /// Cancel-safe: nothing is taken until it returns.
    pub async fn take(&self, batch: &mut Vec<Bytes>) -> Next {
        self.take_timed(batch).await.0
    }

    /// [`Outbox::take`], with when the oldest data frame taken was handed
    /// over and when the client message it answers was read (`None` when
    /// only the connection's own frames were queued, or it answers none).
    ///
    /// The writer writes what it takes before it asks again: until then no
    /// one writes through (see [`WriteThrough`]).
    pub async fn take_timed(&self, batch: &mut Vec<Bytes>) -> (Next, Timing) {
        loop {
            {
                let mut s = self.lock();
                let next = Self::take_queued(&mut s, batch);
                s.writing = next.is_some();
                if let Some(next) = next {
                    let timing = Timing {
                        handed_over: s.since.take(),
                        read_at: s.read_at.take(),
                    };
                    return (next, timing);
                }
            }
            self.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn text(n: usize) -> Bytes {
        encode(OpCode::Text, &vec![b'x'; n])
    }

    #[test]
    fn frames_have_the_right_header() {
        assert_eq!(&encode(OpCode::Text, b"hi")[..], b"\x81\x02hi");
        let big = encode(OpCode::Binary, &[0; 300]);
        assert_eq!(&big[..4], &[0x82, 126, 1, 44]);
        assert_eq!(big.len(), 304);
        let close = close_frame(1001, &"é".repeat(100));
        assert_eq!(close[0], 0x88);
        assert!(close.len() - 2 <= 125);
        assert!(std::str::from_utf8(&close[4..]).is_ok());
    }

    #[derive(Default)]
    struct Told(Mutex<Vec<u64>>);

    impl Collector for Told {
        fn ready(&self, keys: &[u64]) {
            self.0.lock().unwrap().extend_from_slice(keys);
        }
    }

    #[test]
    fn a_collector_is_told_once_per_take_and_only_when_the_batch_is_out() {
        let told = Arc::new(Told::default());
        let collector: Arc<dyn Collector> = told.clone();
        let (a, b) = (Arc::new(Outbox::new(1000)), Arc::new(Outbox::new(1000)));
        a.push(text(1)).unwrap();
        a.collect_by(Arc::downgrade(&collector), 7);
        b.collect_by(Arc::downgrade(&collector), 8);
        // Frames queued before it collects are owed to it at once.
        assert_eq!(*told.0.lock().unwrap(), [7]);
        let mut wakes = Wakes::default();
        for outbox in [&a, &b, &b] {
            outbox.push_all_held([text(2)], &mut wakes).unwrap();
        }
        assert_eq!(*told.0.lock().unwrap(), [7], "held until the batch is out");
        wakes.run();
        // `a` was told already and not taken since; `b` once for two pushes.
        assert_eq!(*told.0.lock().unwrap(), [7, 8]);
        let mut batch = Vec::new();
        assert_eq!(b.try_take(&mut batch), Some(Next::Continue));
        assert_eq!(batch, [text(2), text(2)]);
        assert_eq!(b.try_take(&mut batch), None);
        b.close(1000, "bye");
        assert_eq!(*told.0.lock().unwrap(), [7, 8, 8], "told again once taken");
        batch.clear();
        assert_eq!(b.try_take(&mut batch), Some(Next::Finish));
        assert_eq!(batch.len(), 1);
    }

    #[tokio::test]
    async fn takes_everything_in_order() {
        let o = Outbox::new(1000);
        o.push(text(1)).unwrap();
        o.push(text(2)).unwrap();
        let mut batch = Vec::new();
        assert_eq!(o.take(&mut batch).await, Next::Continue);
        assert_eq!(batch, vec![text(1), text(2)]);
    }

    #[tokio::test]
    async fn only_the_latest_pong_waits() {
        let o = Outbox::new(1000);
        for i in 0..10_000u32 {
            o.push_pong(encode(OpCode::Pong, &i.to_be_bytes()));
        }
        o.push(text(1)).unwrap();
        let mut batch = Vec::new();
        assert_eq!(o.take(&mut batch).await, Next::Continue);
        assert_eq!(
            batch,
            vec![encode(OpCode::Pong, &9_999u32.to_be_bytes()), text(1)]
        );
        // After a close frame, no pong.
        o.push_pong(encode(OpCode::Pong, b"a"));
        o.close(1000, "");
        o.push_pong(encode(OpCode::Pong, b"b"));
        batch.clear();
        assert_eq!(o.take(&mut batch).await, Next::Finish);
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0], encode(OpCode::Pong, b"a"));
        assert_eq!(batch[1][0], 0x88, "the close frame last");
    }

    #[tokio::test]
    async fn overflow_leaves_only_a_close_frame() {
        let o = Outbox::new(100);
        o.push(text(60)).unwrap();
        assert_eq!(o.push(text(60)), Err(Refused::Overflow));
        assert_eq!(o.push(text(1)), Err(Refused::Closed));
        let mut batch = Vec::new();
        assert_eq!(o.take(&mut batch).await, Next::Finish);
        assert_eq!(batch.len(), 1);
        assert_eq!(&batch[0][2..4], &CLOSE_TOO_SLOW.to_be_bytes());
    }

    #[tokio::test]
    async fn a_batch_is_bounded_frame_by_frame() {
        let o = Outbox::new(100);
        o.push_all([text(30), text(30)]).unwrap();
        assert_eq!(
            o.push_all([text(30), text(30), text(1)]),
            Err(Refused::Overflow)
        );
        assert_eq!(o.push_all([text(1)]), Err(Refused::Closed));
        let mut batch = Vec::new();
        assert_eq!(o.take(&mut batch).await, Next::Finish);
        assert_eq!(batch.len(), 1, "only the close frame is left");
        assert_eq!(&batch[0][2..4], &CLOSE_TOO_SLOW.to_be_bytes());
    }

    #[tokio::test]
    async fn one_message_larger_than_the_bound_still_goes_to_an_idle_client() {
        let o = Outbox::new(10);
        o.push(text(50)).unwrap();
        let mut batch = Vec::new();
        assert_eq!(o.take(&mut batch).await, Next::Continue);
    }

    #[tokio::test]
    async fn a_take_tells_when_its_frames_were_handed_over_but_not_for_dropped_ones() {
        let outbox = Arc::new(Outbox::new(100));
        let mut batch = Vec::new();
        outbox.push(text(60)).unwrap();
        let (next, timing) = outbox.take_timed(&mut batch).await;
        assert_eq!(next, Next::Continue);
        assert!(timing.handed_over.is_some());
        // Not the answer to a client's message.
        assert_eq!(timing.read_at, None);
        batch.clear();
        // The answer to a message read earlier, in a batch with a later one.
        let mut wakes = Wakes::default();
        let read = Instant::now() - std::time::Duration::from_millis(5);
        wakes.message_read_at(read);
        wakes.message_read_at(Instant::now());
        outbox.push_all_held([text(10)], &mut wakes).unwrap();
        wakes.run();
        let (_, timing) = outbox.take_timed(&mut batch).await;
        assert_eq!(timing.read_at, Some(read), "the oldest read of the batch");
        batch.clear();
        // Only the connection's own frame: nothing a room handed over.
        outbox.push_control(text(2));
        assert_eq!(outbox.take_timed(&mut batch).await.1.handed_over, None);
        batch.clear();
        // An overflow drops the queued frames: the close frame's wait is
        // not theirs.
        outbox.push(text(60)).unwrap();
        assert_eq!(outbox.push(text(60)), Err(Refused::Overflow));
        let (next, timing) = outbox.take_timed(&mut batch).await;
        assert_eq!(next, Next::Finish);
        assert_eq!(timing.handed_over, None);
        assert_eq!(timing.read_at, None);
    }

    /// A socket that takes at most `room` bytes a write (`None`: would
    /// block), and keeps what it took.
    #[derive(Default)]
    struct Socket {
        room: Mutex<Option<usize>>,
        took: Mutex<Vec<u8>>,
        counted: Mutex<usize>,
    }

    impl WriteThrough for Socket {
        fn try_write(&self, frames: &[IoSlice<'_>]) -> io::Result<usize> {
            let Some(room) = *self.room.lock().unwrap() else {
                return Err(io::ErrorKind::WouldBlock.into());
            };
            let mut took = self.took.lock().unwrap();
            let before = took.len();
            for frame in frames {
                let n = frame.len().min(room - (took.len() - before));
                took.extend_from_slice(&frame[..n]);
            }
            Ok(took.len() - before)
        }

        fn written(&self, bytes: usize, _: Timing) {
            *self.counted.lock().unwrap() += bytes;
        }
    }

    fn socket(room: Option<usize>) -> Arc<Socket> {
        let socket = Arc::new(Socket::default());
        *socket.room.lock().unwrap() = room;
        socket
    }

    /// An outbox bounded by `limit` bytes, written through to a socket
    /// that takes `room` bytes a write.
    fn written_through(limit: usize, room: Option<usize>) -> (Arc<Outbox>, Arc<Socket>) {
        let outbox = Arc::new(Outbox::new(limit));
        let sock = socket(room);
        outbox.set_write_through(Some(sock.clone()));
        (outbox, sock)
    }

    fn hand_over(outbox: &Arc<Outbox>, frames: &[Bytes]) {
        let mut wakes = Wakes::default();
        outbox
            .push_all_at_end(frames.iter().cloned(), &mut wakes)
            .unwrap();
        wakes.run();
    }

    #[tokio::test]
    async fn frames_for_an_idle_writer_are_written_through_in_order() {
        let (outbox, sock) = written_through(1000, Some(usize::MAX));
        hand_over(&outbox, &[text(1), text(2)]);
        hand_over(&outbox, &[text(3)]);
        assert_eq!(
            *sock.took.lock().unwrap(),
            [text(1), text(2), text(3)].concat()
        );
        assert_eq!(*sock.counted.lock().unwrap(), 3 + 4 + 5);
        // Nothing left for the writer, and nothing counted against the bound.
        let mut batch = Vec::new();
        let take = tokio::time::timeout(Duration::from_millis(50), outbox.take(&mut batch));
        assert!(take.await.is_err(), "the writer has nothing to write");
        *sock.room.lock().unwrap() = None;
        hand_over(&outbox, &[text(600)]);
        outbox
            .push(text(390))
            .expect("604 + 394 bytes queued: within the bound");
    }

    #[tokio::test]
    async fn what_the_socket_did_not_take_goes_to_the_writer_first() {
        let (outbox, sock) = written_through(1000, Some(4));
        hand_over(&outbox, &[text(3), text(5)]);
        assert_eq!(*sock.took.lock().unwrap(), text(3)[..4]);
        let mut batch = Vec::new();
        assert_eq!(outbox.take(&mut batch).await, Next::Continue);
        // The writer is writing: frames handed over now queue behind.
        *sock.room.lock().unwrap() = Some(usize::MAX);
        hand_over(&outbox, &[text(7)]);
        assert_eq!(sock.took.lock().unwrap().len(), 4);
        let mut written = sock.took.lock().unwrap().clone();
        for frame in batch.drain(..) {
            written.extend_from_slice(&frame);
        }
        assert_eq!(written, [text(3), text(5)].concat());
        // Asking again, the writer takes what queued meanwhile.
        assert_eq!(outbox.take(&mut batch).await, Next::Continue);
        assert_eq!(batch, [text(7)]);
        // Done writing, and idle: the next goes through again.
        let take = tokio::time::timeout(Duration::from_millis(50), outbox.take(&mut batch));
        assert!(take.await.is_err());
        hand_over(&outbox, &[text(9)]);
        assert!(sock.took.lock().unwrap().ends_with(&text(9)));
    }

    #[tokio::test]
    async fn a_batch_reaching_many_clients_wakes_their_writers_instead() {
        for clients in [WRITE_THROUGH_MAX, WRITE_THROUGH_MAX + 5] {
            let mut wakes = Wakes::default();
            let outboxes: Vec<_> = (0..clients)
                .map(|_| {
                    let (outbox, sock) = written_through(1000, Some(usize::MAX));
                    outbox.push_all_at_end([text(1)], &mut wakes).unwrap();
                    (outbox, sock)
                })
                .collect();
            wakes.run();
            for (outbox, sock) in outboxes {
                let mut batch = Vec::new();
                let took = tokio::time::timeout(Duration::from_millis(20), outbox.take(&mut batch));
                if clients <= WRITE_THROUGH_MAX {
                    assert_eq!(*sock.took.lock().unwrap(), text(1));
                    assert!(took.await.is_err(), "nothing left for the writer");
                } else {
                    assert!(sock.took.lock().unwrap().is_empty());
                    assert_eq!(took.await.ok(), Some(Next::Continue), "the writer has it");
                    assert_eq!(batch, [text(1)]);
                }
            }
        }
    }

    #[tokio::test]
    async fn a_frame_begun_on_the_socket_is_finished_before_an_overflow_close() {
        let (outbox, sock) = written_through(100, Some(3));
        hand_over(&outbox, &[text(10), text(20)]);
        let pong = encode(OpCode::Pong, b"p");
        outbox.push_pong(pong.clone());
        // The queue overflows before the writer ran: what was queued goes,
        // but not the rest of the frame the client has begun to read.
        assert_eq!(outbox.push(text(90)), Err(Refused::Overflow));
        let mut batch = Vec::new();
        assert_eq!(outbox.take(&mut batch).await, Next::Finish);
        let mut written = sock.took.lock().unwrap().clone();
        written.extend_from_slice(&batch[0]);
        assert_eq!(written, text(10), "the frame, whole");
        assert_eq!(batch.len(), 3, "then the pong and the close frame");
        assert_eq!(batch[1], pong);
        assert_eq!(&batch[2][2..4], &CLOSE_TOO_SLOW.to_be_bytes());
    }

    #[tokio::test]
    async fn a_write_through_hands_the_kernel_a_bounded_share() {
        let (outbox, sock) = written_through(1 << 20, Some(usize::MAX));
        // Two fit in the bound (with their headers), not three.
        let big = encode(OpCode::Binary, &vec![7; WRITE_THROUGH_BYTES / 2 - 8]);
        hand_over(&outbox, &[big.clone(), big.clone(), big.clone()]);
        assert_eq!(sock.took.lock().unwrap().len(), 2 * big.len());
        let mut batch = Vec::new();
        assert_eq!(outbox.take(&mut batch).await, Next::Continue);
        assert_eq!(batch, [big], "the rest is the writer's");
        // A single frame over the bound still goes through whole.
        let huge = encode(OpCode::Binary, &vec![7; 2 * WRITE_THROUGH_BYTES]);
        let take = tokio::time::timeout(Duration::from_millis(20), outbox.take(&mut batch));
        assert!(take.await.is_err());
        let before = sock.took.lock().unwrap().len();
        hand_over(&outbox, std::slice::from_ref(&huge));
        assert_eq!(sock.took.lock().unwrap().len() - before, huge.len());
    }

    #[tokio::test]
    async fn a_socket_that_would_block_leaves_the_frames_to_the_writer() {
        let (outbox, sock) = written_through(1000, None);
        hand_over(&outbox, &[text(1)]);
        let mut batch = Vec::new();
        assert_eq!(outbox.take(&mut batch).await, Next::Continue);
        assert_eq!(batch, [text(1)]);
        assert!(sock.took.lock().unwrap().is_empty());
        // A close is always the writer's: it ends the connection.
        outbox.close(1000, "bye");
        hand_over_refused(&outbox);
        batch.clear();
        assert_eq!(outbox.take(&mut batch).await, Next::Finish);
    }

    fn hand_over_refused(outbox: &Arc<Outbox>) {
        let mut wakes = Wakes::default();
        assert_eq!(
            outbox.push_all_at_end([text(1)], &mut wakes),
            Err(Refused::Closed)
        );
        wakes.run();
    }
}
