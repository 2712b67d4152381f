//! A project's connection table: the authoritative list of its clients, with
//! per-type lists so fan-out is a walk over a `Vec`, and the room's alarm.
//! It lives in the room's store while an instance is live; the host imports
//! act on it directly. (Over 450 lines with its unit tests; the code is
//! under 390, one concern: who is connected and who a send reaches.)

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
// foldhash instead of SipHash: the table is looked up a few times per
// message (~2% of a message's instructions with SipHash); still seeded at
// random, and the keys are the server's UUIDs and the project's client types.
use foldhash::HashMap;
use slab::Slab;
use smallvec::SmallVec;

use crate::engine::wit;
use crate::metrics::Metrics;
use crate::outbox::{Outbox, Refused, Wakes};
use crate::room::log_limit::LogBudget;
use crate::room::output::{self, RoomOutput};
use crate::room::storage::Storage;
use crate::room::{ClientMeta, RoomShared};
use crate::store::Alarm;

/// Names one connection of a room. The serial tells a reused slot apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRef {
    pub slot: usize,
    pub serial: u64,
}

pub(crate) struct Conn {
    pub meta: Arc<ClientMeta>,
    /// The sender record passed to `on-message` (and laid out for
    /// `on-text`), built once.
    pub sender: Arc<wit::Sender>,
    pub outbox: Arc<Outbox>,
    /// The room's own data for this client (`set-attachment`).
    pub attachment: Option<Vec<u8>>,
    serial: u64,
    /// The last send that reached this client (for de-duplication).
    mark: u64,
    /// Frames sent to it since the last [`Table::flush`], not yet in its
    /// outbox: handed over once per batch of events, so the outbox's lock
    /// (which its writer, likely on another core, also takes) is taken once
    /// per batch instead of once per frame.
    pending: Vec<Bytes>,
    pending_bytes: usize,
    /// It is listed in the table's `touched`.
    touched: bool,
    /// Its outbox refused frames for being closed: the connection is going
    /// and its leave is on its way to the room. Sends still count it, but
    /// queue nothing for it: when a crowd leaves at once, each of the leaves
    /// the room handles tells every client still in the table, most of
    /// them gone already.
    gone: bool,
}

/// Bytes gathered for one client before they go to its outbox there and then
/// (where the outgoing bound applies) instead of at the end of the batch.
const PENDING_FLUSH_BYTES: usize = 64 * 1024;

impl Conn {
    /// Hands the frames gathered for this client to its outbox. At the end
    /// of a batch (`Batch::End`) they may be written through (see
    /// [`Wakes`]); in the middle of a guest's call the writer is woken at
    /// once, to drain what a long call sends while it goes on.
    fn flush(&mut self, wakes: &mut Wakes, at: Batch) -> Result<(), Refused> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.pending_bytes = 0;
        let pending = std::mem::take(&mut self.pending);
        let pushed = match at {
            Batch::End => self.outbox.push_all_at_end(pending, wakes),
            Batch::Middle => self.outbox.push_all_held(pending, wakes),
        };
        if pushed == Err(Refused::Closed) {
            self.gone = true;
        }
        pushed
    }
}

/// Where in a batch of events frames are handed to an outbox.
#[derive(Clone, Copy)]
enum Batch {
    Middle,
    End,
}

/// Which clients a send reaches: the WIT `selector`, looked up in the table
/// (see [`Table::select_client`], [`Table::select_kind`]).
pub(crate) enum Select {
    /// The client in this slot; `None`: no client has that id.
    Slot(Option<usize>),
    /// The clients of this type (the place of its list in the table);
    /// `None`: no client has that type.
    Kind(Option<usize>),
    All,
}

/// Slots a target leaves out; rarely more than one.
pub(crate) type Except = SmallVec<[usize; 2]>;

pub(crate) struct Table {
    pub project: Arc<str>,
    pub config: Arc<BTreeMap<String, String>>,
    /// When the alarm fires, in milliseconds since the Unix epoch.
    pub alarm_at: Option<u64>,
    /// Retries of the pending alarm so far (its handler trapped this often).
    pub alarm_retry: u32,
    /// The room's key-value store.
    pub storage: Storage,
    /// The room's budget of `log` lines.
    pub log_budget: Arc<LogBudget>,
    shared: Arc<RoomShared>,
    metrics: Arc<Metrics>,
    slots: Slab<Conn>,
    by_id: HashMap<Arc<str>, usize>,
    /// Each client type's place in `kinds`.
    by_kind: HashMap<Arc<str>, usize>,
    /// The slots of each client type's clients, in connection order.
    kinds: Slab<Vec<usize>>,
    /// Slots in connection order.
    order: Vec<usize>,
    next_serial: u64,
    sends: u64,
    /// Clients whose outbox overflowed during a call or a flush; the room
    /// removes them (and tells the guest) once the call returns.
    pub overflowed: Vec<ConnRef>,
    /// The client whose `on-close` runs now, and its attachment: gone from
    /// the table, its attachment still readable (as a Durable Object's
    /// `deserializeAttachment` is in `webSocketClose`).
    pub leaving: Option<(Arc<str>, Option<Vec<u8>>)>,
    /// Slots with frames pending (see [`Conn::pending`]).
    touched: Vec<usize>,
    /// Clients removed since the last flush, with the close each gets once
    /// its pending frames are out (see [`Table::close_later`]).
    closing: Vec<(Conn, u16, String)>,
    /// Outboxes' collectors to wake once the frames of a send or a flush
    /// are all out (see [`Wakes`]).
    wakes: Wakes,
}

impl Table {
    /// The server's metrics (for what the room's store counts itself).
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub(crate) fn new(
        project: Arc<str>,
        config: Arc<BTreeMap<String, String>>,
        shared: Arc<RoomShared>,
        metrics: Arc<Metrics>,
        storage: Storage,
        log_lines_per_sec: u32,
    ) -> Table {
        let log_budget = Arc::new(LogBudget::new(
            project.clone(),
            log_lines_per_sec,
            metrics.clone(),
        ));
        Table {
            project,
            config,
            alarm_at: None,
            alarm_retry: 0,
            storage,
            log_budget,
            shared,
            metrics,
            slots: Slab::new(),
            by_id: HashMap::default(),
            by_kind: HashMap::default(),
            kinds: Slab::new(),
            order: Vec::new(),
            next_serial: 0,
            sends: 0,
            overflowed: Vec::new(),
            leaving: None,
            touched: Vec::new(),
            closing: Vec::new(),
            wakes: Wakes::default(),
        }
    }

    /// The room's WASI stdout and stderr (see [`crate::room::output`]).
    pub(crate) fn output_streams(&self) -> (RoomOutput, RoomOutput) {
        output::streams(self.project.clone(), self.log_budget.clone())
    }

    /// Hands every client's pending frames to its outbox and wakes its
    /// writer, then closes the clients removed meanwhile (after what was
    /// pending for them). Clients whose outbox overflowed are added to
    /// `overflowed`.
    pub(crate) fn flush(&mut self) {
        for slot in self.touched.drain(..) {
            if let Some(c) = self.slots.get_mut(slot) {
                c.touched = false;
                if c.flush(&mut self.wakes, Batch::End) == Err(Refused::Overflow) {
                    self.overflowed.push(ConnRef {
                        slot,
                        serial: c.serial,
                    });
                }
            }
        }
        for (mut c, code, reason) in self.closing.drain(..) {
            let _ = c.flush(&mut self.wakes, Batch::End);
            c.outbox.close(code, &reason);
        }
        self.wakes.run();
        self.wakes.end_batch();
    }

    /// Closes a removed client with `code` at the next flush, after the
    /// frames pending for it: a close is output too, and waits for the
    /// batch's commit like the rest.
    pub(crate) fn close_later(&mut self, c: Conn, code: u16, reason: &str) {
        self.closing.push((c, code, reason.to_owned()));
    }

    /// Gives back what the table grew for traffic it has no more: the room
    /// is hibernating, and may stay so for hours.
    pub(crate) fn shrink(&mut self) {
        for (_, c) in self.slots.iter_mut() {
            c.pending.shrink_to_fit();
        }
        self.slots.shrink_to_fit();
        self.by_id.shrink_to_fit();
        self.by_kind.shrink_to_fit();
        for (_, list) in self.kinds.iter_mut() {
            list.shrink_to_fit();
        }
        self.kinds.shrink_to_fit();
        self.order.shrink_to_fit();
        self.touched.shrink_to_fit();
        self.overflowed.shrink_to_fit();
        self.closing.shrink_to_fit();
        self.wakes.shrink();
    }

    /// Drops every frame not yet handed to an outbox: they were sent by
    /// calls whose writes were lost, and must not tell anyone of them. The
    /// closes those calls made happen, but as a failure's (1011), not with
    /// the code and reason the room gave.
    pub(crate) fn discard_pending(&mut self) {
        for slot in self.touched.drain(..) {
            if let Some(c) = self.slots.get_mut(slot) {
                c.touched = false;
                c.pending.clear();
                c.pending_bytes = 0;
            }
        }
        for (c, code, reason) in &mut self.closing {
            c.pending.clear();
            c.pending_bytes = 0;
            *code = crate::room::CLOSE_ROOM_FAILED;
            *reason = "room failed".into();
        }
        self.wakes.end_batch();
    }

    /// The alarm as the store keeps it.
    pub(crate) fn alarm(&self) -> Option<Alarm> {
        self.alarm_at.map(|at| Alarm {
            at,
            retry: self.alarm_retry,
        })
    }

    /// Records activity for `/health`'s `lastActivity`.
    pub(crate) fn touch(&self) {
        self.shared.touch();
    }

    /// A client's message read at `at` is being handled: the frames of this
    /// batch are timed from the oldest such read
    /// (`wsroom_message_duration_seconds`).
    pub(crate) fn message_read_at(&mut self, at: std::time::Instant) {
        self.wakes.message_read_at(at);
    }

    /// What the console reads of the room without its lock.
    pub(crate) fn shared(&self) -> &RoomShared {
        &self.shared
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub(crate) fn insert(&mut self, meta: Arc<ClientMeta>, outbox: Arc<Outbox>) -> ConnRef {
        self.next_serial += 1;
        let serial = self.next_serial;
        let id: Arc<str> = meta.id.clone();
        let kind: Arc<str> = meta.kind.clone();
        self.shared.add_client(serial, meta.clone());
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
            pending: Vec::new(),
            pending_bytes: 0,
            touched: false,
            gone: false,
        });
        self.by_id.insert(id, slot);
        let kinds = &mut self.kinds;
        let list = *self
            .by_kind
            .entry(kind)
            .or_insert_with(|| kinds.insert(Vec::new()));
        self.kinds[list].push(slot);
        self.order.push(slot);
        ConnRef { slot, serial }
    }

    pub(crate) fn get(&self, conn: ConnRef) -> Option<&Conn> {
        self.slots
            .get(conn.slot)
            .filter(|c| c.serial == conn.serial)
    }

    pub(crate) fn find(&self, id: &str) -> Option<&Conn> {
        self.by_id.get(id).and_then(|&slot| self.slots.get(slot))
    }

    pub(crate) fn find_mut(&mut self, id: &str) -> Option<&mut Conn> {
        let &slot = self.by_id.get(id)?;
        self.slots.get_mut(slot)
    }

    pub(crate) fn conn_ref(&self, id: &str) -> Option<ConnRef> {
        let &slot = self.by_id.get(id)?;
        let serial = self.slots.get(slot)?.serial;
        Some(ConnRef { slot, serial })
    }

    /// Removes a client, keeping what is pending for it in the returned
    /// [`Conn`] (for [`Table::close_later`]).
    pub(crate) fn remove(&mut self, conn: ConnRef) -> Option<Conn> {
        self.get(conn)?;
        let c = self.slots.remove(conn.slot);
        self.by_id.remove(&*c.meta.id);
        if let Some(&list) = self.by_kind.get(&*c.meta.kind) {
            self.kinds[list].retain(|&s| s != conn.slot);
            if self.kinds[list].is_empty() {
                self.kinds.remove(list);
                self.by_kind.remove(&*c.meta.kind);
            }
        }
        self.order.retain(|&s| s != conn.slot);
        self.shared.remove_client(c.serial);
        Some(c)
    }

    /// Removes every client, in connection order.
    pub(crate) fn drain(&mut self) -> Vec<Conn> {
        let order = std::mem::take(&mut self.order);
        self.by_id.clear();
        self.by_kind.clear();
        self.kinds.clear();
        let conns = order
            .into_iter()
            .filter_map(|slot| self.slots.try_remove(slot))
            .collect();
        self.shared.clear_clients();
        conns
    }

    /// Clients in connection order, all or those of one type.
    pub(crate) fn clients<'a>(
        &'a self,
        kind: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Conn> + 'a {
        self.order
            .iter()
            .map(|&slot| &self.slots[slot])
            .filter(move |c| kind.is_none_or(|k| *c.meta.kind == *k))
    }

    pub(crate) fn count(&self, kind: Option<&str>) -> usize {
        match kind {
            None => self.slots.len(),
            Some(k) => self
                .by_kind
                .get(k)
                .map_or(0, |&list| self.kinds[list].len()),
        }
    }

    /// Looks up a `client` selector.
    pub(crate) fn select_client(&self, id: &str) -> Select {
        Select::Slot(self.by_id.get(id).copied())
    }

    /// Looks up a `kind` selector.
    pub(crate) fn select_kind(&self, kind: &str) -> Select {
        Select::Kind(self.by_kind.get(kind).copied())
    }

    /// Starts a send: the clients [`Table::fanout`] reaches under the
    /// returned mark receive the frame at most once, across targets.
    pub(crate) fn begin_send(&mut self) -> u64 {
        self.sends += 1;
        self.sends
    }

    /// Queues one framed message for the clients of one target of the send
    /// `mark`, except those in `except` and those an earlier target of the
    /// same send reached. Returns how many clients it added (a client whose
    /// connection is closing, but whose leave the room has not handled yet,
    /// still counts).
    pub(crate) fn fanout(
        &mut self,
        mark: u64,
        frame: &Bytes,
        select: &Select,
        except: &[usize],
    ) -> u32 {
        let mut n = 0u32;
        let touched = &mut self.touched;
        let wakes = &mut self.wakes;
        // A durable room's frames wait for the end of the batch however
        // many gather (bounded by the outbox's limit instead): they wait for
        // its commit, and a call's writes may follow its sends.
        let hold_output = self.storage.is_durable();
        let mut visit = |slot: usize, slots: &mut Slab<Conn>, overflowed: &mut Vec<ConnRef>| {
            if except.contains(&slot) {
                return;
            }
            let Some(c) = slots.get_mut(slot) else { return };
            if c.mark == mark {
                return;
            }
            c.mark = mark;
            n += 1;
            if c.gone {
                return;
            }
            c.pending.push(frame.clone());
            c.pending_bytes += frame.len();
            if !c.touched {
                c.touched = true;
                touched.push(slot);
            }
            if c.pending_bytes < PENDING_FLUSH_BYTES {
                return;
            }
            let overflow = if !hold_output {
                c.flush(wakes, Batch::Middle) == Err(Refused::Overflow)
            } else if c.pending_bytes > c.outbox.limit() {
                c.pending.clear();
                c.pending_bytes = 0;
                c.outbox.overflow();
                true
            } else {
                false
            };
            if overflow {
                overflowed.push(ConnRef {
                    slot,
                    serial: c.serial,
                });
            }
        };
        match select {
            Select::Slot(slot) => {
                if let Some(slot) = *slot {
                    visit(slot, &mut self.slots, &mut self.overflowed);
                }
            }
            Select::Kind(kind) => {
                if let Some(list) = kind.and_then(|k| self.kinds.get(k)) {
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
        self.wakes.run_collectors();
        self.metrics.frames_out(u64::from(n));
        n
    }

    /// The slot of the client with this id, if any.
    pub(crate) fn slot_of(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{Next, encode};
    use fastwebsockets::OpCode;

    fn table() -> Table {
        Table::new(
            "p".into(),
            Arc::default(),
            Arc::default(),
            Arc::default(),
            Storage::new(1024, None),
            10,
        )
    }

    fn join(t: &mut Table, id: &str, kind: &str) -> Arc<Outbox> {
        join_ref(t, id, kind).1
    }

    fn join_ref(t: &mut Table, id: &str, kind: &str) -> (ConnRef, Arc<Outbox>) {
        let outbox = Arc::new(Outbox::new(1 << 20));
        let meta = Arc::new(ClientMeta {
            id: id.into(),
            kind: kind.into(),
            connected_at: 0,
            user_agent: None,
            origin: None,
            ..Default::default()
        });
        (t.insert(meta, outbox.clone()), outbox)
    }

    /// What the outbox holds now, without waiting.
    fn frames(outbox: &Outbox) -> usize {
        let mut batch = Vec::new();
        let taken = outbox.take(&mut batch);
        match poll_once(taken) {
            Some(Next::Continue) => batch.len(),
            _ => 0,
        }
    }

    /// Polls a future once.
    fn poll_once<F: std::future::Future>(f: F) -> Option<F::Output> {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }

    #[test]
    fn a_client_whose_connection_is_going_still_counts_but_gets_nothing_queued() {
        let mut t = table();
        let r1 = join(&mut t, "r1", "runtime");
        let r2 = join(&mut t, "r2", "runtime");
        let frame = encode(OpCode::Text, b"{}");
        let send = |t: &mut Table| {
            let mark = t.begin_send();
            let n = t.fanout(mark, &frame, &Select::All, &[]);
            t.flush();
            n
        };
        assert_eq!(send(&mut t), 2);
        assert_eq!([frames(&r1), frames(&r2)], [1, 1]);
        // r2's connection ends; its leave has not reached the room yet.
        r2.abort();
        assert_eq!(send(&mut t), 2);
        assert!(t.slots[1].gone, "its closed outbox refused the frame");
        // From now on nothing is queued for it, and r1 goes on as before.
        let mark = t.begin_send();
        assert_eq!(t.fanout(mark, &frame, &Select::All, &[]), 2);
        assert!(t.slots[1].pending.is_empty() && !t.slots[1].touched);
        assert_eq!(t.slots[0].pending.len(), 1);
        t.flush();
        assert_eq!(frames(&r1), 2);
        assert!(t.overflowed.is_empty());
    }

    #[test]
    fn a_send_reaches_each_client_once_across_its_targets() {
        let mut t = table();
        let r1 = join(&mut t, "r1", "runtime");
        let a1 = join(&mut t, "a1", "admin");
        let a2 = join(&mut t, "a2", "admin");
        let frame = encode(OpCode::Text, b"{}");
        let mark = t.begin_send();
        let admins = t.select_kind("admin");
        let except: Except = t.slot_of("a2").into_iter().collect();
        // Admins but a2; then everyone: only those not yet reached count.
        assert_eq!(t.fanout(mark, &frame, &admins, &except), 1);
        assert_eq!(t.fanout(mark, &frame, &Select::All, &[]), 2);
        assert_eq!(t.fanout(mark, &frame, &t.select_client("r1"), &[]), 0);
        // Nobody by that id or type.
        assert_eq!(t.fanout(mark, &frame, &t.select_client("zz"), &[]), 0);
        assert_eq!(t.fanout(mark, &frame, &t.select_kind("zz"), &[]), 0);
        // Nothing is in the outboxes before the flush; one frame each after.
        assert_eq!(frames(&r1), 0);
        t.flush();
        assert_eq!([frames(&r1), frames(&a1), frames(&a2)], [1, 1, 1]);
        // A new send reaches them again.
        let mark = t.begin_send();
        assert_eq!(t.fanout(mark, &frame, &Select::All, &[]), 3);
        // A type whose clients all left is gone; a newcomer brings it back.
        for id in ["a1", "a2"] {
            let conn = t.conn_ref(id).unwrap();
            assert!(t.remove(conn).is_some());
        }
        assert_eq!(t.count(Some("admin")), 0);
        assert!(matches!(t.select_kind("admin"), Select::Kind(None)));
        join(&mut t, "a3", "admin");
        let mark = t.begin_send();
        assert_eq!(t.fanout(mark, &frame, &t.select_kind("admin"), &[]), 1);
        assert_eq!(t.count(Some("runtime")), 1);
    }

    /// A client's socket that takes everything at once.
    #[derive(Default)]
    struct Socket(std::sync::Mutex<usize>);

    impl crate::outbox::WriteThrough for Socket {
        fn try_write(&self, frames: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
            let n = frames.iter().map(|f| f.len()).sum();
            *self.0.lock().unwrap() += n;
            Ok(n)
        }
        fn written(&self, _: usize, _: crate::outbox::Timing) {}
    }

    #[test]
    fn a_batch_is_written_through_at_its_end_and_a_long_call_wakes_the_writer_at_once() {
        let mut t = table();
        let client = join(&mut t, "c", "runtime");
        let socket = Arc::new(Socket::default());
        client.set_write_through(Some(socket.clone()));
        let frame = encode(OpCode::Text, b"{}");
        let mark = t.begin_send();
        t.fanout(mark, &frame, &Select::All, &[]);
        t.flush();
        assert_eq!(*socket.0.lock().unwrap(), frame.len(), "written through");
        assert_eq!(frames(&client), 0, "nothing for the writer");
        // One call sending more than a client's pending bound: what passes
        // it goes to the writer there and then, woken during the call.
        struct Woken(std::sync::atomic::AtomicBool);
        impl std::task::Wake for Woken {
            fn wake(self: Arc<Self>) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let woken = Arc::new(Woken(false.into()));
        let waker = std::task::Waker::from(woken.clone());
        let mut batch = Vec::new();
        let mut writer = std::pin::pin!(client.take(&mut batch));
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(writer.as_mut().poll(&mut cx).is_pending(), "an idle writer");
        let big = encode(OpCode::Text, &vec![b'x'; PENDING_FLUSH_BYTES]);
        let mark = t.begin_send();
        t.fanout(mark, &big, &Select::All, &[]);
        assert!(
            woken.0.load(std::sync::atomic::Ordering::SeqCst),
            "woken during the call"
        );
        assert!(writer.as_mut().poll(&mut cx).is_ready());
        assert_eq!(
            *socket.0.lock().unwrap(),
            frame.len(),
            "not written through"
        );
    }

    #[test]
    fn status_lists_the_clients_in_connection_order() {
        let mut t = table();
        let ids = |t: &Table| -> Vec<String> {
            t.shared
                .clients()
                .iter()
                .map(|c| c.id.to_string())
                .collect()
        };
        join(&mut t, "c1", "runtime");
        let (c2, _) = join_ref(&mut t, "c2", "admin");
        join(&mut t, "c3", "runtime");
        assert!(t.remove(c2).is_some());
        join(&mut t, "c4", "admin");
        assert_eq!(ids(&t), ["c1", "c3", "c4"]);
        assert_eq!(t.shared.client_count(), 3);
        assert_eq!(t.drain().len(), 3);
        assert!(ids(&t).is_empty());
    }
}
