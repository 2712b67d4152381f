//! The one thread that writes: it takes every commit request waiting, writes
//! them in one redb transaction (one `fdatasync`), and answers each. While
//! it waits on the disk, more requests gather for the next group.
//!
//! After a failed commit redb's handle refuses everything until it is
//! reopened, so the thread reopens the file (committed data is intact:
//! docs/benchmarks.md) and writes are refused for a moment
//! ([`super::RETRY_AFTER_FAILURE_MS`]) so that rooms learn of it in
//! `storage-set` instead of losing another batch.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use redb::Database;
use tokio::sync::oneshot;
use tracing::{error, info};

use super::{ALARMS, CommitError, DurableStore, ENTRIES, RETRY_AFTER_FAILURE_MS};
use crate::store::Changes;

/// Most requests in one transaction: a bound on how long any one waits.
const MAX_GROUP: usize = 4096;

pub(super) struct Request {
    pub(super) project: Arc<str>,
    pub(super) changes: Changes,
    pub(super) done: oneshot::Sender<Result<(), CommitError>>,
}

pub(super) fn start(store: DurableStore, requests: Receiver<Request>) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("wsroom-commit".into())
        .spawn(move || run(&store, &requests))?;
    Ok(())
}

/// Commits groups for as long as the process runs (the thread holds a
/// handle of the store itself, so its channel never closes).
fn run(store: &DurableStore, requests: &Receiver<Request>) {
    let mut group = Vec::new();
    while let Ok(first) = requests.recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match requests.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let result = store
            .database()
            .and_then(|db| write(&db, &group).map_err(anyhow::Error::from));
        let stats = store.stats();
        match result {
            Ok(()) => {
                stats.committed(group.len(), started.elapsed());
                for r in group.drain(..) {
                    let _ = r.done.send(Ok(()));
                }
            }
            Err(e) => {
                let message: CommitError = format!("{e:#}").into();
                stats.failed();
                error!(error = %message, rooms = group.len(), "commit failed; the rooms' last changes are lost and their clients closed; writes refused for a second");
                store
                    .inner
                    .refuse_writes_until
                    .store(crate::room::now_ms() + RETRY_AFTER_FAILURE_MS, Relaxed);
                for r in group.drain(..) {
                    let _ = r.done.send(Err(message.clone()));
                }
                reopen(store, requests);
            }
        }
    }
}

/// One transaction for the whole group.
fn write(db: &Database, group: &[Request]) -> Result<(), redb::Error> {
    let tx = db.begin_write()?;
    {
        let mut entries = tx.open_table(ENTRIES)?;
        let mut alarms = tx.open_table(ALARMS)?;
        for r in group {
            let project = &*r.project;
            if r.changes.cleared {
                let end = super::past(project);
                entries.retain_in((project, "")..(end.as_str(), ""), |_, _| false)?;
            }
            for (key, value) in &r.changes.entries {
                match value {
                    Some(v) => {
                        entries.insert((project, key.as_str()), v.as_slice())?;
                    }
                    None => {
                        entries.remove((project, key.as_str()))?;
                    }
                }
            }
            match r.changes.alarm {
                Some(Some(a)) => {
                    alarms.insert(project, (a.at, a.retry))?;
                }
                Some(None) => {
                    alarms.remove(project)?;
                }
                None => {}
            }
        }
    }
    tx.commit()?;
    Ok(())
}

/// Drops the failed handle (waiting for readers to let go of it) and opens
/// the file again, trying once a second until it works. Meanwhile commits
/// fail at once and writes stay refused: a room does not wait on a disk
/// that is gone.
fn reopen(store: &DurableStore, requests: &Receiver<Request>) {
    let old = store
        .inner
        .db
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(mut db) = old {
        // A room may be reading its data with a clone; it is brief.
        loop {
            match Arc::try_unwrap(db) {
                Ok(db) => {
                    drop(db);
                    break;
                }
                Err(shared) => {
                    db = shared;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    loop {
        match super::open_database(&store.inner.path) {
            Ok(db) => {
                *store.inner.db.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(db));
                info!(path = %store.inner.path.display(), "store reopened after the failure");
                return;
            }
            Err(e) => {
                let message: CommitError = format!("{e:#}").into();
                error!(error = %message, "cannot reopen the store; trying again in a second");
                store.stats().failed();
                for _ in 0..10 {
                    store
                        .inner
                        .refuse_writes_until
                        .store(crate::room::now_ms() + RETRY_AFTER_FAILURE_MS, Relaxed);
                    while let Ok(r) = requests.try_recv() {
                        let _ = r.done.send(Err(message.clone()));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}
