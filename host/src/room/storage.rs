//! A room's key-value store (the `storage-*` imports), bounded in bytes.
//!
//! The room reads and writes it in memory; with a durable store
//! ([`crate::store`]) it is loaded from there when the room starts, and the
//! keys a batch of events changed are handed to the store's commit at the
//! end of the batch ([`Storage::take_changes`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::store::{Changes, RoomStore};

/// Longest key, in bytes.
pub(crate) const MAX_KEY: usize = 1024;

/// Why a write was refused; nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The key is empty or longer than [`MAX_KEY`].
    BadKey,
    /// The store would pass its limit.
    Full,
    /// The disk failed a moment ago; writes are refused for a while.
    Unavailable,
}

/// What the JetStream store writes per entry besides its key and value.
const ENTRY_OVERHEAD: usize = 8;

pub(crate) struct Storage {
    entries: BTreeMap<String, Vec<u8>>,
    /// Sum of the lengths of every key and value.
    bytes: usize,
    limit: usize,
    /// Where the data lasts; `None`: in memory only.
    durable: Option<RoomStore>,
    /// The revision of the stored data (JetStream), to commit over.
    revision: u64,
    /// Bytes counted per entry besides its key and value: what a store of
    /// whole rooms spends on each (its lengths), so that the limit bounds
    /// what it writes.
    overhead: usize,
    /// The data was read from the durable store (always, in memory).
    loaded: bool,
    /// Keys set or deleted since the last commit (durable rooms only).
    changed: BTreeSet<String>,
    /// Every key was deleted since the last commit.
    cleared: bool,
}

impl Storage {
    pub(crate) fn new(limit: usize, durable: Option<RoomStore>) -> Storage {
        Storage {
            revision: 0,
            overhead: if durable.as_ref().is_some_and(RoomStore::whole_rooms) {
                ENTRY_OVERHEAD
            } else {
                0
            },
            entries: BTreeMap::new(),
            bytes: 0,
            limit,
            loaded: durable.is_none(),
            durable,
            changed: BTreeSet::new(),
            cleared: false,
        }
    }

    pub(crate) fn is_durable(&self) -> bool {
        self.durable.is_some()
    }

    pub(crate) fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Takes the data read from the durable store.
    pub(crate) fn load(&mut self, entries: BTreeMap<String, Vec<u8>>, revision: u64) {
        self.bytes = entries
            .iter()
            .map(|(k, v)| k.len() + v.len() + self.overhead)
            .sum();
        self.entries = entries;
        self.revision = revision;
        self.changed.clear();
        self.cleared = false;
        self.loaded = true;
    }

    /// Forgets everything not committed: the data is read again before the
    /// room's next call.
    pub(crate) fn unload(&mut self) {
        if self.durable.is_some() {
            self.entries.clear();
            self.bytes = 0;
            self.changed.clear();
            self.cleared = false;
            self.loaded = false;
        }
    }

    /// Whether anything changed since the last commit.
    pub(crate) fn has_changes(&self) -> bool {
        self.cleared || !self.changed.is_empty()
    }

    /// What changed since the last commit, to commit it (everything, for
    /// a store that writes whole rooms).
    pub(crate) fn take_changes(&mut self) -> Changes {
        let changed = std::mem::take(&mut self.changed);
        let cleared = std::mem::take(&mut self.cleared);
        if self.durable.as_ref().is_some_and(RoomStore::whole_rooms) {
            return Changes {
                cleared: true,
                entries: self
                    .entries
                    .iter()
                    .map(|(k, v)| (k.clone(), Some(v.clone())))
                    .collect(),
                revision: self.revision,
                ..Changes::default()
            };
        }
        let entries = changed
            .into_iter()
            .map(|key| {
                let value = self.entries.get(&key).cloned();
                (key, value)
            })
            .collect();
        Changes {
            cleared,
            entries,
            revision: self.revision,
            ..Changes::default()
        }
    }

    /// The commit succeeded: the stored data's new revision.
    pub(crate) fn committed(&mut self, revision: u64) {
        self.revision = revision;
    }

    pub(crate) fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.entries.get(key).cloned()
    }

    /// Stores `value` under `key`, unless the key is bad, the store would
    /// pass its limit, or the disk just failed (then nothing changes).
    pub(crate) fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), Refused> {
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(Refused::BadKey);
        }
        let old = self
            .entries
            .get(&key)
            .map_or(0, |v| key.len() + v.len() + self.overhead);
        let new = key.len() + value.len() + self.overhead;
        if self.bytes - old + new > self.limit {
            return Err(Refused::Full);
        }
        if let Some(store) = &self.durable {
            if !store.accepts_writes() {
                return Err(Refused::Unavailable);
            }
            self.changed.insert(key.clone());
        }
        self.bytes = self.bytes - old + new;
        self.entries.insert(key, value);
        Ok(())
    }

    /// Removes `key`; whether it was there.
    pub(crate) fn delete(&mut self, key: &str) -> bool {
        match self.entries.remove(key) {
            Some(v) => {
                self.bytes -= key.len() + v.len() + self.overhead;
                if self.durable.is_some() {
                    self.changed.insert(key.to_owned());
                }
                true
            }
            None => false,
        }
    }

    /// Removes every key.
    pub(crate) fn delete_all(&mut self) {
        self.entries.clear();
        self.bytes = 0;
        if self.durable.is_some() {
            self.changed.clear();
            self.cleared = true;
        }
    }

    /// Keys starting with `prefix`, in byte order, at most `limit`.
    pub(crate) fn keys(&self, prefix: &str, limit: u32) -> Vec<String> {
        self.entries
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit as usize)
            .map(|(k, _)| k.clone())
            .collect()
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_keys_plus_values() {
        let mut s = Storage::new(10, None);
        s.set("ab".into(), b"cdef".to_vec()).unwrap();
        assert_eq!(s.bytes(), 6);
        assert_eq!(s.set("x".into(), b"12345".to_vec()), Err(Refused::Full));
        // Replacing counts the old value out first.
        s.set("ab".into(), b"12345678".to_vec()).unwrap();
        assert_eq!(s.bytes(), 10);
        assert_eq!(s.get("ab"), Some(b"12345678".to_vec()));
        assert!(s.delete("ab"));
        assert!(!s.delete("ab"));
        assert_eq!(s.bytes(), 0);
        assert_eq!(s.set(String::new(), vec![]), Err(Refused::BadKey));
        assert_eq!(s.set("k".repeat(MAX_KEY + 1), vec![]), Err(Refused::BadKey));
    }

    #[test]
    fn a_durable_store_tracks_changes_and_refuses_writes_after_a_disk_failure() {
        let dir = std::env::temp_dir().join(format!("wsroom-storage-{}", uuid::Uuid::new_v4()));
        let store = crate::store::DurableStore::open(&dir).unwrap();
        let mut s = Storage::new(1000, Some(RoomStore::File(store.clone())));
        assert!(!s.is_loaded(), "read from the store first");
        s.load([("a".to_owned(), b"1".to_vec())].into(), 0);
        assert_eq!(s.bytes(), 2);
        s.set("b".into(), b"2".to_vec()).unwrap();
        assert!(s.delete("a"));
        let changes = s.take_changes();
        assert_eq!(
            changes.entries,
            [
                ("a".to_owned(), None),
                ("b".to_owned(), Some(b"2".to_vec()))
            ]
        );
        assert!(!s.has_changes());
        // After a failed commit the room sees the disk's state in its
        // writes; deletes still work.
        store.refuse_writes_for_test();
        assert_eq!(s.set("c".into(), b"3".to_vec()), Err(Refused::Unavailable));
        assert_eq!(s.get("c"), None);
        assert!(s.delete("b"));
        s.delete_all();
        let changes = s.take_changes();
        assert!(changes.cleared && changes.entries.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn keys_by_prefix_in_order() {
        let mut s = Storage::new(1000, None);
        for k in ["msg:3", "msg:1", "other", "msg:2", "ms"] {
            s.set(k.into(), vec![]).unwrap();
        }
        assert_eq!(s.keys("msg:", 10), ["msg:1", "msg:2", "msg:3"]);
        assert_eq!(s.keys("msg:", 2), ["msg:1", "msg:2"]);
        assert_eq!(s.keys("", 100).len(), 5);
        assert!(s.keys("zzz", 10).is_empty());
    }
}
