//! A room's budget for the lines it writes to the host's log (through the
//! `log` import and its WASI stdout/stderr alike): a token bucket, so a
//! chatty or looping room cannot flood the host's log. Lines over the budget
//! are dropped and counted; the next line that fits says how many were
//! dropped.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::warn;

use crate::metrics::Metrics;
use crate::rate::Bucket;

/// Longest log line kept, in bytes; longer ones are cut.
pub(crate) const MAX_LINE: usize = 4096;

pub(crate) struct LogLimit {
    /// Lines per second (the bucket holds twice that).
    rate: u32,
    bucket: Bucket,
    /// What the bucket's milliseconds count from.
    origin: Instant,
    /// Lines dropped since the last one that was let through.
    dropped: u64,
}

/// The verdict on one line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Log it; `dropped` lines were dropped before it.
    Log {
        dropped: u64,
    },
    Drop,
}

impl LogLimit {
    /// `lines_per_sec` 0: nothing is logged (every line is counted as
    /// dropped).
    pub(crate) fn new(lines_per_sec: u32) -> LogLimit {
        LogLimit {
            rate: lines_per_sec,
            bucket: Bucket::full(lines_per_sec, 0),
            origin: Instant::now(),
            dropped: 0,
        }
    }

    pub(crate) fn check(&mut self, now: Instant) -> Verdict {
        let ms = now.saturating_duration_since(self.origin).as_millis() as u64;
        if self.bucket.take(self.rate, ms) {
            Verdict::Log {
                dropped: std::mem::take(&mut self.dropped),
            }
        } else {
            self.dropped += 1;
            Verdict::Drop
        }
    }
}

/// One room's [`LogLimit`], shared by the `log` import and the room's output
/// streams, counting what it drops in `/health` `logLinesDropped`.
pub(crate) struct LogBudget {
    project: Arc<str>,
    limit: Mutex<LogLimit>,
    metrics: Arc<Metrics>,
}

impl LogBudget {
    pub(crate) fn new(project: Arc<str>, lines_per_sec: u32, metrics: Arc<Metrics>) -> LogBudget {
        LogBudget {
            project,
            limit: Mutex::new(LogLimit::new(lines_per_sec)),
            metrics,
        }
    }

    /// Whether one more line may be logged now. A dropped line is counted;
    /// the first line let through after drops is preceded by a warning
    /// saying how many.
    pub(crate) fn admit(&self) -> bool {
        let verdict = self
            .limit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(Instant::now());
        match verdict {
            Verdict::Drop => {
                self.metrics.log_line_dropped();
                false
            }
            Verdict::Log { dropped } => {
                if dropped > 0 {
                    warn!(
                        project = &*self.project,
                        dropped, "room: lines dropped (over --room-log-lines-per-sec)"
                    );
                }
                true
            }
        }
    }
}

/// A host warning that clients could make the server repeat without end
/// (one per refused connection, say): at most `per_sec` lines a second
/// (bursts of twice that); the next line let through says how many were
/// left out, so every occurrence is either logged or counted in one.
pub(crate) struct Throttle(Mutex<LogLimit>);

impl Throttle {
    pub(crate) fn new(per_sec: u32) -> Throttle {
        Throttle(Mutex::new(LogLimit::new(per_sec)))
    }

    /// `Some(skipped)`: log this one, saying that `skipped` were left out
    /// since the last line; `None`: leave it out.
    pub(crate) fn admit(&self) -> Option<u64> {
        let verdict = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(Instant::now());
        match verdict {
            Verdict::Log { dropped } => Some(dropped),
            Verdict::Drop => None,
        }
    }
}

/// `line` cut to [`MAX_LINE`] bytes at a character boundary.
pub(crate) fn cut(line: &str) -> &str {
    let mut end = line.len().min(MAX_LINE);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate_and_a_count_of_what_was_dropped() {
        let t0 = Instant::now();
        let mut l = LogLimit::new(10);
        l.origin = t0;
        for _ in 0..20 {
            assert_eq!(l.check(t0), Verdict::Log { dropped: 0 });
        }
        for _ in 0..5 {
            assert_eq!(l.check(t0), Verdict::Drop);
        }
        // 100 ms at 10 lines/s: one more line, which reports the five.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(l.check(t1), Verdict::Log { dropped: 5 });
        assert_eq!(l.check(t1), Verdict::Drop);
    }

    #[test]
    fn zero_means_silence() {
        let mut l = LogLimit::new(0);
        let t = Instant::now();
        // Not even a first line, and nothing ever refills the bucket.
        assert_eq!(l.check(t), Verdict::Drop);
        assert_eq!(l.check(t + Duration::from_secs(100)), Verdict::Drop);
        let mut l = LogLimit::new(1);
        assert!(matches!(l.check(t), Verdict::Log { .. }));
        assert!(matches!(l.check(t), Verdict::Log { .. }));
        assert_eq!(l.check(t), Verdict::Drop);
    }

    #[test]
    fn long_lines_are_cut_at_a_character() {
        let long = "é".repeat(MAX_LINE);
        let c = cut(&long);
        assert!(c.len() <= MAX_LINE && c.len() >= MAX_LINE - 1);
        assert_eq!(cut("short"), "short");
    }
}
