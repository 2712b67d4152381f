//! A room for the host's tests of what a room sees and reaches, built
//! against the current contract with the SDK:
//!
//! - when a client joins, it sends it `{"type": "who", "subject": ...,
//!   "params": [[name, value], ...]}`: its `client-info` as the room got it;
//! - the text `GET <url>` makes an outgoing HTTP request with
//!   `wasi:http/outgoing-handler` (the room blocks on it) and answers
//!   `{"type": "fetched", "status": N, "body": "..."}`, or
//!   `{"type": "fetch-failed", "error": "<the wasi:http error code>"}`;
//! - the text `panic` panics (a trap in the export a text message goes
//!   to, `on-text`, whose default hands it to `on_message`);
//! - a text starting with `size:` is answered `{"type": "size", "bytes":
//!   N, "last": C}`: its length in bytes and its last character;
//! - the text `spin:MS` keeps the room busy for MS milliseconds (by the
//!   host's clock), then answers `{"type": "spun", "ms": MS}`;
//! - the text `attach:DATA` keeps DATA as the client's attachment; when the
//!   client leaves, the room logs `left with attachment DATA` (read in
//!   `on-close`, after the client left the table);
//! - over HTTP (`fetch`): `PUT /kv/KEY` stores the body under KEY (200),
//!   `GET /kv/KEY` answers it (or 404), `GET /headers` answers
//!   `{"headers": [name, ...]}` (the request's header names as the room
//!   got them), `GET /loop` spins until the CPU budget stops it.

#![cfg(target_arch = "wasm32")]

use serde_json::json;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, IncomingBody, Method, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;
use wsroom_room_sdk::{
    ClientInfo, Ctx, HttpRequest, HttpResponse, Incoming, LogLevel, Refusal, Room, Sender,
    export_room, json_response,
};

#[derive(Default)]
struct Probe;

impl Room for Probe {
    fn on_connect(&mut self, ctx: &mut Ctx, client: &ClientInfo) -> Result<(), Refusal> {
        let who = json!({"type": "who", "subject": client.subject, "params": client.params});
        ctx.send_to_client(&client.id, &who.to_string());
        Ok(())
    }

    fn on_message(&mut self, ctx: &mut Ctx, from: &Sender, message: Incoming) {
        let Incoming::Text(text) = message else {
            return;
        };
        if text == "panic" {
            panic!("asked to panic");
        }
        if text.starts_with("size:") {
            let size = json!({"type": "size", "bytes": text.len(), "last": text.chars().last()});
            ctx.send_to_client(&from.id, &size.to_string());
            return;
        }
        if let Some(ms) = text.strip_prefix("spin:") {
            let ms: u64 = ms.parse().unwrap_or(0);
            let until = ctx.now_ms() + ms;
            while ctx.now_ms() < until {
                std::hint::spin_loop();
            }
            ctx.send_to_client(&from.id, &json!({"type": "spun", "ms": ms}).to_string());
            return;
        }
        if let Some(data) = text.strip_prefix("attach:") {
            let _ = ctx.set_attachment(&from.id, Some(data.as_bytes()));
            return;
        }
        let Some(url) = text.strip_prefix("GET ") else {
            ctx.send_to_client(&from.id, &json!({"type": "unknown"}).to_string());
            return;
        };
        let answer = match get(url) {
            Ok((status, body)) => json!({
                "type": "fetched",
                "status": status,
                "body": String::from_utf8_lossy(&body),
            }),
            Err(error) => json!({"type": "fetch-failed", "error": error}),
        };
        ctx.send_to_client(&from.id, &answer.to_string());
    }

    fn on_close(&mut self, ctx: &mut Ctx, client: &ClientInfo, _code: u16, _reason: &str) {
        let kept = ctx.attachment(&client.id).unwrap_or_default();
        ctx.log(
            LogLevel::Info,
            &format!("left with attachment {}", String::from_utf8_lossy(&kept)),
        );
    }

    fn fetch(&mut self, ctx: &mut Ctx, request: HttpRequest) -> HttpResponse {
        let key = request.path.strip_prefix("/kv/");
        match (request.method.as_str(), key) {
            ("PUT", Some(key)) => match ctx.storage_set(key, &request.body) {
                Ok(()) => json_response(200, &json!({"stored": key}).to_string()),
                Err(e) => json_response(507, &json!({"error": format!("{e:?}")}).to_string()),
            },
            ("GET", Some(key)) => match ctx.storage_get(key) {
                Some(value) => HttpResponse {
                    status: 200,
                    headers: vec![("content-type".into(), "text/plain".into())],
                    body: value,
                },
                None => json_response(404, r#"{"error":"no_such_key"}"#),
            },
            ("GET", None) if request.path == "/headers" => {
                let names: Vec<&str> = request.headers.iter().map(|(n, _)| n.as_str()).collect();
                json_response(200, &json!({ "headers": names }).to_string())
            }
            ("GET", None) if request.path == "/loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            _ => json_response(404, r#"{"error":"not_found"}"#),
        }
    }
}

/// A GET of `url` (`http://` or `https://`): the status and the body, or
/// the error's name.
fn get(url: &str) -> Result<(u16, Vec<u8>), String> {
    let (scheme, rest) = url.split_once("://").ok_or("not a URL")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    let scheme = if scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    };
    request
        .set_method(&Method::Get)
        .and_then(|()| request.set_scheme(Some(&scheme)))
        .and_then(|()| request.set_authority(Some(authority)))
        .and_then(|()| request.set_path_with_query(Some(path)))
        .map_err(|()| "bad request".to_owned())?;
    let future = outgoing_handler::handle(request, None).map_err(|e| name(&e))?;
    future.subscribe().block();
    let response = future
        .get()
        .ok_or("no response")?
        .map_err(|()| "response taken twice".to_owned())?
        .map_err(|e| name(&e))?;
    let status = response.status();
    let body = response.consume().map_err(|()| "no body")?;
    let stream = body.stream().map_err(|()| "no body stream")?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(wasip2::http::types::http_error_code(&e)
                    .map_or_else(|| e.to_debug_string(), |code| name(&code)));
            }
        }
    }
    drop(stream);
    drop(IncomingBody::finish(body));
    Ok((status, bytes))
}

/// The error code's name: `HttpRequestDenied`, `HttpResponseBodySize(..)`.
fn name(code: &wasip2::http::types::ErrorCode) -> String {
    format!("{code:?}")
        .trim_start_matches("ErrorCode::")
        .to_owned()
}

export_room!(Probe);
