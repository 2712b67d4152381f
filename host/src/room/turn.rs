//! A connection reader's turn at running the room: while it holds the
//! room's lock it hands its messages to the guest itself, with no task
//! switch. Ending the turn (dropping it) does the work the room's task
//! would have done after the batch: it wakes the writers of what the
//! messages queued, and the room's task when there is work for it.

use tokio::sync::MutexGuard;

use super::table::ConnRef;
use super::{Actor, Core, Incoming};

pub struct ReaderTurn<'a> {
    actor: MutexGuard<'a, Actor>,
    core: &'a Core,
    /// The alarm when the turn began.
    alarm: Option<u64>,
    /// Whether the room had a live instance then.
    live: bool,
}

impl<'a> ReaderTurn<'a> {
    pub(super) fn new(mut actor: MutexGuard<'a, Actor>, core: &'a Core) -> ReaderTurn<'a> {
        let alarm = actor.table().alarm_at;
        let live = actor.instance.is_live();
        ReaderTurn {
            actor,
            core,
            alarm,
            live,
        }
    }

    /// Hands a client's message to the guest.
    ///
    /// The future must be run to its end: dropped halfway, it would leave
    /// the guest's call unfinished and the room failed.
    pub async fn message(&mut self, conn: ConnRef, message: Incoming, read_at: std::time::Instant) {
        self.actor.handle_message(conn, message, read_at).await;
    }
}

impl Drop for ReaderTurn<'_> {
    /// Wakes the writers of what the messages queued (each writes all of it
    /// at once), and the room's task when there is work for it: clients
    /// whose queue overflowed to close, an alarm moved, a room left empty,
    /// an instance created or dropped (its hibernation timer).
    fn drop(&mut self) {
        let actor = &mut *self.actor;
        if actor.uncommitted() && !actor.commit_in_memory() {
            // The messages wrote: their frames wait for the commit, which
            // the room's task makes (a reader does not wait on the disk).
            self.core.wake.notify_one();
            return;
        }
        actor.flush();
        let live = actor.instance.is_live();
        let table = actor.table();
        if table.alarm_at != self.alarm
            || table.is_empty()
            || !table.overflowed.is_empty()
            || live != self.live
        {
            self.core.wake.notify_one();
        }
    }
}
