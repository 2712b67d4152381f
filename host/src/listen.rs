//! The listening socket, with a backlog deep enough for a reconnect storm:
//! after a deploy or a network blip every client connects at once, and a
//! connection the accept queue has no room for waits for its SYN to be
//! sent again (a second, then three).

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};
use tracing::info;

/// `--listen-backlog` when not given: the most the kernel takes (it caps
/// the backlog at `net.core.somaxconn`, 4096 on recent Linux).
pub const DEFAULT_BACKLOG: u32 = 65_535;

/// The kernel's cap on a listening socket's backlog, if it can be read.
pub fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Listens on `addr` with an accept queue of `backlog` connections, or of
/// what the kernel allows (said in the log when that is less).
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std and tokio's `bind` do: a restarted server takes its port back
    // while the old one's connections are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(backlog)?;
    match somaxconn() {
        Some(cap) if cap < backlog => info!(
            backlog = cap,
            asked = backlog,
            "the accept queue holds {cap} connections: net.core.somaxconn caps --listen-backlog \
             (raise it with sysctl for larger reconnect storms)"
        ),
        _ => info!(backlog, "accept queue"),
    }
    Ok(listener)
}
