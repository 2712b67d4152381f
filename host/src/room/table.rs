//! A project's connection table: the authoritative list of its clients, with
//! per-type lists so fan-out is a walk over a `Vec`, and the room's alarm.
//! It lives in the room's store while an instance is live; the host imports
//! act on it directly.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use slab::Slab;

use crate::engine::wit;
use crate::metrics::Metrics;
use crate::outbox::{Outbox, Refused};
use crate::room::log_limit::LogLimit;
use crate::room::storage::Storage;
use crate::room::{ClientMeta, RoomShared};

/// Names one connection of a room. The serial tells a reused slot apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRef {
    pub slot: usize,
    pub serial: u64,
}

pub struct Conn {
    pub meta: Arc<ClientMeta>,
    /// The sender record passed to `on-message`, built once.
    pub sender: Arc<wit::Sender>,
    pub outbox: Arc<Outbox>,
    /// The room's own data for this client (`set-attachment`).
    pub attachment: Option<Vec<u8>>,
    serial: u64,
    /// The last send that reached this client (for de-duplication).
    mark: u64,
    /// Frames were queued for it since the last [`Table::wake_writers`].
    touched: bool,
}

/// Which clients a send reaches (the WIT `selector`, resolved).
pub enum Select<'a> {
    Client(&'a str),
    Kind(&'a str),
    All,
}

pub struct Table {
    pub project: Arc<str>,
    pub config: Arc<BTreeMap<String, String>>,
    /// When the alarm fires, in milliseconds since the Unix epoch.
    pub alarm_at: Option<u64>,
    /// Retries of the pending alarm so far (its handler trapped this often).
    pub alarm_retry: u32,
    /// The room's key-value store.
    pub storage: Storage,
    /// The room's budget of `log` lines.
    pub log_limit: LogLimit,
    shared: Arc<RoomShared>,
    metrics: Arc<Metrics>,
    slots: Slab<Conn>,
    by_id: HashMap<Arc<str>, usize>,
    by_kind: HashMap<Arc<str>, Vec<usize>>,
    /// Slots in connection order.
    order: Vec<usize>,
    next_serial: u64,
    sends: u64,
    /// Clients whose outbox overflowed during a call; the room removes them
    /// (and tells the guest) once the call returns.
    pub overflowed: Vec<ConnRef>,
    /// Slots with frames queued but their writer not yet woken.
    touched: Vec<usize>,
}

impl Table {
    pub fn new(
        project: Arc<str>,
        config: Arc<BTreeMap<String, String>>,
        shared: Arc<RoomShared>,
        metrics: Arc<Metrics>,
        storage_limit: usize,
        log_lines_per_sec: u32,
    ) -> Table {
        Table {
            project,
            config,
            alarm_at: None,
            alarm_retry: 0,
            storage: Storage::new(storage_limit),
            log_limit: LogLimit::new(log_lines_per_sec),
            shared,
            metrics,
            slots: Slab::new(),
            by_id: HashMap::new(),
            by_kind: HashMap::new(),
            order: Vec::new(),
            next_serial: 0,
            sends: 0,
            overflowed: Vec::new(),
            touched: Vec::new(),
        }
    }

    /// Counts a `log` line dropped by the rate limit.
    pub fn log_dropped(&self) {
        self.metrics.log_line_dropped();
    }

    /// Wakes every writer that has frames queued since the last call.
    pub fn wake_writers(&mut self) {
        for slot in self.touched.drain(..) {
            if let Some(c) = self.slots.get_mut(slot) {
                c.touched = false;
                c.outbox.wake();
            }
        }
    }

    /// Records activity for `/health`'s `lastActivity`.
    pub fn touch(&self) {
        self.shared.touch();
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn insert(&mut self, meta: Arc<ClientMeta>, outbox: Arc<Outbox>) -> ConnRef {
        self.next_serial += 1;
        let serial = self.next_serial;
        let id: Arc<str> = meta.id.clone();
        let kind: Arc<str> = meta.kind.clone();
        self.shared.add_client(meta.clone());
        let sender = Arc::new(wit::Sender {
            id: meta.id.to_string(),
            kind: meta.kind.to_string(),
        });
        let slot = self.slots.insert(Conn {
            meta,
            sender,
            outbox,
            attachment: None,
            serial,
            mark: 0,
            touched: false,
        });
        self.by_id.insert(id, slot);
        self.by_kind.entry(kind).or_default().push(slot);
        self.order.push(slot);
        ConnRef { slot, serial }
    }

    pub fn get(&self, conn: ConnRef) -> Option<&Conn> {
        self.slots
            .get(conn.slot)
            .filter(|c| c.serial == conn.serial)
    }

    pub fn find(&self, id: &str) -> Option<&Conn> {
        self.by_id.get(id).and_then(|&slot| self.slots.get(slot))
    }

    pub fn find_mut(&mut self, id: &str) -> Option<&mut Conn> {
        let &slot = self.by_id.get(id)?;
        self.slots.get_mut(slot)
    }

    pub fn conn_ref(&self, id: &str) -> Option<ConnRef> {
        let &slot = self.by_id.get(id)?;
        let serial = self.slots.get(slot)?.serial;
        Some(ConnRef { slot, serial })
    }

    pub fn remove(&mut self, conn: ConnRef) -> Option<Conn> {
        self.get(conn)?;
        let c = self.slots.remove(conn.slot);
        self.by_id.remove(&*c.meta.id);
        if let Some(list) = self.by_kind.get_mut(&*c.meta.kind) {
            list.retain(|&s| s != conn.slot);
            if list.is_empty() {
                self.by_kind.remove(&*c.meta.kind);
            }
        }
        self.order.retain(|&s| s != conn.slot);
        self.shared.remove_client(&c.meta.id);
        Some(c)
    }

    /// Removes every client, in connection order.
    pub fn drain(&mut self) -> Vec<Conn> {
        let order = std::mem::take(&mut self.order);
        self.by_id.clear();
        self.by_kind.clear();
        let conns = order
            .into_iter()
            .filter_map(|slot| self.slots.try_remove(slot))
            .collect();
        self.shared.clear_clients();
        conns
    }

    /// Clients in connection order, all or those of one type.
    pub fn clients<'a>(&'a self, kind: Option<&'a str>) -> impl Iterator<Item = &'a Conn> + 'a {
        self.order
            .iter()
            .map(|&slot| &self.slots[slot])
            .filter(move |c| kind.is_none_or(|k| *c.meta.kind == *k))
    }

    pub fn count(&self, kind: Option<&str>) -> usize {
        match kind {
            None => self.slots.len(),
            Some(k) => self.by_kind.get(k).map_or(0, Vec::len),
        }
    }

    /// Queues one framed message for the union of the targets, each client
    /// at most once. Returns how many clients each target added.
    pub fn fanout(&mut self, frame: &Bytes, targets: &[(Select<'_>, Vec<usize>)]) -> Vec<u32> {
        self.sends += 1;
        let mark = self.sends;
        let mut counts = Vec::with_capacity(targets.len());
        let mut pushed = 0u64;
        for (select, except) in targets {
            let mut n = 0u32;
            let touched = &mut self.touched;
            let mut visit = |slot: usize, slots: &mut Slab<Conn>, overflowed: &mut Vec<ConnRef>| {
                if except.contains(&slot) {
                    return;
                }
                let Some(c) = slots.get_mut(slot) else { return };
                if c.mark == mark {
                    return;
                }
                c.mark = mark;
                match c.outbox.push_quiet(frame.clone()) {
                    Ok(()) => {
                        n += 1;
                        pushed += 1;
                        if !c.touched {
                            c.touched = true;
                            touched.push(slot);
                        }
                    }
                    Err(Refused::Overflow) => overflowed.push(ConnRef {
                        slot,
                        serial: c.serial,
                    }),
                    Err(Refused::Closed) => {}
                }
            };
            match select {
                Select::Client(id) => {
                    if let Some(&slot) = self.by_id.get(*id) {
                        visit(slot, &mut self.slots, &mut self.overflowed);
                    }
                }
                Select::Kind(kind) => {
                    if let Some(list) = self.by_kind.get(*kind) {
                        for &slot in list {
                            visit(slot, &mut self.slots, &mut self.overflowed);
                        }
                    }
                }
                Select::All => {
                    for &slot in &self.order {
                        visit(slot, &mut self.slots, &mut self.overflowed);
                    }
                }
            }
            counts.push(n);
        }
        self.metrics.frames_out(pushed);
        counts
    }

    /// Resolves client ids to slots (unknown ids are dropped).
    pub fn slots_of<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Vec<usize> {
        ids.into_iter()
            .filter_map(|id| self.by_id.get(id).copied())
            .collect()
    }
}
