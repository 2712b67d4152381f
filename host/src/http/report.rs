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
                "metadata": {"userAgent": c.user_agent, "origin": c.origin},
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
        return Ok(json_reply(
            StatusCode::OK,
            &json!({
                "status": if degraded { "degraded" } else { "healthy" },
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

/// The durable store's figures (`null` in memory).
fn store_json(app: &App) -> serde_json::Value {
    let Some(store) = &app.store else {
        return serde_json::Value::Null;
    };
    let s = store.stats().snapshot();
    let (backend, data_dir, bytes) = match store {
        RoomStore::File(file) => (
            "file",
            Some(file.dir().display().to_string()),
            Some(file.file_bytes()),
        ),
        RoomStore::JetStream(_) => ("jetstream", None, None),
    };
    json!({
        "backend": backend,
        "dataDir": data_dir,
        "bytes": bytes,
        "commits": s.commits,
        "roomCommits": s.room_commits,
        "commitFailures": s.failures,
        "acceptingWrites": store.accepts_writes(),
        "commitLatencyMs": {
            "p50": s.quantile_ms(0.5),
            "p99": s.quantile_ms(0.99),
            "max": s.max_seconds * 1000.0,
            "mean": (s.commits > 0).then(|| s.seconds_sum * 1000.0 / s.commits as f64),
        },
    })
}

/// The store's figures in Prometheus' text format.
fn store_prometheus(out: &mut String, store: &RoomStore) {
    use crate::metrics::Kind::{Counter, Gauge};
    use crate::metrics::write_prometheus;
    use std::fmt::Write as _;
    let s = store.stats().snapshot();
    if let RoomStore::File(file) = store {
        write_prometheus(
            out,
            "wsroom_store_bytes",
            Gauge,
            "size of the durable store's file",
            file.file_bytes(),
        );
    }
    write_prometheus(
        out,
        "wsroom_store_commits_total",
        Counter,
        "transactions committed (each a group of rooms' changes, one fdatasync)",
        s.commits,
    );
    write_prometheus(
        out,
        "wsroom_store_room_commits_total",
        Counter,
        "rooms' change sets committed (one per room and batch of events that changed something)",
        s.room_commits,
    );
    write_prometheus(
        out,
        "wsroom_store_commit_failures_total",
        Counter,
        "commits that failed (a full or failing disk); their rooms were reset",
        s.failures,
    );
    let name = "wsroom_store_commit_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} time to commit one group of rooms' changes durably
# TYPE {name} histogram"
    );
    for (bound, count) in crate::store::BUCKETS.iter().zip(s.cumulative) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
        s.commits, s.seconds_sum, s.commits
    );
}

/// `/health`'s counters and limits in Prometheus' text format, for a
/// scraper. Like `/health` without a project, it needs no token.
pub(super) fn metrics(app: &App) -> Reply {
    use crate::metrics::{Kind::Gauge, write_prometheus};
    let mut out = String::with_capacity(4096);
    for e in app.metrics.entries() {
        write_prometheus(&mut out, e.prometheus, e.kind, e.help, e.value);
    }
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
        write_prometheus(&mut out, name, Gauge, help, value);
    }
    if let Some(store) = &app.store {
        store_prometheus(&mut out, store);
    }
    let mut resp = Response::new(Full::new(Bytes::from(out)));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}
