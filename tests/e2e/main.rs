//! End-to-end tests of docs/PROTOCOL.md against the real `wsroom` binary: one
//! test binary (`integration`), a module per surface. The harness, and the
//! helpers more than one module uses, are in [`common`].

mod common;

mod auth;
mod bad_input;
mod cluster;
mod console;
mod durable;
mod edge;
mod endpoints;
mod faults;
mod install;
mod lifecycle;
mod limits;
mod load_tool;
mod ports;
mod reload;
mod room_http;
mod routing;
mod tls;
mod workers;
