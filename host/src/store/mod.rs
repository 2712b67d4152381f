//! The durable store: every room's key-value data and alarm, in one redb
//! file under `--data-dir` (why redb: docs/benchmarks.md, "Embedded stores
//! for durable rooms").
//!
//! Rooms keep their data in memory while they exist (see
//! [`crate::room::storage`]) and read it from here once, when they start.
//! What a batch of a room's events changed is handed to [`DurableStore::commit`];
//! one thread ([`committer`]) writes the changes of every room that asked
//! meanwhile in one transaction, so durability costs one `fdatasync` per
//! group, not per message. A room lets the frames of those events go only
//! once its commit is durable (the output gate, [`crate::room`]).
//!
//! Layout: table `entries`, `(projectId, key)` → value; table `alarms`,
//! `projectId` → `(at ms since the epoch, retry count)`.

mod committer;
pub(crate) mod jetstream;
mod memory;
mod stats;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

pub(crate) use memory::MemoryStore;
pub(crate) use stats::Stats;

const ENTRIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("entries");
const ALARMS: TableDefinition<&str, (u64, u32)> = TableDefinition::new("alarms");

/// The file in `--data-dir`.
pub(crate) const FILE: &str = "rooms.redb";

/// How long a room starting waits for the store to be reopened after a
/// failure before it gives up (and tries again a second later).
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long `storage-set` answers `unavailable` after a commit failed,
/// before the next write tries the disk again.
const RETRY_AFTER_FAILURE_MS: u64 = 1_000;

/// A room's alarm as stored: when it fires and how often its handler has
/// trapped already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Alarm {
    pub(crate) at: u64,
    pub(crate) retry: u32,
}

/// What the store holds for one room.
#[derive(Debug, Default)]
pub(crate) struct RoomData {
    pub(crate) entries: BTreeMap<String, Vec<u8>>,
    pub(crate) alarm: Option<Alarm>,
    /// The stored value's revision (JetStream; 0: none, or a file).
    pub(crate) revision: u64,
}

/// What a room changed since its last commit (with a store that wants
/// [`RoomStore::whole_rooms`], the whole room).
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// Every key was deleted first (`storage-delete-all`).
    pub(crate) cleared: bool,
    /// Keys set (`Some`) or deleted (`None`), after the clearing.
    pub(crate) entries: Vec<(String, Option<Vec<u8>>)>,
    /// The alarm, if it changed (with whole rooms, always).
    pub(crate) alarm: Option<Option<Alarm>>,
    /// Whether the alarm changed.
    pub(crate) alarm_changed: bool,
    /// The revision the room read or last wrote (JetStream).
    pub(crate) revision: u64,
}

/// Where rooms keep their data: a file on a node alone, JetStream in a
/// cluster, this process's memory with `--in-memory`.
#[derive(Clone)]
pub(crate) enum RoomStore {
    File(DurableStore),
    JetStream(Arc<jetstream::JetStreamStore>),
    Memory(Arc<MemoryStore>),
}

impl std::fmt::Debug for RoomStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoomStore::File(store) => store.fmt(f),
            RoomStore::JetStream(_) => f.write_str("JetStream"),
            RoomStore::Memory(_) => f.write_str("Memory"),
        }
    }
}

impl RoomStore {
    /// Whether writes are accepted: not within a second of a failed commit.
    pub(crate) fn accepts_writes(&self) -> bool {
        match self {
            RoomStore::File(store) => store.accepts_writes(),
            RoomStore::JetStream(store) => store.accepts_writes(),
            RoomStore::Memory(_) => true,
        }
    }

    /// Whether a commit carries the whole room rather than what changed.
    pub(crate) fn whole_rooms(&self) -> bool {
        matches!(self, RoomStore::JetStream(_))
    }

    /// The durable store's figures; `None` in memory (nothing to report:
    /// a commit there is a map update).
    pub(crate) fn stats(&self) -> Option<&Stats> {
        match self {
            RoomStore::File(store) => Some(store.stats()),
            RoomStore::JetStream(store) => Some(store.stats()),
            RoomStore::Memory(_) => None,
        }
    }

    /// Everything stored for `project`.
    pub(crate) async fn load(&self, project: Arc<str>) -> anyhow::Result<RoomData> {
        match self {
            RoomStore::File(store) => {
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.load(&project)).await?
            }
            RoomStore::JetStream(store) => store.load(&project).await,
            RoomStore::Memory(store) => Ok(store.load(&project)),
        }
    }

    /// Makes `changes` durable; the room's new revision.
    pub(crate) async fn commit(
        &self,
        project: Arc<str>,
        changes: Changes,
    ) -> Result<u64, CommitError> {
        match self {
            RoomStore::File(store) => store.commit(project, changes).await.map(|()| 0),
            RoomStore::JetStream(store) => store.commit(&project, changes).await,
            RoomStore::Memory(store) => {
                store.commit(project, changes);
                Ok(0)
            }
        }
    }
}

/// Why a commit failed: the disk's error, as text (every room of the group
/// gets the same one).
pub(crate) type CommitError = Arc<str>;

/// The open store; cheap to clone.
#[derive(Clone)]
pub(crate) struct DurableStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DurableStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

struct Inner {
    dir: PathBuf,
    path: PathBuf,
    /// `None` between a failure and a successful reopening.
    db: RwLock<Option<Arc<Database>>>,
    requests: std::sync::mpsc::Sender<committer::Request>,
    /// Until when (ms since the epoch) writes are refused after a failure.
    refuse_writes_until: AtomicU64,
    stats: Stats,
}

impl DurableStore {
    /// Opens (creating) the store in `dir`. Fails, naming `dir`, if it cannot
    /// be created or written, or if another server holds it.
    pub(crate) fn open(dir: &Path) -> anyhow::Result<DurableStore> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        check_writable(dir)?;
        let path = dir.join(FILE);
        let db = open_database(&path)?;
        let (requests, receive) = std::sync::mpsc::channel();
        let store = DurableStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                path,
                db: RwLock::new(Some(Arc::new(db))),
                requests,
                refuse_writes_until: AtomicU64::new(0),
                stats: Stats::default(),
            }),
        };
        committer::start(store.clone(), receive)?;
        Ok(store)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// The file's size in bytes.
    pub(crate) fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.inner.path).map_or(0, |m| m.len())
    }

    /// Whether writes are accepted: not within a second of a failed commit.
    pub(crate) fn accepts_writes(&self) -> bool {
        self.inner.refuse_writes_until.load(Relaxed) <= crate::room::now_ms()
    }

    fn database(&self) -> anyhow::Result<Arc<Database>> {
        self.inner
            .db
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .context("the store is being reopened after a disk error")
    }

    /// Everything stored for `project` (blocking: run it off the async
    /// workers). While the committer reopens the file after a failure, it
    /// waits for it a moment rather than fail the room.
    pub(crate) fn load(&self, project: &str) -> anyhow::Result<RoomData> {
        let deadline = std::time::Instant::now() + REOPEN_WAIT;
        loop {
            match self.database() {
                Ok(db) => return read_room(&db, project),
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    }

    /// Makes `changes` durable, with the changes of every other room that
    /// commits meanwhile; resolves once they are (or are not).
    pub(crate) async fn commit(
        &self,
        project: Arc<str>,
        changes: Changes,
    ) -> Result<(), CommitError> {
        let (done, result) = oneshot::channel();
        let request = committer::Request {
            project,
            changes,
            done,
        };
        if self.inner.requests.send(request).is_err() {
            return Err("the store's committer has stopped".into());
        }
        result
            .await
            .unwrap_or_else(|_| Err("the store's committer has stopped".into()))
    }

    /// Holds the store's one writer until the transaction is dropped: the
    /// committer waits (a disk that is slow to answer, for tests).
    #[cfg(test)]
    pub(crate) fn begin_write_for_test(&self) -> redb::WriteTransaction {
        self.database().unwrap().begin_write().unwrap()
    }

    /// Refuses writes as after a failed commit (for tests).
    #[cfg(test)]
    pub(crate) fn refuse_writes_for_test(&self) {
        self.inner
            .refuse_writes_until
            .store(crate::room::now_ms() + RETRY_AFTER_FAILURE_MS, Relaxed);
    }

    /// Every project with a pending alarm.
    pub(crate) fn alarms(&self) -> anyhow::Result<Vec<(String, Alarm)>> {
        all_alarms(&*self.database()?)
    }
}

/// Opens the file, saying which directory when it cannot.
fn open_database(path: &Path) -> anyhow::Result<Database> {
    let db = Database::create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => anyhow::anyhow!(
            "{} is in use by another wsroom server (one server per --data-dir)",
            path.display()
        ),
        e => anyhow::Error::new(e).context(format!("cannot open the store {}", path.display())),
    })?;
    // The tables exist from the start, so reads never meet a missing one;
    // made once, so that reopening on a full disk writes nothing.
    let made = db
        .begin_read()
        .is_ok_and(|tx| tx.open_table(ENTRIES).is_ok() && tx.open_table(ALARMS).is_ok());
    if !made {
        let tx = db.begin_write()?;
        tx.open_table(ENTRIES)?;
        tx.open_table(ALARMS)?;
        tx.commit()
            .with_context(|| format!("cannot write the store {}", path.display()))?;
    }
    Ok(db)
}

/// A directory the server cannot write stops it at start, not at the
/// first message.
fn check_writable(dir: &Path) -> anyhow::Result<()> {
    let probe = dir.join(".wsroom-write-test");
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .with_context(|| format!("cannot write in the data directory {}", dir.display()))
}

/// The end of `project`'s range of keys: every `(project, key)` sorts before
/// `(project + "\0", "")`, and no other project sorts between the two.
fn past(project: &str) -> String {
    format!("{project}\0")
}

fn read_room(db: &Database, project: &str) -> anyhow::Result<RoomData> {
    let tx = db.begin_read()?;
    let entries = tx.open_table(ENTRIES)?;
    let mut data = RoomData::default();
    let end = past(project);
    for row in entries.range((project, "")..(end.as_str(), ""))? {
        let (key, value) = row?;
        data.entries
            .insert(key.value().1.to_owned(), value.value().to_vec());
    }
    let alarms = tx.open_table(ALARMS)?;
    data.alarm = alarms.get(project)?.map(|a| {
        let (at, retry) = a.value();
        Alarm { at, retry }
    });
    Ok(data)
}

fn all_alarms(db: &Database) -> anyhow::Result<Vec<(String, Alarm)>> {
    let tx = db.begin_read()?;
    let alarms = tx.open_table(ALARMS)?;
    let mut all = Vec::new();
    for row in alarms.iter()? {
        let (project, alarm) = row?;
        let (at, retry) = alarm.value();
        all.push((project.value().to_owned(), Alarm { at, retry }));
    }
    Ok(all)
}

/// The store read by `wsroom data` with no server running.
pub(crate) mod offline {
    use super::*;

    /// Opens `dir`'s store to read it.
    pub(crate) fn open(dir: &Path) -> anyhow::Result<Offline> {
        let path = dir.join(FILE);
        anyhow::ensure!(path.exists(), "{} holds no store ({FILE})", dir.display());
        let db = open_database(&path).context(
            "`wsroom data` reads the store while no server holds it: stop the server first",
        )?;
        Ok(Offline(db))
    }

    /// A store opened by a command, not a server.
    pub(crate) struct Offline(Database);

    impl Offline {
        /// Every project with stored data or an alarm, with its number of
        /// keys and bytes (keys and values).
        pub(crate) fn projects(&self) -> anyhow::Result<Vec<(String, usize, usize)>> {
            let tx = self.0.begin_read()?;
            let mut all: BTreeMap<String, (usize, usize)> = BTreeMap::new();
            for row in tx.open_table(ENTRIES)?.iter()? {
                let (key, value) = row?;
                let (p, k) = key.value();
                let e = all.entry(p.to_owned()).or_default();
                e.0 += 1;
                e.1 += k.len() + value.value().len();
            }
            for row in tx.open_table(ALARMS)?.iter()? {
                all.entry(row?.0.value().to_owned()).or_default();
            }
            Ok(all.into_iter().map(|(p, (n, b))| (p, n, b)).collect())
        }

        /// One project's data as JSON: every key with its value (as text
        /// when it is UTF-8, else base64) and the alarm.
        pub(crate) fn dump(&self, project: &str) -> anyhow::Result<serde_json::Value> {
            use base64::Engine as _;
            let data = read_room(&self.0, project)?;
            let entries: Vec<serde_json::Value> = data
                .entries
                .into_iter()
                .map(|(key, value)| match String::from_utf8(value) {
                    Ok(text) => serde_json::json!({ "key": key, "text": text }),
                    Err(e) => serde_json::json!({
                        "key": key,
                        "base64": base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
                    }),
                })
                .collect();
            let alarm = data
                .alarm
                .map(|a| serde_json::json!({ "at": a.at, "retryCount": a.retry }));
            Ok(serde_json::json!({
                "projectId": project,
                "entries": entries,
                "alarm": alarm,
            }))
        }
    }
}
