//! projectId → live room. Get-or-create on upgrade and on HTTP into a room;
//! `/status`, `/health` and the console's list only read it, so they never
//! create a room.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::oneshot;

use crate::cluster::Validity;
use crate::engine::{Runtime, wit};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::room::instances::Instances;
use crate::room::table::ConnRef;
use crate::room::{self, ClientMeta, Event, Fetched, Refusal, RoomHandle, Settings};

/// How many times a connect retries when it races with a room's removal.
const CONNECT_ATTEMPTS: usize = 4;

/// In a cluster, the projects this node owns (see
/// [`Registry::owned_through`]).
pub(crate) trait Ownership: Send + Sync {
    fn owns(&self, project: &str) -> bool;
    /// The project's room was removed: it is released.
    fn removed(&self, project: &str);
}

/// Why a client could not be placed in its project's room.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// No room for the project, and `--max-rooms` are live.
    TooManyRooms { limit: usize },
    /// The room did not take the client.
    Refused(Refusal),
    /// The room kept going away (removed, or restarting) while asked.
    Unreachable,
}

/// One page of [`Registry::page`].
pub(crate) struct RoomPage {
    /// The page's rooms, in projectId order.
    pub(crate) rooms: Vec<RoomHandle>,
    /// The rooms the filter keeps, on every page.
    pub(crate) total: usize,
    /// Whether more rooms follow the page's last.
    pub(crate) more: bool,
    /// The page's last id (its room may have gone since): the next page's
    /// cursor.
    pub(crate) last: Option<Arc<str>>,
}

/// Reads every id of `index` in order, `chunk` at a time under its lock:
/// keeps in `ids` the first `keep` that `wanted` keeps and that sort after
/// `after`, and returns how many `wanted` keeps in all.
fn scan_in_chunks(
    index: &Mutex<BTreeSet<Arc<str>>>,
    wanted: &dyn Fn(&str) -> bool,
    after: Option<&str>,
    keep: usize,
    chunk: usize,
    ids: &mut Vec<Arc<str>>,
) -> usize {
    let mut count = 0;
    let mut resume: Option<Arc<str>> = None;
    loop {
        let index = index.lock().unwrap_or_else(|e| e.into_inner());
        let from = resume.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let mut seen = 0;
        for id in index.range::<str, _>((from, Bound::Unbounded)) {
            seen += 1;
            if wanted(id) {
                count += 1;
                if ids.len() < keep && after.is_none_or(|after| &**id > after) {
                    ids.push(id.clone());
                }
            }
            if seen == chunk {
                resume = Some(id.clone());
                break;
            }
        }
        if seen < chunk {
            return count;
        }
    }
}

/// The most room ids [`Registry::page`] reads under the index's lock at a
/// time (about 100 µs of scanning here).
const PAGE_SCAN_CHUNK: usize = 1024;

pub struct Registry {
    rooms: Mutex<HashMap<Arc<str>, RoomHandle>>,
    /// The ids of `rooms`, in order, for the console's pages. Changed under
    /// `rooms`' lock (taken first), read without it.
    index: Mutex<BTreeSet<Arc<str>>>,
    runtime: Runtime,
    room_config: Arc<BTreeMap<String, String>>,
    settings: Settings,
    metrics: Arc<Metrics>,
    generations: AtomicU64,
    /// Most live rooms (`--max-rooms`).
    max_rooms: usize,
    /// Live instances, at most `--max-instances`.
    instances: Instances,
    /// In a cluster: which projects this node owns, told when their rooms go.
    ownership: OnceLock<Arc<dyn Ownership>>,
    /// In a cluster, until when this node may run its rooms.
    lease: OnceLock<Arc<Validity>>,
}

impl Registry {
    pub(crate) fn new(
        runtime: Runtime,
        room_config: BTreeMap<String, String>,
        settings: Settings,
        metrics: Arc<Metrics>,
        max_rooms: usize,
        max_instances: usize,
    ) -> Arc<Registry> {
        Arc::new(Registry {
            rooms: Mutex::new(HashMap::new()),
            index: Mutex::new(BTreeSet::new()),
            runtime,
            room_config: Arc::new(room_config),
            settings,
            metrics,
            generations: AtomicU64::new(0),
            max_rooms,
            instances: Instances::new(max_instances),
            ownership: OnceLock::new(),
            lease: OnceLock::new(),
        })
    }

    /// In a cluster: rooms run only while `lease` holds.
    pub(crate) fn run_under(&self, lease: Arc<Validity>) {
        let _ = self.lease.set(lease);
    }

    /// The generation of this node's lease now (0 alone): a room records
    /// it when it is made.
    pub(crate) fn lease_generation(&self) -> u64 {
        self.lease.get().map_or(0, |lease| lease.generation())
    }

    /// Whether a room made under lease `generation` may run now: always
    /// alone; in a cluster, while that lease holds (a room checks before
    /// each batch of events).
    pub(crate) fn lease_holds(&self, generation: u64) -> bool {
        self.lease
            .get()
            .is_none_or(|lease| lease.holds_for(generation))
    }

    /// In a cluster: rooms are made only for the projects `ownership` says
    /// this node owns, and it is told (under the registry's lock, so that
    /// no room of the project can be made meanwhile) when one goes.
    pub(crate) fn owned_through(&self, ownership: Arc<dyn Ownership>) {
        let _ = self.ownership.set(ownership);
    }

    /// Whether this node may run `project`'s room: always alone.
    fn may_run(&self, project: &str) -> bool {
        self.ownership.get().is_none_or(|o| o.owns(project))
    }

    /// Asks the project's room to take the client, making the room if the
    /// project has none (again, if it raced with the room's removal).
    pub(crate) async fn connect(
        self: &Arc<Self>,
        project: &str,
        meta: Arc<ClientMeta>,
        outbox: Arc<Outbox>,
    ) -> Result<(RoomHandle, ConnRef), ConnectError> {
        let (room, admitted) = self
            .ask(project, |reply| Event::Connect {
                meta: meta.clone(),
                outbox: outbox.clone(),
                reply,
            })
            .await?;
        admitted
            .map(|conn| (room, conn))
            .map_err(ConnectError::Refused)
    }

    /// Hands an HTTP request to the project's room (made if it has none),
    /// and its answer.
    pub(crate) async fn fetch(
        self: &Arc<Self>,
        project: &str,
        request: wit::HttpRequest,
    ) -> Result<Fetched, ConnectError> {
        let request = Arc::new(request);
        let (_, fetched) = self
            .ask(project, |reply| Event::Fetch {
                request: request.clone(),
                reply,
            })
            .await?;
        Ok(fetched)
    }

    /// Sends the event `make` builds to the project's room (made if the
    /// project has none) and waits for its answer; again, with a new room,
    /// if it raced with the room's removal.
    async fn ask<T>(
        self: &Arc<Self>,
        project: &str,
        make: impl Fn(oneshot::Sender<T>) -> Event,
    ) -> Result<(RoomHandle, T), ConnectError> {
        for _ in 0..CONNECT_ATTEMPTS {
            let Some(room) = self.get_or_create(project) else {
                if !self.may_run(project) {
                    // In a cluster: the project moved meanwhile.
                    return Err(ConnectError::Unreachable);
                }
                return Err(ConnectError::TooManyRooms {
                    limit: self.max_rooms,
                });
            };
            let (reply, answer) = oneshot::channel();
            if room.send(make(reply)).await.is_err() {
                continue;
            }
            // Dropped unanswered: the room was being removed; a new one
            // will be made.
            if let Ok(answer) = answer.await {
                return Ok((room, answer));
            }
        }
        Err(ConnectError::Unreachable)
    }

    /// Puts back in the project's room a client it admitted on another node
    /// (see [`Event::Rejoin`]); `None` if no room can take it.
    pub(crate) async fn rejoin(
        self: &Arc<Self>,
        project: &str,
        meta: Arc<ClientMeta>,
        outbox: Arc<Outbox>,
    ) -> Option<(RoomHandle, ConnRef)> {
        for _ in 0..CONNECT_ATTEMPTS {
            let room = self.get_or_create(project)?;
            let (reply, answer) = oneshot::channel();
            let event = Event::Rejoin {
                meta: meta.clone(),
                outbox: outbox.clone(),
                reply,
            };
            if room.send(event).await.is_err() {
                continue;
            }
            if let Ok(conn) = answer.await {
                return Some((room, conn));
            }
        }
        None
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, RoomHandle>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn index(&self) -> MutexGuard<'_, BTreeSet<Arc<str>>> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn room_config(&self) -> Arc<BTreeMap<String, String>> {
        self.room_config.clone()
    }

    /// The project's live room, started if there is none; `None` if there
    /// is none and `--max-rooms` are live (or, in a cluster, this node does
    /// not own the project).
    pub fn get_or_create(self: &Arc<Self>, project: &str) -> Option<RoomHandle> {
        let mut rooms = self.lock();
        if let Some(handle) = rooms.get(project) {
            return Some(handle.clone());
        }
        if rooms.len() >= self.max_rooms || !self.may_run(project) {
            return None;
        }
        let project: Arc<str> = project.into();
        let generation = self.generations.fetch_add(1, Relaxed);
        let handle = room::spawn(
            project.clone(),
            generation,
            self.clone(),
            self.runtime.clone(),
            self.settings.clone(),
            self.metrics.clone(),
        );
        self.index().insert(project.clone());
        rooms.insert(project, handle.clone());
        Some(handle)
    }

    /// Most live rooms (`--max-rooms`).
    pub fn max_rooms(&self) -> usize {
        self.max_rooms
    }

    /// The pool of instances (`--max-instances`).
    pub fn instances(&self) -> &Instances {
        &self.instances
    }

    /// The project's live room, if it has one.
    pub fn get(&self, project: &str) -> Option<RoomHandle> {
        self.lock().get(project).cloned()
    }

    /// Removes a room, unless it was already replaced by a newer one.
    pub fn remove_if(&self, project: &str, generation: u64) -> bool {
        let mut rooms = self.lock();
        match rooms.get(project) {
            Some(h) if h.generation == generation => {
                rooms.remove(project);
                self.index().remove(project);
                if let Some(ownership) = self.ownership.get() {
                    ownership.removed(project);
                }
                true
            }
            _ => false,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// One page of the live rooms for the console, in projectId order: the
    /// first `limit` whose id sorts after `after` and that `wanted` keeps
    /// (all, without it), with how many rooms it keeps in all. It reads the ordered index
    /// of ids, never the rooms' map (whose lock every connect takes), and
    /// holds the index's lock for at most [`PAGE_SCAN_CHUNK`] ids at a time
    /// (a room being made or removed waits on it, and connects meanwhile
    /// wait on that); `total` is exact unless rooms come or go during the
    /// scan.
    pub(crate) fn page(
        &self,
        wanted: Option<&dyn Fn(&str) -> bool>,
        after: Option<&str>,
        limit: usize,
    ) -> RoomPage {
        let mut ids: Vec<Arc<str>> = Vec::with_capacity(limit + 1);
        let total;
        if let Some(wanted) = wanted {
            total = scan_in_chunks(
                &self.index,
                wanted,
                after,
                limit + 1,
                PAGE_SCAN_CHUNK,
                &mut ids,
            );
        } else {
            let index = self.index();
            let from = after.map_or(Bound::Unbounded, Bound::Excluded);
            ids.extend(
                index
                    .range::<str, _>((from, Bound::Unbounded))
                    .take(limit + 1)
                    .cloned(),
            );
            total = index.len();
        }
        let more = ids.len() > limit;
        ids.truncate(limit);
        let last = ids.last().cloned();
        let rooms = self.lock();
        let rooms = ids.iter().filter_map(|id| rooms.get(id).cloned()).collect();
        RoomPage {
            rooms,
            total,
            more,
            last,
        }
    }

    /// What runs `project`: its component's file name, or `default`.
    pub(crate) fn component_name(&self, project: &str) -> String {
        self.runtime.component_name(project)
    }

    /// Every live room, for shutdown.
    pub fn all(&self) -> Vec<RoomHandle> {
        self.lock().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_in_chunks_sees_every_id_once_and_keeps_the_first_after_the_cursor() {
        let ids: BTreeSet<Arc<str>> = (0..10).map(|i| Arc::from(format!("p{i}"))).collect();
        let index = Mutex::new(ids);
        let even = |id: &str| id.ends_with(['0', '2', '4', '6', '8']);
        for chunk in [1, 3, 5, 10, 11] {
            let mut kept = Vec::new();
            let total = scan_in_chunks(&index, &even, Some("p2"), 2, chunk, &mut kept);
            assert_eq!(total, 5, "chunk {chunk}");
            let kept: Vec<&str> = kept.iter().map(|id| &**id).collect();
            assert_eq!(kept, ["p4", "p6"], "chunk {chunk}");
        }
        let mut kept = Vec::new();
        assert_eq!(
            scan_in_chunks(&index, &|_| true, Some("p9"), 5, 4, &mut kept),
            10
        );
        assert!(kept.is_empty());
    }
}
