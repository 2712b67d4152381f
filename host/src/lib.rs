//! wsroom: self-hosted Durable-Object-style WebSocket rooms.
//!
//! The binary (`main.rs`) parses the command line and calls [`run`]; the
//! library's own API is that, [`config`], [`limits`], [`listen`] and
//! [`check_component`];
//! [`outbox`] and [`write_all`] are public for the load tool's reference
//! server, which writes as wsroom does so that comparing the two prices the
//! room alone. Map of the modules:
//! - [`listen`]: the listening socket and its backlog.
//! - `server`: [`run`]: the listener, one handler per connection's HTTP
//!   phase, graceful shutdown. `handshakes`: connections in the HTTP phase
//!   per source address. `signals`: SIGTERM, ctrl-c, SIGHUP reload.
//! - [`config`]: command-line flags and the validated [`config::Config`];
//!   [`limits`]: the open files and memory mappings the kernel allows, and
//!   the defaults that fit them.
//! - `tls`: rustls termination for https/wss, the certificate reloadable.
//! - `http`: the routes (`/websocket`, `/status`, `/health`, `/metrics`)
//!   and their one error type. `auth`: access tokens and origins.
//! - `conn`: one WebSocket connection: frame rules and reassembly, reader,
//!   writer. `rate`: the token bucket of the limits on rates. [`outbox`]: a
//!   connection's bounded outgoing queue of framed bytes.
//! - `registry`: projectId → live room. `room`: the per-project actor, its
//!   connection table, the host imports.
//! - `engine`: wasmtime: the compiled component, stores, CPU and memory
//!   limits. `stacks`: the fiber stacks guest calls run on.
//! - `store`: the durable store (redb) of rooms' data and alarms, and its
//!   one committing thread.
//! - `cluster`: with `--nats`, the node's membership of a cluster: leases,
//!   projects' owners, clients served across nodes.
//! - `metrics`: process-wide counters and latency histograms for `/health`
//!   and `/metrics` (encoded by prometheus-client).
//! - `healthcheck`: [`health_check`], the client of `wsroom health`.
//!
//! The wire protocol is docs/PROTOCOL.md; the room contract, wit/room.wit.

pub mod alloc;
mod auth;
mod cluster;
pub mod config;
mod conn;
mod engine;
mod handshakes;
mod healthcheck;
mod http;
pub mod limits;
pub mod listen;
mod metrics;
pub mod outbound;
pub mod outbox;
mod rate;
mod registry;
mod room;
mod server;
mod signals;
mod stacks;
mod store;
mod tls;

pub use conn::writer::write_all;
pub use healthcheck::{health_check, local_health_url};
pub use server::run;
pub use signals::shutdown_signal;

/// Compiles the room component in `path` and checks that it fits the
/// `wsroom:room/room` world, as the server with `config` would load it (what
/// `wsroom check` does); the contract version it was built against, e.g.
/// `wsroom:room@0.1.0`.
pub fn check_component(config: &config::Config, path: &std::path::Path) -> anyhow::Result<String> {
    engine::check_file(config, path)
}

/// What `wsroom data` prints about the store in `dir`.
pub fn read_data(dir: &std::path::Path, action: &config::DataCommand) -> anyhow::Result<String> {
    let store = store::offline::open(dir)?;
    Ok(match action {
        config::DataCommand::List => store
            .projects()?
            .into_iter()
            .map(|(project, keys, bytes)| format!("{project}\t{keys}\t{bytes}\n"))
            .collect(),
        config::DataCommand::Dump { project } => {
            format!("{:#}\n", store.dump(project)?)
        }
    })
}

/// What `host/benches/room.rs` drives directly, without the network. Not
/// an API: it changes with the room's internals.
#[doc(hidden)]
pub mod bench {
    use std::sync::Arc;

    pub use crate::outbox::{Outbox, encode};
    pub use crate::registry::Registry;
    pub use crate::room::table::ConnRef;
    pub use crate::room::{BATCH, ClientMeta, Event, Incoming, RoomHandle};

    /// A registry as the server makes one from `config`, hibernation off.
    pub fn registry(config: &crate::config::Config) -> anyhow::Result<Arc<Registry>> {
        let runtime = crate::engine::Runtime::new(config)?;
        let mut settings = crate::room::Settings::from_config(config);
        settings.hibernate_after = None;
        Ok(Registry::new(
            runtime,
            config.room_config.clone(),
            settings,
            Arc::new(crate::metrics::Metrics::default()),
            config.max_rooms,
            config.max_instances,
        ))
    }
}
