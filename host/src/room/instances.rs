//! The limit on room instances live at once (`--max-instances`), and who
//! makes way when it is reached.
//!
//! A live instance holds memory and about eight of the process's memory
//! mappings; a room without one (hibernated) holds only its table. So the
//! limit is on instances, not on rooms: a room that needs an instance while
//! the limit is reached takes the permit of the least recently used idle
//! one, which hibernates early, as it would have after
//! `--hibernate-after-ms`. The contract makes that safe: a room keeps no
//! state of its own that must outlive an event.
//!
//! "Least recently used" is the clock (second-chance) approximation: rooms
//! wait in the order their instance was created; a room that handled an
//! event since the clock last passed it gets another round instead of being
//! evicted. Marking a room used is a plain store under its own lock, so the
//! message path pays nothing for the bookkeeping.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Core;

/// What a live instance holds: returned to the pool when it is dropped
/// (with the instance, under the room's lock).
pub(crate) struct Permit {
    _permit: OwnedSemaphorePermit,
    /// Shared with the instance's entry in the clock: false once dropped.
    held: Arc<AtomicBool>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.held.store(false, Relaxed);
    }
}

/// A room and whether it still holds the instance it was queued for.
struct Entry {
    core: Weak<Core>,
    held: Arc<AtomicBool>,
}

impl Entry {
    fn stale(&self) -> bool {
        !self.held.load(Relaxed)
    }
}

pub struct Instances {
    permits: Arc<Semaphore>,
    max: usize,
    clock: Mutex<VecDeque<Entry>>,
}

impl Instances {
    pub fn new(max: usize) -> Instances {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Instances {
            permits: Arc::new(Semaphore::new(max)),
            max,
            clock: Mutex::new(VecDeque::new()),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Entries in the clock, stale ones included.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.clock().len()
    }

    fn clock(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        self.clock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A permit for a new instance of the room `me` (whose lock the caller
    /// holds). At the limit, hibernates the least recently used idle
    /// instance; if every instance is in the middle of an event, waits for
    /// one to be free: an event ends within the room's CPU budget.
    pub(super) async fn acquire(&self, me: &Weak<Core>) -> Permit {
        let permit = loop {
            if let Ok(permit) = self.permits.clone().try_acquire_owned() {
                break permit;
            }
            if self.evict_one() {
                continue;
            }
            tokio::select! {
                permit = self.permits.clone().acquire_owned() => {
                    if let Ok(permit) = permit {
                        break permit;
                    }
                }
                () = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        };
        let held = Arc::new(AtomicBool::new(true));
        let mut clock = self.clock();
        if clock.len() >= 2 * self.max + 64 {
            // Drop the entries of instances gone by themselves (hibernated,
            // failed, removed): the clock only meets them when it evicts.
            // At most `max` entries are not stale.
            clock.retain(|e| !e.stale());
        }
        clock.push_back(Entry {
            core: me.clone(),
            held: held.clone(),
        });
        Permit {
            _permit: permit,
            held,
        }
    }

    /// Hibernates the least recently used idle instance; false if every
    /// instance is busy or recently used twice round.
    fn evict_one(&self) -> bool {
        let mut turns = 2 * self.clock().len() + 1;
        while turns > 0 {
            turns -= 1;
            let Some(entry) = self.clock().pop_front() else {
                return false;
            };
            if entry.stale() {
                continue;
            }
            let Some(core) = entry.core.upgrade() else {
                continue;
            };
            let Ok(mut actor) = core.actor.try_lock() else {
                // Running an event now, waiting for a permit itself, or its
                // task reading its timers between events: passed over all
                // the same (so a room used a moment before another may make
                // way first; the clock is an approximation).
                self.clock().push_back(entry);
                continue;
            };
            // Under the room's lock: its permit, hence the flag, cannot go.
            if entry.stale() {
                continue;
            }
            if actor.take_used() {
                drop(actor);
                self.clock().push_back(entry);
                continue;
            }
            actor.evict();
            return true;
        }
        false
    }
}
