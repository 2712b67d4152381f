//! HTTP out of rooms: which hosts a room may call (`--room-http-allow`), and
//! the limits on each call (`Hooks`), applied where wasmtime-wasi-http's
//! `wasi:http/outgoing-handler` sends a room's request.
//!
//! The allow-list is checked against the request's authority before any
//! connection is made: a room names a host, the host decides. Nothing is
//! allowed by default, so a room cannot reach the operator's network
//! unless the operator says so. What is refused fails inside the room with
//! `HTTP-request-denied`; the room goes on.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Limited};
use hyper::http;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::metrics::Metrics;

/// The settings of HTTP into and out of rooms.
#[derive(Debug, Clone)]
pub struct RoomHttp {
    /// Largest body in and out (`--room-http-body-bytes`).
    pub body_bytes: usize,
    /// Where rooms may send requests.
    pub allow: AllowList,
    /// Connect, first byte, between bytes: each at most this.
    pub timeout: Duration,
}

impl RoomHttp {
    pub fn new(allow: &[String], body_bytes: usize, timeout: Duration) -> anyhow::Result<RoomHttp> {
        anyhow::ensure!(body_bytes > 0, "--room-http-body-bytes must be positive");
        anyhow::ensure!(
            !timeout.is_zero(),
            "--room-http-timeout-ms must be positive"
        );
        Ok(RoomHttp {
            body_bytes,
            allow: AllowList::parse(allow)?,
            timeout,
        })
    }
}

/// How one room's outgoing requests are sent: the allow-list, the limits,
/// the counting (wasmtime-wasi-http's hooks, kept in the room's store).
pub(crate) struct Hooks {
    settings: Arc<RoomHttp>,
    metrics: Arc<Metrics>,
}

impl Hooks {
    pub(crate) fn new(settings: Arc<RoomHttp>, metrics: Arc<Metrics>) -> Hooks {
        Hooks { settings, metrics }
    }
}

/// The shorter of the room's own timeout, if it set one, and the host's.
fn at_most(asked: Option<Duration>, limit: Duration) -> Option<Duration> {
    Some(asked.map_or(limit, |asked| asked.min(limit)))
}

type Sent = Box<dyn Future<Output = Result<(), Error>> + Send>;

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _request_sent: Sent,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, Sent), Error>> + Send> {
        let uri = request.uri();
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        // With userinfo (`user@host`) the authority that would be dialled
        // is not the host checked: refused outright.
        let allowed = uri.authority().is_some_and(|a| !a.as_str().contains('@'))
            && uri
                .host()
                .is_some_and(|host| self.settings.allow.allows(host, port));
        let metrics = self.metrics.clone();
        if !allowed {
            metrics.room_http_out_denied();
            // The host only: a URI may carry a room's secrets.
            tracing::debug!(
                host = uri.host().unwrap_or(""),
                port,
                "a room's HTTP request to a host not in --room-http-allow was refused"
            );
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        metrics.room_http_out();
        let limit = self.settings.timeout;
        let options = options.unwrap_or_default();
        let options = RequestOptions {
            connect_timeout: at_most(options.connect_timeout, limit),
            first_byte_timeout: at_most(options.first_byte_timeout, limit),
            between_bytes_timeout: at_most(options.between_bytes_timeout, limit),
        };
        let max_body = self.settings.body_bytes;
        Box::new(async move {
            // The connect timeout does not cover a TLS handshake: the whole
            // way to the response's head gets the limit too.
            let sent = tokio::time::timeout(
                limit,
                wasmtime_wasi_http::default_send_request(request, Some(options)),
            )
            .await
            .unwrap_or(Err(Error::ConnectionReadTimeout));
            let (response, io) = match sent {
                Ok(sent) => sent,
                Err(e) => {
                    metrics.room_http_out_failed();
                    return Err(e);
                }
            };
            // A body said to be over the limit is refused before it is
            // read: the room gets `HTTP-response-body-size` as the answer.
            let declared = response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if let Some(len) = declared.filter(|len| *len > max_body as u64) {
                metrics.room_http_out_failed();
                return Err(Error::HttpResponseBodySize(Some(len)));
            }
            // Any other body is cut off at the limit, and must all come
            // within the time limit (a host that drips bytes would hold the
            // room's event for ever): the room reads an error instead of
            // the rest.
            let response = response.map(|body| {
                Deadline::new(Limited::new(body, max_body), limit)
                    .map_err(move |e| {
                        metrics.room_http_out_failed();
                        match e.downcast::<Error>() {
                            Ok(e) => *e,
                            Err(_) => Error::HttpResponseBodySize(Some(max_body as u64)),
                        }
                    })
                    .boxed_unsync()
            });
            Ok((response, Box::new(io) as Sent))
        })
    }
}

/// Hosts (and ports) rooms may send HTTP requests to.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    entries: Vec<Allowed>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Allowed {
    host: HostPattern,
    /// `None`: any port.
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// This host only (lowercase; an IPv6 address without brackets).
    Exact(String),
    /// Any host below this domain (`*.example.com`: `api.example.com`,
    /// not `example.com`), kept with its leading dot (`.example.com`).
    Below(String),
}

impl AllowList {
    /// Reads `host`, `*.domain`, `host:port`, `[v6]:port` patterns; blank
    /// ones are skipped.
    pub fn parse(patterns: &[String]) -> anyhow::Result<AllowList> {
        let entries = patterns
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
            .map(|p| Allowed::parse(p).with_context(|| format!("--room-http-allow {p:?}")))
            .collect::<anyhow::Result<_>>()?;
        Ok(AllowList { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a request to `host` (as in a URL's authority: IPv6 in
    /// brackets or not) on `port` is allowed.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = normalize_host(host);
        self.entries.iter().any(|e| {
            e.port.is_none_or(|p| p == port)
                && match &e.host {
                    HostPattern::Exact(h) => *h == host,
                    HostPattern::Below(domain) => host
                        .strip_suffix(domain.as_str())
                        .is_some_and(|sub| !sub.is_empty()),
                }
        })
    }
}

/// Lowercase, without the brackets of an IPv6 address or a trailing dot.
fn normalize_host(host: &str) -> String {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.trim_end_matches('.').to_ascii_lowercase()
}

impl Allowed {
    fn parse(pattern: &str) -> anyhow::Result<Allowed> {
        anyhow::ensure!(
            !pattern.contains("://") && !pattern.contains('/'),
            "name a host (and a port), not a URL"
        );
        let (host, port) = if let Some(rest) = pattern.strip_prefix('[') {
            let (v6, after) = rest
                .split_once(']')
                .context("an IPv6 address needs its closing bracket")?;
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .context("expected :PORT after the address")?,
                ),
            };
            (v6.to_owned(), port)
        } else {
            match pattern.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') => (host.to_owned(), Some(port)),
                Some(_) => anyhow::bail!("write an IPv6 address in brackets: [::1]:8080"),
                None => (pattern.to_owned(), None),
            }
        };
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .context("the port must be a number from 1 to 65535")
            })
            .transpose()?;
        anyhow::ensure!(port != Some(0), "the port must be a number from 1 to 65535");
        let host = normalize_host(&host);
        let valid = |h: &str| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '_'))
        };
        let host = match host.strip_prefix("*.") {
            Some(domain) if valid(domain) => HostPattern::Below(format!(".{domain}")),
            Some(_) => anyhow::bail!("expected *.DOMAIN"),
            None if valid(&host) => HostPattern::Exact(host),
            None => anyhow::bail!("not a host name or address"),
        };
        Ok(Allowed { host, port })
    }
}

/// A body that must end within a time: past it, its next frame is an
/// error (`Error::ConnectionReadTimeout`).
struct Deadline<B> {
    body: std::pin::Pin<Box<B>>,
    at: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<B> Deadline<B> {
    fn new(body: B, within: Duration) -> Deadline<B> {
        Deadline {
            body: Box::pin(body),
            at: Box::pin(tokio::time::sleep(within)),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<B> hyper::body::Body for Deadline<B>
where
    B: hyper::body::Body<Error = BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, BoxError>>> {
        if self.at.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(Some(Err(Box::new(Error::ConnectionReadTimeout))));
        }
        self.body.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(patterns: &[&str]) -> AllowList {
        AllowList::parse(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn nothing_is_allowed_by_default() {
        let none = list(&[]);
        assert!(none.is_empty());
        assert!(!none.allows("example.com", 443));
        assert!(!none.allows("127.0.0.1", 80));
    }

    #[test]
    fn a_host_alone_allows_any_port_and_only_that_host() {
        let l = list(&["API.example.com"]);
        assert!(l.allows("api.example.com", 443));
        assert!(l.allows("Api.Example.Com.", 8080));
        assert!(!l.allows("example.com", 443));
        assert!(!l.allows("api.example.com.evil.net", 443));
        assert!(!l.allows("xapi.example.com", 443));
    }

    #[test]
    fn a_wildcard_allows_subdomains_but_not_the_domain_or_lookalikes() {
        let l = list(&["*.example.com"]);
        assert!(l.allows("a.example.com", 443));
        assert!(l.allows("a.b.example.com", 443));
        assert!(!l.allows("example.com", 443));
        assert!(!l.allows("badexample.com", 443));
    }

    #[test]
    fn a_port_narrows_the_host() {
        let l = list(&["127.0.0.1:8080", "[::1]:9000"]);
        assert!(l.allows("127.0.0.1", 8080));
        assert!(!l.allows("127.0.0.1", 8081));
        assert!(l.allows("[::1]", 9000));
        assert!(l.allows("::1", 9000));
        assert!(!l.allows("[::1]", 80));
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        for bad in [
            "https://example.com",
            "example.com/path",
            "host:notaport",
            "host:0",
            "::1:80",
            "*.",
            "a b",
        ] {
            let e = AllowList::parse(&[bad.to_string()]).unwrap_err();
            assert!(format!("{e:#}").contains(bad), "{bad}: {e:#}");
        }
    }
}
