//! Process-wide counters, shown by `GET /health`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Metrics {
    connections_total: AtomicU64,
    connections_open: AtomicU64,
    connections_refused: AtomicU64,
    messages_in: AtomicU64,
    frames_out: AtomicU64,
    outbox_overflows: AtomicU64,
    rooms_created: AtomicU64,
    rooms_live: AtomicU64,
    room_failures: AtomicU64,
    instances_live: AtomicU64,
    hibernations: AtomicU64,
    alarms_given_up: AtomicU64,
    auth_refused: AtomicU64,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    rooms_upgraded: AtomicU64,
    log_lines_dropped: AtomicU64,
}

impl Metrics {
    pub fn connection_opened(&self) {
        self.connections_total.fetch_add(1, Relaxed);
        self.connections_open.fetch_add(1, Relaxed);
    }
    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Relaxed);
    }
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Relaxed);
    }
    pub fn message_in(&self) {
        self.messages_in.fetch_add(1, Relaxed);
    }
    pub fn frames_out(&self, n: u64) {
        if n > 0 {
            self.frames_out.fetch_add(n, Relaxed);
        }
    }
    pub fn outbox_overflow(&self) {
        self.outbox_overflows.fetch_add(1, Relaxed);
    }
    pub fn room_created(&self) {
        self.rooms_created.fetch_add(1, Relaxed);
        self.rooms_live.fetch_add(1, Relaxed);
    }
    pub fn room_removed(&self) {
        self.rooms_live.fetch_sub(1, Relaxed);
    }
    pub fn room_failed(&self) {
        self.room_failures.fetch_add(1, Relaxed);
    }
    pub fn instance_created(&self) {
        self.instances_live.fetch_add(1, Relaxed);
    }
    pub fn instance_dropped(&self) {
        self.instances_live.fetch_sub(1, Relaxed);
    }
    pub fn hibernated(&self) {
        self.hibernations.fetch_add(1, Relaxed);
    }
    pub fn alarm_given_up(&self) {
        self.alarms_given_up.fetch_add(1, Relaxed);
    }
    pub fn reloaded(&self, ok: bool) {
        if ok {
            self.reloads.fetch_add(1, Relaxed);
        } else {
            self.reload_failures.fetch_add(1, Relaxed);
        }
    }
    pub fn log_line_dropped(&self) {
        self.log_lines_dropped.fetch_add(1, Relaxed);
    }
    pub fn room_upgraded(&self) {
        self.rooms_upgraded.fetch_add(1, Relaxed);
    }
    pub fn auth_refused(&self) {
        self.auth_refused.fetch_add(1, Relaxed);
    }
    pub fn open_connections(&self) -> u64 {
        self.connections_open.load(Relaxed)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "connectionsTotal": self.connections_total.load(Relaxed),
            "connectionsOpen": self.connections_open.load(Relaxed),
            "connectionsRefused": self.connections_refused.load(Relaxed),
            "messagesIn": self.messages_in.load(Relaxed),
            "framesOut": self.frames_out.load(Relaxed),
            "outboxOverflows": self.outbox_overflows.load(Relaxed),
            "roomsCreated": self.rooms_created.load(Relaxed),
            "roomsLive": self.rooms_live.load(Relaxed),
            "roomFailures": self.room_failures.load(Relaxed),
            "instancesLive": self.instances_live.load(Relaxed),
            "hibernations": self.hibernations.load(Relaxed),
            "alarmsGivenUp": self.alarms_given_up.load(Relaxed),
            "authRefused": self.auth_refused.load(Relaxed),
            "reloads": self.reloads.load(Relaxed),
            "reloadFailures": self.reload_failures.load(Relaxed),
            "roomsUpgraded": self.rooms_upgraded.load(Relaxed),
            "logLinesDropped": self.log_lines_dropped.load(Relaxed),
        })
    }
}
