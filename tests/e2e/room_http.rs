//! HTTP into rooms (`/rooms/{projectId}/...`, the room's `fetch`): a
//! backend's POST reaching the right clients, a room answering a GET with
//! its state, a room built before `fetch`, the token it needs, the limits.

use serde_json::{Value, json};

use crate::auth::grant;
use crate::common::*;
use crate::lifecycle::{CHAT_ROOM, join_chat};

/// A raw HTTP request to the server, with a body and extra header lines.
pub(crate) fn raw(method: &str, path: &str, headers: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{headers}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

pub(crate) async fn post_message(server: &Server, project: &str, message: &Value) -> (u16, Value) {
    server
        .request(&raw(
            "POST",
            &format!("/rooms/{project}/messages"),
            "Content-Type: application/json\r\n",
            &message.to_string(),
        ))
        .await
}

#[tokio::test]
async fn a_backend_post_reaches_the_right_clients_and_the_admins() {
    let server = Server::start(&[]);
    let p = project();
    let mut room = room_of(&server, &p).await;
    let message = json!({"id": "deploy-1", "type": "deploy", "to": {"type": "runtime"}, "payload": {"version": 7}});
    let (status, body) = post_message(&server, &p, &message).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["delivered"], 4, "two runtimes and two admins: {body}");
    for c in [&mut room.r1, &mut room.r2, &mut room.a1, &mut room.a2] {
        let got = c.next_json().await;
        assert_eq!(got["id"], "deploy-1");
        assert_eq!(got["payload"], json!({"version": 7}));
        assert_eq!(got["from"], json!({"id": "server", "type": "server"}));
    }
    room.d.expect_silence(200).await;

    // To one client by id: it and the admins.
    let to = room.d.id.clone();
    let (status, body) = post_message(&server, &p, &json!({"to": {"id": to}, "n": 2})).await;
    assert_eq!(
        (status, body["delivered"].as_u64()),
        (202, Some(3)),
        "{body}"
    );
    assert_eq!(room.d.next_json().await["n"], 2);
    assert_eq!(room.a1.next_json().await["n"], 2);
    assert_eq!(room.a2.next_json().await["n"], 2);
    expect_silence(&mut [&mut room.r1, &mut room.r2], 200).await;

    // Counted, and nothing crossed into another project.
    let health = server.get("/health").await.1;
    assert_eq!(health["counters"]["roomHttpRequests"], 2, "{health}");
}

/// A runtime, a second runtime, a data agent and two admins in `project`.
async fn room_of(server: &Server, project: &str) -> Room {
    let r1 = server.connect("runtime", project).await;
    let r2 = server.connect("runtime", project).await;
    let d = server.connect("data-agent", project).await;
    let a1 = server.connect("admin", project).await;
    let a2 = server.connect("admin", project).await;
    Room { r1, r2, d, a1, a2 }
}

#[tokio::test]
async fn a_bad_posted_message_is_refused_and_reaches_nobody() {
    let server = Server::start(&[]);
    let p = project();
    let mut a = server.connect("admin", &p).await;
    let (status, body) = server
        .request(&raw(
            "POST",
            &format!("/rooms/{p}/messages"),
            "",
            "{not json",
        ))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_json")),
        "{body}"
    );
    let (status, body) = post_message(&server, &p, &json!({"to": "everyone"})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_message")),
        "{body}"
    );
    // To a client that is not there: 404, though the admin saw it.
    let (status, body) =
        post_message(&server, &p, &json!({"id": "m9", "to": {"id": "nobody"}})).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "unknown_target");
    assert_eq!(body["messageId"], "m9");
    assert_eq!(body["delivered"], 1);
    assert_eq!(a.next_json().await["id"], "m9");
    a.expect_silence(200).await;
    // Wrong method, unknown path: the room's own clear errors.
    let (status, body) = server.get(&format!("/rooms/{p}/messages")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (status, body) = server.get(&format!("/rooms/{p}/nothing/here")).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn a_room_s_fetch_answers_a_get_with_its_state() {
    // The default room: how many clients it has.
    let server = Server::start(&[]);
    let p = project();
    let _r = server.connect("runtime", &p).await;
    let _d = server.connect("data-agent", &p).await;
    let (status, body) = server.get(&format!("/rooms/{p}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"projectId": p, "clientCount": 2}));
    drop(server);

    // The chat room: its history, kept in its store, over HTTP too.
    let server = Server::start(&["--component", CHAT_ROOM]);
    let p = project();
    let (mut c, history) = join_chat(&server, &p).await;
    assert!(history.is_empty());
    for line in ["hello", "world"] {
        send(&mut c, &json!({"text": line})).await;
        assert_eq!(recv(&mut c).await["text"], line);
    }
    let (status, body) = server.get(&format!("/rooms/{p}/history")).await;
    assert_eq!(status, 200, "{body}");
    let texts: Vec<&str> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["hello", "world"]);
    // The host's answer headers: the room's type, the sandbox.
    let head = server
        .exchange(&raw("GET", &format!("/rooms/{p}/history"), "", ""))
        .await
        .to_ascii_lowercase();
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("content-security-policy: sandbox"), "{head}");
}

#[tokio::test]
async fn a_room_built_before_fetch_answers_404_and_keeps_serving() {
    // The fixture room is built against wsroom:room@0.1.0.
    let server = Server::start(&["--component", FIXTURE_ROOM]);
    let p = project();
    let mut c = server.connect("runtime", &p).await;
    let (status, body) = post_message(&server, &p, &json!({"type": "t"})).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "no_fetch_handler");
    c.send_text("still there?").await;
    assert_eq!(c.next_json().await, json!({"echo": "still there?"}));
}

#[tokio::test]
async fn bad_requests_into_rooms_get_clear_errors() {
    let server = Server::start(&["--room-http-body-bytes", "128"]);
    let p = project();
    let big = json!({"payload": "x".repeat(200)});
    let (status, body) = post_message(&server, &p, &big).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("body_too_large")),
        "{body}"
    );
    // Chunked, without a length: cut off at the limit all the same.
    let chunk = "y".repeat(200);
    let (status, body) = server
        .request(&format!(
            "POST /rooms/{p}/messages HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
             Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len()
        ))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("body_too_large")),
        "{body}"
    );
    for (path, code) in [
        ("/rooms/", "missing_project_id"),
        ("/rooms//messages", "missing_project_id"),
        ("/rooms/%00/messages", "invalid_project_id"),
        ("/rooms/%ff/messages", "invalid_project_id"),
    ] {
        let (status, body) = server.get(path).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some(code)),
            "{path}: {body}"
        );
    }
    // And the server serves everyone else.
    let (status, _) = post_message(&server, &p, &json!({"type": "ok"})).await;
    assert_eq!(status, 202);

    // A page of a site not allowed cannot post from a visitor's browser.
    let server = Server::start(&["--allowed-origin", "https://app.example"]);
    let post_from = |origin: &str| {
        raw(
            "POST",
            &format!("/rooms/{p}/messages"),
            &format!("Origin: {origin}\r\nContent-Type: text/plain\r\n"),
            r#"{"type":"t"}"#,
        )
    };
    let (status, body) = server.request(&post_from("https://evil.example")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("origin_not_allowed"))
    );
    let (status, _) = server.request(&post_from("https://app.example")).await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn http_into_rooms_needs_a_token_that_grants_the_server_type() {
    let server = secured(&[]);
    let p = project();
    let post = |headers: String| {
        let server = &server;
        let p = p.clone();
        async move {
            server
                .request(&raw(
                    "POST",
                    &format!("/rooms/{p}/messages"),
                    &headers,
                    r#"{"type":"t"}"#,
                ))
                .await
        }
    };
    let (status, body) = post(String::new()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("missing_token"))
    );
    let bearer = |token: String| format!("Authorization: Bearer {token}\r\n");
    let (status, body) = post(bearer(grant(&p, &["runtime", "admin"]))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("server_required"))
    );
    let (status, body) = post(bearer(grant("other-*", &["server"]))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("project_not_allowed"))
    );
    // A token in the URL is not taken: URLs end up in logs.
    let (status, _) = server
        .request(&raw(
            "POST",
            &format!("/rooms/{p}/messages?token={}", grant(&p, &["server"])),
            "",
            r#"{"type":"t"}"#,
        ))
        .await;
    assert_eq!(status, 401);
    let (status, body) = post(bearer(grant(&p, &["server"]))).await;
    assert_eq!(
        (status, body["delivered"].as_u64()),
        (202, Some(0)),
        "{body}"
    );
}

/// The tests' room that shows what a room sees of a client and makes
/// outgoing HTTP requests (`tests/probe-room/`).
pub(crate) const PROBE_ROOM: &str = concat!(env!("OUT_DIR"), "/probe-room.wasm");

/// A stand-in for a backend a room calls: an HTTP/1.1 server on a free
/// loopback port. `/hello` answers a short text, `/big` 4,000 bytes,
/// `/stream` as many in chunks (no length up front), `/slow` nothing for
/// 30 s; it counts the requests it is sent.
struct Backend {
    port: u16,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start() -> Backend {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let head = String::from_utf8_lossy(&head);
                    if head.starts_with("GET /slow ") {
                        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                    }
                    if head.starts_with("GET /stream ") {
                        // 4,000 bytes with no length said up front.
                        let chunk = "s".repeat(1000);
                        let mut response = String::from(
                            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
                        );
                        for _ in 0..4 {
                            response.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
                        }
                        response.push_str("0\r\n\r\n");
                        let _ = socket.write_all(response.as_bytes()).await;
                        return;
                    }
                    let body = if head.starts_with("GET /big ") {
                        "b".repeat(4000)
                    } else {
                        "hi from the backend".to_owned()
                    };
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
                         connection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        Backend {
            port,
            requests,
            task,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server running the probe room, allowed to call `backend`, with more
/// flags.
fn probe_server(backend: &Backend, extra: &[&str]) -> Server {
    let allow = format!("127.0.0.1:{}", backend.port);
    let mut args = vec!["--component", PROBE_ROOM, "--room-http-allow", &allow];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Opens a WebSocket to the probe room; its `who` greeting.
pub(crate) async fn join_probe(server: &Server, query: &str, token: Option<&str>) -> (Ws, Value) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut request = server.url(query).into_client_request().unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let (mut ws, _) = within(tokio_tungstenite::connect_async(request))
        .await
        .expect("websocket connect");
    let who = recv(&mut ws).await;
    assert_eq!(who["type"], "who", "{who}");
    (ws, who)
}

#[tokio::test]
async fn a_room_calls_an_allowed_host_and_is_refused_the_others() {
    let backend = Backend::start().await;
    let other = Backend::start().await;
    let server = probe_server(&backend, &["--room-http-body-bytes", "1024"]);
    let p = project();
    let (mut ws, _) = join_probe(&server, &format!("type=t&projectId={p}"), None).await;
    let mut ask = async |url: String| {
        send_text(&mut ws, &format!("GET {url}")).await;
        recv(&mut ws).await
    };

    // Allowed: the room gets the backend's answer.
    let got = ask(format!("http://127.0.0.1:{}/hello", backend.port)).await;
    assert_eq!(got["type"], "fetched", "{got}");
    assert_eq!(got["status"], 200);
    assert_eq!(got["body"], "hi from the backend");

    // Another port of the same address, another name for it, another
    // scheme's port: refused inside the room, nothing sent.
    for url in [
        format!("http://127.0.0.1:{}/hello", other.port),
        format!("http://localhost:{}/hello", backend.port),
        "https://127.0.0.1/hello".to_owned(),
    ] {
        let got = ask(url.clone()).await;
        assert_eq!(
            (got["type"].as_str(), got["error"].as_str()),
            (Some("fetch-failed"), Some("HttpRequestDenied")),
            "{url}: {got}"
        );
    }
    assert_eq!(other.requests(), 0, "a refused request never leaves");

    // A response over --room-http-body-bytes: refused by its length, or
    // cut off once that much came; the room told why either way.
    let got = ask(format!("http://127.0.0.1:{}/big", backend.port)).await;
    assert_eq!(
        (got["type"].as_str(), got["error"].as_str()),
        (
            Some("fetch-failed"),
            Some("HttpResponseBodySize(Some(4000))")
        ),
        "{got}"
    );
    let got = ask(format!("http://127.0.0.1:{}/stream", backend.port)).await;
    assert_eq!(got["type"], "fetch-failed", "{got}");
    let error = got["error"].as_str().unwrap().to_ascii_lowercase();
    assert!(
        error.contains("body size") && error.contains("1024"),
        "{got}"
    );
    assert_eq!(backend.requests(), 3);

    // The room went on, and it was all counted.
    let got = ask(format!("http://127.0.0.1:{}/hello", backend.port)).await;
    assert_eq!(got["body"], "hi from the backend");
    let health = server.get("/health").await.1;
    let counters = &health["counters"];
    assert_eq!(counters["roomHttpOutgoing"], 4, "{counters}");
    assert_eq!(counters["roomHttpOutgoingDenied"], 3, "{counters}");
    assert_eq!(counters["roomHttpOutgoingFailed"], 2, "{counters}");
    assert_eq!(counters["roomFailures"], 0, "{counters}");
}

#[tokio::test]
async fn without_an_allow_list_a_room_reaches_nothing() {
    let backend = Backend::start().await;
    let server = Server::start(&["--component", PROBE_ROOM]);
    let (mut ws, _) = join_probe(&server, &format!("type=t&projectId={}", project()), None).await;
    send_text(
        &mut ws,
        &format!("GET http://127.0.0.1:{}/hello", backend.port),
    )
    .await;
    let got = recv(&mut ws).await;
    assert_eq!(got["error"], "HttpRequestDenied", "{got}");
    assert_eq!(backend.requests(), 0);
}

#[tokio::test]
async fn a_room_sees_the_token_s_subject_and_the_client_s_own_parameters() {
    let server = secured(&["--component", PROBE_ROOM]);
    let p = project();
    let token = crate::auth::grant_to("alice@example.com", &p, &["member"]);
    let (_ws, who) = join_probe(
        &server,
        &format!("type=member&projectId={p}&team=blue&seat=3&team=red&note=a%20b"),
        Some(&token),
    )
    .await;
    assert_eq!(who["subject"], "alice@example.com", "{who}");
    // In the URL's order, decoded, repeated names kept; not type, projectId.
    assert_eq!(
        who["params"],
        json!([
            ["team", "blue"],
            ["seat", "3"],
            ["team", "red"],
            ["note", "a b"]
        ])
    );
    // Without access control there is no subject.
    let open = Server::start(&["--component", PROBE_ROOM]);
    let (_ws, who) = join_probe(&open, &format!("type=x&projectId={p}"), None).await;
    assert_eq!(
        (who["subject"].clone(), who["params"].clone()),
        (Value::Null, json!([]))
    );
}

#[tokio::test]
async fn with_access_control_on_a_room_never_sees_the_request_s_credentials() {
    let p = project();
    let headers = format!(
        "Authorization: Bearer {}\r\nCookie: session=s3cret\r\nProxy-Authorization: Basic eDp5\r\n\
         Sec-WebSocket-Protocol: bearer.t0ken\r\nX-Request-Id: 42\r\n",
        grant(&p, &["server"])
    );
    let names = |body: &Value| -> Vec<String> {
        body["headers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let secured = secured(&["--component", PROBE_ROOM]);
    let (status, body) = secured
        .request(&raw("GET", &format!("/rooms/{p}/headers"), &headers, ""))
        .await;
    assert_eq!(status, 200, "{body}");
    let seen = names(&body);
    assert!(seen.contains(&"x-request-id".to_string()), "{body}");
    for credential in [
        "authorization",
        "cookie",
        "proxy-authorization",
        "sec-websocket-protocol",
    ] {
        assert!(
            !seen.contains(&credential.to_string()),
            "{credential} reached the room: {body}"
        );
    }
    // Without access control the host checks no credential: the room gets
    // every header (its own scheme may use them).
    let open = Server::start(&["--component", PROBE_ROOM]);
    let (status, body) = open
        .request(&raw("GET", &format!("/rooms/{p}/headers"), &headers, ""))
        .await;
    assert_eq!(status, 200, "{body}");
    let seen = names(&body);
    assert!(
        seen.contains(&"authorization".to_string()) && seen.contains(&"cookie".to_string()),
        "{body}"
    );
}

#[tokio::test]
async fn a_room_s_call_that_takes_too_long_fails_inside_the_room() {
    let backend = Backend::start().await;
    // Short against /slow (30 s), long for /hello however slow the machine.
    let server = probe_server(&backend, &["--room-http-timeout-ms", "2000"]);
    let p = project();
    let (mut ws, _) = join_probe(&server, &format!("type=t&projectId={p}"), None).await;
    send_text(
        &mut ws,
        &format!("GET http://127.0.0.1:{}/slow", backend.port),
    )
    .await;
    let got = recv(&mut ws).await;
    assert_eq!(got["type"], "fetch-failed", "{got}");
    assert!(got["error"].as_str().unwrap().contains("Timeout"), "{got}");
    // The room answers its next event.
    send_text(
        &mut ws,
        &format!("GET http://127.0.0.1:{}/hello", backend.port),
    )
    .await;
    assert_eq!(recv(&mut ws).await["body"], "hi from the backend");
    let counters = server.get("/health").await.1["counters"].clone();
    assert_eq!(counters["roomHttpOutgoingFailed"], 1, "{counters}");
}

#[tokio::test]
async fn a_room_s_fetch_is_an_event_durable_before_its_answer_and_under_the_cpu_budget() {
    let dir = scratch_dir("fetch-durable");
    let dir_s = dir.to_str().unwrap();
    let args = [
        "--component",
        PROBE_ROOM,
        "--data-dir",
        dir_s,
        "--cpu-budget-ms",
        "200",
    ];
    let server = Server::start(&args);
    let p = project();
    let (status, body) = server
        .request(&raw("PUT", &format!("/rooms/{p}/kv/colour"), "", "blue"))
        .await;
    assert_eq!((status, body["stored"].as_str()), (200, Some("colour")));
    // Answered, so committed: SIGKILL right after loses nothing.
    drop(server);
    let server = Server::start(&args);
    let (status, text) = server
        .request_text(&raw("GET", &format!("/rooms/{p}/kv/colour"), "", ""))
        .await;
    assert_eq!((status, text.as_str()), (200, "blue"));

    // A fetch that never ends is stopped by the CPU budget: 500, and the
    // room is reset as after any trap (its clients closed with 1011).
    let (mut ws, _) = join_probe(&server, &format!("type=t&projectId={p}"), None).await;
    let (status, body) = server.get(&format!("/rooms/{p}/loop")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (500, Some("room_failed")),
        "{body}"
    );
    assert_eq!(recv_close(&mut ws).await.0, 1011);
    // The next request gets a fresh instance, the same store.
    let (status, text) = server
        .request_text(&raw("GET", &format!("/rooms/{p}/kv/colour"), "", ""))
        .await;
    assert_eq!((status, text.as_str()), (200, "blue"));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_body_that_stops_coming_is_answered_408_and_the_connection_closed() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server = Server::start(&["--handshake-timeout-ms", "300"]);
    let p = project();
    let mut s = within(tokio::net::TcpStream::connect(server.addr))
        .await
        .unwrap();
    let head = format!(
        "POST /rooms/{p}/messages HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n{{\"ty"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    within(s.read_to_end(&mut answer)).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
}

#[tokio::test]
async fn a_leaving_client_s_attachment_is_still_readable_in_on_close() {
    let server = Server::start(&["--component", PROBE_ROOM]);
    let p = project();
    let (mut ws, _) = join_probe(&server, &format!("type=t&projectId={p}"), None).await;
    send_text(&mut ws, "attach:kept-for-the-goodbye").await;
    let _ = ws.close(None).await;
    server
        .wait_stderr("the room's on-close log line", |log| {
            log.contains("left with attachment kept-for-the-goodbye")
        })
        .await;
}

#[tokio::test]
async fn in_memory_a_room_s_data_outlives_the_room_until_exit() {
    // A project served over HTTP only: its room is made for each request
    // and removed after it (no clients, no alarm). Its data stays, as it
    // would in the file.
    let server = Server::start(&["--component", PROBE_ROOM, "--in-memory"]);
    let p = project();
    let (status, body) = server
        .request(&raw("PUT", &format!("/rooms/{p}/kv/k"), "", "kept"))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, text) = server
        .request_text(&raw("GET", &format!("/rooms/{p}/kv/k"), "", ""))
        .await;
    assert_eq!((status, text.as_str()), (200, "kept"));
    let (status, text) = server
        .request_text(&raw("GET", &format!("/rooms/{p}-other/kv/k"), "", ""))
        .await;
    assert_eq!(status, 404, "another project sees nothing: {text}");
    // `/health` reports durable stores only.
    let (_, health) = server.get("/health").await;
    assert_eq!(health["store"], Value::Null, "{health}");
}
