//! The actor's side of an event: dispatching it to the guest's export,
//! making an instance first when the room has none, and what a trap does
//! (the instance is dropped and the room's clients are closed with 1011;
//! other projects never notice).

use tracing::{debug, warn};
use wasmtime::Store;

use super::table::{ConnRef, Table};
use super::{
    Actor, BATCH, CLOSE_GOING_AWAY, CLOSE_ROOM_FAILED, CLOSE_SERVICE_RESTART, Event, Fetched,
    Incoming, Instance, Queued, Refusal, client_info,
};
use crate::engine::{self, Room, RoomState};
use crate::metrics::RoomCall;
use crate::store::{Alarm, Changes, RoomStore};

/// A guest call (or instantiation) that failed.
pub(super) struct Trapped(pub(super) anyhow::Error);

/// Calls a guest export under a fresh CPU budget, instantiating the room
/// first if it has no live instance.
macro_rules! call {
    ($actor:expr, $export:expr, |$room:ident, $store:ident| $call:expr) => {
        match $actor.ensure_live().await {
            Ok(($store, $room)) => {
                let started = std::time::Instant::now();
                let result = $call.await;
                $actor.metrics.room_call($export, started.elapsed());
                result.map_err(|e| Trapped(anyhow::Error::from(e)))
            }
            Err(t) => Err(t),
        }
    };
}
pub(super) use call;

/// The largest text message whose layout for `on-text` is kept for the next
/// (a larger one's is freed at once).
const SCRATCH_KEPT_BYTES: usize = 4096;

impl Instance {
    pub(super) fn is_live(&self) -> bool {
        matches!(self, Instance::Live { .. })
    }

    fn table(&mut self) -> &mut Table {
        match self {
            Instance::Live { store, .. } => &mut store.data_mut().table,
            Instance::Hibernated(table) => table,
            // `Moving` lasts only inside `ensure_live` and `drop_instance`,
            // which never call back here before they put the table back.
            Instance::Moving => unreachable!("the room's table is always present"),
        }
    }
}

impl Actor {
    pub(super) fn table(&mut self) -> &mut Table {
        self.instance.table()
    }

    /// Handles what waits in the inbox, in batches; true when the room is
    /// finished (shut down, or removed for being empty).
    pub(super) async fn drain(&mut self) -> bool {
        loop {
            if !self.registry.lease_holds(self.lease_generation) {
                self.lose_lease().await;
                return true;
            }
            let mut handled = 0;
            while handled < BATCH {
                // The message's bytes are given back once it is handled.
                let Ok(queued) = self.rx.try_recv() else {
                    break;
                };
                let Queued { event, _bytes } = *queued;
                match event {
                    Event::Shutdown => {
                        self.shut_down(CLOSE_GOING_AWAY, "server shutting down", true)
                            .await;
                        return true;
                    }
                    Event::LeaseLost => {
                        self.lose_lease().await;
                        return true;
                    }
                    _ => {}
                }
                self.handle(event).await;
                handled += 1;
            }
            // A room nobody is connected to has nothing for an instance to
            // do but its alarm, which waits without one: it goes now rather
            // than after --hibernate-after-ms, so that clients leaving many
            // rooms at once (a deploy, a network blip) do not wake a live
            // instance per room that then waits there.
            if handled > 0 && self.instance.is_live() && self.table().is_empty() {
                self.hibernate();
            }
            self.finish_batch().await;
            if self.try_remove() {
                return true;
            }
            if handled < BATCH {
                return false;
            }
        }
    }

    /// After a batch of events: commit what they changed, then wake the
    /// writers (each writes many frames at once), close the clients whose
    /// queue overflowed.
    pub(super) async fn finish_batch(&mut self) {
        self.commit().await;
        self.flush();
        self.settle().await;
        self.commit().await;
        self.table().flush();
    }

    /// Whether the room's data still has to be read (back) from the store.
    pub(super) fn needs_load(&mut self) -> bool {
        self.settings.store.is_some() && !self.table().storage.is_loaded()
    }

    /// The output gate: makes what the calls since the last commit changed
    /// (store and alarm) durable. Their frames wait in the table until then,
    /// so no client hears of a write that a crash could still undo. A room
    /// that changed nothing (or keeps no durable store) does not wait.
    /// Returns false if the commit failed (the room was reset).
    pub(super) async fn commit(&mut self) -> bool {
        // Twice a batch: nothing to do, nothing is touched (the common case).
        if !self.uncommitted() {
            return true;
        }
        let Some(store) = self.settings.store.clone() else {
            return true;
        };
        let (changes, alarm) = self.changes_to_commit(store.whole_rooms());
        match store.commit(self.project.clone(), changes).await {
            Ok(revision) => {
                self.committed(revision, alarm);
                true
            }
            Err(e) => {
                // The frames of those calls tell of writes now lost: they
                // are dropped, and the room starts again from what is
                // committed, its clients closed as after a trap.
                self.table().discard_pending();
                self.table().storage.unload();
                self.fail("commit", anyhow::anyhow!("the store could not commit: {e}"));
                if let Err(e) = self.ensure_loaded().await {
                    warn!(project = %self.project, error = %format!("{e:#}"), "cannot read the room's data again; trying again in a second");
                }
                false
            }
        }
    }

    /// What the calls since the last commit changed, and the alarm now.
    fn changes_to_commit(&mut self, whole_rooms: bool) -> (Changes, Option<Alarm>) {
        let alarm = self.table().alarm();
        let mut changes = self.table().storage.take_changes();
        changes.alarm_changed = alarm != self.committed_alarm;
        if changes.alarm_changed || whole_rooms {
            changes.alarm = Some(alarm);
        }
        (changes, alarm)
    }

    /// What was handed to the store is in it now.
    fn committed(&mut self, revision: u64, alarm: Option<Alarm>) {
        self.table().storage.committed(revision);
        self.committed_alarm = alarm;
    }

    /// With `--in-memory`, a commit is an update of a map that cannot fail:
    /// made at once by whoever runs the room (a reader too), so the frames
    /// it held go without waiting for the room's task. False with a
    /// durable store (nothing done).
    pub(super) fn commit_in_memory(&mut self) -> bool {
        let store = match &self.settings.store {
            Some(RoomStore::Memory(store)) => store.clone(),
            _ => return false,
        };
        if self.uncommitted() {
            let (changes, alarm) = self.changes_to_commit(false);
            store.commit(self.project.clone(), changes);
            self.committed(0, alarm);
        }
        true
    }

    /// Whether the room changed something not yet committed (its frames
    /// must wait for [`Actor::commit`]). Not while its data is unread (reset
    /// after a failure): nothing in it is the room's then, not even the
    /// alarm, and the stored one must not be overwritten.
    pub(super) fn uncommitted(&mut self) -> bool {
        self.settings.store.is_some() && {
            let committed = self.committed_alarm;
            let table = self.table();
            table.storage.is_loaded() && (table.storage.has_changes() || table.alarm() != committed)
        }
    }

    /// Reads the room's store and alarm from the durable store, once (and
    /// again after a failed commit).
    pub(super) async fn ensure_loaded(&mut self) -> anyhow::Result<()> {
        let Some(store) = self.settings.store.clone() else {
            return Ok(());
        };
        if self.table().storage.is_loaded() {
            return Ok(());
        }
        let data = store.load(self.project.clone()).await?;
        let table = self.table();
        table.storage.load(data.entries, data.revision);
        table.alarm_at = data.alarm.map(|a| a.at);
        table.alarm_retry = data.alarm.map_or(0, |a| a.retry);
        self.committed_alarm = data.alarm;
        Ok(())
    }

    /// Wakes the writers of what the last events queued, moves the
    /// hibernation deadline on if one was handled, and sets `lastActivity`
    /// if one was a connect or a message.
    pub(super) fn flush(&mut self) {
        if std::mem::take(&mut self.handled_since_flush) {
            self.last_event = tokio::time::Instant::now();
        }
        if std::mem::take(&mut self.activity_unrecorded) {
            self.table().touch();
        }
        let messages = std::mem::take(&mut self.messages_since_flush);
        if messages > 0 {
            self.table().shared().count_messages(messages);
        }
        self.table().flush();
    }

    /// Notes that an event was handled (for the flush and the clock).
    pub(super) fn mark_handled(&mut self) {
        self.handled_since_flush = true;
        self.used_since_clock_passed = true;
    }

    /// Handles one client message, as [`Actor::handle`] does: what a reader
    /// running the room calls, whose future is a fraction of `handle`'s
    /// (which holds the largest of every event's) and is moved into a box
    /// for every message.
    pub(super) async fn handle_message(
        &mut self,
        conn: ConnRef,
        message: Incoming,
        read_at: std::time::Instant,
    ) {
        self.mark_handled();
        self.message(conn, message, read_at).await;
    }

    pub(super) async fn handle(&mut self, event: Event) {
        self.mark_handled();
        match event {
            Event::Connect {
                meta,
                outbox,
                reply,
            } => {
                if self.table().len() >= self.settings.max_clients {
                    let _ = reply.send(Err(Refusal::Full {
                        limit: self.settings.max_clients,
                    }));
                    return;
                }
                let conn = self.table().insert(meta.clone(), outbox.clone());
                self.activity_unrecorded = true;
                let info = client_info(&meta);
                let result = match call!(self, RoomCall::Connect, |room, store| room
                    .call_on_connect(store, &info))
                {
                    Ok(Ok(())) => Ok(conn),
                    Ok(Err(r)) => {
                        self.table().remove(conn);
                        outbox.abort();
                        // The refusal is output too: if the room wrote
                        // before refusing, it waits for the commit.
                        if !self.commit().await {
                            Err(Refusal::Failed)
                        } else {
                            Err(Refusal::Refused {
                                status: r.status,
                                error: r.error,
                                message: r.message,
                            })
                        }
                    }
                    Err(Trapped(e)) => {
                        self.fail("on-connect", e);
                        Err(Refusal::Failed)
                    }
                };
                let admitted = result.is_ok();
                if reply.send(result).is_err() && admitted {
                    // The request went away before it could be answered.
                    self.leave(conn, 1006, String::new()).await;
                }
            }
            Event::Message {
                conn,
                message,
                read_at,
            } => self.message(conn, message, read_at).await,
            Event::Forwarded {
                conn,
                message,
                done,
                read_at,
            } => {
                self.message(conn, message, read_at).await;
                let _ = done.send(());
            }
            Event::Rejoin {
                meta,
                outbox,
                reply,
            } => {
                // Admitted by the room before it moved here: the table
                // takes it back as a hibernated room's would, without
                // asking the room again.
                let conn = self.table().insert(meta, outbox);
                if reply.send(conn).is_err() {
                    self.leave(conn, 1006, String::new()).await;
                }
            }
            Event::Close { conn, code, reason } => self.leave(conn, code, reason).await,
            Event::Fetch { request, reply } => {
                let answer = self.fetch(&request).await;
                let _ = reply.send(answer);
            }
            Event::Shutdown | Event::LeaseLost => {}
        }
    }

    /// In a cluster, this node's lease ran out: another node may take the
    /// project any moment, so the room stops here, closing its clients
    /// with 1012 (they reconnect, and find its new owner).
    pub(super) async fn lose_lease(&mut self) {
        warn!(project = %self.project, "stopping the room: this node's lease ran out");
        // Nothing is committed: the project may be another node's already,
        // and what the room's last events wrote was never told to anyone.
        self.shut_down(
            CLOSE_SERVICE_RESTART,
            "this node lost the project; reconnect",
            false,
        )
        .await;
    }

    /// Hands a client's message to the room.
    async fn message(&mut self, conn: ConnRef, message: Incoming, read_at: std::time::Instant) {
        let Some(c) = self.table().get(conn) else {
            return;
        };
        let sender = c.sender.clone();
        self.table().message_read_at(read_at);
        self.activity_unrecorded = true;
        self.messages_since_flush += 1;
        let mut scratch = self
            .scratch
            .take()
            .unwrap_or_else(|| engine::wit::TextFrom {
                data: String::new(),
                kind_at: 0,
                text_at: 0,
            });
        let called = call!(self, RoomCall::Message, |room, store| room.call_on_message(
            store,
            &sender,
            &message,
            &mut scratch
        ));
        // Kept for the next message, unless a large one grew it.
        if scratch.data.capacity() <= SCRATCH_KEPT_BYTES {
            self.scratch = Some(scratch);
        }
        if let Err(Trapped(e)) = called {
            let export = match &self.instance {
                Instance::Live { room, .. } => room.message_export(&message),
                _ => "on-message",
            };
            self.fail(export, e);
        }
    }

    /// Whether the room's live instance takes a client's text messages
    /// several at a time (`on-texts`).
    pub(super) fn takes_batches(&self) -> bool {
        matches!(&self.instance, Instance::Live { room, .. } if room.takes_batches())
    }

    /// Adds a text message of `conn`'s to `batch`; false if the client is
    /// gone (nothing added).
    pub(super) fn add_to_batch(
        &mut self,
        batch: &mut engine::Batch,
        conn: ConnRef,
        text: &str,
        read_at: std::time::Instant,
    ) -> bool {
        let table = self.table();
        let Some(c) = table.get(conn) else {
            return false;
        };
        batch.push(&c.sender, text);
        table.message_read_at(read_at);
        true
    }

    /// Hands a client's text messages, laid out in `batch`, to the room's
    /// `on-texts` in one call (each is an event as if it had come alone:
    /// see `wit/room.wit`); one message alone to `on-text`.
    pub(super) async fn handle_batch(&mut self, conn: ConnRef, batch: &engine::Batch) {
        self.mark_handled();
        self.activity_unrecorded = true;
        let called = match self.ensure_live().await {
            Ok((store, room)) => {
                engine::arm_for(store, batch.len() as u64);
                let started = std::time::Instant::now();
                let called = room.call_on_texts(store, batch).await;
                if !matches!(called, Ok(false)) {
                    self.metrics.room_call(RoomCall::Message, started.elapsed());
                }
                called.map_err(|e| Trapped(anyhow::Error::from(e)))
            }
            Err(t) => Err(t),
        };
        if !matches!(called, Ok(false)) {
            self.messages_since_flush += batch.len() as u64;
        }
        match called {
            Ok(true) => {}
            // The instance was made anew from a reloaded component that
            // takes no batches: one call per message.
            Ok(false) => {
                for text in batch.texts() {
                    let message = Incoming::Text(text.to_owned());
                    self.message(conn, message, std::time::Instant::now()).await;
                }
            }
            Err(Trapped(e)) => self.fail(batch.export(), e),
        }
    }

    /// Hands an HTTP request to the room's `fetch`. Its answer is output
    /// like a message: it waits for what the call wrote to be committed.
    async fn fetch(&mut self, request: &engine::wit::HttpRequest) -> Fetched {
        self.activity_unrecorded = true;
        match call!(self, RoomCall::Fetch, |room, store| room
            .call_fetch(store, request))
        {
            Ok(Some(response)) => {
                if self.commit().await {
                    Fetched::Answered(response)
                } else {
                    Fetched::Failed
                }
            }
            Ok(None) => Fetched::NoHandler,
            Err(Trapped(e)) => {
                self.fail("fetch", e);
                Fetched::Failed
            }
        }
    }

    /// Removes a client and tells the room.
    async fn leave(&mut self, conn: ConnRef, code: u16, reason: String) {
        let Some(mut c) = self.table().remove(conn) else {
            return;
        };
        debug!(project = %self.project, client = %c.meta.id, code, "client left");
        let info = client_info(&c.meta);
        let leaving = (c.meta.id.clone(), c.attachment.take());
        self.table().close_later(c, 1000, "");
        self.table().leaving = Some(leaving);
        let called = call!(self, RoomCall::Close, |room, store| room
            .call_on_close(store, &info, code, &reason));
        self.table().leaving = None;
        if let Err(Trapped(e)) = called {
            self.fail("on-close", e);
        }
    }

    /// Removes the clients whose outbox overflowed during the last calls,
    /// telling the room about each.
    async fn settle(&mut self) {
        while let Some(conn) = self.table().overflowed.pop() {
            if self.table().get(conn).is_some() {
                self.metrics.outbox_overflow();
                warn!(project = %self.project, "client too slow: outgoing queue full, closed with 1013");
                self.leave(
                    conn,
                    crate::outbox::CLOSE_TOO_SLOW,
                    "outgoing queue full".into(),
                )
                .await;
            }
        }
    }

    /// The live instance, created first if there is none.
    pub(super) async fn ensure_live(&mut self) -> Result<(&mut Store<RoomState>, &Room), Trapped> {
        if let Instance::Live { version, .. } = self.instance
            && version != self.runtime.version()
        {
            // The components were reloaded: continue on the new code, from
            // the host's table, as after hibernation. No client notices.
            self.drop_instance();
            self.metrics.room_upgraded();
            tracing::info!(project = %self.project, "room switched to the reloaded component");
        }
        if !self.instance.is_live() {
            // Boxed: waking a room is rare, and its future (instantiation,
            // the store's load) is kilobytes that every room call's future
            // would otherwise carry and copy.
            Box::pin(self.make_live()).await?;
        }
        let Instance::Live { store, room, .. } = &mut self.instance else {
            unreachable!("instance just made live");
        };
        engine::arm(store);
        Ok((store, room))
    }

    /// Makes a hibernated room live: loads its storage if need be and
    /// instantiates its component.
    async fn make_live(&mut self) -> Result<(), Trapped> {
        self.ensure_loaded().await.map_err(Trapped)?;
        let permit = self.registry.instances().acquire(&self.me).await;
        let Instance::Hibernated(table) = std::mem::replace(&mut self.instance, Instance::Moving)
        else {
            unreachable!("not live, so hibernated");
        };
        match self.runtime.instantiate(*table).await {
            Ok((store, room, version)) => {
                self.instance = Instance::Live {
                    store,
                    room,
                    version,
                    _permit: permit,
                };
                self.table().shared().set_awake(true);
                self.metrics.instance_created();
            }
            Err((table, e)) => {
                self.instance = Instance::Hibernated(Box::new(table));
                return Err(Trapped(e));
            }
        }
        Ok(())
    }

    /// Drops the instance (if any), keeping the table.
    pub(super) fn drop_instance(&mut self) {
        if !self.instance.is_live() {
            return;
        }
        if let Instance::Live { store, .. } =
            std::mem::replace(&mut self.instance, Instance::Moving)
        {
            let mut table = store.into_data().table;
            table.shrink();
            self.scratch = None;
            self.gathered = None;
            table.shared().set_awake(false);
            self.instance = Instance::Hibernated(Box::new(table));
            self.metrics.instance_dropped();
        }
    }

    /// The guest trapped: drop its instance, close its clients with 1011.
    pub(super) fn fail(&mut self, during: &str, error: anyhow::Error) {
        self.metrics.room_failed();
        let clients = self.table().len();
        warn!(project = %self.project, during, clients, error = %format!("{error:#}"), "room failed; closing its clients");
        self.drop_instance();
        let table = self.table();
        for c in table.drain() {
            table.close_later(c, CLOSE_ROOM_FAILED, "room failed");
        }
        table.alarm_at = None;
        table.alarm_retry = 0;
        table.overflowed.clear();
    }
}
