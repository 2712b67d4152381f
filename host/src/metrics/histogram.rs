//! A latency histogram that hot paths can feed without a lock: fixed
//! buckets of atomic counts, a shard per thread, encoded for Prometheus by
//! prometheus-client.
//!
//! prometheus-client's own `Histogram` takes a mutex per observation (its
//! source says atomics are still to do); a room call or a socket write,
//! observed from every core, would contend on it. This one costs three
//! relaxed atomic operations on the thread's own cache line and a short
//! scan of the bounds.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};

use super::shards::{Padded, SHARDS, shard};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds of the latency buckets, in seconds: 10 µs to 1 s, about
/// three to a decade (a room call takes microseconds, a durable commit
/// milliseconds, a frame stuck behind a slow client up to seconds).
pub(crate) const LATENCY_BUCKETS: [f64; 16] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Durations observed, by bucket of [`LATENCY_BUCKETS`], in a shard per
/// thread (see [`super::shards`]).
#[derive(Default)]
pub(crate) struct Histogram {
    shards: [Padded<Shard>; SHARDS],
}

#[derive(Default)]
struct Shard {
    /// Observations per bucket (not cumulative), the last past every bound.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of the observations, in nanoseconds (584 years before it wraps).
    nanos: AtomicU64,
    /// The longest observation, in nanoseconds.
    max_nanos: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        let shard = &self.shards[shard()].0;
        shard.counts[bucket].fetch_add(1, Relaxed);
        shard.nanos.fetch_add(nanos, Relaxed);
        shard.max_nanos.fetch_max(nanos, Relaxed);
    }

    /// A consistent-enough copy (each count read once; a scrape racing with
    /// observations may see the sum of one more or one fewer).
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut own = [0; LATENCY_BUCKETS.len() + 1];
        let (mut nanos, mut max_nanos) = (0, 0);
        for shard in &self.shards {
            for (sum, count) in own.iter_mut().zip(&shard.0.counts) {
                *sum += count.load(Relaxed);
            }
            nanos += shard.0.nanos.load(Relaxed);
            max_nanos = shard.0.max_nanos.load(Relaxed).max(max_nanos);
        }
        let mut cumulative = [0; LATENCY_BUCKETS.len()];
        let mut total = 0;
        for (i, count) in own.iter().enumerate() {
            total += count;
            if let Some(c) = cumulative.get_mut(i) {
                *c = total;
            }
        }
        Snapshot {
            count: total,
            seconds_sum: nanos as f64 / 1e9,
            cumulative,
            max_seconds: max_nanos as f64 / 1e9,
        }
    }
}

/// A histogram's figures at one moment.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) count: u64,
    pub(crate) seconds_sum: f64,
    /// Observations at or under each bound of [`LATENCY_BUCKETS`].
    pub(crate) cumulative: [u64; LATENCY_BUCKETS.len()],
    pub(crate) max_seconds: f64,
}

impl Snapshot {
    /// Adds `other`'s observations to these.
    pub(crate) fn add(&mut self, other: &Snapshot) {
        self.count += other.count;
        self.seconds_sum += other.seconds_sum;
        for (mine, theirs) in self.cumulative.iter_mut().zip(other.cumulative) {
            *mine += theirs;
        }
        self.max_seconds = self.max_seconds.max(other.max_seconds);
    }

    /// The bucket bound under which at least `q` of the observations fell,
    /// in milliseconds (`None` before the first, or past the last bound).
    pub(crate) fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let want = (self.count as f64 * q).ceil() as u64;
        LATENCY_BUCKETS
            .iter()
            .zip(self.cumulative)
            .find(|(_, n)| *n >= want)
            .map(|(bound, _)| bound * 1000.0)
    }

    pub(crate) fn mean_ms(&self) -> Option<f64> {
        (self.count > 0).then(|| self.seconds_sum * 1000.0 / self.count as f64)
    }
}

impl TypedMetric for Snapshot {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Snapshot {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The encoder adds the counts up itself: it takes each bucket's own.
        let mut below = 0;
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .copied()
            .zip(self.cumulative)
            .chain(std::iter::once((f64::INFINITY, self.count)))
            .map(|(bound, cumulative)| {
                let own = cumulative.saturating_sub(below);
                below = cumulative;
                (bound, own)
            })
            .collect();
        encoder.encode_histogram::<NoLabelSet>(self.seconds_sum, self.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_buckets_and_quantiles_come_from_them() {
        let h = Histogram::default();
        assert_eq!(h.snapshot().quantile_ms(0.5), None);
        for _ in 0..9 {
            h.observe(Duration::from_micros(300));
        }
        h.observe(Duration::from_millis(20));
        let s = h.snapshot();
        assert_eq!(s.count, 10);
        assert_eq!(s.quantile_ms(0.5), Some(0.5));
        assert_eq!(s.quantile_ms(0.99), Some(25.0));
        assert!((s.max_seconds - 0.02).abs() < 1e-9);
        assert!((s.seconds_sum - 0.0227).abs() < 1e-9);
        // Past the last bound: counted, in +Inf only.
        h.observe(Duration::from_secs(3));
        let s = h.snapshot();
        assert_eq!(s.count, 11);
        assert_eq!(*s.cumulative.last().unwrap(), 10);
        assert_eq!(s.quantile_ms(1.0), None);
    }

    #[test]
    fn it_is_encoded_with_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(5));
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_secs(3));
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("t_seconds", "test", h.snapshot());
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        for line in [
            "# TYPE t_seconds histogram",
            "t_seconds_bucket{le=\"1e-05\"} 1",
            "t_seconds_bucket{le=\"0.00025\"} 1",
            "t_seconds_bucket{le=\"0.0005\"} 2",
            "t_seconds_bucket{le=\"1\"} 2",
            "t_seconds_bucket{le=\"+Inf\"} 3",
            "t_seconds_count 3",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
        }
    }
}
