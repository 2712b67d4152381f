//! The owner's side of clients held by other nodes. Such a client is in
//! the room's table like any other, with an outbox of its own; instead of a
//! socket writer, its holder node's [`Link`] takes what the room queued for
//! all that node's clients at once and publishes it in one NATS message (a
//! broadcast's frame written once). [`Served`] maps the holders' keys to the
//! table's entries for their messages and closes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use super::wire;
use crate::outbox::{Collector, Next, Outbox};
use crate::room::RoomHandle;
use crate::room::table::ConnRef;

/// The clients of other nodes in this node's rooms, by (holder, key).
#[derive(Default)]
pub(super) struct Served {
    conns: Mutex<HashMap<Arc<str>, Holder>>,
}

/// A holder node's clients, and the epoch they were admitted under: they
/// are gone when that node's lease is.
#[derive(Default)]
struct Holder {
    epoch: u64,
    clients: HashMap<u64, ServedConn>,
    /// Where their frames go (for this epoch of the holder only: keys are
    /// the holder's, and mean other clients once it starts anew).
    link: Option<Arc<Link>>,
}

impl Holder {
    /// Stops forwarding to this node.
    fn close(self) {
        if let Some(link) = self.link {
            // Wakes it to see it is the last one holding itself.
            link.wake.notify_one();
        }
    }
}

/// The frames on their way to one holder node: the outboxes of its clients
/// tell it when they have frames; one task takes them all and publishes
/// them. It takes only as fast as it publishes, so a node that cannot keep
/// up has its clients' outboxes fill (and overflow, 1013) as a slow local
/// client's would.
pub(super) struct Link {
    state: Mutex<LinkState>,
    wake: Notify,
    /// It holds records it took and has not published yet.
    publishing: AtomicBool,
    /// Rounds of taking and publishing done.
    rounds: AtomicU64,
}

#[derive(Default)]
struct LinkState {
    clients: HashMap<u64, Forwarded>,
    /// Keys of the clients whose outboxes have frames.
    ready: Vec<u64>,
    /// Answers to the holder's messages.
    acks: Vec<wire::Record>,
}

struct Forwarded {
    outbox: Arc<Outbox>,
    /// The number of the client's last record: the holder sees a gap.
    seq: u64,
}

/// Most bytes of frames in one record: a larger batch, or frame, goes in
/// pieces (the holder writes the bytes in order, whatever their cut).
const RECORD_BYTES: usize = 256 * 1024;

/// Most bytes in one NATS message but for its last record (NATS refuses
/// messages over its `max_payload`, 1 MiB by default): a frame several
/// clients get counts once.
const MESSAGE_BYTES: usize = 512 * 1024;

impl Collector for Link {
    fn ready(&self, keys: &[u64]) {
        self.lock().ready.extend_from_slice(keys);
        self.wake.notify_one();
    }
}

impl Link {
    fn start(client: async_nats::Client, subject: async_nats::Subject, epoch: u64) -> Arc<Link> {
        let link = Arc::new(Link {
            state: Mutex::new(LinkState::default()),
            wake: Notify::new(),
            publishing: AtomicBool::new(false),
            rounds: AtomicU64::new(0),
        });
        tokio::spawn(link.clone().publish(client, subject, epoch));
        link
    }

    fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forwards what `outbox` gets as client `key`'s.
    fn attach(self: &Arc<Self>, key: u64, outbox: Arc<Outbox>) {
        let collector: Arc<dyn Collector> = self.clone();
        let weak: Weak<dyn Collector> = Arc::downgrade(&collector);
        self.lock().clients.insert(
            key,
            Forwarded {
                outbox: outbox.clone(),
                seq: 0,
            },
        );
        outbox.collect_by(weak, key);
    }

    /// Nothing is waiting to go, or on its way out.
    fn settled(&self) -> bool {
        let state = self.lock();
        state.ready.is_empty() && state.acks.is_empty() && !self.publishing.load(SeqCst)
    }

    fn push_ack(&self, record: wire::Record) {
        self.lock().acks.push(record);
        self.wake.notify_one();
    }

    /// Takes what the ready outboxes hold, in records of at most
    /// [`RECORD_BYTES`], then the answers.
    fn take(&self, records: &mut Vec<wire::Record>) {
        let mut state = self.lock();
        let LinkState {
            clients,
            ready,
            acks,
        } = &mut *state;
        let mut frames = Vec::new();
        for key in ready.drain(..) {
            let Some(client) = clients.get_mut(&key) else {
                continue;
            };
            let Some(next) = client.outbox.try_take(&mut frames) else {
                continue;
            };
            records_of(key, &mut client.seq, next, &mut frames, records);
            if next != Next::Continue {
                clients.remove(&key);
            }
        }
        records.append(acks);
    }

    /// Publishes what gathered, a message per [`MESSAGE_BYTES`], until the
    /// link is the last holder of itself (its node's clients all gone).
    async fn publish(
        self: Arc<Self>,
        client: async_nats::Client,
        subject: async_nats::Subject,
        epoch: u64,
    ) {
        let mut taken = Vec::new();
        loop {
            self.wake.notified().await;
            if Arc::strong_count(&self) == 1 {
                return;
            }
            // A room wakes the link once it has handed all its clients
            // their copies (see `outbox::Wakes`); one turn of the scheduler
            // lets the tasks woken with it (other rooms, answers to the
            // holder's messages) add theirs to this message: without it,
            // rpc across nodes sent 2.4 times the NATS messages, and was
            // slower.
            tokio::task::yield_now().await;
            self.publishing.store(true, SeqCst);
            self.take(&mut taken);
            while !taken.is_empty() {
                let (body, published) = wire::frames(epoch, &taken, MESSAGE_BYTES);
                taken.drain(..published);
                // Fails only once the connection is closed: the holder sees
                // the gap then.
                let _ = client.publish(subject.clone(), body).await;
            }
            self.publishing.store(false, SeqCst);
            self.rounds.fetch_add(1, SeqCst);
        }
    }
}

/// Adds client `key`'s frames as records, cutting them to [`RECORD_BYTES`];
/// the last says what follows (the close, if `next` finishes).
fn records_of(
    key: u64,
    seq: &mut u64,
    next: Next,
    frames: &mut Vec<Bytes>,
    records: &mut Vec<wire::Record>,
) {
    let close = (next == Next::Finish).then(|| frames.pop()).flatten();
    let mut pieces = pieces(frames.drain(..)).peekable();
    loop {
        let mut record = Vec::new();
        let mut bytes = 0;
        while let Some(piece) =
            pieces.next_if(|p| record.is_empty() || bytes + p.len() <= RECORD_BYTES)
        {
            bytes += piece.len();
            record.push(piece);
        }
        let last = pieces.peek().is_none();
        if last {
            record.extend(close.clone());
        }
        *seq += 1;
        records.push(wire::Record::Frames(wire::Batch {
            key,
            seq: *seq,
            next: if last { next } else { Next::Continue },
            frames: record,
        }));
        if last {
            return;
        }
    }
}

struct ServedConn {
    room: RoomHandle,
    conn: ConnRef,
}

impl Served {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Holder>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves a client the room admitted: its frames go to `holder`. The
    /// clients it replaces (the holder's from before it started anew) are
    /// returned, for their rooms to be told they left.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add(
        &self,
        client: &async_nats::Client,
        me: &str,
        epoch: u64,
        (holder, holder_epoch): (&str, u64),
        key: u64,
        room: RoomHandle,
        conn: ConnRef,
        outbox: Arc<Outbox>,
    ) -> Vec<(RoomHandle, ConnRef)> {
        let mut gone = Vec::new();
        let mut conns = self.lock();
        let of_holder = conns.entry(holder.into()).or_default();
        if of_holder.epoch != holder_epoch {
            // The holder started anew: what it held before is gone.
            let old = std::mem::take(of_holder);
            gone.extend(old.clients.values().map(|c| (c.room.clone(), c.conn)));
            old.close();
            of_holder.epoch = holder_epoch;
        }
        let link = of_holder
            .link
            .get_or_insert_with(|| {
                let subject = wire::subject(holder, &format!("frames.{me}"));
                Link::start(client.clone(), subject.into(), epoch)
            })
            .clone();
        link.attach(key, outbox);
        let old = of_holder.clients.insert(key, ServedConn { room, conn });
        if let Some(old) = old {
            gone.push((old.room, old.conn));
        }
        gone
    }

    /// Whether the holder's client `key` (of that epoch of the holder) is
    /// served here already.
    pub(super) fn contains(&self, holder: &str, epoch: u64, key: u64) -> bool {
        let conns = self.lock();
        conns
            .get(holder)
            .is_some_and(|of| of.epoch == epoch && of.clients.contains_key(&key))
    }

    /// The room and table entry of a holder's client.
    pub(super) fn get(&self, holder: &str, key: u64) -> Option<(RoomHandle, ConnRef)> {
        let conns = self.lock();
        let served = conns.get(holder)?.clients.get(&key)?;
        Some((served.room.clone(), served.conn))
    }

    /// Sends the answer to a holder's message with that node's frames;
    /// false if no frames go to that node (the answer goes on its own).
    pub(super) fn ack(&self, holder: &str, key: u64, seq: u64, reply: wire::MessageReply) -> bool {
        let conns = self.lock();
        let Some(link) = conns.get(holder).and_then(|of| of.link.as_ref()) else {
            return false;
        };
        link.push_ack(wire::Record::Ack { key, seq, reply });
        true
    }

    /// Stops serving a client that left; its frames go on to the holder
    /// until the close the room sends it.
    pub(super) fn remove(&self, holder: &str, key: u64) -> Option<(RoomHandle, ConnRef)> {
        let mut conns = self.lock();
        let of_holder = conns.get_mut(holder)?;
        let served = of_holder.clients.remove(&key)?;
        Some((served.room, served.conn))
    }

    /// This node lost its projects: nothing more goes to their clients from
    /// here (the node that takes a project over serves them).
    pub(super) fn clear(&self) {
        for (_, of_holder) in self.lock().drain() {
            of_holder.close();
        }
    }

    /// The holders with clients here, and their epochs.
    pub(super) fn holders(&self) -> Vec<(Arc<str>, u64)> {
        let conns = self.lock();
        conns.iter().map(|(h, of)| (h.clone(), of.epoch)).collect()
    }

    /// Drops the clients `holder` held under `epoch` (it is gone): their
    /// rooms and table entries, to tell the rooms they left.
    pub(super) fn drop_holder(&self, holder: &str, epoch: u64) -> Vec<(RoomHandle, ConnRef)> {
        let mut conns = self.lock();
        if conns.get(holder).is_none_or(|of| of.epoch != epoch) {
            return Vec::new();
        }
        let Some(mut of_holder) = conns.remove(holder) else {
            return Vec::new();
        };
        let clients = std::mem::take(&mut of_holder.clients)
            .into_values()
            .map(|served| (served.room, served.conn))
            .collect();
        of_holder.close();
        clients
    }

    pub(super) fn len(&self) -> usize {
        self.lock().values().map(|of| of.clients.len()).sum()
    }

    /// Waits (at most `patience`) until every link has handed NATS what
    /// the rooms gave it before the call (two rounds from then: the one
    /// under way may have taken before), or has nothing left: a node that
    /// stops must not take frames its rooms sent down with it.
    pub(super) async fn settle(&self, patience: Duration) {
        let links: Vec<(Arc<Link>, u64)> = self
            .lock()
            .values()
            .filter_map(|of| of.link.clone())
            .map(|link| {
                let round = link.rounds.load(SeqCst);
                (link, round)
            })
            .collect();
        let deadline = tokio::time::Instant::now() + patience;
        let done = |(link, round): &(Arc<Link>, u64)| {
            link.settled() || link.rounds.load(SeqCst) >= round + 2
        };
        while !links.iter().all(done) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The frames, those over [`RECORD_BYTES`] cut in pieces of that size.
fn pieces(frames: impl IntoIterator<Item = Bytes>) -> impl Iterator<Item = Bytes> {
    frames.into_iter().flat_map(|frame| {
        let n = frame.len().div_ceil(RECORD_BYTES).max(1);
        (0..n)
            .map(move |i| frame.slice(i * RECORD_BYTES..((i + 1) * RECORD_BYTES).min(frame.len())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_frame_goes_in_pieces_that_keep_its_bytes_in_order() {
        let big = Bytes::from(
            (0..RECORD_BYTES * 2 + 10)
                .map(|i| i as u8)
                .collect::<Vec<u8>>(),
        );
        let small = Bytes::from_static(b"small");
        let pieces: Vec<Bytes> = pieces(vec![small.clone(), big.clone()]).collect();
        assert_eq!(pieces.len(), 4);
        assert!(pieces.iter().all(|p| p.len() <= RECORD_BYTES));
        let joined: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
        assert_eq!(joined, [&small[..], &big[..]].concat());
    }
}
