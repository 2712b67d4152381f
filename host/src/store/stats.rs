//! The store's figures for `/health` and `/metrics`: commits, failures, and
//! the commit latency as a Prometheus histogram.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
pub(crate) const BUCKETS: [f64; 10] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0,
];

#[derive(Default)]
pub(crate) struct Stats {
    /// Transactions committed.
    commits: AtomicU64,
    /// Room change sets they carried (one per room and batch of events).
    room_commits: AtomicU64,
    failures: AtomicU64,
    /// Sum of commit latencies, in microseconds.
    micros: AtomicU64,
    /// Commits at or under each bucket's bound (not cumulative here).
    buckets: [AtomicU64; BUCKETS.len()],
    /// The longest commit, in microseconds.
    max_micros: AtomicU64,
}

/// A copy of the figures.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) commits: u64,
    pub(crate) room_commits: u64,
    pub(crate) failures: u64,
    pub(crate) seconds_sum: f64,
    /// Cumulative counts per bucket of [`BUCKETS`].
    pub(crate) cumulative: [u64; BUCKETS.len()],
    pub(crate) max_seconds: f64,
}

impl Stats {
    pub(crate) fn committed(&self, rooms: usize, took: Duration) {
        let micros = took.as_micros() as u64;
        self.commits.fetch_add(1, Relaxed);
        self.room_commits.fetch_add(rooms as u64, Relaxed);
        self.micros.fetch_add(micros, Relaxed);
        self.max_micros.fetch_max(micros, Relaxed);
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn failed(&self) {
        self.failures.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut cumulative = [0; BUCKETS.len()];
        let mut sum = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            sum += b.load(Relaxed);
            cumulative[i] = sum;
        }
        Snapshot {
            commits: self.commits.load(Relaxed),
            room_commits: self.room_commits.load(Relaxed),
            failures: self.failures.load(Relaxed),
            seconds_sum: self.micros.load(Relaxed) as f64 / 1e6,
            cumulative,
            max_seconds: self.max_micros.load(Relaxed) as f64 / 1e6,
        }
    }
}

impl Snapshot {
    /// The bucket bound under which at least `q` of the commits fell, in
    /// milliseconds (`None` before the first commit, or past the last
    /// bucket).
    pub(crate) fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.commits == 0 {
            return None;
        }
        let want = (self.commits as f64 * q).ceil() as u64;
        BUCKETS
            .iter()
            .zip(self.cumulative)
            .find(|(_, n)| *n >= want)
            .map(|(b, _)| b * 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_buckets() {
        let s = Stats::default();
        assert_eq!(s.snapshot().quantile_ms(0.5), None);
        for _ in 0..9 {
            s.committed(2, Duration::from_micros(300));
        }
        s.committed(1, Duration::from_millis(20));
        let snap = s.snapshot();
        assert_eq!(snap.commits, 10);
        assert_eq!(snap.room_commits, 19);
        assert_eq!(snap.quantile_ms(0.5), Some(0.5));
        assert_eq!(snap.quantile_ms(0.99), Some(25.0));
        assert!((snap.max_seconds - 0.02).abs() < 1e-9);
    }
}
