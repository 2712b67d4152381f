//! HTTP routes: `/websocket` (the upgrade into a project's room, in
//! [`upgrade`]), `/status`, `/health` and `/metrics` (in [`report`]), the
//! console's pages and its list of projects (in [`console`]), HTTP into
//! rooms, `/rooms/{projectId}/...` (in [`rooms`]). Every
//! refusal is an [`HttpError`]: a status code with a JSON body
//! `{"error": code, "message": text}` (docs/PROTOCOL.md lists them), the
//! listener's refusal of a connection before hyper serves it included.

mod console;
mod error;
pub(crate) mod report;
mod rooms;
mod upgrade;

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming as Body;
use hyper::header::{HOST, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use tokio_util::task::TaskTracker;

use crate::auth::{self, Access};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::room::log_limit::Throttle;
pub(crate) use error::HttpError;

/// Longest accepted `projectId` (and `type`), in bytes.
const MAX_PROJECT_ID: usize = 256;

/// What every request handler shares.
pub(crate) struct App {
    pub(crate) registry: Arc<Registry>,
    pub(crate) config: Arc<Config>,
    pub(crate) metrics: Arc<Metrics>,
    /// Where rooms keep their data (`None` in memory in a cluster: in the
    /// rooms themselves).
    pub(crate) store: Option<crate::store::RoomStore>,
    /// Cluster membership; `None` for a node alone.
    pub(crate) cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Every WebSocket's task, waited for at shutdown.
    pub(crate) tracker: TaskTracker,
    /// One permit per open WebSocket (`--max-connections`).
    pub(crate) websockets: Arc<tokio::sync::Semaphore>,
    pub(crate) started: std::time::Instant,
    /// The warnings each refused connection would otherwise write.
    pub(crate) warnings: RefusalWarnings,
}

/// One throttle per warning a flood of connections could repeat (see
/// [`Throttle`]): a server at its limits keeps its log readable.
pub(crate) struct RefusalWarnings {
    max_connections: Throttle,
    max_rooms: Throttle,
    project_full: Throttle,
    unreachable: Throttle,
    pub(crate) handshakes: Throttle,
}

impl Default for RefusalWarnings {
    fn default() -> Self {
        RefusalWarnings {
            max_connections: Throttle::new(1),
            max_rooms: Throttle::new(1),
            project_full: Throttle::new(1),
            unreachable: Throttle::new(1),
            handshakes: Throttle::new(1),
        }
    }
}

pub(crate) type Reply = Response<Full<Bytes>>;

/// Answers one request.
pub(crate) async fn route(
    app: Arc<App>,
    req: Request<Body>,
) -> Result<Reply, std::convert::Infallible> {
    let upgrading = fastwebsockets::upgrade::is_upgrade_request(&req);
    let answer = match checked(&req) {
        Err(e) => Err(e),
        Ok(path) => {
            let query = Query::parse(req.uri().query(), matches!(path, Path::WebSocket));
            // Every path but the upgrade boxed: hyper keeps each request's
            // future in place, and it is as large as the largest path's
            // (a room's `fetch` through the cluster, ~5.6 KB; the reports,
            // ~2.4 KB), moved and allocated for every connection.
            match path {
                Path::WebSocket => upgrade::websocket(&app, req, query, upgrading).await,
                Path::Status => Box::pin(report::status(&app, &req, &query)).await,
                Path::Health => Box::pin(report::health(&app, &req, &query)).await,
                Path::Metrics => Ok(report::metrics(&app, &req)),
                Path::Console(asset) => Ok(console::asset(asset)),
                Path::ConsoleProjects => console::projects(&app, &req, &query),
                Path::Room => Box::pin(rooms::fetch(&app, req)).await,
            }
        }
    };
    Ok(match answer {
        Ok(reply) => reply,
        Err(e) => {
            let mut resp = e.into_response();
            if upgrading {
                // A refused upgrade leaves the connection in no state to be
                // reused: say so, and close it.
                resp.headers_mut()
                    .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
    })
}

enum Path {
    WebSocket,
    Status,
    Health,
    Metrics,
    Console(console::Asset),
    ConsoleProjects,
    /// `/rooms/{projectId}/...`, any method.
    Room,
}

/// The route a request names, once its path, method and `Host` are fine.
fn checked(req: &Request<Body>) -> Result<Path, HttpError> {
    let path = req.uri().path();
    let (route, methods, allow) = match path {
        "/websocket" => (Path::WebSocket, &[Method::GET][..], "GET"),
        "/status" => (Path::Status, &[Method::GET, Method::HEAD][..], "GET, HEAD"),
        "/health" => (Path::Health, &[Method::GET, Method::HEAD][..], "GET, HEAD"),
        "/metrics" => (Path::Metrics, &[Method::GET, Method::HEAD][..], "GET, HEAD"),
        "/console/api/projects" => (
            Path::ConsoleProjects,
            &[Method::GET, Method::HEAD][..],
            "GET, HEAD",
        ),
        _ if path.starts_with(rooms::PREFIX) => (Path::Room, &[][..], ""),
        _ => match console::Asset::at(path) {
            Some(asset) => (
                Path::Console(asset),
                &[Method::GET, Method::HEAD][..],
                "GET, HEAD",
            ),
            None => {
                return Err(HttpError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no such endpoint: {path}"),
                ));
            }
        },
    };
    if !methods.is_empty() && !methods.contains(req.method()) {
        return Err(HttpError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{path} only answers {allow}"),
        )
        .with_header("allow", allow));
    }
    // RFC 9112 3.2: a server answers 400 to an HTTP/1.1 request without
    // Host (HTTP/1.0 had none), and to any with more than one.
    let hosts = req.headers().get_all(HOST).iter().count();
    if hosts > 1 || (hosts == 0 && req.version() >= Version::HTTP_11) {
        return Err(HttpError::bad_request(
            "missing_host",
            "an HTTP/1.1 request needs one Host header",
        ));
    }
    Ok(route)
}

/// The query parameters the routes read.
#[derive(Default)]
struct Query {
    project_id: Option<String>,
    kind: Option<String>,
    /// An access token (never logged).
    token: Option<String>,
    /// `/health?ready`: answer 503 when the server should get no new
    /// clients.
    ready: bool,
    /// On an upgrade, every parameter but `projectId`, `type` and `token`,
    /// in the URL's order: the client's `params` (checked by the upgrade).
    /// At most one over the upgrade's limit is kept, enough to refuse it.
    others: Vec<(String, String)>,
}

impl Query {
    /// The first value of each parameter, URL-decoded (invalid UTF-8
    /// becomes U+FFFD), each decoded once; `others` only for `/websocket`
    /// (`websocket`), the one route that reads them.
    fn parse(query: Option<&str>, websocket: bool) -> Query {
        let mut q = Query::default();
        let query = query.unwrap_or("");
        if query.bytes().any(|b| b == b'%' || b == b'+') {
            for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
                q.add(k, v, websocket);
            }
        } else {
            // Nothing to decode (the usual query): the pairs as they lie,
            // split as `form_urlencoded` splits them, without its three
            // passes over each name and value (~2 k instructions an upgrade).
            for (k, v) in undecoded_pairs(query) {
                q.add(Cow::Borrowed(k), Cow::Borrowed(v), websocket);
            }
        }
        q
    }

    fn add(&mut self, k: Cow<'_, str>, v: Cow<'_, str>, websocket: bool) {
        match &*k {
            // A repeated one is neither read nor a client parameter.
            "projectId" => _ = self.project_id.get_or_insert_with(|| v.into_owned()),
            "type" => _ = self.kind.get_or_insert_with(|| v.into_owned()),
            "token" => _ = self.token.get_or_insert_with(|| v.into_owned()),
            _ => {
                self.ready |= k == "ready";
                if websocket && self.others.len() <= upgrade::MAX_PARAMS {
                    self.others.push((k.into_owned(), v.into_owned()));
                }
            }
        }
    }

    /// The `projectId`: 1 to 256 bytes of UTF-8 without control characters.
    fn project_id(&self) -> Result<&str, HttpError> {
        valid_project_id(self.project_id.as_deref())
    }

    /// The connection `type`: 1 to 256 bytes without control characters
    /// (which types exist is the room's to say).
    fn kind(&self) -> Result<&str, HttpError> {
        match self.kind.as_deref() {
            None | Some("") => Err(HttpError::bad_request(
                "missing_type",
                "the type query parameter is required",
            )),
            Some(k) if k.len() > MAX_PROJECT_ID || k.chars().any(char::is_control) => {
                Err(HttpError::bad_request(
                    "invalid_type",
                    format!(
                        "type must be at most {MAX_PROJECT_ID} bytes without control characters"
                    ),
                ))
            }
            Some(k) => Ok(k),
        }
    }
}

/// The name-value pairs of a query string with nothing to decode (no `%`,
/// no `+`), as `form_urlencoded::parse` gives them: split at `&`, empty
/// pieces skipped, each at its first `=` (none: an empty value).
fn undecoded_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| piece.split_once('=').unwrap_or((piece, "")))
}

/// A `projectId` as decoded from a URL: 1 to 256 bytes of UTF-8 without
/// control characters.
fn valid_project_id(id: Option<&str>) -> Result<&str, HttpError> {
    let bad = |message: String| HttpError::bad_request("invalid_project_id", message);
    match id {
        None | Some("") => Err(HttpError::bad_request(
            "missing_project_id",
            "the projectId is required",
        )),
        Some(id) if id.len() > MAX_PROJECT_ID => Err(bad(format!(
            "projectId must be at most {MAX_PROJECT_ID} bytes"
        ))),
        Some(id) if id.chars().any(char::is_control) => {
            Err(bad("projectId must not contain control characters".into()))
        }
        // Invalid UTF-8 was replaced by U+FFFD while decoding.
        Some(id) if id.contains('\u{FFFD}') => Err(bad("projectId must be valid UTF-8".into())),
        Some(id) => Ok(id),
    }
}

/// Checks the request's token against `access` when a secret is
/// configured, and gives its claims (`None`: no secret, all is allowed).
fn authorize(
    app: &App,
    req: &Request<Body>,
    query: &Query,
    access: Access<'_>,
) -> Result<Option<auth::Claims>, HttpError> {
    let Some(auth) = &app.config.auth else {
        return Ok(None);
    };
    let header = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let protocols = req
        .headers()
        .get_all(hyper::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let other_token = match access {
        // HTTP into rooms: the header only (a subprotocol or the query
        // would reach the room, and logs).
        Access::RoomHttp { .. } => None,
        _ => auth::subprotocol_token(protocols).or(query.token.as_deref()),
    };
    match auth.check(auth::bearer(header, other_token), access) {
        Ok(claims) => Ok(Some(claims)),
        Err(denied) => {
            app.metrics.auth_refused();
            let status = StatusCode::from_u16(denied.status).unwrap_or(StatusCode::FORBIDDEN);
            let error = HttpError::new(status, denied.code, denied.message);
            Err(if status == StatusCode::UNAUTHORIZED {
                error.with_header("www-authenticate", "Bearer")
            } else {
                error
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_with_nothing_to_decode_splits_as_form_urlencoded_does() {
        // Every string of up to five of these characters (none of them `%`
        // or `+`), and many of six: the n-th in bijective base 9.
        const ALPHABET: [&str; 9] = ["a", "b", "=", "&", "é", " ", "?", "#", ";"];
        let mut checked = 0;
        let mut query = String::new();
        for n in 0..9usize.pow(6) {
            query.clear();
            let mut rest = n;
            while rest > 0 {
                rest -= 1;
                query.push_str(ALPHABET[rest % 9]);
                rest /= 9;
            }
            let ours: Vec<(String, String)> = undecoded_pairs(&query)
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            let theirs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            assert_eq!(ours, theirs, "for {query:?}");
            checked += 1;
        }
        assert_eq!(checked, 531_441);
    }

    #[test]
    fn a_query_is_read_the_same_whether_it_needs_decoding_or_not() {
        let plain = Query::parse(
            Some("type=runtime&projectId=p-1&x=1&x=2&ready&type=admin"),
            true,
        );
        assert_eq!(plain.kind.as_deref(), Some("runtime"));
        assert_eq!(plain.project_id.as_deref(), Some("p-1"));
        assert!(plain.ready);
        let others = [("x", "1"), ("x", "2"), ("ready", "")].map(|(k, v)| (k.into(), v.into()));
        assert_eq!(plain.others, others);
        let encoded = Query::parse(
            Some("type=run%74ime&projectId=p-1&x=1&x=2&ready&type=a+b"),
            true,
        );
        assert_eq!(encoded.kind, plain.kind);
        assert_eq!(encoded.project_id, plain.project_id);
        assert_eq!(encoded.others, plain.others);
        // Decoding: `+` is a space, `%xx` a byte.
        let q = Query::parse(Some("projectId=a+b%2Bc"), false);
        assert_eq!(q.project_id.as_deref(), Some("a b+c"));
        assert!(q.others.is_empty(), "not an upgrade: no parameters kept");
    }
}
