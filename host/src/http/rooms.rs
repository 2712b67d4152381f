//! HTTP into rooms: `/rooms/{projectId}` and everything below it goes to
//! the project's room, as a `fetch` event (`wit/room.wit`), and the room's
//! answer goes back. The host checks what it can before the room is asked:
//! the project id, the token (it must grant the `server` type), the body's
//! size. What the room answers is checked on the way out: a status from 200
//! to 599, headers that are valid and not hop-by-hop, a body within the
//! limit.
//!
//! Every answer of a room carries `Content-Security-Policy: sandbox` and
//! `X-Content-Type-Options: nosniff`, and may not set cookies or clear the
//! site's data: a page a room serves runs in an origin of its own, never
//! with access to the console's (same-origin) storage. A browser page of
//! another origin is refused as on `/websocket` (`--allowed-origin`).
//! With access control on, the headers that carry credentials are not
//! handed to the room (it could send them anywhere it may call).

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming as Body;
use hyper::header::{CONTENT_LENGTH, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};

use super::{App, HttpError, Query, Reply, authorize, upgrade, valid_project_id};
use crate::auth::Access;
use crate::cluster::PlaceError;
use crate::engine::wit;
use crate::registry::ConnectError;
use crate::room::Fetched;

/// The prefix of every room's HTTP path.
pub(super) const PREFIX: &str = "/rooms/";

/// Headers a room may not set: the connection's own (RFC 9110 7.6.1), the
/// length (the host sets it from the body), and those that act on the
/// server's whole origin.
const NOT_FROM_ROOMS: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "set-cookie",
    "clear-site-data",
];

/// Request headers that carry credentials, kept from the room when the
/// host checks tokens.
const CREDENTIALS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "sec-websocket-protocol",
    "cookie",
];

/// `/rooms/{projectId}/rest`: the decoded project id and `/rest` (with
/// the query string), or the error for a malformed id.
fn split(path_and_query: &str) -> Result<(String, String), HttpError> {
    let rest = path_and_query.strip_prefix(PREFIX).unwrap_or_default();
    let (id, rest) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let decoded = percent_encoding::percent_decode_str(id).decode_utf8_lossy();
    let project = valid_project_id(Some(&decoded))?.to_owned();
    let rest = match rest.strip_prefix('?') {
        Some(query) => format!("/?{query}"),
        None if rest.is_empty() => "/".to_owned(),
        None => rest.to_owned(),
    };
    Ok((project, rest))
}

/// Answers a request to `/rooms/{projectId}/...`.
pub(super) async fn fetch(app: &App, req: Request<Body>) -> Result<Reply, HttpError> {
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or(req.uri().path(), |p| p.as_str());
    let (project, path) = split(path_and_query)?;
    upgrade::check_origin(app, &req)?;
    // Tokens only in the header: a room's URLs end up in logs.
    authorize(
        app,
        &req,
        &Query::default(),
        Access::RoomHttp { project: &project },
    )?;
    let limit = app.config.room_http.body_bytes;
    let too_large = || {
        HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body must be at most {limit} bytes (--room-http-body-bytes)"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let method = req.method().as_str().to_owned();
    let access_control = app.config.auth.is_some();
    let headers = req
        .headers()
        .iter()
        .filter(|(name, _)| !(access_control && CREDENTIALS.contains(&name.as_str())))
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    // The body has as long to arrive as the headers had: a client that
    // stops sending it does not hold a connection (and its room) for ever.
    let within = app.config.handshake_timeout;
    let read = tokio::time::timeout(within, Limited::new(req.into_body(), limit).collect());
    let Ok(read) = read.await else {
        return Err(HttpError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the body did not arrive within {} ms (--handshake-timeout-ms)",
                within.as_millis()
            ),
        )
        .with_header("connection", "close"));
    };
    let body = match read {
        Ok(body) => body.to_bytes().to_vec(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err(HttpError::bad_request(
                "body_unreadable",
                format!("the body could not be read: {e}"),
            ));
        }
    };
    let request = wit::HttpRequest {
        method,
        path,
        headers,
        body,
    };
    let fetched = match &app.cluster {
        None => app.registry.fetch(&project, request).await,
        Some(cluster) => match cluster.fetch(&project, request).await {
            Ok(fetched) => Ok(fetched),
            Err(PlaceError::Connect(e)) => Err(e),
            Err(PlaceError::Cluster(why)) => {
                tracing::warn!(project, "HTTP request into the room not placed: {why}");
                return Err(HttpError::unavailable(
                    "cluster_unavailable",
                    "the cluster cannot place this project now; try again",
                ));
            }
        },
    };
    match fetched {
        Ok(Fetched::Answered(response)) => {
            app.metrics.room_http_in();
            Ok(response_of(&project, response, limit))
        }
        Ok(Fetched::NoHandler) => {
            app.metrics.room_http_in();
            Err(HttpError::new(
                StatusCode::NOT_FOUND,
                "no_fetch_handler",
                "this project's room answers no HTTP requests (it was built before wsroom:room@0.3.0 added fetch)",
            ))
        }
        Ok(Fetched::Failed) => {
            app.metrics.room_http_in();
            Err(HttpError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "room_failed",
                "the project's room failed while answering",
            ))
        }
        Ok(Fetched::Unanswered) => Err(HttpError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "room_timeout",
            "the node that runs the project did not answer in time: the request may or may not have been handled",
        )),
        Ok(Fetched::TooLargeToForward(max)) => Err(HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "the request is too large to reach the node that runs the project: \
                 at most {max} bytes cross the cluster (NATS max_payload)"
            ),
        )),
        Err(ConnectError::TooManyRooms { limit }) => Err(HttpError::unavailable(
            "too_many_rooms",
            format!("the server is at its limit of {limit} live rooms; try again later"),
        )),
        Err(ConnectError::Unreachable | ConnectError::Refused(_)) => Err(HttpError::unavailable(
            "room_unavailable",
            "the project's room is restarting; try again",
        )),
    }
}

/// The room's answer as an HTTP response, within what HTTP and the limit
/// allow.
fn response_of(project: &str, response: wit::HttpResponse, limit: usize) -> Reply {
    if response.body.len() > limit {
        tracing::warn!(
            project,
            bytes = response.body.len(),
            "a room answered HTTP with a body over --room-http-body-bytes; sent 500"
        );
        return HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "room_response_too_large",
            format!("the room's answer is over the limit of {limit} bytes"),
        )
        .into_response();
    }
    let status = StatusCode::from_u16(response.status)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .unwrap_or_else(|| {
            tracing::warn!(
                project,
                status = response.status,
                "a room answered HTTP with a status outside 200-599; sent 500"
            );
            StatusCode::INTERNAL_SERVER_ERROR
        });
    let mut resp = Response::new(Full::new(Bytes::from(response.body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    for (name, value) in response.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) else {
            continue;
        };
        if NOT_FROM_ROOMS.contains(&name.as_str()) {
            continue;
        }
        headers.append(name, value);
    }
    headers.append(
        hyper::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    headers.insert(
        hyper::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_splits_into_the_project_and_the_rest() {
        let ok = |p: &str| split(p).unwrap();
        assert_eq!(ok("/rooms/p1"), ("p1".into(), "/".into()));
        assert_eq!(ok("/rooms/p1/"), ("p1".into(), "/".into()));
        assert_eq!(ok("/rooms/p1?x=1"), ("p1".into(), "/?x=1".into()));
        assert_eq!(
            ok("/rooms/a%20b/messages?dry=1"),
            ("a b".into(), "/messages?dry=1".into())
        );
        assert_eq!(ok("/rooms/p/a/b"), ("p".into(), "/a/b".into()));
    }

    #[test]
    fn a_bad_project_id_is_refused() {
        for bad in ["/rooms/", "/rooms//x", "/rooms/%0a", "/rooms/%ff"] {
            assert!(split(bad).is_err(), "{bad}");
        }
        let long = format!("/rooms/{}", "a".repeat(257));
        assert!(split(&long).is_err());
    }

    #[test]
    fn a_room_cannot_set_hop_by_hop_headers_or_a_bad_status() {
        let reply = response_of(
            "p",
            wit::HttpResponse {
                status: 99,
                headers: vec![
                    ("transfer-encoding".into(), "chunked".into()),
                    ("x-room".into(), "yes".into()),
                    ("set-cookie".into(), "session=stolen".into()),
                    ("bad name".into(), "v".into()),
                    ("x-bad-value".into(), "a\nb".into()),
                ],
                body: b"hi".to_vec(),
            },
            10,
        );
        assert_eq!(reply.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let h = reply.headers();
        assert_eq!(h.get("x-room").unwrap(), "yes");
        assert!(h.get("transfer-encoding").is_none());
        assert!(h.get("set-cookie").is_none());
        assert!(h.get("x-bad-value").is_none());
        assert_eq!(h.get("content-security-policy").unwrap(), "sandbox");
        let big = response_of(
            "p",
            wit::HttpResponse {
                status: 200,
                headers: vec![],
                body: vec![b'x'; 11],
            },
            10,
        );
        assert_eq!(big.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
