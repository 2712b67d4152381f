//! The room: the state of one live project, run by one task at a time.
//!
//! Events (connect, message, close, an HTTP request) wait in a bounded inbox; the room's own
//! task takes them from there, fires the alarm and hibernates the instance.
//! A connection's reader that finds the room idle and its inbox empty runs
//! its messages itself instead (a [`ReaderTurn`]): a message then reaches
//! the guest without waking another task. Whoever runs the room holds its
//! lock, so the guest is only ever called from one task, in the order the
//! events arrived.
//!
//! With a durable store, what a batch of events wrote (store and alarm) is
//! committed before the batch's frames and closes leave the table (the
//! output gate, [`actor`]'s `commit`): a reader whose turn wrote leaves
//! the commit and the flush to the room's task.
//!
//! This file holds the room's types; each concern has its own file:
//! - [`handle`]: the handle connections hold, and the inbox (bounded in
//!   events and in bytes).
//! - [`turn`]: a reader's turn at running the room, and what ending it does.
//! - [`actor`]: the actor's event dispatch, guest calls and trap handling.
//! - [`lifecycle`]: the room's task; hibernation, eviction, removal, shutdown.
//! - [`alarms`]: firing the alarm, and retrying it when it traps.
//! - [`table`]: the connection table inside the guest's store.
//! - [`instances`]: the limit on live instances, and who makes way.
//! - [`shared`]: what `/status` and `/health` read without the lock.
//! - [`imports`], [`output`], [`storage`], [`log_limit`]: the host imports;
//!   [`compat`]: the imports of the contract's earlier versions.

mod actor;
mod alarms;
pub(crate) mod compat;
mod handle;
pub(crate) mod imports;
pub(crate) mod instances;
mod lifecycle;
pub(crate) mod log_limit;
pub(crate) mod output;
mod shared;
pub(crate) mod storage;
pub(crate) mod table;
#[cfg(test)]
mod tests;
mod turn;

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc, oneshot};
use wasmtime::Store;

use crate::engine::{Room, RoomState, Runtime, wit};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::registry::Registry;
use crate::store::{Alarm, RoomStore};
use table::{ConnRef, Table};

pub use handle::RoomHandle;
pub(crate) use lifecycle::spawn;
pub(crate) use shared::RoomShared;
pub(crate) use turn::ReaderTurn;

/// Close code for the clients of a room that failed (1011: internal error).
pub(crate) const CLOSE_ROOM_FAILED: u16 = 1011;
/// Most events handled before the writers are woken, by the room's task or
/// by a reader running the room (which then gives the room a turn).
pub const BATCH: usize = 64;
/// Close code when the server shuts down (1001: going away).
pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code when a cluster node stops running a project it can no longer
/// prove it owns (1012: service restart): reconnecting finds its new owner.
pub(crate) const CLOSE_SERVICE_RESTART: u16 = 1012;

/// What the host knows about a connection (the WIT `client-info`, and
/// what `/status` shows of it).
#[derive(Debug, Default)]
pub struct ClientMeta {
    pub id: Arc<str>,
    pub kind: Arc<str>,
    pub connected_at: u64,
    pub user_agent: Option<String>,
    pub origin: Option<String>,
    /// The `sub` of the token it connected with (with access control on).
    pub subject: Option<Box<str>>,
    /// The upgrade URL's query parameters other than `type`, `projectId`
    /// and `token`, in order.
    pub params: ClientParams,
}

/// A client's own query parameters: `(name, value)` in the URL's order.
pub(crate) type ClientParams = Box<[(Box<str>, Box<str>)]>;

/// One complete message from a client, as the room receives it.
pub use crate::engine::wit::Incoming;

pub enum Event {
    Connect {
        meta: Arc<ClientMeta>,
        outbox: Arc<Outbox>,
        reply: oneshot::Sender<Result<ConnRef, Refusal>>,
    },
    Message {
        conn: ConnRef,
        message: Incoming,
        /// When the reader finished reading it.
        read_at: std::time::Instant,
    },
    /// A message from a client on another node: `done` is answered once
    /// the room has handled it (or dropped if it never will).
    Forwarded {
        conn: ConnRef,
        message: Incoming,
        done: oneshot::Sender<()>,
        /// When it reached this node.
        read_at: std::time::Instant,
    },
    /// A client the project admitted on its previous owner node, back in
    /// the table of the node that took the project over.
    Rejoin {
        meta: Arc<ClientMeta>,
        outbox: Arc<Outbox>,
        reply: oneshot::Sender<ConnRef>,
    },
    Close {
        conn: ConnRef,
        code: u16,
        reason: String,
    },
    /// An HTTP request to the room (its `fetch`), answered once what the
    /// call wrote is durable. (Shared: the registry keeps it to ask again
    /// if the room was being removed, without copying its body.)
    Fetch {
        request: Arc<wit::HttpRequest>,
        reply: oneshot::Sender<Fetched>,
    },
    Shutdown,
    /// In a cluster: this node can no longer prove it owns the project
    /// (its lease ran out); its clients are closed with 1012.
    LeaseLost,
}

/// What became of an HTTP request to a room.
#[derive(Debug)]
pub enum Fetched {
    /// The room's answer.
    Answered(wit::HttpResponse),
    /// The room has no `fetch` (built against a contract before 0.3.0).
    NoHandler,
    /// The room failed while answering (or its writes could not be made
    /// durable).
    Failed,
    /// In a cluster: the owner node did not answer in time; it may or may
    /// not have handled the request.
    Unanswered,
    /// In a cluster: the request is larger than a NATS message may be (the
    /// cluster's `max_payload`, in bytes), so it cannot reach the owner
    /// node; it was not sent.
    TooLargeToForward(usize),
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

/// How rooms behave, from the host's configuration.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Capacity of a room's inbox, in events.
    pub(crate) inbox: usize,
    /// Capacity of a room's inbox in bytes of messages.
    pub(crate) inbox_bytes: u32,
    /// Idle time after which a room drops its instance.
    pub(crate) hibernate_after: Option<Duration>,
    /// Retries of an alarm whose handler trapped.
    pub(crate) alarm_retries: u32,
    /// Delay before the first retry; doubles with each further one.
    pub(crate) alarm_retry_base: Duration,
    /// Bytes a room's store may hold (keys and values).
    pub(crate) storage_bytes: usize,
    /// `log` lines a room may write per second (twice that in a burst).
    pub(crate) log_lines_per_sec: u32,
    /// Clients the room admits at once; more are refused before the room's
    /// code is asked.
    pub(crate) max_clients: usize,
    /// Where rooms' stores and alarms last; `None`: in memory.
    pub(crate) store: Option<RoomStore>,
}

impl Settings {
    pub(crate) fn from_config(config: &crate::config::Config) -> Settings {
        Settings {
            inbox: config.room_inbox,
            inbox_bytes: config.room_inbox_bytes,
            hibernate_after: config.hibernate_after,
            alarm_retries: config.alarm_retries,
            alarm_retry_base: config.alarm_retry_base,
            storage_bytes: config.room_storage_bytes,
            log_lines_per_sec: config.room_log_lines_per_sec,
            max_clients: config.max_project_connections,
            store: None,
        }
    }
}

/// What every task that may run the room shares.
struct Core {
    actor: tokio::sync::Mutex<Actor>,
    /// Wakes the room's task: an event was queued, or the alarm changed.
    wake: Notify,
}

/// An event in a room's inbox, with its share of the inbox's bytes. Boxed
/// in the channel: tokio's keeps a block of 32 slots for as long as the
/// room lives, 2.3 KiB of events inline against 256 bytes of boxes (a
/// hibernated room's largest part; an event that waits costs a box).
struct Queued {
    event: Event,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// The room's instance, or the table it would run on.
// One per room, in its actor: the live variant's few bytes over clippy's
// threshold cost a hibernated room as much, where boxing the instance's
// handles would cost every call a pointer chase.
#[allow(clippy::large_enum_variant)]
enum Instance {
    /// No instance (none made yet, hibernated, evicted, or failed): the
    /// table waits here and the next event makes one. (Boxed: the table is
    /// ten times the size of a live instance's handles.)
    Hibernated(Box<Table>),
    /// A live instance, the table inside its store.
    Live {
        store: Store<RoomState>,
        room: Room,
        /// The component version it was made from.
        version: u64,
        /// Its place in `--max-instances`, given back with it.
        _permit: instances::Permit,
    },
    /// Only inside [`Actor::ensure_live`] and [`Actor::drop_instance`],
    /// while the table moves between a store and the box.
    Moving,
}

/// The state the room's lock guards.
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
    rx: mpsc::Receiver<Box<Queued>>,
    instance: Instance,
    /// An event was handled since the instance pool's clock last passed
    /// (a recently used room is not evicted).
    used_since_clock_passed: bool,
    /// A connect or a message was handled since `/health`'s `lastActivity`
    /// was last set (once per batch: it reads the clock).
    activity_unrecorded: bool,
    /// An event (or the alarm) was handled since the last flush.
    handled_since_flush: bool,
    /// Client messages handled since the last flush, for the console.
    messages_since_flush: u64,
    /// When the last batch with an event was flushed (hibernation counts
    /// from it; the clock is read once per batch, not per event).
    last_event: tokio::time::Instant,
    /// Shut down or removed: nothing runs here any more.
    stopped: bool,
    /// The alarm as last committed (durable rooms).
    committed_alarm: Option<Alarm>,
    /// In a cluster, the generation of the node's lease the room was made
    /// under: it runs only while that lease holds.
    lease_generation: u64,
    /// Where a text message is laid out for the room's `on-text`, from one
    /// message to the next while the instance lives.
    scratch: Option<crate::engine::wit::TextFrom>,
    /// The buffers of the messages readers gather for `on-texts`, kept from
    /// one reader's turn to the next (dropped with the instance).
    gathered: Option<Box<turn::Gathering>>,
}

/// Milliseconds since the Unix epoch, as the room's timestamps.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn client_info(meta: &ClientMeta) -> wit::ClientInfo {
    wit::ClientInfo {
        id: meta.id.to_string(),
        kind: meta.kind.to_string(),
        connected_at: meta.connected_at,
        user_agent: meta.user_agent.clone(),
        origin: meta.origin.clone(),
        subject: meta.subject.as_deref().map(str::to_owned),
        params: meta
            .params
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect(),
    }
}
