//! The console: a few pages served from the binary (`/console`, its script
//! and style; no CDN, works offline) and the one JSON endpoint they need
//! beyond `/status` and `/health`: `/console/api/projects`, a page of the
//! live projects. A project's clients come from `/status`, its live feed
//! from an admin WebSocket, the charts from `/health`: the console reads
//! what any client of the server could.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming as Body;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use super::error::json_reply;
use super::{App, HttpError, Query, Reply, authorize};
use crate::auth::Access;
use crate::room::now_ms;

/// Projects on one page unless `limit` says otherwise, and the most it may.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

/// The console's files, compiled in.
#[derive(Clone, Copy)]
pub(super) enum Asset {
    Page,
    Script,
    Style,
}

impl Asset {
    pub(super) fn at(path: &str) -> Option<Asset> {
        match path {
            "/console" | "/console/" => Some(Asset::Page),
            "/console/console.js" => Some(Asset::Script),
            "/console/console.css" => Some(Asset::Style),
            _ => None,
        }
    }

    fn body_and_type(self) -> (&'static str, &'static str) {
        match self {
            Asset::Page => (
                include_str!("../../console/index.html"),
                "text/html; charset=utf-8",
            ),
            Asset::Script => (
                include_str!("../../console/console.js"),
                "text/javascript; charset=utf-8",
            ),
            Asset::Style => (
                include_str!("../../console/console.css"),
                "text/css; charset=utf-8",
            ),
        }
    }
}

/// One of the console's files. They hold nothing of any project, so they
/// need no token: the data they show comes from endpoints that do.
pub(super) fn asset(asset: Asset) -> Reply {
    let (body, content_type) = asset.body_and_type();
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The pages change with the binary: a browser asks again each time.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    // Scripts and styles only from the console's own files (no inline
    // script a project's data could smuggle in), and no framing.
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; \
             img-src 'self' data:; connect-src 'self'; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    resp
}

/// `GET /console/api/projects?q=&cursor=&limit=`: the live projects whose
/// id contains `q`, in projectId order, `limit` (default 50, at most 500)
/// after `cursor` (the last id of the page before). With `--auth-secret`
/// it needs a token that grants `admin`, and lists only the projects the
/// token grants.
pub(super) fn projects(app: &App, req: &Request<Body>, query: &Query) -> Result<Reply, HttpError> {
    let claims = authorize(app, req, query, Access::Console)?;
    let page_query = PageQuery::parse(req.uri().query())?;
    let needle = page_query.q.as_deref().unwrap_or("");
    // Without a filter a page costs its own rooms only, not a scan.
    let grant = claims.as_ref().filter(|c| c.project != "*");
    let wanted = |id: &str| id.contains(needle) && grant.is_none_or(|c| c.allows_project(id));
    let filtered = !needle.is_empty() || grant.is_some();
    let page = app.registry.page(
        filtered.then_some(&wanted as &dyn Fn(&str) -> bool),
        page_query.cursor.as_deref(),
        page_query.limit,
    );
    let projects: Vec<Value> = page
        .rooms
        .iter()
        .map(|room| {
            let clients = room.shared.clients();
            let mut by_type = std::collections::BTreeMap::<&str, u64>::new();
            for c in &clients {
                *by_type.entry(&c.kind).or_default() += 1;
            }
            json!({
                "projectId": &*room.project,
                "clientCount": clients.len(),
                "clientsByType": by_type,
                "messages": room.shared.messages(),
                "hibernated": room.shared.hibernated(),
                "component": app.registry.component_name(&room.project),
                "lastActivity": room.shared.last_activity(),
            })
        })
        .collect();
    // The page's last id, even if that room went away since the scan.
    let next_cursor = if page.more {
        page.last.as_deref()
    } else {
        None
    };
    Ok(json_reply(
        StatusCode::OK,
        &json!({
            "projects": projects,
            "total": page.total,
            "nextCursor": next_cursor,
            "node": app.cluster.as_ref().map(|c| c.node()),
            "timestamp": now_ms(),
        }),
    ))
}

/// The list's parameters.
struct PageQuery {
    q: Option<String>,
    cursor: Option<String>,
    limit: usize,
}

impl PageQuery {
    fn parse(query: Option<&str>) -> Result<PageQuery, HttpError> {
        let mut q = PageQuery {
            q: None,
            cursor: None,
            limit: DEFAULT_PAGE,
        };
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "q" if q.q.is_none() => q.q = Some(v.into_owned()),
                "cursor" if q.cursor.is_none() && !v.is_empty() => q.cursor = Some(v.into_owned()),
                "limit" => {
                    q.limit = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| {
                            HttpError::bad_request(
                                "invalid_limit",
                                format!("limit must be a number from 1 to {MAX_PAGE}"),
                            )
                        })?;
                }
                _ => {}
            }
        }
        Ok(q)
    }
}
