//! Process-wide figures, counted where things happen with relaxed atomics
//! (no lock on any hot path), shown by `GET /health` (its `counters`) and
//! `GET /metrics`, which encodes them for Prometheus through the
//! prometheus-client crate at each scrape ([`Metrics::register`]).
//!
//! - [`histogram`]: latency histograms fed without a lock.
//! - [`process`]: the standard `process_*` figures, from `/proc`.
//! - [`shards`]: figures updated from every core, a cache line per thread.

mod histogram;
mod process;
mod shards;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

pub(crate) use histogram::{Histogram, Snapshot as HistogramSnapshot};
pub(crate) use process::Process;
use shards::ShardedCounter;

/// Why a WebSocket upgrade was refused after its request was read
/// (`wsroom_connections_refused_total`'s `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RefusedFor {
    MaxConnections,
    MaxRooms,
    MaxProjectConnections,
    /// The room's own `on-connect` said no.
    Room,
    RoomFailed,
    RoomUnavailable,
    ClusterUnavailable,
}

impl RefusedFor {
    const ALL: [RefusedFor; 7] = [
        RefusedFor::MaxConnections,
        RefusedFor::MaxRooms,
        RefusedFor::MaxProjectConnections,
        RefusedFor::Room,
        RefusedFor::RoomFailed,
        RefusedFor::RoomUnavailable,
        RefusedFor::ClusterUnavailable,
    ];

    fn label(self) -> &'static str {
        match self {
            RefusedFor::MaxConnections => "max_connections",
            RefusedFor::MaxRooms => "max_rooms",
            RefusedFor::MaxProjectConnections => "max_project_connections",
            RefusedFor::Room => "room",
            RefusedFor::RoomFailed => "room_failed",
            RefusedFor::RoomUnavailable => "room_unavailable",
            RefusedFor::ClusterUnavailable => "cluster_unavailable",
        }
    }
}

/// The close codes counted apart in `wsroom_connections_closed_total`, by
/// their names in RFC 6455 (any other code counts as `other`).
const CLOSE_REASONS: [(u16, &str); 12] = [
    (1000, "normal"),
    (1001, "going_away"),
    (1002, "protocol_error"),
    (1003, "unsupported_data"),
    (1005, "no_status"),
    (1006, "abnormal"),
    (1007, "invalid_payload"),
    (1008, "policy_violation"),
    (1009, "message_too_big"),
    (1011, "internal_error"),
    (1012, "service_restart"),
    (1013, "try_again_later"),
];

/// The room's exports, whose calls are timed apart
/// (`wsroom_room_call_duration_seconds`'s `call`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RoomCall {
    Connect,
    Message,
    Close,
    Alarm,
    Fetch,
}

impl RoomCall {
    const ALL: [RoomCall; 5] = [
        RoomCall::Connect,
        RoomCall::Message,
        RoomCall::Close,
        RoomCall::Alarm,
        RoomCall::Fetch,
    ];

    fn label(self) -> &'static str {
        match self {
            RoomCall::Connect => "on_connect",
            RoomCall::Message => "on_message",
            RoomCall::Close => "on_close",
            RoomCall::Alarm => "on_alarm",
            RoomCall::Fetch => "fetch",
        }
    }
}

#[derive(Default)]
pub(crate) struct Metrics {
    connections_total: AtomicU64,
    connections_open: AtomicU64,
    connections_refused: [AtomicU64; RefusedFor::ALL.len()],
    /// By [`CLOSE_REASONS`], then `other`.
    connections_closed: [AtomicU64; CLOSE_REASONS.len() + 1],
    messages_in: AtomicU64,
    bytes_in: ShardedCounter,
    bytes_out: ShardedCounter,
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
    room_http_in: AtomicU64,
    room_http_out: AtomicU64,
    room_http_out_denied: AtomicU64,
    room_http_out_failed: AtomicU64,
    handshakes_refused: AtomicU64,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    rooms_upgraded: AtomicU64,
    log_lines_dropped: AtomicU64,
    /// Guest calls, by [`RoomCall`].
    room_calls: [Histogram; RoomCall::ALL.len()],
    /// From a room handing frames to a client's outbox to their write.
    delivery: Histogram,
    /// From reading a client's message to writing the frames it caused.
    message: Histogram,
}

impl Metrics {
    pub(crate) fn connection_opened(&self) {
        self.connections_total.fetch_add(1, Relaxed);
        self.connections_open.fetch_add(1, Relaxed);
    }
    /// A connection ended with `code`, as its room was told.
    pub(crate) fn connection_closed(&self, code: u16) {
        self.connections_open.fetch_sub(1, Relaxed);
        let reason = CLOSE_REASONS
            .iter()
            .position(|(c, _)| *c == code)
            .unwrap_or(CLOSE_REASONS.len());
        self.connections_closed[reason].fetch_add(1, Relaxed);
    }
    pub(crate) fn connection_refused(&self, why: RefusedFor) {
        self.connections_refused[why as usize].fetch_add(1, Relaxed);
    }
    /// A complete message of `bytes` (its payload) came from a client.
    pub(crate) fn message_in(&self, bytes: usize) {
        self.messages_in.fetch_add(1, Relaxed);
        self.bytes_in.add(bytes as u64);
    }
    /// A writer wrote `bytes` to a client's socket; the oldest of them had
    /// waited `waited` since its room handed it over (`None`: only frames
    /// of the connection's own, such as pings).
    /// A write of `bytes`; sampled writes are timed from when their oldest
    /// frame was handed over (`delivery`) and from when the message it
    /// answers was read (`since_read`).
    pub(crate) fn written(
        &self,
        bytes: usize,
        delivery: Option<Duration>,
        since_read: Option<Duration>,
    ) {
        self.bytes_out.add(bytes as u64);
        if let Some(waited) = delivery {
            self.delivery.observe(waited);
        }
        if let Some(took) = since_read {
            self.message.observe(took);
        }
    }
    /// A call into a room's guest took `took` (its queueing not included).
    pub(crate) fn room_call(&self, call: RoomCall, took: Duration) {
        self.room_calls[call as usize].observe(took);
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
    /// An HTTP request into a room was answered (by the room or, for a
    /// room without `fetch` or one that failed, by the host).
    pub(crate) fn room_http_in(&self) {
        self.room_http_in.fetch_add(1, Relaxed);
    }
    /// A room's outgoing HTTP request was let through.
    pub(crate) fn room_http_out(&self) {
        self.room_http_out.fetch_add(1, Relaxed);
    }
    /// A room's outgoing HTTP request named a host not allowed.
    pub(crate) fn room_http_out_denied(&self) {
        self.room_http_out_denied.fetch_add(1, Relaxed);
    }
    /// A room's outgoing HTTP request let through failed (connection,
    /// timeout, response too large).
    pub(crate) fn room_http_out_failed(&self) {
        self.room_http_out_failed.fetch_add(1, Relaxed);
    }
    pub(crate) fn open_connections(&self) -> u64 {
        self.connections_open.load(Relaxed)
    }

    /// Every counter and gauge with its value: what `/health` shows in
    /// `counters` and `/metrics` for Prometheus, from this one list.
    pub(crate) fn entries(&self) -> [Entry; 24] {
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
            Entry {
                json: "connectionsRefused",
                prometheus: "wsroom_connections_refused_total",
                kind: Kind::ByReason,
                help: "WebSocket upgrades refused, by reason: a limit reached, the room said no or failed (bad requests and failed auth are not counted here)",
                value: self
                    .connections_refused
                    .iter()
                    .map(|c| c.load(Relaxed))
                    .sum(),
            },
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
                "roomHttpRequests",
                "wsroom_room_http_requests_total",
                Counter,
                "HTTP requests into rooms (/rooms/{projectId}/...) handed to their room",
                &self.room_http_in,
            ),
            e(
                "roomHttpOutgoing",
                "wsroom_room_http_outgoing_total",
                Counter,
                "HTTP requests rooms sent out (allowed by --room-http-allow)",
                &self.room_http_out,
            ),
            e(
                "roomHttpOutgoingDenied",
                "wsroom_room_http_outgoing_denied_total",
                Counter,
                "HTTP requests rooms tried to send to a host not in --room-http-allow",
                &self.room_http_out_denied,
            ),
            e(
                "roomHttpOutgoingFailed",
                "wsroom_room_http_outgoing_failed_total",
                Counter,
                "allowed HTTP requests from rooms that failed: connection, timeout, or a response over --room-http-body-bytes",
                &self.room_http_out_failed,
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

    /// The latency of room calls, all exports together, for `/health`.
    pub(crate) fn room_calls(&self) -> HistogramSnapshot {
        let mut all = self.room_calls[0].snapshot();
        for h in &self.room_calls[1..] {
            all.add(&h.snapshot());
        }
        all
    }

    pub(crate) fn delivery(&self) -> HistogramSnapshot {
        self.delivery.snapshot()
    }

    pub(crate) fn message_latency(&self) -> HistogramSnapshot {
        self.message.snapshot()
    }

    /// Adds every figure, as it is now, to a scrape's registry.
    pub(crate) fn register(&self, registry: &mut Registry) {
        for e in self.entries() {
            match e.kind {
                // Registered by reason below.
                Kind::ByReason => {}
                // prometheus-client adds the `_total` of a counter itself.
                Kind::Counter => registry.register(
                    e.prometheus.trim_end_matches("_total"),
                    e.help,
                    ConstCounter::new(e.value),
                ),
                Kind::Gauge => registry.register(
                    e.prometheus,
                    e.help,
                    ConstGauge::new(i64::try_from(e.value).unwrap_or(i64::MAX)),
                ),
            }
        }
        registry.register(
            "wsroom_connections_refused",
            "WebSocket upgrades refused, by reason: a limit reached, the room said no or failed (bad requests and failed auth are not counted here)",
            ByLabel::new(
                "reason",
                RefusedFor::ALL.iter().map(|why| {
                    let n = self.connections_refused[*why as usize].load(Relaxed);
                    (why.label(), ConstCounter::new(n))
                }),
            ),
        );
        registry.register(
            "wsroom_connections_closed",
            "WebSockets ended, by the close code their room was told (abnormal: gone without a close frame)",
            ByLabel::new(
                "reason",
                CLOSE_REASONS
                    .iter()
                    .map(|(_, reason)| *reason)
                    .chain(["other"])
                    .zip(&self.connections_closed)
                    .map(|(reason, n)| (reason, ConstCounter::new(n.load(Relaxed)))),
            ),
        );
        registry.register(
            "wsroom_received_bytes",
            "bytes of the messages received from clients (payloads)",
            ConstCounter::new(self.bytes_in.get()),
        );
        registry.register(
            "wsroom_sent_bytes",
            "bytes written to clients' sockets (whole frames, pings and closes included)",
            ConstCounter::new(self.bytes_out.get()),
        );
        registry.register(
            "wsroom_room_call_duration_seconds",
            "time a call into a room's guest took, by export (waiting for the room not included)",
            ByLabel::new(
                "call",
                RoomCall::ALL
                    .iter()
                    .map(|call| (call.label(), self.room_calls[*call as usize].snapshot())),
            ),
        );
        registry.register(
            "wsroom_delivery_duration_seconds",
            "time from a room handing frames to a client's outgoing queue to their write to its socket (per write, from its oldest frame)",
            self.delivery.snapshot(),
        );
        registry.register(
            "wsroom_message_duration_seconds",
            "time from reading a client's message to writing a frame it caused to a recipient's socket (per write, from its oldest frame; the oldest message of the room's batch)",
            self.message.snapshot(),
        );
    }
}

/// A Prometheus metric's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    /// A counter `/metrics` shows by its `reason` label; `/health` its sum.
    ByReason,
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

/// Samples of one metric told apart by one label, in a fixed order (a
/// prometheus-client `Family` takes a lock per update and lists its
/// members in a hash map's order).
#[derive(Debug)]
pub(crate) struct ByLabel<M> {
    key: &'static str,
    members: Vec<(&'static str, M)>,
}

impl<M> ByLabel<M> {
    pub(crate) fn new(
        key: &'static str,
        members: impl IntoIterator<Item = (&'static str, M)>,
    ) -> Self {
        ByLabel {
            key,
            members: members.into_iter().collect(),
        }
    }
}

impl<M: EncodeMetric + TypedMetric> EncodeMetric for ByLabel<M> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (value, metric) in &self.members {
            let labels = [(self.key, *value)];
            metric.encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}
