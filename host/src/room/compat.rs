//! The host interface of the contract's earlier versions, for components
//! built against them (as users' rooms in the wild are): each function
//! forwards to the current interface's ([`super::imports`]). Their types are
//! the same but where a version says otherwise: a function whose type
//! changed is adapted here.
//!
//! - 0.1.0 (`wit/0.1.0/room.wit`): no `storage-delete-all`; its
//!   `storage-error` has no `unavailable` (that case reads as `full`).

use wasmtime::StoreContextMut;
use wasmtime::component::{ComponentType, Linker, Lower};

use crate::engine::host_bindings::Host;
use crate::engine::{RoomState, wit};

/// 0.1.0's host interface, as components import it.
pub(crate) const HOST_0_1_0: &str = "wsroom:room/host@0.1.0";

/// 0.1.0's `storage-error`.
#[derive(ComponentType, Lower, Clone, Copy)]
#[component(enum)]
#[repr(u8)]
enum StorageError010 {
    #[component(name = "bad-key")]
    BadKey,
    #[component(name = "full")]
    Full,
}

type Cx<'a> = StoreContextMut<'a, RoomState>;

/// Adds `wsroom:room/host@0.1.0` to the linker.
pub(crate) fn add_host_0_1_0(linker: &mut Linker<RoomState>) -> wasmtime::Result<()> {
    let mut host = linker.instance(HOST_0_1_0)?;
    host.func_wrap("project-id", |mut s: Cx, (): ()| {
        Ok((s.data_mut().project_id(),))
    })?;
    host.func_wrap("config", |mut s: Cx, (key,): (String,)| {
        Ok((s.data_mut().config(key),))
    })?;
    host.func_wrap("send", super::imports::send_in_place)?;
    host.func_wrap(
        "close",
        |mut s: Cx, (client, code, reason): (String, u16, String)| {
            Ok((s.data_mut().close(client, code, reason),))
        },
    )?;
    host.func_wrap("client", |mut s: Cx, (id,): (String,)| {
        Ok((s.data_mut().client(id),))
    })?;
    host.func_wrap("clients", |mut s: Cx, (kind,): (Option<String>,)| {
        Ok((s.data_mut().clients(kind),))
    })?;
    host.func_wrap("client-count", |mut s: Cx, (kind,): (Option<String>,)| {
        Ok((s.data_mut().client_count(kind),))
    })?;
    host.func_wrap(
        "set-attachment",
        |mut s: Cx, (client, data): (String, Option<Vec<u8>>)| {
            Ok((s.data_mut().set_attachment(client, data),))
        },
    )?;
    host.func_wrap("attachment", |mut s: Cx, (client,): (String,)| {
        Ok((s.data_mut().attachment(client),))
    })?;
    host.func_wrap("storage-get", |mut s: Cx, (key,): (String,)| {
        Ok((s.data_mut().storage_get(key),))
    })?;
    host.func_wrap(
        "storage-set",
        |mut s: Cx, (key, value): (String, Vec<u8>)| {
            let result = s.data_mut().storage_set(key, value).map_err(|e| match e {
                wit::StorageError::BadKey => StorageError010::BadKey,
                wit::StorageError::Full | wit::StorageError::Unavailable => StorageError010::Full,
            });
            Ok((result,))
        },
    )?;
    host.func_wrap("storage-delete", |mut s: Cx, (key,): (String,)| {
        Ok((s.data_mut().storage_delete(key),))
    })?;
    host.func_wrap(
        "storage-keys",
        |mut s: Cx, (prefix, limit): (String, u32)| Ok((s.data_mut().storage_keys(prefix, limit),)),
    )?;
    host.func_wrap("set-alarm", |mut s: Cx, (delay,): (u64,)| {
        s.data_mut().set_alarm(delay);
        Ok(())
    })?;
    host.func_wrap("cancel-alarm", |mut s: Cx, (): ()| {
        s.data_mut().cancel_alarm();
        Ok(())
    })?;
    host.func_wrap("alarm-at", |mut s: Cx, (): ()| {
        Ok((s.data_mut().alarm_at(),))
    })?;
    host.func_wrap("now-ms", |mut s: Cx, (): ()| Ok((s.data_mut().now_ms(),)))?;
    host.func_wrap("new-id", |mut s: Cx, (): ()| Ok((s.data_mut().new_id(),)))?;
    host.func_wrap(
        "log",
        |mut s: Cx, (level, message): (wit::LogLevel, String)| {
            s.data_mut().log(level, message);
            Ok(())
        },
    )?;
    Ok(())
}
