//! The read-only routes: `/status` (a project's clients), `/health` (the
//! host's, or a project's), `/metrics` (Prometheus text). None of them
//! starts a room.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming as Body;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use super::error::json_reply;
use super::{App, HttpError, Query, Reply, authorize};
use crate::auth::Access;
use crate::registry::Registry;
use crate::room::now_ms;
use crate::store::RoomStore;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry as PromRegistry;

pub(super) async fn status(
    app: &App,
    req: &Request<Body>,
    query: &Query,
) -> Result<Reply, HttpError> {
    let project = query.project_id()?;
    authorize(app, req, query, Access::Status { project })?;
    let body = match elsewhere(app, project, false).await? {
        Some(body) => body,
        None => project_status(&app.registry, project),
    };
    Ok(json_reply(StatusCode::OK, &body))
}

/// In a cluster, the report of the node that owns `project`, when that is
/// another node.
async fn elsewhere(app: &App, project: &str, health: bool) -> Result<Option<Value>, HttpError> {
    let Some(cluster) = &app.cluster else {
        return Ok(None);
    };
    cluster.report(project, health).await.map_err(|why| {
        HttpError::unavailable(
            "cluster_unavailable",
            format!("cannot reach the node running this project: {why}"),
        )
    })
}

/// `/status` of a project whose room (if it has one) runs here.
pub(crate) fn project_status(registry: &Registry, project: &str) -> Value {
    let now = now_ms();
    let room = registry.get(project);
    let clients: Vec<Value> = room
        .as_ref()
        .map(|r| r.shared.clients())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            json!({
                "id": &*c.id,
                "type": &*c.kind,
                "connectedAt": c.connected_at,
                "connectedFor": now.saturating_sub(c.connected_at),
                "socketState": 1,
                "metadata": {
                    "userAgent": c.user_agent,
                    "origin": c.origin,
                    "subject": c.subject.as_deref(),
                    "params": c.params.iter().map(|(k, v)| json!([&**k, &**v])).collect::<Vec<_>>(),
                },
            })
        })
        .collect();
    json!({
        "projectId": project,
        "clientCount": clients.len(),
        "lastActivity": room.as_ref().and_then(|r| r.shared.last_activity()),
        "timestamp": now,
        "clients": clients,
    })
}

/// `/health?projectId=` of a project whose room (if it has one) runs here.
pub(crate) fn project_health(registry: &Registry, project: &str) -> Value {
    let room = registry.get(project);
    json!({
        "status": "healthy",
        "projectId": project,
        "clientCount": room.as_ref().map_or(0, |r| r.shared.client_count()),
        "lastActivity": room.as_ref().and_then(|r| r.shared.last_activity()),
        "timestamp": now_ms(),
    })
}

pub(super) async fn health(
    app: &App,
    req: &Request<Body>,
    query: &Query,
) -> Result<Reply, HttpError> {
    let now = now_ms();
    if query.project_id.is_none() {
        let degraded = app.cluster.as_ref().is_some_and(|c| !c.healthy());
        let at_limits = at_limits(app);
        let ready = !degraded && at_limits.is_empty();
        let status = if query.ready && !ready {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        return Ok(json_reply(
            status,
            &json!({
                "status": if degraded { "degraded" } else { "healthy" },
                "ready": ready,
                "atLimits": at_limits,
                "version": env!("CARGO_PKG_VERSION"),
                "timestamp": now,
                "uptimeMs": app.started.elapsed().as_millis() as u64,
                "rooms": app.registry.len(),
                "maxRooms": app.registry.max_rooms(),
                "maxInstances": app.registry.instances().max(),
                "maxConnections": app.config.max_connections,
                "maxProjectConnections": app.config.max_project_connections,
                "maxMessagesPerSec": app.config.max_messages_per_sec,
                "maxHandshakesPerAddress": app.config.max_handshakes_per_address,
                "connections": app.metrics.open_connections(),
                "counters": app.metrics.to_json(),
                "latencyMs": {
                    "roomCall": latency_json(&app.metrics.room_calls()),
                    "delivery": latency_json(&app.metrics.delivery()),
                    "message": latency_json(&app.metrics.message_latency()),
                },
                "store": store_json(app),
                "cluster": app.cluster.as_ref().map(|c| c.health_json()),
            }),
        ));
    }
    let project = query.project_id()?;
    authorize(app, req, query, Access::Health { project })?;
    let body = match elsewhere(app, project, true).await? {
        Some(body) => body,
        None => project_health(&app.registry, project),
    };
    Ok(json_reply(StatusCode::OK, &body))
}

/// What keeps the server from taking more clients now: the limits reached
/// (`connections`: `--max-connections`; `rooms`: `--max-rooms`) and a
/// durable store refusing writes after a failure (`store`).
fn at_limits(app: &App) -> Vec<&'static str> {
    let mut reached = Vec::new();
    // The permits the upgrade takes, not the gauge: what a new client
    // would be told.
    if app.websockets.available_permits() == 0 {
        reached.push("connections");
    }
    if app.registry.len() >= app.registry.max_rooms() {
        reached.push("rooms");
    }
    if app.store.as_ref().is_some_and(|s| !s.accepts_writes()) {
        reached.push("store");
    }
    reached
}

/// A latency histogram's summary, in milliseconds: `p50` and `p99` as the
/// upper bound of their bucket (`null` before the first observation or past
/// the last bucket), `mean`, `max`, `count`.
fn latency_json(s: &crate::metrics::HistogramSnapshot) -> Value {
    json!({
        "p50": s.quantile_ms(0.5),
        "p99": s.quantile_ms(0.99),
        "mean": s.mean_ms(),
        "max": s.max_seconds * 1000.0,
        "count": s.count,
    })
}

/// The durable store's figures (`null` in memory).
fn store_json(app: &App) -> serde_json::Value {
    let Some(store) = &app.store else {
        return serde_json::Value::Null;
    };
    let Some(stats) = store.stats() else {
        return serde_json::Value::Null;
    };
    let s = stats.snapshot();
    let (backend, data_dir, bytes) = match store {
        RoomStore::File(file) => (
            "file",
            Some(file.dir().display().to_string()),
            Some(file.file_bytes()),
        ),
        RoomStore::JetStream(_) => ("jetstream", None, None),
        RoomStore::Memory(_) => ("memory", None, None),
    };
    json!({
        "backend": backend,
        "dataDir": data_dir,
        "bytes": bytes,
        "commits": s.commits,
        "roomCommits": s.room_commits,
        "commitFailures": s.failures,
        "acceptingWrites": store.accepts_writes(),
        "commitLatencyMs": latency_json(&s.latency),
    })
}

/// The store's figures, for a scrape.
fn store_register(registry: &mut PromRegistry, store: &RoomStore) {
    let Some(stats) = store.stats() else {
        return;
    };
    let s = stats.snapshot();
    if let RoomStore::File(file) = store {
        registry.register(
            "wsroom_store_bytes",
            "size of the durable store's file",
            ConstGauge::new(i64::try_from(file.file_bytes()).unwrap_or(i64::MAX)),
        );
    }
    registry.register(
        "wsroom_store_commits",
        "transactions committed (each a group of rooms' changes, one fdatasync)",
        ConstCounter::new(s.commits),
    );
    registry.register(
        "wsroom_store_room_commits",
        "rooms' change sets committed (one per room and batch of events that changed something)",
        ConstCounter::new(s.room_commits),
    );
    registry.register(
        "wsroom_store_commit_failures",
        "commits that failed (a full or failing disk); their rooms were reset",
        ConstCounter::new(s.failures),
    );
    registry.register(
        "wsroom_store_commit_duration_seconds",
        "time to commit one group of rooms' changes durably",
        s.latency,
    );
}

/// Every figure of `/health` and more, for Prometheus: its text format
/// (0.0.4), or OpenMetrics when the scraper asks for it. Like `/health`
/// without a project, it needs no token.
pub(super) fn metrics(app: &App, req: &Request<Body>) -> Reply {
    let mut registry = PromRegistry::default();
    app.metrics.register(&mut registry);
    let limits = [
        (
            "wsroom_max_rooms",
            "--max-rooms: most live rooms",
            app.registry.max_rooms() as u64,
        ),
        (
            "wsroom_max_instances",
            "--max-instances: most room instances live at once",
            app.registry.instances().max() as u64,
        ),
        (
            "wsroom_max_connections",
            "--max-connections: most open WebSockets",
            app.config.max_connections as u64,
        ),
        (
            "wsroom_max_project_connections",
            "--max-project-connections: most open WebSockets of one project",
            app.config.max_project_connections as u64,
        ),
        (
            "wsroom_max_messages_per_sec",
            "--max-messages-per-sec: most messages a second from one connection (0: no limit)",
            u64::from(app.config.max_messages_per_sec),
        ),
        (
            "wsroom_max_handshakes_per_address",
            "--max-handshakes-per-address: most connections of one address not yet upgraded",
            app.config.max_handshakes_per_address as u64,
        ),
        (
            "wsroom_uptime_seconds",
            "seconds since the server started",
            app.started.elapsed().as_secs(),
        ),
    ];
    for (name, help, value) in limits {
        registry.register(
            name,
            help,
            ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)),
        );
    }
    if let Some(store) = &app.store {
        store_register(&mut registry, store);
    }
    if let Some(cluster) = &app.cluster {
        cluster.register(&mut registry);
    }
    if let Some(process) = crate::metrics::Process::read() {
        process.register(&mut registry);
    }
    let openmetrics = req
        .headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.to_ascii_lowercase()
                .contains("application/openmetrics-text")
        });
    let mut out = String::with_capacity(8192);
    // Writing to a String cannot fail.
    let content_type = if openmetrics {
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE
    };
    let mut resp = Response::new(Full::new(Bytes::from(out)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
