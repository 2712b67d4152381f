//! A token bucket, for the limits a client or a room could otherwise exceed
//! without end: a connection's messages (`--max-messages-per-sec`), a
//! room's log lines, the host's own repeated warnings.

/// `rate` tokens a second, holding at most twice that (the burst); starts
/// full. Time is in milliseconds on the caller's clock, tokens are counted
/// in thousandths, so a rate of a few a second refills smoothly; 16 bytes,
/// as every connection keeps one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    milli: u64,
    last_ms: u64,
}

impl Bucket {
    pub(crate) fn full(rate: u32, now_ms: u64) -> Bucket {
        Bucket {
            milli: burst(rate),
            last_ms: now_ms,
        }
    }

    /// Takes a token if there is one. A clock that went back refills
    /// nothing.
    pub(crate) fn take(&mut self, rate: u32, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        self.milli = self
            .milli
            .saturating_add(elapsed.saturating_mul(u64::from(rate)))
            .min(burst(rate));
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }
}

/// Thousandths of a token the bucket holds at most: two seconds' worth.
fn burst(rate: u32) -> u64 {
    u64::from(rate) * 2000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_twice_the_rate_then_the_rate() {
        let mut b = Bucket::full(10, 1_000);
        assert_eq!((0..25).filter(|_| b.take(10, 1_000)).count(), 20);
        // 100 ms at 10 a second: one more; 50 ms: half of one, none yet.
        assert!(b.take(10, 1_100));
        assert!(!b.take(10, 1_100));
        assert!(!b.take(10, 1_150));
        assert!(b.take(10, 1_200));
        // A long pause refills the burst, no more.
        assert_eq!((0..25).filter(|_| b.take(10, 100_000)).count(), 20);
    }

    #[test]
    fn zero_lets_nothing_through_and_time_going_back_refills_nothing() {
        let mut b = Bucket::full(0, 0);
        assert!(!b.take(0, 0));
        assert!(!b.take(0, 1_000_000));
        let mut b = Bucket::full(1, 5_000);
        assert!(b.take(1, 5_000) && b.take(1, 5_000));
        assert!(!b.take(1, 5_000));
        assert!(!b.take(1, 0), "the clock went back");
        assert!(!b.take(1, 5_999));
        assert!(b.take(1, 6_000));
    }
}
