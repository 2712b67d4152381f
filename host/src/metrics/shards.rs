//! Figures updated from every core at once on hot paths (a write to a
//! socket, a room call) spread over cache lines of their own, one per
//! thread (modulo [`SHARDS`]): one shared atomic would bounce between the
//! cores at each update and cost the fan-out path measurably. A scrape adds
//! the shards up.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Shards per figure: more than the cores this server usually runs on.
pub(super) const SHARDS: usize = 8;

/// One cache line (two on the CPUs that fetch lines in pairs).
#[repr(align(128))]
#[derive(Default)]
pub(super) struct Padded<T>(pub(super) T);

/// This thread's shard.
pub(super) fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// A counter added to from many threads.
#[derive(Default)]
pub(crate) struct ShardedCounter([Padded<AtomicU64>; SHARDS]);

impl ShardedCounter {
    pub(crate) fn add(&self, n: u64) {
        self.0[shard()].0.fetch_add(n, Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_add_up_across_threads() {
        let counter = std::sync::Arc::new(ShardedCounter::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let counter = counter.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| counter.add(2)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(counter.get(), 8000);
    }
}
