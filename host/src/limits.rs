//! What the process may hold, probed from the kernel at start: open files
//! (one per connection) and memory mappings (eight per room instance), the
//! defaults of `--max-connections` and `--max-instances` that fit them, and
//! the warnings when a flag asks for more than they allow.

use tracing::warn;

use crate::config::Config;

/// Memory mappings one room instance takes, with some margin (measured
/// with the default room: 6.9, its linear memory's reservation and
/// copy-on-write image, and its fiber stack with a guard page).
pub const MAPS_PER_INSTANCE: usize = 8;
/// Mappings left for everything else in the process (code, heap, threads).
const MAPS_RESERVED: usize = 4096;

/// The kernel's limit of memory mappings per process (65530 unless raised).
pub fn max_map_count() -> usize {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65530)
}

/// The default `--max-instances` for a process allowed `max_map_count`
/// mappings.
pub fn instances_the_map_count_allows(max_map_count: usize) -> usize {
    (max_map_count.saturating_sub(MAPS_RESERVED) / MAPS_PER_INSTANCE).max(1)
}

/// `--max-connections` when not given.
pub const DEFAULT_MAX_CONNECTIONS: usize = 50_000;
/// Files left for everything else in the process (the listener, epoll, the
/// runtime's own, the compile cache, /proc reads).
pub const FILES_RESERVED: u64 = 64;

/// The process's limit on open files: `(soft, hard)`; `None` is no limit.
pub fn open_files_limit() -> (Option<u64>, Option<u64>) {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    (limit.current, limit.maximum)
}

/// Raises the soft limit on open files to the hard one, as a server that
/// holds a file per connection needs (many systems start processes with a
/// soft limit of 1024); returns the limit now in force.
pub fn raise_open_files_limit() -> std::io::Result<Option<u64>> {
    let (soft, hard) = open_files_limit();
    if soft != hard {
        rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: hard,
                maximum: hard,
            },
        )?;
    }
    Ok(open_files_limit().0)
}

/// HTTP connections served at once beside `connections` open WebSockets
/// (upgrade requests, `/health` polls: short-lived; more wait to be
/// accepted): a seventh as many, and at least 64.
pub fn http_connections(connections: usize) -> usize {
    connections.div_ceil(7).max(64)
}

/// The default `--max-handshakes-per-address`: a quarter of the HTTP
/// connections served at once, so that it takes four addresses to hold
/// them all.
pub fn handshakes_per_address(connections: usize) -> usize {
    http_connections(connections).div_ceil(4)
}

/// The open-files limit `--max-connections` needs: a file for each
/// WebSocket and each HTTP connection being served, and
/// [`FILES_RESERVED`].
pub fn files_for_connections(connections: usize) -> u64 {
    (connections as u64)
        .saturating_add(http_connections(connections) as u64)
        .saturating_add(FILES_RESERVED)
}

/// The default `--max-connections` for a process allowed `files` open
/// files: the most that [`files_for_connections`] fits in them (7/8 of
/// what [`FILES_RESERVED`] leaves), at most 50000, at least 1.
pub fn connections_the_files_allow(files: Option<u64>) -> usize {
    let Some(files) = files else {
        return DEFAULT_MAX_CONNECTIONS;
    };
    let usable = files.saturating_sub(FILES_RESERVED);
    let mut connections = usize::try_from(usable.saturating_mul(7) / 8)
        .unwrap_or(usize::MAX)
        .min(usize::try_from(usable.saturating_sub(64)).unwrap_or(usize::MAX))
        .clamp(1, DEFAULT_MAX_CONNECTIONS);
    // The rounding of a seventh can leave one too many.
    while connections > 1 && files_for_connections(connections) > files {
        connections -= 1;
    }
    connections
}

/// A `vm.max_map_count` that leaves room for `instances` (rounded up to a
/// power of two, as the setting is usually given).
pub fn map_count_for_instances(instances: usize) -> usize {
    instances
        .saturating_mul(MAPS_PER_INSTANCE)
        .saturating_add(MAPS_RESERVED)
        .next_power_of_two()
}

/// Warns when `--max-instances` or `--max-connections` ask for more than
/// the kernel lets this process hold, and raises the open-files limit to
/// its hard limit.
pub(crate) fn check_at_start(config: &Config) {
    let map_count = max_map_count();
    let allowed = instances_the_map_count_allows(map_count);
    if config.max_instances > allowed {
        warn!(
            max_instances = config.max_instances,
            max_map_count = map_count,
            "--max-instances is more than vm.max_map_count leaves room for (about {allowed} \
             instances): past that, rooms fail to start and the process cannot map memory; raise \
             it with sysctl -w vm.max_map_count={}",
            map_count_for_instances(config.max_instances)
        );
    }
    match raise_open_files_limit() {
        Ok(Some(files)) if files_for_connections(config.max_connections) > files => {
            warn!(
                max_connections = config.max_connections,
                open_files_limit = files,
                "--max-connections is more than the open-files limit leaves room for ({} \
                 connections, each WebSocket and each HTTP connection being served a file): past \
                 that, new connections wait unaccepted instead of being refused; raise the hard \
                 limit (ulimit -Hn, or LimitNOFILE= in a systemd unit) to {}",
                connections_the_files_allow(Some(files)),
                files_for_connections(config.max_connections)
            );
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot raise the open-files limit to its hard limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_connection_limit_fits_the_open_files_limit() {
        assert_eq!(connections_the_files_allow(None), DEFAULT_MAX_CONNECTIONS);
        // systemd's default hard limit, Docker's: the usual 50000.
        assert_eq!(connections_the_files_allow(Some(524_288)), 50_000);
        assert_eq!(connections_the_files_allow(Some(1 << 20)), 50_000);
        // A hard limit of 4096, as some distributions have: 3528 WebSockets
        // and 504 HTTP connections, 64 files kept.
        assert_eq!(connections_the_files_allow(Some(4096)), 3528);
        assert_eq!(http_connections(3528), 504);
        assert_eq!(files_for_connections(3528), 4096);
        // A low one: at least 64 HTTP connections.
        assert_eq!(connections_the_files_allow(Some(200)), 72);
        assert_eq!(files_for_connections(72), 200);
        // Absurdly low still allows one.
        assert_eq!(connections_the_files_allow(Some(10)), 1);
        // The default is the most that fits, for every limit.
        for files in (129..5000).chain([65_536, 524_288]) {
            let c = connections_the_files_allow(Some(files));
            assert!(files_for_connections(c) <= files, "{files}");
            if c < DEFAULT_MAX_CONNECTIONS {
                assert!(files_for_connections(c + 1) > files, "{files}");
            }
        }
    }

    #[test]
    fn the_default_instance_limit_leaves_mappings_for_the_rest() {
        // Linux's default vm.max_map_count.
        assert_eq!(instances_the_map_count_allows(65530), 7679);
        assert!(instances_the_map_count_allows(65530) * MAPS_PER_INSTANCE + MAPS_RESERVED <= 65530);
        // Raised, as for Elasticsearch.
        assert_eq!(instances_the_map_count_allows(262144), 32256);
        // Absurdly low still allows one instance.
        assert_eq!(instances_the_map_count_allows(100), 1);
        // The setting suggested for a limit allows at least that many.
        for instances in [1, 7679, 7680, 100_000] {
            assert!(
                instances_the_map_count_allows(map_count_for_instances(instances)) >= instances
            );
        }
    }
}
