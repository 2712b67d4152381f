//! `GET /websocket`: the upgrade into a project's room, in three steps:
//! [`validate`] the request (parameters, origin, token, the handshake's
//! headers), [`admit`] the client (a place under `--max-connections`, the
//! room's own yes), and spawn its connection, whose task waits for the
//! `101` to be sent before it reads or writes.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming as Body;
use hyper::header::{
    HeaderName, HeaderValue, ORIGIN, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, USER_AGENT,
};
use hyper::{Request, Response, StatusCode, Version};
use tokio::sync::OwnedSemaphorePermit;
use tracing::warn;

use super::{App, HttpError, Query, Reply, authorize};
use crate::auth::{self, Access};
use crate::cluster::PlaceError;
use crate::conn::{self, Admitted, RoomLink};
use crate::metrics::RefusedFor;
use crate::outbox::Outbox;
use crate::registry::ConnectError;
use crate::room::log_limit::Throttle;
use crate::room::{ClientMeta, ClientParams, Refusal, now_ms};

/// `upgrading`: the request asks for a WebSocket (`Connection: upgrade`,
/// `Upgrade: websocket`), as the router found.
pub(super) async fn websocket(
    app: &Arc<App>,
    mut req: Request<Body>,
    query: Query,
    upgrading: bool,
) -> Result<Reply, HttpError> {
    let (project, meta) = validate(app, &req, &query, upgrading)?;
    let selects_ours = offers_our_subprotocol(&req)?;
    let Ok(permit) = app.websockets.clone().try_acquire_owned() else {
        return Err(unavailable(
            app,
            &app.warnings.max_connections,
            &project,
            "--max-connections reached",
            RefusedFor::MaxConnections,
            "too_many_connections",
            "the server is at its connection limit; try again later",
        ));
    };
    let (response, upgrade) = fastwebsockets::upgrade::upgrade(&mut req).map_err(|e| {
        HttpError::bad_request(
            "bad_upgrade",
            format!("invalid WebSocket upgrade request: {e}"),
        )
    })?;
    let admitted = admit(app, &project, meta, permit).await?;
    app.tracker.spawn(conn::serve(
        upgrade,
        admitted,
        app.config.clone(),
        app.metrics.clone(),
    ));
    let (mut parts, _) = response.into_parts();
    if selects_ours {
        // A browser fails a handshake that selects none of the protocols
        // it offered.
        parts.headers.insert(
            hyper::header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(auth::SUBPROTOCOL),
        );
    }
    Ok(Response::from_parts(parts, Full::new(Bytes::new())))
}

/// Whether the request offers the `wsroom` subprotocol (the server then
/// selects it). A token offered as `bearer.<token>` needs it beside: the
/// server must select one of the offered protocols, and never the token.
fn offers_our_subprotocol(req: &Request<Body>) -> Result<bool, HttpError> {
    let lines = || {
        req.headers()
            .get_all(hyper::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
    };
    let ours = auth::offered_subprotocols(lines()).any(|p| p == auth::SUBPROTOCOL);
    if !ours && auth::subprotocol_token(lines()).is_some() {
        return Err(HttpError::bad_request(
            "bad_upgrade",
            "a token offered as the subprotocol bearer.<token> needs the subprotocol wsroom offered beside it (the one the server selects)",
        ));
    }
    Ok(ours)
}

/// Checks everything the request says before anything is reserved for it.
fn validate(
    app: &App,
    req: &Request<Body>,
    query: &Query,
    upgrading: bool,
) -> Result<(String, Arc<ClientMeta>), HttpError> {
    let project = query.project_id()?;
    let kind = query.kind()?;
    check_origin(app, req)?;
    let claims = authorize(app, req, query, Access::Join { project, kind })?;
    let params = client_params(&query.others)?;
    if !upgrading {
        return Err(HttpError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "Expected Upgrade: websocket",
        )
        .with_header("upgrade", "websocket"));
    }
    check_handshake(req)?;
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
        user_agent: header(USER_AGENT),
        origin: header(ORIGIN),
        subject: claims.and_then(|c| c.sub).map(String::into_boxed_str),
        params,
    });
    Ok((project.to_owned(), meta))
}

/// Most query parameters a client may pass besides `type`, `projectId`
/// and `token`, and the longest name and value.
pub(super) const MAX_PARAMS: usize = 32;
const MAX_PARAM_NAME: usize = 256;
const MAX_PARAM_VALUE: usize = 4096;

/// The upgrade URL's query parameters other than `type`, `projectId` and
/// `token` (`others`, as [`Query`] decoded them), in order
/// (repeated names kept), for the room and `/status`.
fn client_params(others: &[(String, String)]) -> Result<ClientParams, HttpError> {
    let mut params = Vec::with_capacity(others.len());
    for (name, value) in others {
        if params.len() == MAX_PARAMS
            || name.len() > MAX_PARAM_NAME
            || value.len() > MAX_PARAM_VALUE
            || name.chars().chain(value.chars()).any(char::is_control)
        {
            return Err(HttpError::bad_request(
                "invalid_params",
                format!(
                    "at most {MAX_PARAMS} query parameters besides type, projectId and token, \
                     names of at most {MAX_PARAM_NAME} bytes and values of at most \
                     {MAX_PARAM_VALUE}, without control characters"
                ),
            ));
        }
        params.push((Box::from(name.as_str()), Box::from(value.as_str())));
    }
    Ok(params.into_boxed_slice())
}

/// The opening handshake's rules (RFC 6455 4.1, 4.2.1) that hyper and
/// fastwebsockets leave to us.
fn check_handshake(req: &Request<Body>) -> Result<(), HttpError> {
    if req.version() < Version::HTTP_11 {
        // Over HTTP/1.0 hyper would send the 101 and then drop the
        // connection: refuse it while it can still be told why.
        return Err(HttpError::bad_request(
            "bad_upgrade",
            "a WebSocket upgrade needs HTTP/1.1",
        ));
    }
    // Exactly one line each: with two, hyper and fastwebsockets read the
    // first, and a proxy might read the other.
    if only(req, SEC_WEBSOCKET_VERSION) != Some(b"13") {
        return Err(HttpError::bad_request(
            "bad_upgrade",
            "Sec-WebSocket-Version must be 13, once",
        )
        .with_header("sec-websocket-version", "13"));
    }
    if !only(req, SEC_WEBSOCKET_KEY).is_some_and(is_websocket_key) {
        return Err(HttpError::bad_request(
            "bad_upgrade",
            "Sec-WebSocket-Key must be 16 bytes in base64, once",
        ));
    }
    Ok(())
}

/// The value of the header `name` if the request has exactly one line of it.
/// (A `HeaderName`, not a string: a string is parsed as a header name at
/// every lookup.)
fn only(req: &Request<Body>, name: HeaderName) -> Option<&[u8]> {
    let mut lines = req.headers().get_all(name).iter();
    match (lines.next(), lines.next()) {
        (Some(value), None) => Some(value.as_bytes()),
        _ => None,
    }
}

/// Whether `key` is base64 of 16 bytes: 22 characters of the alphabet and
/// `==`.
fn is_websocket_key(key: &[u8]) -> bool {
    let base64 = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    key.len() == 24 && key[..22].iter().all(base64) && &key[22..] == b"=="
}

/// Refuses a browser whose Origin is not on the allow-list (when one is
/// set): on WebSocket upgrades and on HTTP into rooms.
pub(super) fn check_origin(app: &App, req: &Request<Body>) -> Result<(), HttpError> {
    if app.config.allowed_origins.is_empty() {
        return Ok(());
    }
    let Some(origin) = req.headers().get(ORIGIN) else {
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
    Err(HttpError::new(
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        "this page's origin may not use this server (--allowed-origin)",
    ))
}

/// Places the client in its project's room: on this node, or in a cluster
/// on the node that owns the project.
async fn admit(
    app: &App,
    project: &str,
    meta: Arc<ClientMeta>,
    permit: OwnedSemaphorePermit,
) -> Result<Admitted, HttpError> {
    let outbox = Arc::new(Outbox::new(app.config.outbox_limit_bytes));
    let link = match &app.cluster {
        None => app
            .registry
            .connect(project, meta, outbox.clone())
            .await
            .map(|(room, conn)| RoomLink::Local { room, conn }),
        // Boxed: a cluster's placement future (its NATS requests) is ~5 KB,
        // which every upgrade's future, and every request's (hyper keeps
        // the service's future), would otherwise carry and move.
        Some(cluster) => match Box::pin(cluster.connect(project, meta, outbox.clone())).await {
            Ok(link) => Ok(link),
            Err(PlaceError::Connect(e)) => Err(e),
            Err(PlaceError::Cluster(why)) => {
                return Err(unavailable(
                    app,
                    &app.warnings.unreachable,
                    project,
                    &why,
                    RefusedFor::ClusterUnavailable,
                    "cluster_unavailable",
                    "the cluster cannot place this project now; try again",
                ));
            }
        },
    };
    match link {
        Ok(link) => Ok(Admitted {
            link,
            outbox,
            permit,
        }),
        Err(ConnectError::TooManyRooms { limit }) => Err(unavailable(
            app,
            &app.warnings.max_rooms,
            project,
            "--max-rooms reached",
            RefusedFor::MaxRooms,
            "too_many_rooms",
            format!("the server is at its limit of {limit} live rooms; try again later"),
        )),
        Err(ConnectError::Refused(Refusal::Refused {
            status,
            error,
            message,
        })) => {
            app.metrics.connection_refused(RefusedFor::Room);
            let status = StatusCode::from_u16(status)
                .ok()
                .filter(|s| s.is_client_error() || s.is_server_error())
                .unwrap_or(StatusCode::FORBIDDEN);
            Err(HttpError::new(status, error, message))
        }
        Err(ConnectError::Refused(Refusal::Full { limit })) => Err(unavailable(
            app,
            &app.warnings.project_full,
            project,
            "--max-project-connections reached",
            RefusedFor::MaxProjectConnections,
            "too_many_project_connections",
            format!("the project is at its limit of {limit} connections; try again later"),
        )),
        Err(ConnectError::Refused(Refusal::Failed)) => {
            app.metrics.connection_refused(RefusedFor::RoomFailed);
            Err(HttpError::unavailable(
                "room_failed",
                "the project's room failed while admitting the connection; try again",
            ))
        }
        Err(ConnectError::Unreachable) => Err(unavailable(
            app,
            &app.warnings.unreachable,
            project,
            "could not reach its room after several attempts",
            RefusedFor::RoomUnavailable,
            "room_unavailable",
            "the project's room is restarting; try again",
        )),
    }
}

/// A `503` for a WebSocket the server cannot take now (a limit reached, the
/// room out of reach): counted in `connectionsRefused` as `counted_as`, and `why` warned
/// about through its own throttle.
fn unavailable(
    app: &App,
    throttle: &Throttle,
    project: &str,
    why: &str,
    counted_as: RefusedFor,
    code: &'static str,
    message: impl Into<String>,
) -> HttpError {
    app.metrics.connection_refused(counted_as);
    if let Some(skipped) = throttle.admit() {
        warn!(project = %project, skipped, "refusing a websocket: {why}");
    }
    HttpError::unavailable(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_websocket_key_is_base64_of_16_bytes() {
        // RFC 6455 4.1's example.
        assert!(is_websocket_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(is_websocket_key(b"AAAAAAAAAAAAAAAAAAAA+/=="));
        for bad in [
            &b""[..],
            b"x",
            b"dGhlIHNhbXBsZSBub25jZQ",
            b"dGhlIHNhbXBsZSBub25jZQ=",
            b"dGhlIHNhbXBsZSBub25jZQ===",
            b"dGhlIHNhbXBsZSBub25j*Q==",
            b"dGhlIHNhbXBsZSBub25jZQAA",
            b"dGhlIHNhbXBsZSBub25jZSBub25jZQ==",
        ] {
            assert!(!is_websocket_key(bad), "{}", String::from_utf8_lossy(bad));
        }
    }
}
