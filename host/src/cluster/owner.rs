//! The owner's side of clients held by other nodes. Such a client is in
//! the room's table like any other, with an outbox of its own; instead of a
//! socket writer, a forwarder drains that outbox into its holder node's
//! [`Link`], which publishes the batches of all that node's clients
//! gathered meanwhile in one NATS message (a broadcast's frame written
//! once). [`Served`] maps the holders' keys to the table's entries for
//! their messages and closes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::wire;
use crate::outbox::{Next, Outbox};
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
    /// Where their frames go.
    link: Option<Arc<Link>>,
}

impl Holder {
    /// Stops forwarding to this node: its forwarders, then its link.
    fn close(self) {
        for served in self.clients.into_values() {
            served.forwarder.abort();
        }
        if let Some(link) = self.link {
            // Wakes it to see it is the last one holding itself.
            link.wake.notify_one();
        }
    }
}

/// The frames on their way to one holder node: every forwarder of its
/// clients adds its batches, one task publishes what gathered.
pub(super) struct Link {
    pending: Mutex<Vec<wire::Record>>,
    wake: Notify,
    /// Bytes of frames taken from outboxes and not yet published: past
    /// [`LINK_BYTES`] the forwarders stop taking, so a node that cannot
    /// keep up has its clients' outboxes fill (and overflow, 1013) as a
    /// slow local client's would.
    queued: AtomicUsize,
    drained: Notify,
}

/// Most bytes of frames waiting in one link.
const LINK_BYTES: usize = 8 << 20;
/// Most bytes of frames in one record: a larger batch, or frame, goes in
/// pieces (the holder writes the bytes in order, whatever their cut).
const RECORD_BYTES: usize = 256 * 1024;

/// Most bytes of frames in one NATS message (NATS refuses messages over
/// its `max_payload`, 1 MiB by default).
const MESSAGE_BYTES: usize = 512 * 1024;

impl Link {
    fn start(client: async_nats::Client, subject: async_nats::Subject, epoch: u64) -> Arc<Link> {
        let link = Arc::new(Link {
            pending: Mutex::new(Vec::new()),
            wake: Notify::new(),
            queued: AtomicUsize::new(0),
            drained: Notify::new(),
        });
        tokio::spawn(link.clone().publish(client, subject, epoch));
        link
    }

    /// Waits while the link holds [`LINK_BYTES`] or more.
    async fn room_for_more(&self) {
        loop {
            let drained = self.drained.notified();
            if self.queued.load(Relaxed) < LINK_BYTES {
                return;
            }
            drained.await;
        }
    }

    fn push(&self, record: wire::Record) {
        self.queued.fetch_add(record.len(), Relaxed);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
        self.wake.notify_one();
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
            // The forwarders of a room's other clients here were woken by
            // the same flush: let them add their batches first, so that
            // they go in this message (and a broadcast is written once).
            tokio::task::yield_now().await;
            std::mem::swap(
                &mut taken,
                &mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()),
            );
            while !taken.is_empty() {
                let mut bytes = 0;
                let cut = taken
                    .iter()
                    .position(|record| {
                        bytes += record.len();
                        bytes > MESSAGE_BYTES
                    })
                    .map_or(taken.len(), |i| i.max(1));
                let body = wire::frames(epoch, &taken[..cut]);
                let published: usize = taken.drain(..cut).map(|r| r.len()).sum();
                // Fails only once the connection is closed: the holder sees
                // the gap then.
                let _ = client.publish(subject.clone(), body).await;
                self.queued.fetch_sub(published, Relaxed);
                self.drained.notify_waiters();
            }
            if Arc::strong_count(&self) == 1 {
                return;
            }
        }
    }
}

struct ServedConn {
    room: RoomHandle,
    conn: ConnRef,
    forwarder: AbortHandle,
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
            for (_, old) in of_holder.clients.drain() {
                old.forwarder.abort();
                gone.push((old.room, old.conn));
            }
            of_holder.epoch = holder_epoch;
        }
        let link = of_holder
            .link
            .get_or_insert_with(|| {
                let subject = wire::subject(holder, &format!("frames.{me}"));
                Link::start(client.clone(), subject.into(), epoch)
            })
            .clone();
        let forwarder = tokio::spawn(forward(link, key, outbox));
        let old = of_holder.clients.insert(
            key,
            ServedConn {
                room,
                conn,
                forwarder: forwarder.abort_handle(),
            },
        );
        if let Some(old) = old {
            old.forwarder.abort();
            gone.push((old.room, old.conn));
        }
        gone
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
        link.push(wire::Record::Ack { key, seq, reply });
        true
    }

    /// Stops serving a client that left; its forwarder ends with the
    /// close the room sends it.
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
}

/// Hands what the room queues for a client on another node to its node's
/// link, batch by batch (in records of at most [`RECORD_BYTES`]), until
/// the client's outbox finishes.
async fn forward(link: Arc<Link>, key: u64, outbox: Arc<Outbox>) {
    let mut seq = 0;
    loop {
        link.room_for_more().await;
        let mut frames = Vec::new();
        let next = outbox.take(&mut frames).await;
        let close = (next == Next::Finish).then(|| frames.pop()).flatten();
        let mut pieces = pieces(frames).peekable();
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
            seq += 1;
            link.push(wire::Record::Frames(wire::Batch {
                key,
                seq,
                next: if last { next } else { Next::Continue },
                frames: record,
            }));
            if last {
                break;
            }
        }
        if next != Next::Continue {
            return;
        }
    }
}

/// The frames, those over [`RECORD_BYTES`] cut in pieces of that size.
fn pieces(frames: Vec<Bytes>) -> impl Iterator<Item = Bytes> {
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
