//! Process-wide counters, shown by `GET /health` and `GET /metrics`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub(crate) struct Metrics {
    connections_total: AtomicU64,
    connections_open: AtomicU64,
    connections_refused: AtomicU64,
    messages_in: AtomicU64,
    messages_rate_limited: AtomicU64,
    frames_out: AtomicU64,
    outbox_overflows: AtomicU64,
    rooms_created: AtomicU64,
    rooms_live: AtomicU64,
    room_failures: AtomicU64,
    instances_live: AtomicU64,
    hibernations: AtomicU64,
    instances_evicted: AtomicU64,
    alarms_given_up: AtomicU64,
    auth_refused: AtomicU64,
    handshakes_refused: AtomicU64,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    rooms_upgraded: AtomicU64,
    log_lines_dropped: AtomicU64,
}

impl Metrics {
    pub(crate) fn connection_opened(&self) {
        self.connections_total.fetch_add(1, Relaxed);
        self.connections_open.fetch_add(1, Relaxed);
    }
    pub(crate) fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Relaxed);
    }
    pub(crate) fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Relaxed);
    }
    pub(crate) fn message_in(&self) {
        self.messages_in.fetch_add(1, Relaxed);
    }
    pub(crate) fn message_rate_limited(&self) {
        self.messages_rate_limited.fetch_add(1, Relaxed);
    }
    pub(crate) fn frames_out(&self, n: u64) {
        if n > 0 {
            self.frames_out.fetch_add(n, Relaxed);
        }
    }
    pub(crate) fn outbox_overflow(&self) {
        self.outbox_overflows.fetch_add(1, Relaxed);
    }
    pub(crate) fn room_created(&self) {
        self.rooms_created.fetch_add(1, Relaxed);
        self.rooms_live.fetch_add(1, Relaxed);
    }
    pub(crate) fn room_removed(&self) {
        self.rooms_live.fetch_sub(1, Relaxed);
    }
    pub(crate) fn room_failed(&self) {
        self.room_failures.fetch_add(1, Relaxed);
    }
    pub(crate) fn instance_created(&self) {
        self.instances_live.fetch_add(1, Relaxed);
    }
    pub(crate) fn instance_dropped(&self) {
        self.instances_live.fetch_sub(1, Relaxed);
    }
    pub(crate) fn hibernated(&self) {
        self.hibernations.fetch_add(1, Relaxed);
    }
    pub(crate) fn instance_evicted(&self) {
        self.instances_evicted.fetch_add(1, Relaxed);
    }
    pub(crate) fn alarm_given_up(&self) {
        self.alarms_given_up.fetch_add(1, Relaxed);
    }
    pub(crate) fn reloaded(&self, ok: bool) {
        if ok {
            self.reloads.fetch_add(1, Relaxed);
        } else {
            self.reload_failures.fetch_add(1, Relaxed);
        }
    }
    pub(crate) fn log_line_dropped(&self) {
        self.log_lines_dropped.fetch_add(1, Relaxed);
    }
    pub(crate) fn room_upgraded(&self) {
        self.rooms_upgraded.fetch_add(1, Relaxed);
    }
    pub(crate) fn handshake_refused(&self) {
        self.handshakes_refused.fetch_add(1, Relaxed);
    }
    pub(crate) fn auth_refused(&self) {
        self.auth_refused.fetch_add(1, Relaxed);
    }
    pub(crate) fn open_connections(&self) -> u64 {
        self.connections_open.load(Relaxed)
    }

    /// Every counter and gauge with its value: what `/health` shows in
    /// `counters` and `/metrics` for Prometheus, from this one list.
    pub(crate) fn entries(&self) -> [Entry; 20] {
        use Kind::{Counter, Gauge};
        let e = |json, prometheus, kind, help, value: &AtomicU64| Entry {
            json,
            prometheus,
            kind,
            help,
            value: value.load(Relaxed),
        };
        [
            e(
                "connectionsTotal",
                "wsroom_connections_total",
                Counter,
                "WebSockets admitted",
                &self.connections_total,
            ),
            e(
                "connectionsOpen",
                "wsroom_connections_open",
                Gauge,
                "WebSockets open now",
                &self.connections_open,
            ),
            e(
                "connectionsRefused",
                "wsroom_connections_refused_total",
                Counter,
                "WebSocket upgrades refused: a limit reached, the room said no or failed (bad requests and failed auth are not counted here)",
                &self.connections_refused,
            ),
            e(
                "messagesIn",
                "wsroom_messages_in_total",
                Counter,
                "messages received from clients",
                &self.messages_in,
            ),
            e(
                "messagesRateLimited",
                "wsroom_messages_rate_limited_total",
                Counter,
                "messages not routed: their connection was over --max-messages-per-sec",
                &self.messages_rate_limited,
            ),
            e(
                "framesOut",
                "wsroom_frames_out_total",
                Counter,
                "frames written to clients",
                &self.frames_out,
            ),
            e(
                "outboxOverflows",
                "wsroom_outbox_overflows_total",
                Counter,
                "clients closed with 1013 because their outgoing queue was full",
                &self.outbox_overflows,
            ),
            e(
                "roomsCreated",
                "wsroom_rooms_created_total",
                Counter,
                "rooms started (a project's first connection, or its first after the room was removed)",
                &self.rooms_created,
            ),
            e(
                "roomsLive",
                "wsroom_rooms_live",
                Gauge,
                "rooms live now, with or without an instance",
                &self.rooms_live,
            ),
            e(
                "roomFailures",
                "wsroom_room_failures_total",
                Counter,
                "room instances that trapped (panic, CPU budget, memory cap) or failed to start",
                &self.room_failures,
            ),
            e(
                "instancesLive",
                "wsroom_instances_live",
                Gauge,
                "room instances (wasm stores) live now",
                &self.instances_live,
            ),
            e(
                "hibernations",
                "wsroom_hibernations_total",
                Counter,
                "instances dropped by idle rooms",
                &self.hibernations,
            ),
            e(
                "instancesEvicted",
                "wsroom_instances_evicted_total",
                Counter,
                "idle instances dropped early to make way for another room's, --max-instances being live",
                &self.instances_evicted,
            ),
            e(
                "alarmsGivenUp",
                "wsroom_alarms_given_up_total",
                Counter,
                "alarms whose handler kept trapping through every retry",
                &self.alarms_given_up,
            ),
            e(
                "authRefused",
                "wsroom_auth_refused_total",
                Counter,
                "requests refused for a missing, bad or insufficient token",
                &self.auth_refused,
            ),
            e(
                "reloads",
                "wsroom_reloads_total",
                Counter,
                "successful reloads of the room components (SIGHUP)",
                &self.reloads,
            ),
            e(
                "reloadFailures",
                "wsroom_reload_failures_total",
                Counter,
                "failed reloads (the running components stayed)",
                &self.reload_failures,
            ),
            e(
                "handshakesRefused",
                "wsroom_handshakes_refused_total",
                Counter,
                "connections refused at accept: their address had --max-handshakes-per-address connections not yet upgraded",
                &self.handshakes_refused,
            ),
            e(
                "roomsUpgraded",
                "wsroom_rooms_upgraded_total",
                Counter,
                "live rooms switched to reloaded code",
                &self.rooms_upgraded,
            ),
            e(
                "logLinesDropped",
                "wsroom_log_lines_dropped_total",
                Counter,
                "room log lines over --room-log-lines-per-sec, dropped",
                &self.log_lines_dropped,
            ),
        ]
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        self.entries()
            .into_iter()
            .map(|e| (e.json.to_owned(), e.value.into()))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// A Prometheus metric's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
}

/// One counter or gauge and its value.
pub(crate) struct Entry {
    /// Its name in `/health`'s `counters`.
    pub json: &'static str,
    /// Its name in `/metrics`.
    pub prometheus: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub value: u64,
}

/// Appends one sample, with its HELP and TYPE, in Prometheus' text format
/// (version 0.0.4).
pub(crate) fn write_prometheus(out: &mut String, name: &str, kind: Kind, help: &str, value: u64) {
    use std::fmt::Write as _;
    let kind = match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
    };
    let _ = write!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
    );
}
