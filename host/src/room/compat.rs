//! The host interface of the contract's earlier versions, for components
//! built against them (as users' rooms in the wild are): each function
//! forwards to the current interface's ([`super::imports`]). Their types are
//! the same but where a version says otherwise: a function whose type
//! changed is adapted here.
//!
//! - 0.3.0 (`wit/0.3.0/room.wit`): its `send` answers a count per target
//!   (a `list<u32>`).
//! - 0.2.0 (`wit/0.2.0/room.wit`): as 0.3.0, and its `client-info` has no
//!   `subject` and no `params`.
//! - 0.1.0 (`wit/0.1.0/room.wit`): as 0.2.0, and no `storage-delete-all`;
//!   its `storage-error` has no `unavailable` (that case reads as `full`).

use wasmtime::StoreContextMut;
use wasmtime::component::{ComponentType, Linker, Lower};

use crate::engine::host_bindings::Host;
use crate::engine::{EarlierClientInfo, RoomState, wit};

/// The earlier versions of the host interface, as components import them.
const EARLIER: [Earlier; 3] = [
    Earlier {
        interface: "wsroom:room/host@0.1.0",
        storage_delete_all: false,
        storage_unavailable: false,
        client_info_0_3: false,
    },
    Earlier {
        interface: "wsroom:room/host@0.2.0",
        storage_delete_all: true,
        storage_unavailable: true,
        client_info_0_3: false,
    },
    Earlier {
        interface: "wsroom:room/host@0.3.0",
        storage_delete_all: true,
        storage_unavailable: true,
        client_info_0_3: true,
    },
];

/// What one earlier version of the host interface has.
struct Earlier {
    interface: &'static str,
    storage_delete_all: bool,
    /// Whether its `storage-error` has `unavailable`.
    storage_unavailable: bool,
    /// Whether its `client-info` is the current one (with `subject` and
    /// `params`).
    client_info_0_3: bool,
}

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

/// Adds every earlier version of `wsroom:room/host` to the linker.
pub(crate) fn add_earlier_hosts(linker: &mut Linker<RoomState>) -> wasmtime::Result<()> {
    for version in &EARLIER {
        add_earlier_host(linker, version)?;
    }
    Ok(())
}

fn add_earlier_host(linker: &mut Linker<RoomState>, version: &Earlier) -> wasmtime::Result<()> {
    let mut host = linker.instance(version.interface)?;
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
    if version.client_info_0_3 {
        host.func_wrap("client", |mut s: Cx, (id,): (String,)| {
            Ok((s.data_mut().client(id),))
        })?;
        host.func_wrap("clients", |mut s: Cx, (kind,): (Option<String>,)| {
            Ok((s.data_mut().clients(kind),))
        })?;
    } else {
        host.func_wrap("client", |mut s: Cx, (id,): (String,)| {
            let info = s.data_mut().client(id);
            Ok((info.as_ref().map(EarlierClientInfo::from),))
        })?;
        host.func_wrap("clients", |mut s: Cx, (kind,): (Option<String>,)| {
            let infos = s.data_mut().clients(kind);
            Ok((infos
                .iter()
                .map(EarlierClientInfo::from)
                .collect::<Vec<_>>(),))
        })?;
    }
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
    if version.storage_unavailable {
        host.func_wrap(
            "storage-set",
            |mut s: Cx, (key, value): (String, Vec<u8>)| {
                Ok((s.data_mut().storage_set(key, value),))
            },
        )?;
    } else {
        host.func_wrap(
            "storage-set",
            |mut s: Cx, (key, value): (String, Vec<u8>)| {
                let result = s.data_mut().storage_set(key, value).map_err(|e| match e {
                    wit::StorageError::BadKey => StorageError010::BadKey,
                    wit::StorageError::Full | wit::StorageError::Unavailable => {
                        StorageError010::Full
                    }
                });
                Ok((result,))
            },
        )?;
    }
    if version.storage_delete_all {
        host.func_wrap("storage-delete-all", |mut s: Cx, (): ()| {
            s.data_mut().storage_delete_all();
            Ok(())
        })?;
    }
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
