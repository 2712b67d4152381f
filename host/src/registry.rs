//! projectId → live room. Get-or-create on upgrade; `/status` and `/health`
//! only read it, so they never create a room.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::engine::Runtime;
use crate::metrics::Metrics;
use crate::room::instances::Instances;
use crate::room::{self, RoomHandle, Settings};

pub struct Registry {
    rooms: Mutex<HashMap<Arc<str>, RoomHandle>>,
    runtime: Runtime,
    room_config: Arc<BTreeMap<String, String>>,
    settings: Settings,
    metrics: Arc<Metrics>,
    generations: AtomicU64,
    /// Most live rooms (`--max-rooms`).
    max_rooms: usize,
    /// Live instances, at most `--max-instances`.
    instances: Instances,
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
            runtime,
            room_config: Arc::new(room_config),
            settings,
            metrics,
            generations: AtomicU64::new(0),
            max_rooms,
            instances: Instances::new(max_instances),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, RoomHandle>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn room_config(&self) -> Arc<BTreeMap<String, String>> {
        self.room_config.clone()
    }

    /// The project's live room, started if there is none; `None` if there
    /// is none and `--max-rooms` are live.
    pub fn get_or_create(self: &Arc<Self>, project: &str) -> Option<RoomHandle> {
        let mut rooms = self.lock();
        if let Some(handle) = rooms.get(project) {
            return Some(handle.clone());
        }
        if rooms.len() >= self.max_rooms {
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

    /// Every live room, for shutdown.
    pub fn all(&self) -> Vec<RoomHandle> {
        self.lock().values().cloned().collect()
    }
}
