//! The room actor: the state of one live project, run by one task at a time.
//!
//! Events (connect, message, close) wait in a bounded inbox; the room's own
//! task takes them from there, fires the alarm and hibernates the instance.
//! A connection's reader that finds the room idle and its inbox empty runs
//! its messages itself instead (see [`RoomHandle::try_run`]): a message then
//! reaches the guest without waking another task. Whoever runs the room
//! holds its lock, so the guest is only ever called from one task, in the
//! order the events arrived.

pub(crate) mod imports;
pub mod instances;
pub mod log_limit;
pub mod output;
pub mod storage;
pub mod table;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::{debug, error, info, warn};
use wasmtime::Store;

use crate::engine::{self, Room, RoomState, Runtime, wit};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::registry::Registry;
use table::{ConnRef, Table};

/// Close code for the clients of a room that failed (1011: internal error).
pub const CLOSE_ROOM_FAILED: u16 = 1011;
/// Most events handled before the writers are woken, by the room's task or
/// by a reader running the room (which then gives the room a turn).
pub const BATCH: usize = 64;
/// Close code when the server shuts down (1001: going away).
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// What the host knows about a connection (the WIT `client-info`).
#[derive(Debug)]
pub struct ClientMeta {
    pub id: Arc<str>,
    pub kind: Arc<str>,
    pub connected_at: u64,
    pub user_agent: Option<String>,
    pub origin: Option<String>,
}

/// One complete message from a client, as the room receives it.
pub use crate::engine::wit::Incoming;

/// An event in a room's inbox, with its share of the inbox's bytes.
struct Queued {
    event: Event,
    _bytes: Option<OwnedSemaphorePermit>,
}

pub enum Event {
    Connect {
        meta: Arc<ClientMeta>,
        outbox: Arc<Outbox>,
        reply: oneshot::Sender<Result<ConnRef, Refusal>>,
    },
    Message {
        conn: ConnRef,
        message: Incoming,
    },
    Close {
        conn: ConnRef,
        code: u16,
        reason: String,
    },
    Shutdown,
}

/// Why a connection was not admitted.
#[derive(Debug)]
pub enum Refusal {
    /// The room said no.
    Refused {
        status: u16,
        error: String,
        message: String,
    },
    /// The room failed while deciding.
    Failed,
    /// The project has `--max-project-connections` clients already.
    Full { limit: usize },
}

/// What `/status` and `/health` read without asking the room.
#[derive(Default)]
pub struct RoomShared {
    /// The room's clients by their table serial, which grows with each
    /// connection: iterating gives connection order, and a client leaves in
    /// O(log n) under the lock `/status` and `/health` also take (the list
    /// it replaced was scanned per leave, comparing ids, under that lock).
    /// The table's own lists are still scanned per leave, over slot numbers,
    /// in the room's task.
    clients: Mutex<BTreeMap<u64, Arc<ClientMeta>>>,
    /// Milliseconds since the Unix epoch of the last connect or message.
    pub last_activity: AtomicU64,
}

impl RoomShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<ClientMeta>>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn add_client(&self, serial: u64, meta: Arc<ClientMeta>) {
        self.lock().insert(serial, meta);
    }
    fn remove_client(&self, serial: u64) {
        self.lock().remove(&serial);
    }
    fn clear_clients(&self) {
        self.lock().clear();
    }
    /// The clients in connection order.
    pub fn clients(&self) -> Vec<Arc<ClientMeta>> {
        self.lock().values().cloned().collect()
    }
    pub fn client_count(&self) -> usize {
        self.lock().len()
    }
    fn touch(&self) {
        self.last_activity.store(now_ms(), Relaxed);
    }
}

/// How rooms behave, from the host's configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Capacity of a room's inbox, in events.
    pub inbox: usize,
    /// Capacity of a room's inbox in bytes of messages.
    pub inbox_bytes: u32,
    /// Idle time after which a room drops its instance.
    pub hibernate_after: Option<Duration>,
    /// Retries of an alarm whose handler trapped.
    pub alarm_retries: u32,
    /// Delay before the first retry; doubles with each further one.
    pub alarm_retry_base: Duration,
    /// Bytes a room's store may hold (keys and values).
    pub storage_bytes: usize,
    /// `log` lines a room may write per second (twice that in a burst).
    pub log_lines_per_sec: u32,
    /// Clients the room admits at once; more are refused before the room's
    /// code is asked.
    pub max_clients: usize,
}

/// A live room as the registry and connections see it.
#[derive(Clone)]
pub struct RoomHandle {
    pub project: Arc<str>,
    tx: mpsc::Sender<Queued>,
    /// The inbox's bound in bytes: a queued message holds as many permits
    /// as it has bytes (at most all of them) until the room takes it.
    inbox_bytes: Arc<Semaphore>,
    inbox_bytes_max: u32,
    core: Arc<Core>,
    pub shared: Arc<RoomShared>,
    pub generation: u64,
}

/// What every task that may run the room shares.
struct Core {
    actor: tokio::sync::Mutex<Actor>,
    /// Wakes the room's task: an event was queued, or the alarm changed.
    wake: Notify,
}

/// The room's lock, held by a reader running its messages itself. Dropping
/// it wakes the writers of what the messages queued.
pub struct Running<'a> {
    actor: tokio::sync::MutexGuard<'a, Actor>,
    core: &'a Core,
    /// The alarm when the room was taken.
    alarm: Option<u64>,
    /// Whether it had a live instance then.
    live: bool,
}

impl RoomHandle {
    /// Queues an event for the room's task. Waits while the inbox is full,
    /// in events or in bytes of messages; gives the event back if the room
    /// is gone.
    pub async fn send(&self, event: Event) -> Result<(), Event> {
        let size = match &event {
            Event::Message { message, .. } => match message {
                Incoming::Text(text) => text.len(),
                Incoming::Binary(bytes) => bytes.len(),
                Incoming::TooLarge(_) => 0,
            },
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
        permit.send(Queued {
            event,
            _bytes: bytes,
        });
        self.core.wake.notify_one();
        Ok(())
    }

    /// Takes the room to run a message in the calling task, if nobody runs
    /// it and nothing waits in its inbox (whatever waits there came first).
    pub fn try_run(&self) -> Option<Running<'_>> {
        let mut actor = self.core.actor.try_lock().ok()?;
        // Checked under the lock: only its holder takes events from the
        // inbox, so one queued before this point is still there.
        if self.tx.capacity() != self.tx.max_capacity() || actor.finished {
            return None;
        }
        let alarm = actor.table().alarm_at;
        let live = actor.live.is_some();
        Some(Running {
            actor,
            core: &self.core,
            alarm,
            live,
        })
    }
}

impl Running<'_> {
    /// Hands a client's message to the guest.
    ///
    /// The future must be run to its end: dropped halfway, it would leave
    /// the guest's call unfinished and the room failed.
    pub async fn message(&mut self, conn: ConnRef, message: Incoming) {
        self.actor.handle(Event::Message { conn, message }).await;
    }
}

impl Drop for Running<'_> {
    /// Wakes the writers of what the messages queued (each writes all of it
    /// at once), and the room's task when there is work for it: clients
    /// whose queue overflowed to close, an alarm moved, a room left empty,
    /// an instance created or dropped (its hibernation timer).
    fn drop(&mut self) {
        let actor = &mut *self.actor;
        actor.flush();
        let live = actor.live.is_some();
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

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts the actor of a new room and returns its handle.
pub fn spawn(
    project: Arc<str>,
    generation: u64,
    registry: Arc<Registry>,
    runtime: Runtime,
    settings: Settings,
    metrics: Arc<Metrics>,
) -> RoomHandle {
    let (tx, rx) = mpsc::channel(settings.inbox);
    let inbox_bytes_max = settings.inbox_bytes;
    let inbox_bytes = Arc::new(Semaphore::new(inbox_bytes_max as usize));
    let shared = Arc::new(RoomShared::default());
    let table = Table::new(
        project.clone(),
        registry.room_config(),
        shared.clone(),
        metrics.clone(),
        settings.storage_bytes,
        settings.log_lines_per_sec,
    );
    let handle_project = project.clone();
    let actor = |me: &Weak<Core>| Actor {
        me: me.clone(),
        project,
        generation,
        registry,
        runtime,
        settings,
        metrics,
        rx,
        live: None,
        used: false,
        live_version: 0,
        idle: Some(table),
        active: false,
        handled: false,
        last_event: tokio::time::Instant::now(),
        finished: false,
    };
    let core = Arc::new_cyclic(|me| Core {
        actor: tokio::sync::Mutex::new(actor(me)),
        wake: Notify::new(),
    });
    tokio::spawn(run(core.clone()));
    RoomHandle {
        project: handle_project,
        tx,
        inbox_bytes,
        inbox_bytes_max,
        core,
        shared,
        generation,
    }
}

struct Actor {
    /// The room's own core, for the instance pool's clock.
    me: Weak<Core>,
    project: Arc<str>,
    generation: u64,
    registry: Arc<Registry>,
    runtime: Runtime,
    settings: Settings,
    metrics: Arc<Metrics>,
    /// The inbox; only the lock's holder takes events from it.
    rx: mpsc::Receiver<Queued>,
    /// The instance, with the table inside its store, and its place in
    /// `--max-instances` (given back when the instance is dropped).
    live: Option<(Store<RoomState>, Room, instances::Permit)>,
    /// An event was handled since the instance pool's clock last passed.
    used: bool,
    /// The component version the live instance was made from.
    live_version: u64,
    /// The table while no instance is live.
    idle: Option<Table>,
    /// A connect or a message was handled since `/health`'s
    /// `lastActivity` was last set (once per batch: it reads the clock).
    active: bool,
    /// An event (or the alarm) was handled since the last flush.
    handled: bool,
    /// When the last batch with an event was flushed (hibernation counts
    /// from it; the clock is read once per batch, not per event).
    last_event: tokio::time::Instant,
    /// Shut down or removed: nothing runs here any more.
    finished: bool,
}

/// A guest call (or instantiation) that failed.
struct Trapped(anyhow::Error);

/// Calls a guest export under a fresh CPU budget, instantiating the room
/// first if it has no live instance.
macro_rules! call {
    ($actor:expr, |$room:ident, $store:ident| $call:expr) => {
        match $actor.ensure_live().await {
            Ok(($store, $room)) => $call.await.map_err(|e| Trapped(anyhow::Error::from(e))),
            Err(t) => Err(t),
        }
    };
}

impl Actor {
    fn table(&mut self) -> &mut Table {
        match (&mut self.live, &mut self.idle) {
            (Some((store, _, _)), _) => &mut store.data_mut().table,
            (None, Some(table)) => table,
            // One of the two always holds the table; see `take_table`.
            (None, None) => unreachable!("room table is always present"),
        }
    }

    /// Handles what waits in the inbox, in batches; true when the room is
    /// finished (shut down, or removed for being empty).
    async fn drain(&mut self) -> bool {
        loop {
            let mut handled = 0;
            while handled < BATCH {
                // The message's bytes are given back once it is handled.
                let Ok(Queued { event, _bytes }) = self.rx.try_recv() else {
                    break;
                };
                if matches!(event, Event::Shutdown) {
                    self.shut_down();
                    return true;
                }
                self.handle(event).await;
                handled += 1;
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

    /// After a batch of events: wake the writers (each writes many frames
    /// at once), close the clients whose queue overflowed.
    async fn finish_batch(&mut self) {
        self.flush();
        self.settle().await;
        self.table().flush();
    }

    /// When a live instance is due to hibernate, if it is to.
    fn hibernate_at(&self) -> Option<tokio::time::Instant> {
        let after = self.settings.hibernate_after?;
        self.live.as_ref().map(|_| self.last_event + after)
    }

    /// Wakes the writers of what the last events queued, moves the
    /// hibernation deadline on if one was handled, and sets `lastActivity`
    /// if one was a connect or a message.
    fn flush(&mut self) {
        if std::mem::take(&mut self.handled) {
            self.last_event = tokio::time::Instant::now();
        }
        if std::mem::take(&mut self.active) {
            self.table().touch();
        }
        self.table().flush();
    }

    /// The room is gone: connections racing with the removal learn it when
    /// their reply sender is dropped here, and retry with a new room.
    fn finish(&mut self) {
        self.finished = true;
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
        self.drop_instance();
        self.metrics.room_removed();
        info!(project = %self.project, "room removed");
    }

    /// Drops the instance (if any), keeping the table.
    fn drop_instance(&mut self) {
        if let Some((store, _, _)) = self.live.take() {
            self.idle = Some(store.into_data().table);
            self.metrics.instance_dropped();
        }
    }

    /// Idle: drop the instance but keep the clients, the attachments and the
    /// alarm. The next event creates a fresh instance.
    fn hibernate(&mut self) {
        self.drop_instance();
        self.metrics.hibernated();
        let clients = self.table().len();
        debug!(project = %self.project, clients, "room hibernated");
    }

    /// Whether the room was used since the last call (events waiting in its
    /// inbox count), clearing the mark.
    fn take_used(&mut self) -> bool {
        std::mem::take(&mut self.used) || !self.rx.is_empty()
    }

    /// Another room needs an instance and `--max-instances` are live: this
    /// idle one hibernates early.
    fn evict(&mut self) {
        self.drop_instance();
        self.metrics.instance_evicted();
        debug!(project = %self.project, "room hibernated early: --max-instances reached");
    }

    /// Server shutdown: every client gets 1001 after what is queued for it.
    fn shut_down(&mut self) {
        self.table().flush();
        for c in self.table().drain() {
            c.outbox.close(CLOSE_GOING_AWAY, "server shutting down");
        }
        self.registry.remove_if(&self.project, self.generation);
    }

    /// Removes the room if it is empty with no alarm set.
    fn try_remove(&mut self) -> bool {
        let t = self.table();
        if !t.is_empty() || t.alarm_at.is_some() {
            return false;
        }
        self.registry.remove_if(&self.project, self.generation)
    }

    async fn handle(&mut self, event: Event) {
        self.handled = true;
        self.used = true;
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
                self.active = true;
                let info = client_info(&meta);
                let result = match call!(self, |room, store| room.call_on_connect(store, &info)) {
                    Ok(Ok(())) => Ok(conn),
                    Ok(Err(r)) => {
                        self.table().remove(conn);
                        outbox.abort();
                        Err(Refusal::Refused {
                            status: r.status,
                            error: r.error,
                            message: r.message,
                        })
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
            Event::Message { conn, message } => {
                let Some(c) = self.table().get(conn) else {
                    return;
                };
                let sender = c.sender.clone();
                self.active = true;
                if let Err(Trapped(e)) = call!(self, |room, store| room
                    .call_on_message(store, &sender, &message))
                {
                    self.fail("on-message", e);
                }
            }
            Event::Close { conn, code, reason } => self.leave(conn, code, reason).await,
            Event::Shutdown => {}
        }
    }

    /// Removes a client and tells the room.
    async fn leave(&mut self, conn: ConnRef, code: u16, reason: String) {
        let Some(c) = self.table().remove(conn) else {
            return;
        };
        c.outbox.close(1000, "");
        debug!(project = %self.project, client = %c.meta.id, code, "client left");
        let info = client_info(&c.meta);
        if let Err(Trapped(e)) = call!(self, |room, store| room
            .call_on_close(store, &info, code, &reason))
        {
            self.fail("on-close", e);
        }
    }

    /// Calls the alarm handler; if it traps, resets the room like any trap
    /// and schedules a retry with exponential backoff, a few times.
    async fn fire_alarm(&mut self) {
        self.handled = true;
        self.used = true;
        let retry = self.table().alarm_retry;
        self.table().alarm_at = None;
        self.table().alarm_retry = 0;
        let info = wit::AlarmInfo { retry_count: retry };
        if let Err(Trapped(e)) = call!(self, |room, store| room.call_alarm(store, info)) {
            self.fail("alarm", e);
            if retry < self.settings.alarm_retries {
                let delay = self
                    .settings
                    .alarm_retry_base
                    .saturating_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX));
                let table = self.table();
                table.alarm_at = Some(now_ms().saturating_add(delay.as_millis() as u64));
                table.alarm_retry = retry + 1;
                warn!(project = %self.project, retry = retry + 1, delay_ms = delay.as_millis() as u64, "alarm handler failed; retrying");
            } else {
                self.metrics.alarm_given_up();
                error!(project = %self.project, attempts = retry + 1, "alarm handler failed every time; giving up");
            }
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
    async fn ensure_live(&mut self) -> Result<(&mut Store<RoomState>, &Room), Trapped> {
        if self.live.is_some() && self.live_version != self.runtime.version() {
            // The components were reloaded: continue on the new code, from
            // the host's table, as after hibernation. No client notices.
            self.drop_instance();
            self.metrics.room_upgraded();
            info!(project = %self.project, "room switched to the reloaded component");
        }
        if self.live.is_none() {
            let permit = self.registry.instances().acquire(&self.me).await;
            let table = self
                .idle
                .take()
                .expect("idle table present when no instance");
            match self.runtime.instantiate(table).await {
                Ok((store, room, version)) => {
                    self.live = Some((store, room, permit));
                    self.live_version = version;
                    self.metrics.instance_created();
                }
                Err((table, e)) => {
                    self.idle = Some(table);
                    return Err(Trapped(e));
                }
            }
        }
        let (store, room, _) = self.live.as_mut().expect("instance just ensured");
        engine::arm(store);
        Ok((store, room))
    }

    /// The guest trapped: drop its instance, close its clients with 1011.
    fn fail(&mut self, during: &str, error: anyhow::Error) {
        self.metrics.room_failed();
        let clients = self.table().len();
        warn!(project = %self.project, during, clients, error = %format!("{error:#}"), "room failed; closing its clients");
        self.drop_instance();
        let table = self.table();
        for c in table.drain() {
            c.outbox.close(CLOSE_ROOM_FAILED, "room failed");
        }
        table.alarm_at = None;
        table.alarm_retry = 0;
        table.overflowed.clear();
    }
}

/// The room's own task: runs what waits in the inbox, fires the alarm,
/// hibernates an idle instance, until the room is finished.
async fn run(core: Arc<Core>) {
    {
        let actor = core.actor.lock().await;
        actor.metrics.room_created();
        info!(project = %actor.project, "room created");
    }
    loop {
        let (alarm, hibernate_at) = {
            let mut actor = core.actor.lock().await;
            if actor.finished {
                return;
            }
            (actor.table().alarm_at, actor.hibernate_at())
        };
        let woken = tokio::select! {
            () = core.wake.notified() => Woken::Event,
            () = tokio::time::sleep_until(hibernate_at.unwrap_or_else(tokio::time::Instant::now)), if hibernate_at.is_some() => Woken::Idle,
            () = sleep_until_ms(alarm.unwrap_or(0)), if alarm.is_some() => Woken::Alarm,
        };
        let mut actor = core.actor.lock().await;
        let actor = &mut *actor;
        if actor.finished {
            return;
        }
        match woken {
            Woken::Event => {}
            Woken::Idle => {
                // Messages run by readers meanwhile move the deadline on.
                if actor
                    .hibernate_at()
                    .is_some_and(|at| at <= tokio::time::Instant::now())
                {
                    actor.hibernate();
                }
            }
            Woken::Alarm => {
                // The alarm may have been moved or cancelled meanwhile.
                if actor.table().alarm_at.is_some_and(|at| at <= now_ms()) {
                    actor.fire_alarm().await;
                    actor.finish_batch().await;
                }
            }
        }
        if actor.drain().await {
            actor.finish();
            return;
        }
    }
}

/// Why the room's task woke.
enum Woken {
    Event,
    Idle,
    Alarm,
}

pub(crate) fn client_info(meta: &ClientMeta) -> wit::ClientInfo {
    wit::ClientInfo {
        id: meta.id.to_string(),
        kind: meta.kind.to_string(),
        connected_at: meta.connected_at,
        user_agent: meta.user_agent.clone(),
        origin: meta.origin.clone(),
    }
}

async fn sleep_until_ms(at: u64) {
    let now = now_ms();
    tokio::time::sleep(Duration::from_millis(at.saturating_sub(now))).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn registry() -> Arc<Registry> {
        registry_with_instances(10)
    }

    fn registry_with_instances(max_instances: usize) -> Arc<Registry> {
        let config = crate::config::Cli::parse_from(["wsroom", "--no-compile-cache"])
            .config()
            .unwrap();
        let settings = Settings {
            inbox: 4,
            inbox_bytes: 1000,
            hibernate_after: None,
            alarm_retries: 0,
            alarm_retry_base: Duration::from_millis(10),
            storage_bytes: 1024,
            log_lines_per_sec: 10,
            max_clients: 100,
        };
        let runtime = Runtime::new(&config).unwrap();
        let metrics = Arc::new(Metrics::default());
        Registry::new(
            runtime,
            BTreeMap::new(),
            settings,
            metrics,
            10,
            max_instances,
        )
    }

    fn joining() -> (Event, oneshot::Receiver<Result<ConnRef, Refusal>>) {
        let (reply, answer) = oneshot::channel();
        let meta = Arc::new(ClientMeta {
            id: "c1".into(),
            kind: "runtime".into(),
            connected_at: 0,
            user_agent: None,
            origin: None,
        });
        let outbox = Arc::new(Outbox::new(1 << 20));
        let event = Event::Connect {
            meta,
            outbox,
            reply,
        };
        (event, answer)
    }

    /// Joins a client to the room and waits until it is admitted.
    async fn admit(room: &RoomHandle) -> ConnRef {
        let (event, answer) = joining();
        assert!(room.send(event).await.is_ok());
        let admitted = tokio::time::timeout(Duration::from_secs(10), answer).await;
        match admitted {
            Ok(Ok(Ok(conn))) => conn,
            _ => panic!("not admitted"),
        }
    }

    #[tokio::test]
    async fn a_busy_rooms_inbox_holds_a_bounded_number_of_bytes() {
        // The test registry's rooms take 1000 bytes of messages.
        let registry = registry();
        let room = registry.get_or_create("p").unwrap();
        let conn = admit(&room).await;
        let message = |n: usize| Event::Message {
            conn,
            message: Incoming::Text("x".repeat(n)),
        };
        let soon = Duration::from_millis(100);
        // While a reader runs the room, messages wait in its inbox...
        let running = room.try_run().expect("p idle");
        let queued = tokio::time::timeout(soon, room.send(message(600))).await;
        assert!(matches!(queued, Ok(Ok(()))));
        // ...up to 1000 bytes: the next 600 wait for room there, as a
        // full inbox makes its connection's reader wait.
        let mut second = std::pin::pin!(room.send(message(600)));
        assert!(tokio::time::timeout(soon, &mut second).await.is_err());
        // Once the room takes the first, the second goes in; one larger
        // than the whole bound goes in alone.
        drop(running);
        let queued = tokio::time::timeout(Duration::from_secs(10), second).await;
        assert!(matches!(queued, Ok(Ok(()))));
        let queued = tokio::time::timeout(Duration::from_secs(10), room.send(message(5000))).await;
        assert!(matches!(queued, Ok(Ok(()))));
    }

    // On this single-threaded runtime the room's task runs only when the
    // test awaits something that waits.
    #[tokio::test]
    async fn a_reader_runs_the_room_only_when_it_is_idle_and_its_inbox_empty() {
        let registry = registry();
        let room = registry.get_or_create("p").unwrap();
        let running = room.try_run().expect("an idle room with an empty inbox");
        assert!(room.try_run().is_none(), "one runner at a time");
        drop(running);
        // An event waits in the inbox: it came first, so a reader's message
        // must queue behind it rather than overtake it.
        let (event, answer) = joining();
        assert!(room.send(event).await.is_ok());
        assert!(room.try_run().is_none(), "an event waits in the inbox");
        // The room's task takes it (and admits the client)...
        let admitted = tokio::time::timeout(Duration::from_secs(10), answer).await;
        assert!(matches!(admitted, Ok(Ok(Ok(_)))));
        // ...and the room is free to run in a reader again.
        assert!(room.try_run().is_some());
    }

    #[tokio::test]
    async fn an_instance_in_the_middle_of_an_event_is_not_evicted() {
        let registry = registry_with_instances(1);
        let p = registry.get_or_create("p").unwrap();
        admit(&p).await;
        // p's one instance is busy (a reader runs it): q must wait for it.
        let running = p.try_run().expect("p idle");
        let q = registry.get_or_create("q").unwrap();
        let (event, mut answer) = joining();
        assert!(q.send(event).await.is_ok());
        let waited = tokio::time::timeout(Duration::from_millis(100), &mut answer).await;
        assert!(waited.is_err(), "q took the instance of a busy room");
        // Free, p's instance makes way for q's.
        drop(running);
        let admitted = tokio::time::timeout(Duration::from_secs(10), answer).await;
        assert!(matches!(admitted, Ok(Ok(Ok(_)))));
        assert!(p.core.actor.lock().await.live.is_none(), "p hibernated");
        assert!(q.core.actor.lock().await.live.is_some());
    }

    #[tokio::test]
    async fn the_instance_clock_stays_bounded_however_often_a_room_wakes() {
        let registry = registry_with_instances(2);
        let p = registry.get_or_create("p").unwrap();
        admit(&p).await;
        // Each wake queues the new instance; the entries of dropped ones go
        // when the clock passes 2 x 2 + 64.
        for _ in 0..300 {
            let mut actor = p.core.actor.lock().await;
            actor.hibernate();
            assert!(actor.ensure_live().await.is_ok());
        }
        let queued = registry.instances().queued();
        assert!(queued <= 2 * 2 + 64 + 1, "{queued} entries");
        assert_eq!(registry.instances().max(), 2);
    }
}
