//! The standard `process_*` figures every Prometheus client exports (CPU,
//! memory, file descriptors, start time), read from Linux's `/proc` at each
//! scrape. Elsewhere, or when `/proc` cannot be read, they are left out.

use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// What `/proc` says of this process now.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Process {
    pub(crate) cpu_seconds: f64,
    pub(crate) resident_bytes: u64,
    pub(crate) virtual_bytes: u64,
    pub(crate) start_time_seconds: f64,
    pub(crate) threads: u64,
    pub(crate) open_fds: Option<u64>,
    pub(crate) max_fds: Option<u64>,
}

impl Process {
    pub(crate) fn read() -> Option<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let btime: u64 = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        let mut process = parse_stat(
            &stat,
            rustix::param::clock_ticks_per_second(),
            rustix::param::page_size() as u64,
            btime,
        )?;
        process.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|dir| dir.count() as u64);
        process.max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        Some(process)
    }

    pub(crate) fn register(self, registry: &mut Registry) {
        registry.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            ConstCounter::new(self.cpu_seconds),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            ConstGauge::new(self.resident_bytes as i64),
        );
        registry.register(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            ConstGauge::new(self.virtual_bytes as i64),
        );
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            ConstGauge::new(self.start_time_seconds),
        );
        registry.register(
            "process_threads",
            "Number of OS threads in the process",
            ConstGauge::new(self.threads as i64),
        );
        if let Some(open) = self.open_fds {
            registry.register(
                "process_open_fds",
                "Number of open file descriptors",
                ConstGauge::new(open as i64),
            );
        }
        if let Some(max) = self.max_fds {
            registry.register(
                "process_max_fds",
                "Maximum number of open file descriptors",
                ConstGauge::new(i64::try_from(max).unwrap_or(i64::MAX)),
            );
        }
    }
}

/// Reads `/proc/self/stat` (see proc(5)): the command name may hold spaces
/// and parentheses, so the fields count from the last `)`.
fn parse_stat(stat: &str, ticks_per_second: u64, page_size: u64, btime: u64) -> Option<Process> {
    let (_, rest) = stat.rsplit_once(')')?;
    // Field 3 (state) is the first after the name.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let ticks = ticks_per_second.max(1) as f64;
    Some(Process {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        threads: field(20)?,
        start_time_seconds: btime as f64 + field(22)? as f64 / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page_size,
        open_fds: None,
        max_fds: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_end_of_the_name() {
        // A name with a space and a parenthesis, as a process may choose.
        let stat = "4242 (ws room) x) S 1 4242 4242 0 -1 4194560 2000 0 0 0 250 50 0 0 20 0 \
                    7 0 123400 1048576000 5000 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 \
                    1 0 0 0 0 0";
        let p = parse_stat(stat, 100, 4096, 1_700_000_000).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.threads, 7);
        assert_eq!(p.start_time_seconds, 1_700_001_234.0);
        assert_eq!(p.virtual_bytes, 1_048_576_000);
        assert_eq!(p.resident_bytes, 5000 * 4096);
        assert_eq!(parse_stat("garbage", 100, 4096, 0), None);
    }

    #[test]
    fn this_process_can_be_read() {
        let p = Process::read().expect("/proc is there on Linux");
        assert!(p.resident_bytes > 0 && p.threads >= 1, "{p:?}");
        assert!(p.open_fds.is_some_and(|n| n >= 3), "{p:?}");
    }
}
