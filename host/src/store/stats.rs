//! The store's figures for `/health` and `/metrics`: commits, failures, and
//! the commit latency as a histogram.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::metrics::{Histogram, HistogramSnapshot};

#[derive(Default)]
pub(crate) struct Stats {
    /// Transactions committed.
    commits: AtomicU64,
    /// Room change sets they carried (one per room and batch of events).
    room_commits: AtomicU64,
    failures: AtomicU64,
    latency: Histogram,
}

/// A copy of the figures.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) commits: u64,
    pub(crate) room_commits: u64,
    pub(crate) failures: u64,
    pub(crate) latency: HistogramSnapshot,
}

impl Stats {
    pub(crate) fn committed(&self, rooms: usize, took: Duration) {
        self.commits.fetch_add(1, Relaxed);
        self.room_commits.fetch_add(rooms as u64, Relaxed);
        self.latency.observe(took);
    }

    pub(crate) fn failed(&self) {
        self.failures.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            commits: self.commits.load(Relaxed),
            room_commits: self.room_commits.load(Relaxed),
            failures: self.failures.load(Relaxed),
            latency: self.latency.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_and_their_latency_are_counted() {
        let s = Stats::default();
        for _ in 0..9 {
            s.committed(2, Duration::from_micros(300));
        }
        s.committed(1, Duration::from_millis(20));
        s.failed();
        let snap = s.snapshot();
        assert_eq!(snap.commits, 10);
        assert_eq!(snap.room_commits, 19);
        assert_eq!(snap.failures, 1);
        assert_eq!(snap.latency.count, 10);
        assert_eq!(snap.latency.quantile_ms(0.5), Some(0.5));
    }
}
