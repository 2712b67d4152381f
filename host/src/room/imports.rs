//! The host interface of the WIT world, acting on the room's table.

use tracing::{debug, error, info, trace, warn};

use crate::engine::{RoomState, wit};
use crate::outbox;
use crate::room::table::{Except, Select};
use crate::room::{client_info, now_ms};
use crate::room::{log_limit, storage};
use fastwebsockets::OpCode;
use wasmtime::StoreContextMut;
use wasmtime::component::{ComponentType, Lift, Linker, WasmList, WasmStr};

use crate::engine::host_bindings::Host;

/// Largest attachment a room may keep with one client.
pub(crate) const MAX_ATTACHMENT: usize = 16 * 1024;

impl wit::Host for RoomState {}

/// The WIT `selector`, its strings left in the room's memory.
#[derive(ComponentType, Lift)]
#[component(variant)]
pub(super) enum RawSelector {
    #[component(name = "client")]
    Client(WasmStr),
    #[component(name = "kind")]
    Kind(WasmStr),
    #[component(name = "all")]
    All,
}

/// The WIT `target`, its strings left in the room's memory.
#[derive(ComponentType, Lift)]
#[component(record)]
pub(super) struct RawTarget {
    select: RawSelector,
    except: WasmList<WasmStr>,
}

/// The host interface as components import it: `wit/room.wit`'s package and
/// version (a test keeps the two in step).
const HOST_INTERFACE: &str = "wsroom:room/host@0.4.0";

/// Replaces the `send` import the bindings define with one that reads the
/// text and the targets straight from the room's memory: the text is copied
/// once, into the frame, and nothing else is copied or allocated per target
/// (the bindings' version lifts the text and every id into owned `String`s
/// and `Vec`s first). `send` is called for nearly every message.
pub(crate) fn add_send(linker: &mut Linker<RoomState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added = linker
        .instance(HOST_INTERFACE)
        .and_then(|mut host| host.func_wrap("send", send_reached));
    linker.allow_shadowing(false);
    added
}

/// `send` as the current contract answers it: what the first target added,
/// and what all of them did.
fn send_reached(
    store: StoreContextMut<'_, RoomState>,
    args: (WasmStr, WasmList<RawTarget>),
) -> wasmtime::Result<(wit::Reached,)> {
    let mut reached = wit::Reached { first: 0, all: 0 };
    let mut first = true;
    send_each(store, args, |added| {
        if std::mem::take(&mut first) {
            reached.first = added;
        }
        reached.all = reached.all.saturating_add(added);
    })?;
    Ok((reached,))
}

/// `send` as the contracts before 0.4.0 answer it: what each target added.
pub(super) fn send_in_place(
    store: StoreContextMut<'_, RoomState>,
    args: (WasmStr, WasmList<RawTarget>),
) -> wasmtime::Result<(Vec<u32>,)> {
    let mut counts = Vec::with_capacity(args.1.len());
    send_each(store, args, |added| counts.push(added))?;
    Ok((counts,))
}

/// Fans `text` out to the union of `targets`, telling `added` how many
/// clients each target added, in order.
fn send_each(
    mut store: StoreContextMut<'_, RoomState>,
    (text, targets): (WasmStr, WasmList<RawTarget>),
    mut added: impl FnMut(u32),
) -> wasmtime::Result<()> {
    let frame = outbox::encode(OpCode::Text, text.to_str(&store)?.as_bytes());
    let mark = store.data_mut().table.begin_send();
    // Each target is looked up and fanned out before the next is read, so
    // nothing here grows with the number of targets.
    for i in 0..targets.len() {
        let Some(target) = targets.get(&mut store, i) else {
            break;
        };
        let target = target?;
        let table = &store.data().table;
        let select = match target.select {
            RawSelector::Client(id) => table.select_client(&id.to_str(&store)?),
            RawSelector::Kind(kind) => table.select_kind(&kind.to_str(&store)?),
            RawSelector::All => Select::All,
        };
        let mut except = Except::new();
        for j in 0..target.except.len() {
            let Some(id) = target.except.get(&mut store, j) else {
                break;
            };
            let id = id?;
            if let Some(slot) = store.data().table.slot_of(&id.to_str(&store)?) {
                except.push(slot);
            }
        }
        added(
            store
                .data_mut()
                .table
                .fanout(mark, &frame, &select, &except),
        );
    }
    Ok(())
}

impl Host for RoomState {
    fn project_id(&mut self) -> String {
        self.table.project.to_string()
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.table.config.get(&key).cloned()
    }

    /// Never called: every linker this host builds shadows this import
    /// with [`add_send`]'s, which reads its arguments in place. Were it
    /// called, it would answer as a send that reached nobody.
    fn send(&mut self, _text: String, _targets: Vec<wit::Target>) -> wit::Reached {
        wit::Reached { first: 0, all: 0 }
    }

    fn close(&mut self, client: String, code: u16, reason: String) -> bool {
        let Some(conn) = self.table.conn_ref(&client) else {
            return false;
        };
        let code = if code == 1000 || (3000..=4999).contains(&code) {
            code
        } else {
            warn!(project = %self.table.project, code, "room asked for a close code it may not use; sending 1000");
            1000
        };
        if let Some(c) = self.table.remove(conn) {
            self.table.close_later(c, code, &reason);
        }
        true
    }

    fn client(&mut self, id: String) -> Option<wit::ClientInfo> {
        self.table.find(&id).map(|c| client_info(&c.meta))
    }

    fn clients(&mut self, kind: Option<String>) -> Vec<wit::ClientInfo> {
        self.table
            .clients(kind.as_deref())
            .map(|c| client_info(&c.meta))
            .collect()
    }

    fn client_count(&mut self, kind: Option<String>) -> u32 {
        self.table.count(kind.as_deref()) as u32
    }

    fn set_attachment(
        &mut self,
        client: String,
        data: Option<Vec<u8>>,
    ) -> Result<(), wit::AttachmentError> {
        if data.as_ref().is_some_and(|d| d.len() > MAX_ATTACHMENT) {
            return Err(wit::AttachmentError::TooLarge);
        }
        let conn = self
            .table
            .find_mut(&client)
            .ok_or(wit::AttachmentError::NoSuchClient)?;
        conn.attachment = data;
        Ok(())
    }

    fn attachment(&mut self, client: String) -> Option<Vec<u8>> {
        match self.table.find(&client) {
            Some(c) => c.attachment.clone(),
            None => match &self.table.leaving {
                Some((id, attachment)) if **id == *client => attachment.clone(),
                _ => None,
            },
        }
    }

    fn storage_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.table.storage.get(&key)
    }

    fn storage_set(&mut self, key: String, value: Vec<u8>) -> Result<(), wit::StorageError> {
        self.table.storage.set(key, value).map_err(|e| match e {
            storage::Refused::BadKey => wit::StorageError::BadKey,
            storage::Refused::Full => wit::StorageError::Full,
            storage::Refused::Unavailable => wit::StorageError::Unavailable,
        })
    }

    fn storage_delete(&mut self, key: String) -> bool {
        self.table.storage.delete(&key)
    }

    fn storage_keys(&mut self, prefix: String, limit: u32) -> Vec<String> {
        self.table.storage.keys(&prefix, limit)
    }

    fn storage_delete_all(&mut self) {
        self.table.storage.delete_all();
        self.table.alarm_at = None;
        self.table.alarm_retry = 0;
    }

    fn set_alarm(&mut self, delay_ms: u64) {
        self.table.alarm_at = Some(now_ms().saturating_add(delay_ms));
        self.table.alarm_retry = 0;
    }

    fn cancel_alarm(&mut self) {
        self.table.alarm_at = None;
        self.table.alarm_retry = 0;
    }

    fn alarm_at(&mut self) -> Option<u64> {
        self.table.alarm_at
    }

    fn now_ms(&mut self) -> u64 {
        now_ms()
    }

    fn new_id(&mut self) -> String {
        uuid::Uuid::new_v4().to_string()
    }

    fn log(&mut self, level: wit::LogLevel, message: String) {
        let project = &*self.table.project;
        if !self.table.log_budget.admit() {
            return;
        }
        let message = log_limit::cut(&message);
        match level {
            wit::LogLevel::Trace => trace!(project, "room: {message}"),
            wit::LogLevel::Debug => debug!(project, "room: {message}"),
            wit::LogLevel::Info => info!(project, "room: {message}"),
            wit::LogLevel::Warn => warn!(project, "room: {message}"),
            wit::LogLevel::Error => error!(project, "room: {message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_replaced_send_is_in_the_interface_the_wit_defines() {
        let wit = include_str!("../../../wit/room.wit");
        let (package, version) = super::HOST_INTERFACE
            .split_once("/host@")
            .expect("package/host@version");
        assert!(
            wit.contains(&format!("package {package}@{version};")),
            "wit/room.wit's package is not {package}@{version}: update HOST_INTERFACE"
        );
        assert!(wit.contains("interface host {"));
    }
}
