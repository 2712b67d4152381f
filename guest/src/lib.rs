//! The default room component: docs/PROTOCOL.md's routing, as a `wsroom:room`
//! component for `wasm32-wasip2`. The rules live in [`rules`] as plain Rust;
//! this file only binds them to the WIT world.

pub mod rules;

#[cfg(target_arch = "wasm32")]
mod component;
