//! HTTP routes: `/websocket` (upgrade into a project's room), `/status`,
//! `/health`. Every refusal is a status code with a JSON body
//! `{"error": code, "message": text}`.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming as Body;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::auth::{self, Access};
use crate::config::Config;
use crate::conn;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::registry::Registry;
use crate::room::log_limit::Throttle;
use crate::room::{ClientMeta, Event, Refusal, now_ms};

/// Longest accepted `projectId`, in bytes.
pub const MAX_PROJECT_ID: usize = 256;
/// How many times an upgrade retries when it races with a room's removal.
const CONNECT_ATTEMPTS: usize = 4;

/// What every request handler shares.
pub struct App {
    pub registry: Arc<Registry>,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub tracker: TaskTracker,
    /// One permit per open WebSocket (`--max-connections`).
    pub websockets: Arc<tokio::sync::Semaphore>,
    pub started: std::time::Instant,
    /// The warnings each refused connection would otherwise write.
    pub warnings: RefusalWarnings,
}

/// One throttle per warning a flood of connections could repeat (see
/// [`Throttle`]): a server at its limits keeps its log readable.
pub struct RefusalWarnings {
    max_connections: Throttle,
    max_rooms: Throttle,
    project_full: Throttle,
    unreachable: Throttle,
}

impl Default for RefusalWarnings {
    fn default() -> Self {
        RefusalWarnings {
            max_connections: Throttle::new(1),
            max_rooms: Throttle::new(1),
            project_full: Throttle::new(1),
            unreachable: Throttle::new(1),
        }
    }
}

pub type Reply = Response<Full<Bytes>>;

fn json_reply(status: StatusCode, body: &Value) -> Reply {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Reply {
    json_reply(status, &json!({"error": code, "message": message.into()}))
}

/// A `503` for a WebSocket the server cannot take now (a limit reached, the
/// room out of reach): counted in `connectionsRefused`, and `why` warned
/// about through its own throttle.
fn unavailable(
    app: &App,
    throttle: &Throttle,
    project: &str,
    why: &str,
    code: &str,
    message: impl Into<String>,
) -> Reply {
    app.metrics.connection_refused();
    if let Some(skipped) = throttle.admit() {
        warn!(project = %project, skipped, "refusing a websocket: {why}");
    }
    error(StatusCode::SERVICE_UNAVAILABLE, code, message)
}

/// Checks the request's token against `access` when a secret is configured.
fn authorize(
    app: &App,
    req: &Request<Body>,
    query: &Query,
    access: Access<'_>,
) -> Result<(), Box<Reply>> {
    let Some(auth) = &app.config.auth else {
        return Ok(());
    };
    let header = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match auth.check(auth::bearer(header, query.token.as_deref()), access) {
        Ok(_) => Ok(()),
        Err(denied) => {
            app.metrics.auth_refused();
            let status = StatusCode::from_u16(denied.status).unwrap_or(StatusCode::FORBIDDEN);
            let mut resp = error(status, denied.code, denied.message);
            if status == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                );
            }
            Err(Box::new(resp))
        }
    }
}

/// Refuses a browser whose Origin is not on the allow-list (when one is set).
fn check_origin(app: &App, req: &Request<Body>) -> Result<(), Box<Reply>> {
    if app.config.allowed_origins.is_empty() {
        return Ok(());
    }
    let Some(origin) = req.headers().get(hyper::header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin
        .to_str()
        .map(auth::normalize_origin)
        .unwrap_or_default();
    if app.config.allowed_origins.contains(&origin) {
        return Ok(());
    }
    app.metrics.auth_refused();
    Err(Box::new(error(
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        "this page's origin may not open WebSockets on this server",
    )))
}

/// The query parameters the routes read.
#[derive(Default)]
struct Query {
    project_id: Option<String>,
    kind: Option<String>,
    /// An access token (never logged).
    token: Option<String>,
}

fn parse_query(query: Option<&str>) -> Query {
    let mut q = Query::default();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "projectId" if q.project_id.is_none() => q.project_id = Some(v.into_owned()),
            "type" if q.kind.is_none() => q.kind = Some(v.into_owned()),
            "token" if q.token.is_none() => q.token = Some(v.into_owned()),
            _ => {}
        }
    }
    q
}

/// A refused query parameter: a `400` with this code and message.
struct BadParam {
    code: &'static str,
    message: String,
}

impl BadParam {
    fn reply(self) -> Reply {
        error(StatusCode::BAD_REQUEST, self.code, self.message)
    }
}

/// Checks a `projectId`: 1 to 256 bytes of UTF-8 without control characters.
fn check_project_id(id: Option<&str>) -> Result<&str, BadParam> {
    let bad = |message: String| BadParam {
        code: "invalid_project_id",
        message,
    };
    match id {
        None | Some("") => Err(BadParam {
            code: "missing_project_id",
            message: "the projectId query parameter is required".into(),
        }),
        Some(id) if id.len() > MAX_PROJECT_ID => Err(bad(format!(
            "projectId must be at most {MAX_PROJECT_ID} bytes"
        ))),
        Some(id) if id.chars().any(char::is_control) => {
            Err(bad("projectId must not contain control characters".into()))
        }
        // Invalid UTF-8 was replaced by U+FFFD while decoding the query.
        Some(id) if id.contains('\u{FFFD}') => Err(bad("projectId must be valid UTF-8".into())),
        Some(id) => Ok(id),
    }
}

pub async fn route(app: Arc<App>, req: Request<Body>) -> Result<Reply, std::convert::Infallible> {
    let path = req.uri().path();
    let known = matches!(path, "/websocket" | "/status" | "/health" | "/metrics");
    if !known {
        return Ok(error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such endpoint: {path}"),
        ));
    }
    if req.method() != Method::GET {
        let mut resp = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{path} only answers GET"),
        );
        resp.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("GET"));
        return Ok(resp);
    }
    let query = parse_query(req.uri().query());
    Ok(match path {
        "/websocket" => {
            let upgrading = fastwebsockets::upgrade::is_upgrade_request(&req);
            let mut resp = websocket(&app, req, query).await;
            if upgrading && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                // A refused upgrade leaves the connection in no state to be
                // reused: say so, and close it.
                resp.headers_mut()
                    .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
        "/status" => status(&app, &req, &query),
        "/metrics" => metrics(&app),
        _ => health(&app, &req, &query),
    })
}

fn status(app: &App, req: &Request<Body>, query: &Query) -> Reply {
    let project = match check_project_id(query.project_id.as_deref()) {
        Ok(p) => p,
        Err(bad) => return bad.reply(),
    };
    if let Err(denied) = authorize(app, req, query, Access::Status { project }) {
        return *denied;
    }
    let now = now_ms();
    let room = app.registry.get(project);
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
    json_reply(
        StatusCode::OK,
        &json!({
            "projectId": project,
            "clientCount": clients.len(),
            "lastActivity": room.as_ref().and_then(|r| last_activity(&r.shared)),
            "timestamp": now,
            "clients": clients,
        }),
    )
}

/// `/health`'s counters and limits in Prometheus' text format, for a
/// scraper. Like `/health` without a project, it needs no token.
fn metrics(app: &App) -> Reply {
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
            "wsroom_uptime_seconds",
            "seconds since the server started",
            app.started.elapsed().as_secs(),
        ),
    ];
    for (name, help, value) in limits {
        write_prometheus(&mut out, name, Gauge, help, value);
    }
    let mut resp = Response::new(Full::new(Bytes::from(out)));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

fn last_activity(shared: &crate::room::RoomShared) -> Option<u64> {
    match shared
        .last_activity
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        0 => None,
        t => Some(t),
    }
}

fn health(app: &App, req: &Request<Body>, query: &Query) -> Reply {
    let now = now_ms();
    if query.project_id.is_none() {
        return json_reply(
            StatusCode::OK,
            &json!({
                "status": "healthy",
                "version": env!("CARGO_PKG_VERSION"),
                "timestamp": now,
                "uptimeMs": app.started.elapsed().as_millis() as u64,
                "rooms": app.registry.len(),
                "maxRooms": app.registry.max_rooms(),
                "maxInstances": app.registry.instances().max(),
                "maxConnections": app.config.max_connections,
                "maxProjectConnections": app.config.max_project_connections,
                "maxMessagesPerSec": app.config.max_messages_per_sec,
                "connections": app.metrics.open_connections(),
                "counters": app.metrics.to_json(),
            }),
        );
    }
    let project = match check_project_id(query.project_id.as_deref()) {
        Ok(p) => p,
        Err(bad) => return bad.reply(),
    };
    if let Err(denied) = authorize(app, req, query, Access::Health { project }) {
        return *denied;
    }
    let room = app.registry.get(project);
    json_reply(
        StatusCode::OK,
        &json!({
            "status": "healthy",
            "projectId": project,
            "clientCount": room.as_ref().map_or(0, |r| r.shared.client_count()),
            "lastActivity": room.as_ref().and_then(|r| last_activity(&r.shared)),
            "timestamp": now,
        }),
    )
}

async fn websocket(app: &Arc<App>, mut req: Request<Body>, query: Query) -> Reply {
    let project = match check_project_id(query.project_id.as_deref()) {
        Ok(p) => p.to_owned(),
        Err(bad) => return bad.reply(),
    };
    let kind = match query.kind.as_deref() {
        None | Some("") => {
            return error(
                StatusCode::BAD_REQUEST,
                "missing_type",
                "the type query parameter is required",
            );
        }
        Some(k) if k.len() > MAX_PROJECT_ID || k.chars().any(char::is_control) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_type",
                format!("type must be at most {MAX_PROJECT_ID} bytes without control characters"),
            );
        }
        Some(k) => k.to_owned(),
    };
    if let Err(denied) = check_origin(app, &req) {
        return *denied;
    }
    if let Err(denied) = authorize(
        app,
        &req,
        &query,
        Access::Join {
            project: &project,
            kind: &kind,
        },
    ) {
        return *denied;
    }
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        let mut resp = error(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "Expected Upgrade: websocket",
        );
        resp.headers_mut().insert(
            hyper::header::UPGRADE,
            HeaderValue::from_static("websocket"),
        );
        return resp;
    }
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let meta = Arc::new(ClientMeta {
        id: uuid::Uuid::new_v4().to_string().into(),
        kind: kind.into(),
        connected_at: now_ms(),
        user_agent: header(hyper::header::USER_AGENT),
        origin: header(hyper::header::ORIGIN),
    });
    let Ok(permit) = app.websockets.clone().try_acquire_owned() else {
        return unavailable(
            app,
            &app.warnings.max_connections,
            &project,
            "--max-connections reached",
            "too_many_connections",
            "the server is at its connection limit; try again later",
        );
    };
    let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(pair) => pair,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_upgrade",
                format!("invalid WebSocket upgrade request: {e}"),
            );
        }
    };
    let outbox = Arc::new(Outbox::new(app.config.outbox_limit_bytes));
    for _ in 0..CONNECT_ATTEMPTS {
        let Some(room) = app.registry.get_or_create(&project) else {
            return unavailable(
                app,
                &app.warnings.max_rooms,
                &project,
                "--max-rooms reached",
                "too_many_rooms",
                format!(
                    "the server is at its limit of {} live rooms; try again later",
                    app.registry.max_rooms()
                ),
            );
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let event = Event::Connect {
            meta: meta.clone(),
            outbox: outbox.clone(),
            reply,
        };
        if room.send(event).await.is_err() {
            continue;
        }
        match answer.await {
            // The room was being removed; a new one will be made.
            Err(_) => continue,
            Ok(Ok(conn)) => {
                app.tracker.spawn(conn::serve(
                    upgrade,
                    room,
                    conn,
                    outbox,
                    permit,
                    app.config.clone(),
                    app.metrics.clone(),
                ));
                let (parts, _) = response.into_parts();
                return Response::from_parts(parts, Full::new(Bytes::new()));
            }
            Ok(Err(Refusal::Refused {
                status,
                error: code,
                message,
            })) => {
                app.metrics.connection_refused();
                let status = StatusCode::from_u16(status)
                    .ok()
                    .filter(|s| s.is_client_error() || s.is_server_error())
                    .unwrap_or(StatusCode::FORBIDDEN);
                return error(status, &code, message);
            }
            Ok(Err(Refusal::Full { limit })) => {
                return unavailable(
                    app,
                    &app.warnings.project_full,
                    &project,
                    "--max-project-connections reached",
                    "too_many_project_connections",
                    format!("the project is at its limit of {limit} connections; try again later"),
                );
            }
            Ok(Err(Refusal::Failed)) => {
                app.metrics.connection_refused();
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "room_failed",
                    "the project's room failed while admitting the connection; try again",
                );
            }
        }
    }
    unavailable(
        app,
        &app.warnings.unreachable,
        &project,
        "could not reach its room after several attempts",
        "room_unavailable",
        "the project's room is restarting; try again",
    )
}
