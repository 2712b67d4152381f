//! A connection reader's turn at running the room: while it holds the
//! room's lock it hands its messages to the guest itself, with no task
//! switch. Ending the turn (dropping it) does the work the room's task
//! would have done after the batch: it wakes the writers of what the
//! messages queued, and the room's task when there is work for it.
//!
//! A room that takes batches (`on-texts`) gets the client's text messages
//! that have already arrived in one call: the turn gathers them until the
//! reader runs them ([`ReaderTurn::run_gathered`]), which it does before
//! it waits for its client, before it answers anything itself and before
//! it ends the turn.

use tokio::sync::MutexGuard;

use super::table::ConnRef;
use super::{Actor, Core, Incoming};
use crate::engine::Batch;

/// Gathered messages run as soon as their text passes this many bytes; a
/// message this long or longer is never gathered (it would only be copied
/// once more).
const GATHERED_BYTES: usize = 64 * 1024;

/// The largest gathering buffers a live room keeps for the next turn (a
/// larger one's are freed at once).
const GATHERED_KEPT_BYTES: usize = 16 * 1024;

pub struct ReaderTurn<'a> {
    actor: MutexGuard<'a, Actor>,
    core: &'a Core,
    /// The alarm when the turn began.
    alarm: Option<u64>,
    /// Whether the room had a live instance then.
    live: bool,
    /// Text messages gathered for the room's `on-texts` (the buffers taken
    /// from the actor when first needed; boxed, as every byte of a turn is
    /// in every connection's task).
    gathered: Option<Box<Gathering>>,
}

/// A client's text messages gathered for the room's `on-texts`, and whose.
#[derive(Default)]
pub(super) struct Gathering {
    batch: Batch,
    from: Option<ConnRef>,
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
            gathered: None,
        }
    }

    /// Hands a client's message to the guest.
    ///
    /// The future must be run to its end: dropped halfway, it would leave
    /// the guest's call unfinished and the room failed.
    ///
    /// A text message for a room that takes batches is gathered instead
    /// while `more` says the client's next frames are already here, and
    /// the gathered messages run with the last of them; the messages of
    /// one turn are all of one client.
    pub async fn message(
        &mut self,
        conn: ConnRef,
        message: Incoming,
        read_at: std::time::Instant,
        more: bool,
    ) {
        if let Incoming::Text(text) = &message
            && (more || self.has_gathered())
            && text.len() < GATHERED_BYTES
            && self.gathered_from().is_none_or(|from| from == conn)
            && self.actor.takes_batches()
        {
            let gathered = self
                .gathered
                .get_or_insert_with(|| self.actor.gathered.take().unwrap_or_default());
            if self
                .actor
                .add_to_batch(&mut gathered.batch, conn, text, read_at)
            {
                gathered.from = Some(conn);
            }
            if !more || gathered.batch.bytes() >= GATHERED_BYTES {
                self.run_gathered().await;
            }
            return;
        }
        self.run_gathered().await;
        self.actor.handle_message(conn, message, read_at).await;
    }

    /// Whether messages are gathered, waiting for [`ReaderTurn::run_gathered`].
    pub fn has_gathered(&self) -> bool {
        self.gathered_from().is_some()
    }

    fn gathered_from(&self) -> Option<ConnRef> {
        self.gathered.as_ref().and_then(|g| g.from)
    }

    /// Hands the gathered messages to the room, in one call.
    ///
    /// As [`ReaderTurn::message`], the future must be run to its end.
    pub async fn run_gathered(&mut self) {
        let Some(gathered) = self.gathered.as_mut() else {
            return;
        };
        let Some(conn) = gathered.from.take() else {
            return;
        };
        let batch = &mut gathered.batch;
        self.actor.handle_batch(conn, batch).await;
        batch.clear();
    }
}

impl Drop for ReaderTurn<'_> {
    /// Wakes the writers of what the messages queued (each writes all of it
    /// at once), and the room's task when there is work for it: clients
    /// whose queue overflowed to close, an alarm moved, a room left empty,
    /// an instance created or dropped (its hibernation timer).
    fn drop(&mut self) {
        debug_assert!(
            !self.has_gathered(),
            "a reader ended its turn with messages gathered and not run"
        );
        let actor = &mut *self.actor;
        // Kept for the next turn by a live room (a failed or hibernated
        // one dropped its own), unless a large batch grew them; emptied,
        // whether or not a call cut short left messages in them.
        if let Some(mut gathered) = self.gathered.take()
            && actor.instance.is_live()
            && gathered.batch.bytes_kept() <= GATHERED_KEPT_BYTES
        {
            gathered.batch.clear();
            gathered.from = None;
            actor.gathered = Some(gathered);
        }
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
