//! wsroom: self-hosted Durable-Object-style WebSocket rooms.
//!
//! Map of the modules:
//! - [`auth`]: access tokens (JWT, HS256) and the browser-origin allow-list.
//! - [`config`]: command-line flags and the validated [`config::Config`].
//! - [`server`]: the accept loop, graceful shutdown.
//! - [`tls`]: rustls termination for https/wss, the certificate reloadable.
//! - [`http`]: the routes (`/websocket`, `/status`, `/health`).
//! - [`conn`]: one WebSocket connection (reader, writer, keep-alive, its
//!   message rate).
//! - [`rate`]: the token bucket of the limits on rates.
//! - [`outbox`]: a connection's bounded outgoing queue of framed bytes.
//! - [`registry`]: projectId → live room.
//! - [`room`]: the per-project actor, its connection table, the host imports.
//! - [`engine`]: wasmtime: the compiled component, stores, CPU and memory limits.
//! - [`stacks`]: the fiber stacks guest calls run on, kept for new instances.
//! - [`metrics`]: process-wide counters for `/health`.

pub mod auth;
pub mod config;
pub mod conn;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod rate;
pub mod registry;
pub mod room;
pub mod server;
pub mod stacks;
pub mod tls;

pub use server::{run, shutdown_signal};
