//! This node's clients of projects another node owns: their sockets are
//! here, their room is there. Each has a [`Stub`] that knows the owner; the
//! connection's reader forwards its messages through it ([`RemoteClient`](super::RemoteClient))
//! and what the room sends comes back as numbered batches of frames
//! ([`Stubs::deliver`]) into the client's own outbox.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use super::wire;
use crate::outbox::{Next, Outbox};
use crate::room::ClientMeta;

/// Close code for a client whose frames from the owner were lost on the
/// way (1011): it reconnects rather than miss messages unknowingly.
const CLOSE_FRAMES_LOST: u16 = 1011;

/// A client whose room runs on another node.
pub(super) struct Stub {
    pub(super) key: u64,
    pub(super) project: Arc<str>,
    pub(super) meta: Arc<ClientMeta>,
    pub(super) outbox: Arc<Outbox>,
    owner: Mutex<Link>,
    /// The message in flight to the owner, and its answer.
    in_flight: Mutex<InFlight>,
    answered: Notify,
}

/// A client's message on its way to the owner (one at a time).
#[derive(Default)]
struct InFlight {
    /// Its number; 0: none.
    seq: u64,
    answer: Option<Answer>,
}

/// What became of a message sent to the owner.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Answer {
    Replied(wire::MessageReply),
    /// NATS had nobody to give it to: the owner is gone.
    NoResponders,
}

/// Where a stub's project runs, and how far its frames got.
struct Link {
    node: Arc<str>,
    epoch: u64,
    /// The number of the last batch of frames taken from that owner.
    seq: u64,
}

impl Stub {
    fn link(&self) -> MutexGuard<'_, Link> {
        self.owner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn in_flight(&self) -> MutexGuard<'_, InFlight> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts waiting for the answer to message `seq`.
    pub(super) fn sending(&self, seq: u64) {
        *self.in_flight() = InFlight { seq, answer: None };
    }

    /// The answer to the message in flight, once it comes from `owner`;
    /// `None` if the project moves to another node first. It moves only
    /// once that owner's lease has ended, so no answer will come: NATS may
    /// have handed it the message in the instant it died, or it may have
    /// handled the message and died before answering.
    pub(super) async fn answer_from(&self, owner: &(Arc<str>, u64)) -> Option<Answer> {
        loop {
            let notified = self.answered.notified();
            if let Some(answer) = self.in_flight().answer.take() {
                return Some(answer);
            }
            if self.owner() != *owner {
                return None;
            }
            notified.await;
        }
    }

    /// An answer came for message `seq`; one for an earlier message is
    /// ignored.
    pub(super) fn answered(&self, seq: u64, answer: Answer) {
        let mut in_flight = self.in_flight();
        if in_flight.seq != 0 && seq == in_flight.seq {
            in_flight.answer = Some(answer);
            drop(in_flight);
            self.answered.notify_one();
        }
    }

    /// The owner node and its epoch.
    pub(super) fn owner(&self) -> (Arc<str>, u64) {
        let link = self.link();
        (link.node.clone(), link.epoch)
    }

    /// Queues a batch of frames from the owner under `epoch`.
    fn take(&self, epoch: u64, batch: wire::Batch) {
        {
            let mut link = self.link();
            if link.epoch != epoch {
                // From a node that no longer owns the project.
                return;
            }
            if batch.seq != link.seq + 1 {
                drop(link);
                self.outbox.close(
                    CLOSE_FRAMES_LOST,
                    "messages were lost between cluster nodes; reconnect",
                );
                return;
            }
            link.seq = batch.seq;
        }
        let mut frames = batch.frames;
        match batch.next {
            Next::Continue => {
                // An overflow is the outbox's to handle: it closes the
                // client with 1013 as a local room's would.
                let _ = self.outbox.push_all(frames);
            }
            Next::Finish => {
                let close = frames.pop();
                let _ = self.outbox.push_all(frames);
                if let Some(close) = close {
                    self.outbox.close_raw(close);
                }
            }
            Next::Abort => self.outbox.abort(),
        }
    }

    /// The project moved to `node`: frames count from there anew, and a
    /// message waiting for the old owner's answer stops waiting.
    pub(super) fn moved_to(&self, node: Arc<str>, epoch: u64) {
        *self.link() = Link {
            node,
            epoch,
            seq: 0,
        };
        self.answered.notify_one();
    }
}

/// Every stub of this node, by key and by project.
#[derive(Default)]
pub(super) struct Stubs {
    next_key: AtomicU64,
    all: Mutex<Index>,
}

#[derive(Default)]
struct Index {
    by_key: HashMap<u64, Arc<Stub>>,
    by_project: HashMap<Arc<str>, HashSet<u64>>,
}

impl Stubs {
    fn lock(&self) -> MutexGuard<'_, Index> {
        self.all.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn add(
        &self,
        project: &str,
        meta: Arc<ClientMeta>,
        outbox: Arc<Outbox>,
        node: Arc<str>,
        epoch: u64,
    ) -> Arc<Stub> {
        let key = self.next_key.fetch_add(1, Relaxed) + 1;
        let project: Arc<str> = project.into();
        let stub = Arc::new(Stub {
            key,
            project: project.clone(),
            meta,
            outbox,
            owner: Mutex::new(Link {
                node,
                epoch,
                seq: 0,
            }),
            in_flight: Mutex::default(),
            answered: Notify::new(),
        });
        let mut index = self.lock();
        index.by_key.insert(key, stub.clone());
        index.by_project.entry(project).or_default().insert(key);
        stub
    }

    pub(super) fn remove(&self, stub: &Stub) {
        let mut index = self.lock();
        index.by_key.remove(&stub.key);
        if let Some(keys) = index.by_project.get_mut(&stub.project) {
            keys.remove(&stub.key);
            if keys.is_empty() {
                index.by_project.remove(&stub.project);
            }
        }
    }

    pub(super) fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    /// Closes the project's clients here that are not served by `node`
    /// under `epoch`, its owner now: they are in no room (1012, reconnect).
    pub(super) fn close_stranded(&self, project: &str, node: &str, epoch: u64) {
        let index = self.lock();
        let Some(keys) = index.by_project.get(project) else {
            return;
        };
        for stub in keys.iter().filter_map(|key| index.by_key.get(key)) {
            let (owner, owner_epoch) = stub.owner();
            if &*owner != node || owner_epoch != epoch {
                stub.outbox.close(
                    crate::room::CLOSE_SERVICE_RESTART,
                    "the project moved; reconnect",
                );
            }
        }
    }

    /// Closes every client here of another node's project (shutdown).
    pub(super) fn close_all(&self, code: u16, reason: &str) {
        for stub in self.lock().by_key.values() {
            stub.outbox.close(code, reason);
        }
    }

    /// Each project with clients here, with the node (and its epoch) that
    /// serves them.
    pub(super) fn projects(&self) -> Vec<(Arc<str>, Arc<str>, u64)> {
        let index = self.lock();
        index
            .by_project
            .iter()
            .filter_map(|(project, keys)| {
                let stub = index.by_key.get(keys.iter().next()?)?;
                let (node, epoch) = stub.owner();
                Some((project.clone(), node, epoch))
            })
            .collect()
    }

    /// The project's clients here, now served by `node`.
    pub(super) fn moved(&self, project: &str, node: &str, epoch: u64) -> Vec<wire::Client> {
        let node: Arc<str> = node.into();
        let index = self.lock();
        let Some(keys) = index.by_project.get(project) else {
            return Vec::new();
        };
        keys.iter()
            .filter_map(|key| index.by_key.get(key))
            .map(|stub| {
                stub.moved_to(node.clone(), epoch);
                wire::Client::new(stub.key, &stub.meta)
            })
            .collect()
    }

    /// Puts the batches of frames from an owner in their clients'
    /// outboxes: in order, from each client's current owner only; a gap
    /// closes the client.
    pub(super) fn deliver(&self, body: &Bytes) {
        let Some((epoch, records)) = wire::parse_frames(body) else {
            return;
        };
        for record in records {
            match record {
                wire::Record::Frames(batch) => {
                    if let Some(stub) = self.get(batch.key) {
                        stub.take(epoch, batch);
                    }
                }
                wire::Record::Ack { key, seq, reply } => {
                    if let Some(stub) = self.get(key) {
                        stub.answered(seq, Answer::Replied(reply));
                    }
                }
            }
        }
    }

    pub(super) fn get(&self, key: u64) -> Option<Arc<Stub>> {
        self.lock().by_key.get(&key).cloned()
    }
}
