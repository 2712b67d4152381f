//! The owner's side of clients held by other nodes. Such a client is in
//! the room's table like any other, with an outbox of its own; instead of a
//! socket writer, a forwarder drains that outbox and publishes each batch
//! of frames to the holder node, numbered. [`Served`] maps the holders'
//! keys to the table's entries for their messages and closes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

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

    /// Serves a client the room admitted: its frames go to `holder`.
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
    ) {
        let subject = wire::subject(holder, &format!("frames.{me}")).into();
        let forwarder = tokio::spawn(forward(client.clone(), subject, key, epoch, outbox));
        let mut conns = self.lock();
        let of_holder = conns.entry(holder.into()).or_default();
        if of_holder.epoch != holder_epoch {
            // The holder started anew: what it held before is gone.
            for (_, old) in of_holder.clients.drain() {
                old.forwarder.abort();
            }
            of_holder.epoch = holder_epoch;
        }
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
        }
    }

    /// The room and table entry of a holder's client.
    pub(super) fn get(&self, holder: &str, key: u64) -> Option<(RoomHandle, ConnRef)> {
        let conns = self.lock();
        let served = conns.get(holder)?.clients.get(&key)?;
        Some((served.room.clone(), served.conn))
    }

    /// Stops serving a client that left; its forwarder ends with the
    /// close the room sends it.
    pub(super) fn remove(&self, holder: &str, key: u64) -> Option<(RoomHandle, ConnRef)> {
        let mut conns = self.lock();
        let of_holder = conns.get_mut(holder)?;
        let served = of_holder.clients.remove(&key)?;
        if of_holder.clients.is_empty() {
            conns.remove(holder);
        }
        Some((served.room, served.conn))
    }

    /// This node lost its projects: nothing more goes to their clients from
    /// here (the node that takes a project over serves them).
    pub(super) fn clear(&self) {
        for (_, of_holder) in self.lock().drain() {
            for served in of_holder.clients.into_values() {
                served.forwarder.abort();
            }
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
        let Some(of_holder) = conns.remove(holder) else {
            return Vec::new();
        };
        of_holder
            .clients
            .into_values()
            .map(|served| {
                served.forwarder.abort();
                (served.room, served.conn)
            })
            .collect()
    }

    pub(super) fn len(&self) -> usize {
        self.lock().values().map(|of| of.clients.len()).sum()
    }
}

/// Publishes what the room queues for a client on another node, batch by
/// batch, until the client's outbox finishes.
async fn forward(
    client: async_nats::Client,
    subject: async_nats::Subject,
    key: u64,
    epoch: u64,
    outbox: Arc<Outbox>,
) {
    let mut batch = Vec::new();
    let mut seq = 0;
    loop {
        let next = outbox.take(&mut batch).await;
        seq += 1;
        let body = wire::frames(key, epoch, seq, next, &batch);
        batch.clear();
        // Publishing waits while the connection's buffer is full and fails
        // only once the client is closed: the holder sees the gap then.
        if client.publish(subject.clone(), body).await.is_err() || next != Next::Continue {
            return;
        }
    }
}
