//! The store of `--in-memory`: every room's data and alarm in this
//! process's memory. A room removed for being empty keeps its data here, as
//! it would in the file, so a project served only over HTTP, or whose
//! clients all left, finds its data again; all of it is lost at exit.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Alarm, Changes, RoomData};

#[derive(Default)]
pub(crate) struct MemoryStore {
    rooms: Mutex<HashMap<Arc<str>, Stored>>,
}

#[derive(Default)]
struct Stored {
    entries: BTreeMap<String, Vec<u8>>,
    alarm: Option<Alarm>,
}

impl MemoryStore {
    fn rooms(&self) -> MutexGuard<'_, HashMap<Arc<str>, Stored>> {
        // A panic elsewhere while the lock was held leaves whole maps
        // (every change below is applied by calls that cannot fail halfway).
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of what `project` stored (a room reads it once, when it starts).
    pub(crate) fn load(&self, project: &str) -> RoomData {
        match self.rooms().get(project) {
            Some(stored) => RoomData {
                entries: stored.entries.clone(),
                alarm: stored.alarm,
                revision: 0,
            },
            None => RoomData::default(),
        }
    }

    /// Applies `changes`, as the file's committer does.
    pub(crate) fn commit(&self, project: Arc<str>, changes: Changes) {
        let mut rooms = self.rooms();
        let stored = rooms.entry(project.clone()).or_default();
        if changes.cleared {
            stored.entries.clear();
        }
        for (key, value) in changes.entries {
            match value {
                Some(value) => {
                    stored.entries.insert(key, value);
                }
                None => {
                    stored.entries.remove(&key);
                }
            }
        }
        if let Some(alarm) = changes.alarm {
            stored.alarm = alarm;
        }
        if stored.entries.is_empty() && stored.alarm.is_none() {
            rooms.remove(&project);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &[u8]) -> (String, Option<Vec<u8>>) {
        (key.to_owned(), Some(value.to_vec()))
    }

    #[test]
    fn a_room_s_data_is_kept_changed_and_forgotten_once_empty() {
        let store = MemoryStore::default();
        let p: Arc<str> = "p".into();
        store.commit(
            p.clone(),
            Changes {
                entries: vec![set("a", b"1"), set("b", b"2")],
                alarm: Some(Some(Alarm { at: 5, retry: 1 })),
                alarm_changed: true,
                ..Changes::default()
            },
        );
        let data = store.load("p");
        assert_eq!(data.entries.len(), 2);
        assert_eq!(data.alarm, Some(Alarm { at: 5, retry: 1 }));
        assert!(store.load("q").entries.is_empty(), "projects stay apart");
        store.commit(
            p.clone(),
            Changes {
                entries: vec![("a".into(), None)],
                ..Changes::default()
            },
        );
        let data = store.load("p");
        assert_eq!(data.entries.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(
            data.alarm,
            Some(Alarm { at: 5, retry: 1 }),
            "an unchanged alarm stays"
        );
        store.commit(
            p,
            Changes {
                cleared: true,
                entries: vec![set("c", b"3")],
                alarm: Some(None),
                alarm_changed: true,
                ..Changes::default()
            },
        );
        let data = store.load("p");
        assert_eq!(data.entries.keys().collect::<Vec<_>>(), ["c"]);
        assert_eq!(data.alarm, None);
        store.commit(
            "p".into(),
            Changes {
                cleared: true,
                ..Changes::default()
            },
        );
        assert!(store.rooms().is_empty(), "nothing kept for an empty room");
    }
}
