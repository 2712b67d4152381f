//! The handle connections and the registry hold on a live room, and the
//! room's inbox: bounded in events and in bytes of messages (and of HTTP
//! requests' bodies), so a room that falls behind slows its senders down
//! (TCP back-pressure) instead of holding their messages in memory.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};

use super::turn::ReaderTurn;
use super::{Core, Event, Incoming, Queued, RoomShared};

#[derive(Clone)]
pub struct RoomHandle {
    pub(crate) project: Arc<str>,
    tx: mpsc::Sender<Box<Queued>>,
    /// The inbox's bound in bytes: a queued message holds as many permits
    /// as it has bytes (at most all of them) until the room takes it.
    inbox_bytes: Arc<Semaphore>,
    inbox_bytes_max: u32,
    pub(super) core: Arc<Core>,
    pub(crate) shared: Arc<RoomShared>,
    pub generation: u64,
}

impl RoomHandle {
    pub(super) fn new(
        project: Arc<str>,
        tx: mpsc::Sender<Box<Queued>>,
        inbox_bytes_max: u32,
        core: Arc<Core>,
        shared: Arc<RoomShared>,
        generation: u64,
    ) -> RoomHandle {
        RoomHandle {
            project,
            tx,
            inbox_bytes: Arc::new(Semaphore::new(inbox_bytes_max as usize)),
            inbox_bytes_max,
            core,
            shared,
            generation,
        }
    }

    /// Queues an event for the room's task. Waits while the inbox is full,
    /// in events or in bytes of messages; gives the event back if the room
    /// is gone.
    pub async fn send(&self, event: Event) -> Result<(), Event> {
        let size = match &event {
            Event::Message { message, .. } | Event::Forwarded { message, .. } => match message {
                Incoming::Text(text) => text.len(),
                Incoming::Binary(bytes) => bytes.len(),
                Incoming::TooLarge(_) => 0,
            },
            Event::Fetch { request, .. } => request.body.len(),
            _ => 0,
        };
        let bytes = match u32::try_from(size).unwrap_or(u32::MAX) {
            0 => None,
            n => match self
                .inbox_bytes
                .clone()
                .acquire_many_owned(n.min(self.inbox_bytes_max))
                .await
            {
                Ok(bytes) => Some(bytes),
                Err(_) => return Err(event),
            },
        };
        // (A permit first: the event is not kept twice in this future, and
        // every connection's task holds one of these.)
        let Ok(permit) = self.tx.reserve().await else {
            return Err(event);
        };
        permit.send(Box::new(Queued {
            event,
            _bytes: bytes,
        }));
        self.core.wake.notify_one();
        Ok(())
    }

    /// Takes the room to run messages in the calling task, if nobody runs
    /// it and nothing waits in its inbox (whatever waits there came first).
    /// Ending the turn flushes and wakes: see `ReaderTurn`.
    pub fn try_run(&self) -> Option<ReaderTurn<'_>> {
        let actor = self.core.actor.try_lock().ok()?;
        // Checked under the lock: only its holder takes events from the
        // inbox, so one queued before this point is still there.
        if self.tx.capacity() != self.tx.max_capacity()
            || actor.stopped
            || !actor.registry.lease_holds(actor.lease_generation)
        {
            return None;
        }
        Some(ReaderTurn::new(actor, &self.core))
    }
}
