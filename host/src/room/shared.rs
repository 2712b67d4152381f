//! What `/status`, `/health` and the console read of a room without taking
//! its lock: the clients in connection order, the time of the last
//! activity, the messages handled and whether the room is hibernated.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{ClientMeta, now_ms};

#[derive(Default)]
pub(crate) struct RoomShared {
    /// The room's clients by their table serial, which grows with each
    /// connection: iterating gives connection order, and a client leaves in
    /// O(log n) under the lock `/status` and `/health` also take (the list
    /// it replaced was scanned per leave, comparing ids, under that lock).
    /// The table's own lists are still scanned per leave, over slot numbers,
    /// in the room's task.
    clients: Mutex<BTreeMap<u64, Arc<ClientMeta>>>,
    /// Milliseconds since the Unix epoch of the last connect or message;
    /// 0: none yet.
    last_activity: AtomicU64,
    /// Client messages the room has handled (counted once per batch).
    messages: AtomicU64,
    /// Whether a wasm instance is live (false: never made, hibernated,
    /// evicted or failed).
    awake: AtomicBool,
}

impl RoomShared {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<ClientMeta>>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub(super) fn add_client(&self, serial: u64, meta: Arc<ClientMeta>) {
        self.lock().insert(serial, meta);
    }
    pub(super) fn remove_client(&self, serial: u64) {
        self.lock().remove(&serial);
    }
    pub(super) fn clear_clients(&self) {
        self.lock().clear();
    }
    /// The clients in connection order.
    pub(crate) fn clients(&self) -> Vec<Arc<ClientMeta>> {
        self.lock().values().cloned().collect()
    }
    pub(crate) fn client_count(&self) -> usize {
        self.lock().len()
    }
    /// Milliseconds since the Unix epoch of the last connect or message.
    pub(crate) fn last_activity(&self) -> Option<u64> {
        match self.last_activity.load(Relaxed) {
            0 => None,
            t => Some(t),
        }
    }
    pub(super) fn touch(&self) {
        self.last_activity.store(now_ms(), Relaxed);
    }
    /// Client messages handled since the room started.
    pub(crate) fn messages(&self) -> u64 {
        self.messages.load(Relaxed)
    }
    pub(super) fn count_messages(&self, n: u64) {
        self.messages.fetch_add(n, Relaxed);
    }
    /// Whether the room holds no wasm instance now.
    pub(crate) fn hibernated(&self) -> bool {
        !self.awake.load(Relaxed)
    }
    pub(super) fn set_awake(&self, awake: bool) {
        self.awake.store(awake, Relaxed);
    }
}
