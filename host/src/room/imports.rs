//! The host interface of the WIT world, acting on the room's table.

use tracing::{debug, error, info, trace, warn};

use crate::engine::{RoomState, wit};
use crate::outbox;
use crate::room::log_limit;
use crate::room::table::Select;
use crate::room::{client_info, now_ms};
use fastwebsockets::OpCode;

use crate::engine::host_bindings::Host;

/// Largest attachment a room may keep with one client.
pub const MAX_ATTACHMENT: usize = 16 * 1024;

impl wit::Host for RoomState {}

impl Host for RoomState {
    fn project_id(&mut self) -> String {
        self.table.project.to_string()
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.table.config.get(&key).cloned()
    }

    fn send(&mut self, text: String, targets: Vec<wit::Target>) -> Vec<u32> {
        let frame = outbox::encode(OpCode::Text, text.as_bytes());
        let resolved: Vec<(Select<'_>, Vec<usize>)> = targets
            .iter()
            .map(|t| {
                let select = match &t.select {
                    wit::Selector::Client(id) => Select::Client(id),
                    wit::Selector::Kind(kind) => Select::Kind(kind),
                    wit::Selector::All => Select::All,
                };
                let except = self.table.slots_of(t.except.iter().map(String::as_str));
                (select, except)
            })
            .collect();
        self.table.fanout(&frame, &resolved)
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
            c.outbox.close(code, &reason);
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
        self.table.find(&client)?.attachment.clone()
    }

    fn storage_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.table.storage.get(&key)
    }

    fn storage_set(&mut self, key: String, value: Vec<u8>) -> Result<(), wit::StorageError> {
        self.table.storage.set(key, value)
    }

    fn storage_delete(&mut self, key: String) -> bool {
        self.table.storage.delete(&key)
    }

    fn storage_keys(&mut self, prefix: String, limit: u32) -> Vec<String> {
        self.table.storage.keys(&prefix, limit)
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
