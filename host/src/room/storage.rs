//! A room's key-value store (the `storage-*` imports): kept by the host, so
//! it survives hibernation and code reloads, and bounded in bytes.

use std::collections::BTreeMap;

use crate::engine::wit::StorageError;

/// Longest key, in bytes.
pub(crate) const MAX_KEY: usize = 1024;

pub(crate) struct Storage {
    entries: BTreeMap<String, Vec<u8>>,
    /// Sum of the lengths of every key and value.
    bytes: usize,
    limit: usize,
}

impl Storage {
    pub(crate) fn new(limit: usize) -> Storage {
        Storage {
            entries: BTreeMap::new(),
            bytes: 0,
            limit,
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.entries.get(key).cloned()
    }

    /// Stores `value` under `key`, unless the key is bad or the store would
    /// pass its limit (then nothing changes).
    pub(crate) fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), StorageError> {
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(StorageError::BadKey);
        }
        let old = self.entries.get(&key).map_or(0, |v| key.len() + v.len());
        let new = key.len() + value.len();
        if self.bytes - old + new > self.limit {
            return Err(StorageError::Full);
        }
        self.bytes = self.bytes - old + new;
        self.entries.insert(key, value);
        Ok(())
    }

    /// Removes `key`; whether it was there.
    pub(crate) fn delete(&mut self, key: &str) -> bool {
        match self.entries.remove(key) {
            Some(v) => {
                self.bytes -= key.len() + v.len();
                true
            }
            None => false,
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
        let mut s = Storage::new(10);
        s.set("ab".into(), b"cdef".to_vec()).unwrap();
        assert_eq!(s.bytes(), 6);
        assert_eq!(
            s.set("x".into(), b"12345".to_vec()),
            Err(StorageError::Full)
        );
        // Replacing counts the old value out first.
        s.set("ab".into(), b"12345678".to_vec()).unwrap();
        assert_eq!(s.bytes(), 10);
        assert_eq!(s.get("ab"), Some(b"12345678".to_vec()));
        assert!(s.delete("ab"));
        assert!(!s.delete("ab"));
        assert_eq!(s.bytes(), 0);
        assert_eq!(s.set(String::new(), vec![]), Err(StorageError::BadKey));
        assert_eq!(
            s.set("k".repeat(MAX_KEY + 1), vec![]),
            Err(StorageError::BadKey)
        );
    }

    #[test]
    fn keys_by_prefix_in_order() {
        let mut s = Storage::new(1000);
        for k in ["msg:3", "msg:1", "other", "msg:2", "ms"] {
            s.set(k.into(), vec![]).unwrap();
        }
        assert_eq!(s.keys("msg:", 10), ["msg:1", "msg:2", "msg:3"]);
        assert_eq!(s.keys("msg:", 2), ["msg:1", "msg:2"]);
        assert_eq!(s.keys("", 100).len(), 5);
        assert!(s.keys("zzz", 10).is_empty());
    }
}
