//! A room's life: made at its project's first connection, run by its own
//! task between events, hibernated when idle (the instance dropped, the
//! clients, attachments and alarm kept), evicted early when another room
//! needs its instance, removed once empty with no alarm, closed at
//! shutdown.

use std::sync::Arc;

use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use super::storage::Storage;
use super::table::Table;
use super::{Actor, Core, Instance, RoomHandle, RoomShared, Settings, alarms, now_ms};
use crate::engine::Runtime;
use crate::metrics::Metrics;
use crate::registry::Registry;

/// Starts the task of a new room and returns its handle.
pub(crate) fn spawn(
    project: Arc<str>,
    generation: u64,
    registry: Arc<Registry>,
    runtime: Runtime,
    settings: Settings,
    metrics: Arc<Metrics>,
) -> RoomHandle {
    let (tx, rx) = mpsc::channel(settings.inbox);
    let lease_generation = registry.lease_generation();
    let inbox_bytes_max = settings.inbox_bytes;
    let shared = Arc::new(RoomShared::default());
    let table = Table::new(
        project.clone(),
        registry.room_config(),
        shared.clone(),
        metrics.clone(),
        Storage::new(settings.storage_bytes, settings.store.clone()),
        settings.log_lines_per_sec,
    );
    let handle_project = project.clone();
    let core = Arc::new_cyclic(|me| Core {
        actor: tokio::sync::Mutex::new(Actor {
            me: me.clone(),
            project,
            generation,
            registry,
            runtime,
            settings,
            metrics,
            rx,
            instance: Instance::Hibernated(Box::new(table)),
            used_since_clock_passed: false,
            activity_unrecorded: false,
            handled_since_flush: false,
            messages_since_flush: 0,
            last_event: tokio::time::Instant::now(),
            stopped: false,
            committed_alarm: None,
            lease_generation,
            scratch: None,
            gathered: None,
        }),
        wake: Notify::new(),
    });
    tokio::spawn(run(core.clone()));
    RoomHandle::new(
        handle_project,
        tx,
        inbox_bytes_max,
        core,
        shared,
        generation,
    )
}

/// How long a room whose data could not be read waits before trying again.
const LOAD_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Why the room's task woke.
enum Woken {
    Event,
    /// Time to try reading the room's data again.
    Load,
    Idle,
    Alarm,
}

/// The room's own task: runs what waits in the inbox, fires the alarm,
/// hibernates an idle instance, until the room is finished. What it runs
/// is boxed for the run: the task of a hibernated room holds only its
/// waits (~0.5 KiB, against 3.4 KiB with the runs inline).
async fn run(core: Arc<Core>) {
    {
        let mut actor = core.actor.lock().await;
        actor.metrics.room_created();
        info!(project = %actor.project, "room created");
        // The alarm it has in the store is known before the first wait; a
        // failure is tried again before the first call.
        if let Err(e) = Box::pin(actor.ensure_loaded()).await {
            warn!(project = %actor.project, error = %format!("{e:#}"), "cannot read the room's data; trying again in a second");
        }
    }
    loop {
        let (alarm, hibernate_at, load) = {
            let mut actor = core.actor.lock().await;
            if actor.stopped {
                return;
            }
            (
                actor.table().alarm_at,
                actor.hibernate_at(),
                actor.needs_load(),
            )
        };
        let woken = tokio::select! {
            () = core.wake.notified() => Woken::Event,
            () = tokio::time::sleep(LOAD_RETRY), if load => Woken::Load,
            () = tokio::time::sleep_until(hibernate_at.unwrap_or_else(tokio::time::Instant::now)), if hibernate_at.is_some() => Woken::Idle,
            () = alarms::sleep_until_ms(alarm.unwrap_or(0)), if alarm.is_some() => Woken::Alarm,
        };
        let mut actor = core.actor.lock().await;
        let actor = &mut *actor;
        if actor.stopped {
            return;
        }
        if !actor.registry.lease_holds(actor.lease_generation) {
            Box::pin(actor.lose_lease()).await;
            actor.finish();
            return;
        }
        match woken {
            Woken::Event => {}
            Woken::Load => {
                if let Err(e) = Box::pin(actor.ensure_loaded()).await {
                    warn!(project = %actor.project, error = %format!("{e:#}"), "cannot read the room's data; trying again in a second");
                }
            }
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
                    Box::pin(async {
                        actor.fire_alarm().await;
                        actor.finish_batch().await;
                    })
                    .await;
                }
            }
        }
        if Box::pin(actor.drain()).await {
            actor.finish();
            return;
        }
    }
}

impl Actor {
    /// When a live instance is due to hibernate, if it is to.
    fn hibernate_at(&self) -> Option<tokio::time::Instant> {
        let after = self.settings.hibernate_after?;
        self.instance.is_live().then(|| self.last_event + after)
    }

    /// Idle: drop the instance but keep the clients, the attachments and the
    /// alarm. The next event creates a fresh instance.
    pub(super) fn hibernate(&mut self) {
        self.drop_instance();
        self.metrics.hibernated();
        let clients = self.table().len();
        debug!(project = %self.project, clients, "room hibernated");
    }

    /// Whether the room was used since the last call (events waiting in its
    /// inbox count), clearing the mark.
    pub(super) fn take_used(&mut self) -> bool {
        std::mem::take(&mut self.used_since_clock_passed) || !self.rx.is_empty()
    }

    /// Another room needs an instance and `--max-instances` are live: this
    /// idle one hibernates early.
    pub(super) fn evict(&mut self) {
        self.drop_instance();
        self.metrics.instance_evicted();
        debug!(project = %self.project, "room hibernated early: --max-instances reached");
    }

    /// Server shutdown (or, in a cluster, the project lost): what the room
    /// changed is committed, then every client gets `code` after what is
    /// queued for it.
    pub(super) async fn shut_down(&mut self, code: u16, reason: &'static str, commit: bool) {
        if commit {
            self.commit().await;
        } else {
            self.table().discard_pending();
        }
        let table = self.table();
        for c in table.drain() {
            table.close_later(c, code, reason);
        }
        table.flush();
        self.registry.remove_if(&self.project, self.generation);
    }

    /// Removes the room if it is empty with no alarm set (and its data was
    /// read: a stored alarm may be waiting in it).
    pub(super) fn try_remove(&mut self) -> bool {
        if self.needs_load() {
            return false;
        }
        let t = self.table();
        if !t.is_empty() || t.alarm_at.is_some() {
            return false;
        }
        self.registry.remove_if(&self.project, self.generation)
    }

    /// The room is gone: connections racing with the removal learn it when
    /// their reply sender is dropped here, and retry with a new room.
    fn finish(&mut self) {
        self.stopped = true;
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
        self.drop_instance();
        self.metrics.room_removed();
        info!(project = %self.project, "room removed");
    }
}
