//! End-to-end tests of PROTOCOL.md against the real `wsroom` binary.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::{self, Message};

fn project() -> String {
    format!("p-{}", uuid::Uuid::new_v4())
}

// ---------------------------------------------------------------- endpoints

#[tokio::test]
async fn host_health_reports_version_and_counts() {
    let server = Server::start(&[]);
    let (status, health) = server.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert!(health["timestamp"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(health["rooms"], 0);
    assert_eq!(health["connections"], 0);
}

#[tokio::test]
async fn metrics_are_served_for_prometheus() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(&[]);
    let p = project();
    let (mut ws, _) = server.connect("runtime", &p).await;
    send(&mut ws, &json!({"type": "hello", "payload": {}})).await;
    server
        .wait_health("the message counted", |h| h["counters"]["messagesIn"] == 1)
        .await;
    let response = within(async {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        text
    })
    .await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let value = |name: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in\n{body}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("wsroom_connections_total"), 1);
    assert_eq!(value("wsroom_connections_open"), 1);
    assert_eq!(value("wsroom_messages_in_total"), 1);
    assert_eq!(value("wsroom_rooms_live"), 1);
    let (_, health) = server.get("/health").await;
    assert_eq!(
        value("wsroom_max_rooms"),
        health["maxRooms"].as_u64().unwrap()
    );
    assert_eq!(
        value("wsroom_max_instances"),
        health["maxInstances"].as_u64().unwrap()
    );
    // Every sample has its HELP and TYPE, and every /health counter is there.
    let samples: Vec<&str> = body.lines().filter(|l| !l.starts_with('#')).collect();
    let counters = health["counters"].as_object().unwrap().len();
    assert_eq!(samples.len(), counters + 6, "{body}");
    assert_eq!(value("wsroom_max_project_connections"), 32768);
    assert_eq!(health["maxProjectConnections"], 32768);
    assert_eq!(value("wsroom_max_messages_per_sec"), 0);
    assert_eq!(health["maxMessagesPerSec"], 0);
    for sample in samples {
        let name = sample.split(' ').next().unwrap();
        assert!(body.contains(&format!("# HELP {name} ")), "{name}");
        assert!(
            body.contains(&format!("# TYPE {name} counter\n"))
                || body.contains(&format!("# TYPE {name} gauge\n")),
            "{name}"
        );
    }
}

#[tokio::test]
async fn logs_can_be_json_lines() {
    let server = Server::start(&["--log-format", "json"]);
    let p = project();
    let (_ws, _) = server.connect("runtime", &p).await;
    let log = server
        .wait_stderr("the room's creation", |log| log.contains("room created"))
        .await;
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let created = lines
        .iter()
        .find(|l| l["fields"]["message"] == "room created")
        .unwrap();
    assert_eq!(created["level"], "INFO");
    assert_eq!(created["fields"]["project"], p.as_str());
    // Not a format the server knows: refused at start, saying which exist.
    let stderr = refused_at_start(&["--log-format", "xml"]);
    assert!(
        stderr.contains("text") && stderr.contains("json"),
        "{stderr}"
    );
}

#[tokio::test]
async fn status_and_health_never_create_a_room() {
    let server = Server::start(&[]);
    let p = project();
    let (status, body) = server.get(&format!("/status?projectId={p}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["projectId"], p.as_str());
    assert_eq!(body["clientCount"], 0);
    assert_eq!(body["lastActivity"], Value::Null);
    assert_eq!(body["clients"], json!([]));
    let (status, body) = server.get(&format!("/health?projectId={p}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["clientCount"], 0);
    assert_eq!(body["lastActivity"], Value::Null);
    assert!(body["timestamp"].is_u64());
    let (_, health) = server.get("/health").await;
    assert_eq!(health["rooms"], 0, "a room was created: {health}");
}

#[tokio::test]
async fn status_lists_clients_with_metadata() {
    let server = Server::start(&[]);
    let p = project();
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(
        server.url(&format!("type=runtime&projectId={p}")),
    )
    .unwrap();
    req.headers_mut()
        .insert("User-Agent", "test-agent/1.0".parse().unwrap());
    req.headers_mut()
        .insert("Origin", "https://example.test".parse().unwrap());
    let (mut ws, _) = within(tokio_tungstenite::connect_async(req)).await.unwrap();
    let hello = recv(&mut ws).await;
    let id = hello["payload"]["clientId"].as_str().unwrap().to_owned();
    let (_admin, _) = server.connect("admin", &p).await;

    let (status, body) = server.get(&format!("/status?projectId={p}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["clientCount"], 2);
    assert!(body["lastActivity"].is_u64());
    assert!(body["timestamp"].is_u64());
    let clients = body["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 2);
    let first = &clients[0];
    assert_eq!(first["id"], id.as_str());
    assert_eq!(first["type"], "runtime");
    assert_eq!(first["socketState"], 1);
    assert!(first["connectedAt"].is_u64());
    assert!(first["connectedFor"].is_u64());
    assert_eq!(first["metadata"]["userAgent"], "test-agent/1.0");
    assert_eq!(first["metadata"]["origin"], "https://example.test");
    assert_eq!(clients[1]["type"], "admin");
    assert_eq!(clients[1]["metadata"]["origin"], Value::Null);

    let (_, health) = server.get(&format!("/health?projectId={p}")).await;
    assert_eq!(health["clientCount"], 2);
    assert!(health["lastActivity"].is_u64());
    assert_eq!(health["projectId"], p.as_str());
}

#[tokio::test]
async fn bad_http_requests_get_json_errors() {
    let server = Server::start(&[]);
    let long = "x".repeat(257);
    let ok_max = "y".repeat(256);
    for (path, want, code) in [
        ("/websocket?type=runtime", 400, "missing_project_id"),
        (
            "/websocket?type=runtime&projectId=",
            400,
            "missing_project_id",
        ),
        (
            &format!("/websocket?type=runtime&projectId={long}")[..],
            400,
            "invalid_project_id",
        ),
        (
            "/websocket?type=runtime&projectId=a%01b",
            400,
            "invalid_project_id",
        ),
        (
            "/websocket?type=runtime&projectId=a%FFb",
            400,
            "invalid_project_id",
        ),
        ("/websocket?projectId=p1", 400, "missing_type"),
        ("/websocket?projectId=p1&type=", 400, "missing_type"),
        (
            "/websocket?type=runtime&projectId=p1",
            426,
            "upgrade_required",
        ),
        (
            &format!("/websocket?type=runtime&projectId={ok_max}")[..],
            426,
            "upgrade_required",
        ),
        ("/status", 400, "missing_project_id"),
        ("/status?projectId=", 400, "missing_project_id"),
        (
            &format!("/status?projectId={long}")[..],
            400,
            "invalid_project_id",
        ),
        ("/health?projectId=", 400, "missing_project_id"),
        ("/nope", 404, "not_found"),
        ("/", 404, "not_found"),
    ] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, want, "{path}: {body}");
        assert_eq!(body["error"], code, "{path}: {body}");
        assert!(body["message"].is_string(), "{path}: {body}");
    }
    let (status, body) = server
        .request("POST /status?projectId=p HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(status, 405);
    assert_eq!(body["error"], "method_not_allowed");
    // A broken upgrade (no Sec-WebSocket-Key) is refused, not upgraded.
    let (status, body) = server
        .request("GET /websocket?type=runtime&projectId=p HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "bad_upgrade");
    // None of that created a room.
    let (_, health) = server.get("/health").await;
    assert_eq!(health["rooms"], 0);
}

#[tokio::test]
async fn unknown_type_is_refused_by_the_room_with_400() {
    let server = Server::start(&[]);
    let p = project();
    let (status, body) = server.refused(&format!("type=robot&projectId={p}")).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_type");
    assert!(body["message"].as_str().unwrap().contains("runtime"));
    let (_, status) = server.get(&format!("/status?projectId={p}")).await;
    assert_eq!(status["clientCount"], 0);
    server
        .wait_health("the refused room to go away", |h| h["rooms"] == 0)
        .await;
}

// ------------------------------------------------------------ system messages

#[tokio::test]
async fn connected_is_the_first_frame() {
    let server = Server::start(&[]);
    let p = project();
    let (mut ws, _) = within(tokio_tungstenite::connect_async(
        server.url(&format!("type=data-agent&projectId={p}")),
    ))
    .await
    .unwrap();
    let hello = recv(&mut ws).await;
    assert_eq!(hello["type"], "connected");
    assert_eq!(hello["from"], json!({"type": "system"}));
    assert!(hello["id"].as_str().is_some_and(|s| !s.is_empty()));
    let payload = &hello["payload"];
    assert_eq!(payload["projectId"], p.as_str());
    assert_eq!(payload["clientCount"], 1);
    assert!(payload["clientId"].as_str().is_some_and(|s| s.len() == 36));
    assert!(payload["message"].is_string());
    assert!(payload["timestamp"].is_u64());
    let (_ws2, _) = server.connect("runtime", &p).await;
    let (mut ws3, _) = within(tokio_tungstenite::connect_async(
        server.url(&format!("type=admin&projectId={p}")),
    ))
    .await
    .unwrap();
    assert_eq!(recv(&mut ws3).await["payload"]["clientCount"], 3);
}

#[tokio::test]
async fn client_left_goes_to_everyone_remaining() {
    let server = Server::start(&[]);
    let p = project();
    let (mut a, _) = server.connect("admin", &p).await;
    let (mut r, _) = server.connect("runtime", &p).await;
    let (mut d, d_id) = server.connect("data-agent", &p).await;
    within(d.close(None)).await.unwrap();
    for ws in [&mut a, &mut r] {
        let left = recv(ws).await;
        assert_eq!(left["type"], "client_left");
        assert_eq!(left["from"], json!({"type": "system"}));
        assert_eq!(left["payload"]["clientId"], d_id.as_str());
        assert_eq!(left["payload"]["clientType"], "data-agent");
        assert_eq!(left["payload"]["projectId"], p.as_str());
        assert_eq!(left["payload"]["clientCount"], 2);
        assert!(left["payload"]["timestamp"].is_u64());
    }
    let (_, status) = server.get(&format!("/status?projectId={p}")).await;
    assert_eq!(status["clientCount"], 2);
}

#[tokio::test]
async fn a_vanished_client_counts_as_left() {
    let server = Server::start(&[]);
    let p = project();
    let (mut a, _) = server.connect("admin", &p).await;
    let (r, r_id) = server.connect("runtime", &p).await;
    // Drop the TCP connection without a close frame.
    drop(r);
    let left = recv(&mut a).await;
    assert_eq!(left["type"], "client_left");
    assert_eq!(left["payload"]["clientId"], r_id.as_str());
    assert_eq!(left["payload"]["clientCount"], 1);
}

// ------------------------------------------------------------------ routing

/// r1, r2: runtime; d: data-agent; a1, a2: admin; all in one project.
struct Room {
    r1: (Ws, String),
    r2: (Ws, String),
    d: (Ws, String),
    a1: (Ws, String),
    a2: (Ws, String),
}

async fn room(server: &Server) -> Room {
    let p = project();
    let r1 = server.connect("runtime", &p).await;
    let r2 = server.connect("runtime", &p).await;
    let d = server.connect("data-agent", &p).await;
    let a1 = server.connect("admin", &p).await;
    let a2 = server.connect("admin", &p).await;
    Room { r1, r2, d, a1, a2 }
}

#[tokio::test]
async fn to_id_reaches_the_target_and_every_admin_once() {
    let server = Server::start(&[]);
    let Room {
        mut r1,
        mut r2,
        mut d,
        mut a1,
        mut a2,
    } = room(&server).await;
    let msg = json!({"id": "m1", "type": "graphql_query", "from": {"type": "runtime"},
                     "to": {"id": d.1}, "payload": {"query": "q", "variables": {}}});
    send(&mut r1.0, &msg).await;
    let got = recv(&mut d.0).await;
    assert_eq!(got["id"], "m1");
    assert_eq!(got["payload"], msg["payload"]);
    assert_eq!(got["to"], msg["to"]);
    assert_eq!(got["from"], json!({"type": "runtime", "id": r1.1}));
    for admin in [&mut a1.0, &mut a2.0] {
        assert_eq!(recv(admin).await, got);
    }
    // Nobody else got it, and nobody got it twice.
    assert_nothing_before_marker(&mut r2.0, &r2.1, &mut d.0).await;
    assert_nothing_before_marker(&mut r1.0, &r1.1, &mut d.0).await;
    for admin in [&mut a1.0, &mut a2.0] {
        // The two markers were routed by id, so each admin saw both copies.
        assert_eq!(recv(admin).await["type"], "marker");
        assert_eq!(recv(admin).await["type"], "marker");
    }
    assert_nothing_before_marker(&mut a1.0, &a1.1, &mut d.0).await;
}

#[tokio::test]
async fn to_id_naming_an_admin_or_oneself_gives_one_copy() {
    let server = Server::start(&[]);
    let Room {
        mut r1,
        mut d,
        mut a1,
        mut a2,
        r2: _r2,
    } = room(&server).await;
    send(
        &mut r1.0,
        &json!({"id": "m1", "type": "t", "to": {"id": a1.1}}),
    )
    .await;
    assert_eq!(recv(&mut a1.0).await["id"], "m1");
    assert_eq!(recv(&mut a2.0).await["id"], "m1");
    // An admin sending to itself gets exactly its own copy; the other admin
    // its monitoring copy.
    send(
        &mut a1.0,
        &json!({"id": "m2", "type": "t", "to": {"id": a1.1}}),
    )
    .await;
    assert_eq!(recv(&mut a1.0).await["id"], "m2");
    assert_eq!(recv(&mut a2.0).await["id"], "m2");
    // A runtime naming itself gets it back.
    send(
        &mut r1.0,
        &json!({"id": "m3", "type": "t", "to": {"id": r1.1}}),
    )
    .await;
    assert_eq!(recv(&mut r1.0).await["id"], "m3");
    assert_eq!(recv(&mut a1.0).await["id"], "m3");
    assert_eq!(recv(&mut a2.0).await["id"], "m3");
    // No duplicates: the next thing each admin sees is a fresh marker.
    send(
        &mut d.0,
        &json!({"id": "end", "type": "t", "to": {"type": "admin"}}),
    )
    .await;
    assert_eq!(recv(&mut a1.0).await["id"], "end");
    assert_eq!(recv(&mut a2.0).await["id"], "end");
}

#[tokio::test]
async fn to_type_reaches_that_type_but_not_the_sender() {
    let server = Server::start(&[]);
    let Room {
        mut r1,
        mut r2,
        mut d,
        mut a1,
        mut a2,
    } = room(&server).await;
    send(
        &mut r1.0,
        &json!({"id": "m1", "type": "get_docs", "to": {"type": "runtime"}, "payload": 1}),
    )
    .await;
    let got = recv(&mut r2.0).await;
    assert_eq!(got["id"], "m1");
    assert_eq!(got["from"]["id"], r1.1.as_str());
    assert_eq!(recv(&mut a1.0).await["id"], "m1");
    assert_eq!(recv(&mut a2.0).await["id"], "m1");
    assert_nothing_before_marker(&mut r1.0, &r1.1, &mut r2.0).await;
    assert_nothing_before_marker(&mut d.0, &d.1, &mut r2.0).await;

    // Agent → all runtimes, as in the original README.
    send(
        &mut d.0,
        &json!({"id": "m2", "type": "query_response", "from": {"type": "data-agent"},
                          "to": {"type": "runtime"}, "payload": {"data": {"posts": []}}}),
    )
    .await;
    assert_eq!(recv(&mut r1.0).await["id"], "m2");
    assert_eq!(recv(&mut r2.0).await["id"], "m2");
}

#[tokio::test]
async fn to_type_admin_gives_each_admin_one_copy() {
    let server = Server::start(&[]);
    let Room {
        mut r1,
        mut d,
        mut a1,
        mut a2,
        r2: _r2,
    } = room(&server).await;
    send(
        &mut r1.0,
        &json!({"id": "m1", "type": "t", "to": {"type": "admin"}}),
    )
    .await;
    assert_eq!(recv(&mut a1.0).await["id"], "m1");
    assert_eq!(recv(&mut a2.0).await["id"], "m1");
    send(
        &mut d.0,
        &json!({"id": "m2", "type": "t", "to": {"type": "admin"}}),
    )
    .await;
    assert_eq!(recv(&mut a1.0).await["id"], "m2");
    assert_eq!(recv(&mut a2.0).await["id"], "m2");
    // An admin addressing admins does not get its own message back.
    send(
        &mut a1.0,
        &json!({"id": "m3", "type": "t", "to": {"type": "admin"}}),
    )
    .await;
    assert_eq!(recv(&mut a2.0).await["id"], "m3");
    assert_nothing_before_marker(&mut a1.0, &a1.1, &mut a2.0).await;
}

#[tokio::test]
async fn broadcast_reaches_everyone_else_without_monitoring_copies() {
    let server = Server::start(&[]);
    let Room {
        mut r1,
        mut r2,
        mut d,
        mut a1,
        mut a2,
    } = room(&server).await;
    for (i, to) in [None, Some(Value::Null), Some(json!({}))]
        .into_iter()
        .enumerate()
    {
        let mut msg = json!({"id": format!("b{i}"), "type": "announcement",
                             "from": {"type": "runtime"}, "payload": {"message": "restart"}});
        if let Some(to) = to {
            msg["to"] = to;
        }
        send(&mut r1.0, &msg).await;
        for ws in [&mut r2.0, &mut d.0, &mut a1.0, &mut a2.0] {
            let got = recv(ws).await;
            assert_eq!(got["id"], format!("b{i}"));
            assert_eq!(got["from"]["id"], r1.1.as_str());
        }
    }
    // Admins got each broadcast once, the sender none.
    send(
        &mut d.0,
        &json!({"id": "end", "type": "t", "to": {"type": "admin"}}),
    )
    .await;
    assert_eq!(recv(&mut a1.0).await["id"], "end");
    assert_eq!(recv(&mut a2.0).await["id"], "end");
    assert_nothing_before_marker(&mut r1.0, &r1.1, &mut d.0).await;
}

#[tokio::test]
async fn from_cannot_be_forged() {
    let server = Server::start(&[]);
    let Room {
        mut r1,
        mut r2,
        a1,
        d: _d,
        a2: _a2,
    } = room(&server).await;
    send(
        &mut r1.0,
        &json!({"id": "m1", "type": "t", "to": {"id": r2.1},
                           "from": {"type": "system", "id": a1.1, "extra": 1}}),
    )
    .await;
    let got = recv(&mut r2.0).await;
    assert_eq!(
        got["from"],
        json!({"type": "runtime", "id": r1.1, "extra": 1})
    );
    send(
        &mut r1.0,
        &json!({"id": "m2", "type": "t", "to": {"id": r2.1}, "from": "admin"}),
    )
    .await;
    assert_eq!(
        recv(&mut r2.0).await["from"],
        json!({"type": "runtime", "id": r1.1})
    );
    send(
        &mut r1.0,
        &json!({"id": "m3", "type": "t", "to": {"id": r2.1}}),
    )
    .await;
    assert_eq!(
        recv(&mut r2.0).await["from"],
        json!({"type": "runtime", "id": r1.1})
    );
}

#[tokio::test]
async fn unknown_fields_pass_through_untouched() {
    let server = Server::start(&[]);
    let Room {
        mut r1,
        mut r2,
        d: _d,
        a1: _a1,
        a2: _a2,
    } = room(&server).await;
    let text = format!(
        r#"{{"id":"m1","type":"t","to":{{"id":"{}","hint":[1]}},"payload":{{"n":1.5,"s":"\u00e9\n"}},"custom":{{"deep":[null,true]}}}}"#,
        r2.1
    );
    send_text(&mut r1.0, &text).await;
    let got = recv(&mut r2.0).await;
    assert_eq!(got["payload"], json!({"n": 1.5, "s": "é\n"}));
    assert_eq!(got["custom"], json!({"deep": [null, true]}));
    assert_eq!(got["to"]["hint"], json!([1]));
}

#[tokio::test]
async fn messages_from_one_sender_arrive_in_order() {
    let server = Server::start(&[]);
    let Room {
        mut r1,
        mut r2,
        mut d,
        mut a1,
        a2: _a2,
    } = room(&server).await;
    for i in 0..200 {
        let to = match i % 3 {
            0 => json!({"id": r2.1}),
            1 => json!({"type": "runtime"}),
            _ => Value::Null,
        };
        send(
            &mut r1.0,
            &json!({"id": i.to_string(), "type": "seq", "to": to}),
        )
        .await;
    }
    for i in 0..200 {
        assert_eq!(recv(&mut r2.0).await["id"], i.to_string());
    }
    for i in 0..200 {
        assert_eq!(recv(&mut a1.0).await["id"], i.to_string());
    }
    for i in (2..200).step_by(3) {
        assert_eq!(recv(&mut d.0).await["id"], i.to_string());
    }
}

#[tokio::test]
async fn projects_are_isolated() {
    let server = Server::start(&[]);
    let (p, q) = (project(), project());
    let (mut pr, _) = server.connect("runtime", &p).await;
    let (mut pa, _) = server.connect("admin", &p).await;
    let (mut qr, qr_id) = server.connect("runtime", &q).await;
    let (mut qa, qa_id) = server.connect("admin", &q).await;
    // Broadcast, by type, and by the id of a client of the other project.
    send(&mut pr, &json!({"id": "b", "type": "t"})).await;
    assert_eq!(recv(&mut pa).await["id"], "b");
    send(
        &mut pr,
        &json!({"id": "t", "type": "t", "to": {"type": "runtime"}}),
    )
    .await;
    assert_eq!(recv(&mut pa).await["id"], "t");
    send(
        &mut pr,
        &json!({"id": "x", "type": "t", "to": {"id": qr_id}}),
    )
    .await;
    assert_eq!(recv(&mut pa).await["id"], "x");
    let err = recv(&mut pr).await;
    assert_eq!(err["payload"]["code"], "unknown_target");
    // Project q saw none of it.
    send(
        &mut qa,
        &json!({"id": "q-marker", "type": "t", "to": {"id": qr_id}}),
    )
    .await;
    assert_eq!(recv(&mut qr).await["id"], "q-marker");
    send(
        &mut qr,
        &json!({"id": "q-marker2", "type": "t", "to": {"id": qa_id}}),
    )
    .await;
    assert_eq!(recv(&mut qa).await["id"], "q-marker2");
    let (_, s) = server.get(&format!("/status?projectId={q}")).await;
    assert_eq!(s["clientCount"], 2);
}

// ---------------------------------------------------------------- bad input

fn error_of(v: &Value) -> &str {
    assert_eq!(v["type"], "error", "expected an error, got {v}");
    assert_eq!(v["from"], json!({"type": "system"}));
    assert!(v["payload"]["message"].is_string());
    assert!(v["payload"]["timestamp"].is_u64());
    assert!(v["payload"]["projectId"].is_string());
    v["payload"]["code"].as_str().unwrap()
}

#[tokio::test]
async fn bad_messages_get_errors_and_the_connection_stays_usable() {
    let server = Server::start(&["--max-message-bytes", "1000"]);
    let Room {
        mut r1,
        mut r2,
        mut a1,
        d: _d,
        a2: _a2,
    } = room(&server).await;
    let cases: Vec<(Message, &str, Option<&str>)> = vec![
        (Message::text("{nope"), "invalid_json", None),
        (Message::text("[1,2,3]"), "invalid_message", None),
        (Message::text("\"just a string\""), "invalid_message", None),
        (Message::text("17"), "invalid_message", None),
        (
            Message::text(r#"{"id":"m1","type":"t","to":"r2"}"#),
            "invalid_message",
            Some("m1"),
        ),
        (
            Message::text(r#"{"id":"m2","type":"t","to":{"id":42}}"#),
            "invalid_message",
            Some("m2"),
        ),
        (
            Message::text(r#"{"id":"m3","type":"t","to":{"type":["x"]}}"#),
            "invalid_message",
            Some("m3"),
        ),
        (Message::binary(vec![1u8, 2, 3]), "invalid_message", None),
        (
            Message::text(format!(
                r#"{{"id":"big","payload":"{}"}}"#,
                "x".repeat(2000)
            )),
            "message_too_large",
            None,
        ),
        (Message::binary(vec![0u8; 3000]), "message_too_large", None),
    ];
    for (msg, code, message_id) in cases {
        let shown = format!("{msg:?}").chars().take(60).collect::<String>();
        within(r1.0.send(msg)).await.unwrap();
        let err = recv(&mut r1.0).await;
        assert_eq!(error_of(&err), code, "{shown}");
        match message_id {
            Some(id) => assert_eq!(err["payload"]["messageId"], id, "{shown}"),
            None => assert!(err["payload"].get("messageId").is_none(), "{shown}"),
        }
    }
    // Nothing was routed: the next thing r2 and a1 see is this message, and
    // the connection still works.
    send(
        &mut r1.0,
        &json!({"id": "ok", "type": "t", "to": {"id": r2.1}}),
    )
    .await;
    assert_eq!(recv(&mut r2.0).await["id"], "ok");
    assert_eq!(recv(&mut a1.0).await["id"], "ok");
}

#[tokio::test]
async fn unknown_target_errors_but_admins_get_their_copy() {
    let server = Server::start(&[]);
    let Room {
        mut r1,
        mut a1,
        mut a2,
        r2: _r2,
        d: _d,
    } = room(&server).await;
    send(
        &mut r1.0,
        &json!({"id": "m1", "type": "t", "to": {"id": "no-such-client"}}),
    )
    .await;
    let err = recv(&mut r1.0).await;
    assert_eq!(error_of(&err), "unknown_target");
    assert_eq!(err["payload"]["messageId"], "m1");
    assert_eq!(recv(&mut a1.0).await["id"], "m1");
    assert_eq!(recv(&mut a2.0).await["id"], "m1");
}

#[tokio::test]
async fn an_oversize_frame_closes_with_1009() {
    let server = Server::start(&["--max-message-bytes", "1000"]);
    let p = project();
    let (mut ws, _) = server.connect("runtime", &p).await;
    within(ws.send(Message::text("x".repeat(10_000))))
        .await
        .unwrap();
    let (code, _) = recv_close(&mut ws).await;
    assert_eq!(code, 1009);
    // The server is fine.
    let (_, _) = server.connect("runtime", &p).await;
}

// ---------------------------------------------------------------- lifecycle

#[tokio::test]
async fn an_empty_room_is_removed_after_the_cleanup_delay() {
    let server = Server::start(&["--cleanup-delay-ms", "300"]);
    let p = project();
    let (mut ws, _) = server.connect("runtime", &p).await;
    let (_, health) = server.get("/health").await;
    assert_eq!(health["rooms"], 1);
    within(ws.close(None)).await.unwrap();
    // Still there right after the last client left (the alarm is pending)...
    server
        .wait_health("the client to be gone", |h| h["connections"] == 0)
        .await;
    let (_, s) = server.get(&format!("/status?projectId={p}")).await;
    assert_eq!(s["clientCount"], 0);
    // ...and gone once the alarm fired.
    server
        .wait_health("the room to be removed", |h| h["rooms"] == 0)
        .await;
    let (_, s) = server.get(&format!("/health?projectId={p}")).await;
    assert_eq!(s["lastActivity"], Value::Null);
    // A new connection gets a new room.
    let (_ws, _) = server.connect("runtime", &p).await;
    let (_, health) = server.get("/health").await;
    assert_eq!(health["rooms"], 1);
    assert_eq!(health["counters"]["roomsCreated"], 2);
}

#[tokio::test]
async fn a_new_client_cancels_the_cleanup() {
    let server = Server::start(&["--cleanup-delay-ms", "500"]);
    let p = project();
    let (mut ws, _) = server.connect("runtime", &p).await;
    within(ws.close(None)).await.unwrap();
    server
        .wait_health("the client to be gone", |h| h["connections"] == 0)
        .await;
    let (mut ws2, id2) = server.connect("admin", &p).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    let (_, health) = server.get("/health").await;
    assert_eq!(health["rooms"], 1, "the room was removed under a client");
    assert_eq!(health["counters"]["roomsCreated"], 1);
    send(
        &mut ws2,
        &json!({"id": "self", "type": "t", "to": {"id": id2}}),
    )
    .await;
    assert_eq!(recv(&mut ws2).await["id"], "self");
}

#[tokio::test]
async fn sigterm_closes_every_client_with_1001_and_exits_0() {
    let server = Server::start(&[]);
    let (mut a, _) = server.connect("runtime", &project()).await;
    let (mut b, _) = server.connect("admin", &project()).await;
    let waiter = tokio::spawn(async move {
        let a = recv_close(&mut a).await;
        let b = recv_close(&mut b).await;
        (a.0, b.0)
    });
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert_eq!(within(waiter).await.unwrap(), (1001, 1001));
}

// ------------------------------------------------------------------ faults

#[tokio::test]
async fn a_trapping_room_closes_only_its_own_clients() {
    let server = Server::start(&["--component", FIXTURE_ROOM, "--cpu-budget-ms", "200"]);
    let (bad, good) = (project(), project());
    let (mut g, _) = server.connect("runtime", &good).await;
    // `recurse` exhausts the guest's stack: the next instance may run on the
    // same fiber stack, kept for reuse (host/src/stacks.rs).
    for command in ["panic", "loop", "alloc", "recurse"] {
        let (mut b1, _) = server.connect("runtime", &bad).await;
        let (mut b2, _) = server.connect("admin", &bad).await;
        send_text(&mut b1, command).await;
        // Meanwhile the healthy project keeps answering.
        send_text(&mut g, "still there?").await;
        assert_eq!(recv(&mut g).await, json!({"echo": "still there?"}));
        assert_eq!(recv_close(&mut b1).await.0, 1011, "{command}");
        assert_eq!(recv_close(&mut b2).await.0, 1011, "{command}");
        // The next connection gets a fresh instance that works.
        let (mut b3, _) = server.connect("runtime", &bad).await;
        send_text(&mut b3, "hello again").await;
        assert_eq!(recv(&mut b3).await, json!({"echo": "hello again"}));
    }
    let (_, health) = server.get("/health").await;
    assert_eq!(health["counters"]["roomFailures"], 4);
    // The failure is logged with the project id.
    server
        .wait_stderr("the failure", |log| log.contains(&bad))
        .await;
}

#[tokio::test]
async fn what_a_room_prints_goes_to_the_log_with_its_project() {
    let server = Server::start(&["--component", FIXTURE_ROOM]);
    let p = project();
    let (mut ws, _) = server.connect("runtime", &p).await;
    send_text(&mut ws, "print").await;
    assert_eq!(recv(&mut ws).await, json!({"echo": "print"}));
    server
        .wait_stderr("both lines, with the project", |log| {
            log.lines()
                .any(|l| l.contains("room stdout: fixture room writes to stdout") && l.contains(&p))
                && log.lines().any(|l| {
                    l.contains("room stderr: fixture room writes to stderr") && l.contains(&p)
                })
        })
        .await;
}

#[tokio::test]
async fn a_room_printing_in_a_loop_cannot_flood_the_log() {
    // The same budget as the `log` import's (`a_chatty_room_…`).
    lines_are_budgeted("print", "fixture stderr line").await;
}

#[tokio::test]
async fn a_component_that_does_not_fit_is_refused_at_start() {
    let dir = std::env::temp_dir().join(format!("wsroom-bad-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("not-a-room.wasm");
    // An empty component: valid, but it exports nothing a room must.
    std::fs::write(&bad, b"\0asm\x0d\x00\x01\x00").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsroom"))
        .args(["--listen", "127.0.0.1:0", "--component"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not-a-room.wasm"), "{stderr}");
    assert!(
        stderr.contains("does not fit the wsroom:room/room world"),
        "{stderr}"
    );
    // A core module is not a component at all.
    std::fs::write(&bad, b"\0asm\x01\0\0\0").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsroom"))
        .args(["--listen", "127.0.0.1:0", "--component"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_wsroom"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--component",
            "/no/such/room.wasm",
        ])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/no/such/room.wasm"));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_with_1013_and_others_go_on() {
    let server = Server::start(&[
        "--outbox-limit-bytes",
        "65536",
        "--max-message-bytes",
        "65536",
    ]);
    let p = project();
    let (mut sender, _) = server.connect("runtime", &p).await;
    let (mut slow, slow_id) = server.connect("data-agent", &p).await;
    let (mut other, other_id) = server.connect("runtime", &p).await;
    let chunk = "x".repeat(16 * 1024);
    // Far more than the socket buffers and the outbox can hold, while `slow`
    // reads nothing.
    let mut left = None;
    for i in 0..4000 {
        send(
            &mut sender,
            &json!({"id": i.to_string(), "type": "bulk", "to": {"id": slow_id}, "payload": chunk}),
        )
        .await;
        if i % 100 == 99 {
            // `other` is unaffected and learns when `slow` is dropped.
            send(
                &mut sender,
                &json!({"id": "ping", "type": "t", "to": {"id": other_id}}),
            )
            .await;
            let got = recv(&mut other).await;
            if got["type"] == "client_left" {
                left = Some(got);
                break;
            }
            assert_eq!(got["id"], "ping");
        }
    }
    let left = left.expect("the slow client was never dropped");
    assert_eq!(left["payload"]["clientId"], slow_id.as_str());
    let (_, status) = server.get(&format!("/status?projectId={p}")).await;
    assert_eq!(status["clientCount"], 2);
    // The slow client, reading at last, finds the close code after what it
    // was sent before.
    assert_eq!(recv_close(&mut slow).await.0, 1013);
    let (_, health) = server.get("/health").await;
    assert_eq!(health["counters"]["outboxOverflows"], 1);
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_dropped() {
    let server = Server::start(&["--ping-interval-ms", "300"]);
    let p = project();
    let (mut live, _) = server.connect("admin", &p).await;
    // `silent` is never polled again, so it never answers a ping.
    let (_silent, silent_id) = server.connect("runtime", &p).await;
    // `live` keeps reading (and so answering pings) while it waits.
    let left = recv(&mut live).await;
    assert_eq!(left["type"], "client_left");
    assert_eq!(left["payload"]["clientId"], silent_id.as_str());
    // Well past several ping intervals, `live` is still connected.
    let waited = tokio::time::timeout(Duration::from_millis(1200), recv(&mut live)).await;
    assert!(waited.is_err(), "unexpected message {waited:?}");
    let (_, status) = server.get(&format!("/status?projectId={p}")).await;
    assert_eq!(status["clientCount"], 1);
}

// ------------------------------------------------------------ load tool

/// Runs the load tool against `server` and returns its JSON report; the
/// tool must report success.
fn load(server: &Server, args: &[&str]) -> Value {
    let args: Vec<&str> = ["--timeout-secs", "30"]
        .iter()
        .chain(args)
        .copied()
        .collect();
    let (ok, report) = load_any(server, &args);
    assert!(ok, "load tool failed: {report}");
    report
}

/// Runs the load tool; returns whether it exited 0, and its report.
fn load_any(server: &Server, args: &[&str]) -> (bool, Value) {
    let addr = server.addr.to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsroom-load"))
        .args(["--server", &addr, "--json"])
        .args(args)
        .output()
        .expect("run wsroom-load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

// The server is its own process, so blocking this test's thread on the
// load tool is harmless.
#[tokio::test]
async fn the_load_tool_checks_delivery_at_a_small_size() {
    let server = Server::start(&[]);
    let (projects, receivers, messages) = (2u64, 5u64, 300u64);
    for route in ["type", "broadcast", "id"] {
        let r = load(
            &server,
            &[
                "fanout",
                "--projects",
                "2",
                "--receivers",
                "5",
                "--messages",
                "300",
                "--route",
                route,
            ],
        );
        assert_eq!(r["ok"], true, "{r}");
        let expected = if route == "id" {
            projects * messages
        } else {
            projects * receivers * messages
        };
        assert_eq!(r["deliveries"], expected, "{route}: {r}");
        assert_eq!(r["checks"]["lost"], 0);
        assert_eq!(r["checks"]["duplicatedOrReordered"], 0);
        assert_eq!(r["checks"]["badFrom"], 0);
        assert!(r["latency"]["p50Us"].as_f64().unwrap() > 0.0);
    }
    // A window smaller than the receivers' batched progress reports: the
    // senders must still get through (no wait on held-back reports).
    for (route, window) in [("type", "3"), ("id", "3"), ("id", "40")] {
        let r = load(
            &server,
            &[
                "fanout",
                "--projects",
                "2",
                "--receivers",
                "5",
                "--messages",
                "300",
                "--route",
                route,
                "--window",
                window,
            ],
        );
        assert_eq!(r["ok"], true, "{route} window {window}: {r}");
    }
    let r = load(
        &server,
        &[
            "fanout",
            "--projects",
            "1",
            "--receivers",
            "2",
            "--messages",
            "50",
            "--rate",
            "500",
        ],
    );
    assert_eq!(r["deliveries"], 100);
    assert!(r["serverCpu"].is_null(), "no pid, no CPU figures: {r}");
    let pid = server.pid().to_string();
    let r = load(
        &server,
        &[
            "rpc",
            "--pairs",
            "4",
            "--projects",
            "2",
            "--requests",
            "100",
            "--server-pid",
            &pid,
        ],
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["requests"], 400);
    let cpu = &r["serverCpu"];
    assert!(cpu["userSeconds"].as_f64().unwrap() >= 0.0, "{r}");
    assert!(cpu["systemSeconds"].as_f64().unwrap() >= 0.0, "{r}");
    assert!(cpu["microsPerUnit"].as_f64().unwrap() >= 0.0, "{r}");
    let r = load(
        &server,
        &[
            "connect",
            "--connections",
            "100",
            "--projects",
            "10",
            "--server-pid",
            &pid,
        ],
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["opened"], 100);
    // CPU per connection, apart for the connections that created a room
    // (one per project) and those that joined a live one.
    let cpu = &r["cpu"];
    assert_eq!(cpu["newRooms"]["connections"], 10, "{r}");
    assert_eq!(cpu["liveRooms"]["connections"], 90, "{r}");
    for phase in ["newRooms", "liveRooms"] {
        let c = &cpu[phase];
        assert!(
            c["serverCpu"]["microsPerUnit"].as_f64().unwrap() >= 0.0,
            "{r}"
        );
        assert!(c["toolMicrosPerUnit"].as_f64().unwrap() >= 0.0, "{r}");
    }
    assert!(r["memory"]["rssAllBytes"].as_u64().unwrap() > 0);
    assert!(r["memory"]["pssAllBytes"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn the_load_tool_reports_what_was_not_delivered() {
    // The fixture room echoes to the sender instead of routing, so the
    // receivers get nothing: the tool must say so and fail.
    let server = Server::start(&["--component", FIXTURE_ROOM]);
    let (ok, r) = load_any(
        &server,
        &[
            "--timeout-secs",
            "3",
            "fanout",
            "--projects",
            "1",
            "--receivers",
            "2",
            "--messages",
            "10",
        ],
    );
    assert!(!ok, "{r}");
    assert_eq!(r["ok"], false);
    assert_eq!(r["checks"]["lost"], 20, "{r}");
    // Errors are counted, and the report says what the first one was.
    let server = Server::start(&["--max-connections", "3"]);
    let args = ["connect", "--connections", "5", "--projects", "1"];
    let (ok, r) = load_any(&server, &args);
    assert!(!ok, "{r}");
    assert_eq!(r["checks"]["errors"], 2, "{r}");
    let first = r["checks"]["firstError"].as_str().unwrap_or_default();
    assert!(first.contains("connect") && first.contains("503"), "{r}");
}

#[tokio::test]
async fn the_load_tool_refuses_other_hosts() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsroom-load"))
        .args(["--server", "10.1.2.3:8787", "rpc"])
        .output()
        .expect("run wsroom-load");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
    // A pid that is no process is refused before anything is measured.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsroom-load"))
        .args(["--server-pid", &u32::MAX.to_string(), "rpc"])
        .output()
        .expect("run wsroom-load");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--server-pid") && stderr.contains("no such process"),
        "{stderr}"
    );
    // A run that needs more files than the process may open says so first.
    let out = std::process::Command::new("sh")
        .args(["-c", "ulimit -n 200 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_wsroom-load"))
        .args(["connect", "--connections", "1000"])
        .output()
        .expect("run wsroom-load");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("open-files limit is 200") && stderr.contains("ulimit -n 1064"),
        "{stderr}"
    );
}

// -------------------------------------------------- isolation, hibernation

#[tokio::test]
async fn a_looping_room_does_not_stall_other_projects() {
    let server = Server::start(&["--component", FIXTURE_ROOM, "--cpu-budget-ms", "5000"]);
    let (bad, good) = (project(), project());
    let (mut g, _) = server.connect("runtime", &good).await;
    let (mut b, _) = server.connect("runtime", &bad).await;
    send_text(&mut b, "loop").await;
    // While the bad room spins, the good one answers round trip after round
    // trip, and /status answers for both without asking either room.
    for i in 0..20 {
        let text = format!("ping {i}");
        send_text(&mut g, &text).await;
        assert_eq!(recv(&mut g).await, json!({ "echo": text }));
    }
    let (_, status) = server.get(&format!("/status?projectId={bad}")).await;
    assert_eq!(
        status["clientCount"], 1,
        "the loop was stopped too early to prove anything"
    );
    assert_eq!(recv_close(&mut b).await.0, 1011);
    let (_, health) = server.get("/health").await;
    assert_eq!(health["counters"]["roomFailures"], 1);
}

#[tokio::test]
async fn a_room_that_keeps_getting_messages_does_not_hibernate() {
    // Messages that readers run in the idle room themselves (not through the
    // room's task) move the hibernation deadline on just the same.
    let server = Server::start(&["--component", FIXTURE_ROOM, "--hibernate-after-ms", "600"]);
    let (mut c, _) = server.connect("runtime", &project()).await;
    for i in 0..15 {
        let text = format!("m{i}");
        send_text(&mut c, &text).await;
        assert_eq!(recv(&mut c).await, json!({ "echo": text }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, health) = server.get("/health").await;
    assert_eq!(health["counters"]["hibernations"], 0, "{health}");
    // Left alone, it does.
    server
        .wait_health("the room to hibernate", |h| {
            h["counters"]["hibernations"] == 1
        })
        .await;
}

#[tokio::test]
async fn hibernation_is_invisible_to_clients() {
    let server = Server::start(&["--hibernate-after-ms", "200", "--ping-interval-ms", "150"]);
    let p = project();
    let (mut r, r_id) = server.connect("runtime", &p).await;
    let (mut d, d_id) = server.connect("data-agent", &p).await;
    let (mut a, _) = server.connect("admin", &p).await;
    // The clients keep reading (so they answer the pings) while the room
    // falls asleep.
    idle(&mut [&mut r, &mut d, &mut a], 600).await;
    let (_, health) = server.get("/health").await;
    assert_eq!(health["counters"]["hibernations"], 1, "{health}");
    // Pings keep flowing without waking the room.
    idle(&mut [&mut r, &mut d, &mut a], 600).await;
    let (_, health) = server.get("/health").await;
    assert_eq!(
        health["counters"]["instancesLive"], 0,
        "pings woke the room: {health}"
    );
    // /status needs no instance.
    let (_, status) = server.get(&format!("/status?projectId={p}")).await;
    assert_eq!(status["clientCount"], 3);
    // The next message wakes it, and routing works as before.
    send(
        &mut r,
        &json!({"id": "m1", "type": "t", "to": {"id": d_id}}),
    )
    .await;
    let got = recv(&mut d).await;
    assert_eq!(got["id"], "m1");
    assert_eq!(got["from"]["id"], r_id.as_str());
    assert_eq!(recv(&mut a).await["id"], "m1");
    // Hibernate again, then leave: client_left still counts right.
    server
        .wait_health("the room to hibernate again", |h| {
            h["counters"]["hibernations"] == 2
        })
        .await;
    within(d.close(None)).await.unwrap();
    for ws in [&mut r, &mut a] {
        let left = recv(ws).await;
        assert_eq!(left["type"], "client_left");
        assert_eq!(left["payload"]["clientId"], d_id.as_str());
        assert_eq!(left["payload"]["clientCount"], 2);
    }
    let (_, health) = server.get("/health").await;
    assert_eq!(health["counters"]["roomsCreated"], 1);
}

#[tokio::test]
async fn attachments_survive_hibernation() {
    let server = Server::start(&["--component", FIXTURE_ROOM, "--hibernate-after-ms", "150"]);
    let (mut ws, _) = server.connect("runtime", &project()).await;
    send_text(&mut ws, "attach:kept across instances").await;
    assert_eq!(recv(&mut ws).await, json!({"echo": "ok"}));
    server
        .wait_health("the room to hibernate", |h| {
            h["counters"]["hibernations"] == 1
        })
        .await;
    send_text(&mut ws, "attachment").await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"echo": "kept across instances"})
    );
    let too_big = format!("attach:{}", "x".repeat(17 * 1024));
    send_text(&mut ws, &too_big).await;
    assert_eq!(recv(&mut ws).await, json!({"echo": "too-large"}));
}

#[tokio::test]
async fn a_failing_alarm_is_retried_with_backoff() {
    let server = Server::start(&[
        "--component",
        FIXTURE_ROOM,
        "--cleanup-delay-ms",
        "50",
        "--alarm-retry-base-ms",
        "50",
        "--room-config",
        "fixture-alarm-failures=2",
    ]);
    let p = project();
    let (mut ws, _) = server.connect("runtime", &p).await;
    within(ws.close(None)).await.unwrap();
    // Two failed attempts, then the third one runs, then the room goes.
    server
        .wait_health("the room to be removed", |h| h["rooms"] == 0)
        .await;
    let (_, health) = server.get("/health").await;
    assert_eq!(health["counters"]["roomFailures"], 2, "{health}");
    assert_eq!(health["counters"]["alarmsGivenUp"], 0);
    server
        .wait_stderr("the third attempt", |log| {
            log.contains("fixture alarm ran (retry 2)")
        })
        .await;
}

#[tokio::test]
async fn an_alarm_that_always_fails_is_given_up_and_logged() {
    let server = Server::start(&[
        "--component",
        FIXTURE_ROOM,
        "--cleanup-delay-ms",
        "50",
        "--alarm-retry-base-ms",
        "20",
        "--alarm-retries",
        "2",
        "--room-config",
        "fixture-alarm-failures=100",
    ]);
    let p = project();
    let (mut ws, _) = server.connect("runtime", &p).await;
    within(ws.close(None)).await.unwrap();
    server
        .wait_health("the alarm to be given up", |h| {
            h["counters"]["alarmsGivenUp"] == 1
        })
        .await;
    server
        .wait_health("the room to be removed", |h| h["rooms"] == 0)
        .await;
    let (_, health) = server.get("/health").await;
    assert_eq!(health["counters"]["roomFailures"], 3, "{health}");
    server
        .wait_stderr("giving up", |log| {
            log.contains("giving up") && log.contains(&p)
        })
        .await;
}

// --------------------------------------------------------------------- TLS

#[tokio::test]
async fn wss_and_https_with_a_certificate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{self, pki_types::CertificateDer, pki_types::pem::PemObject};

    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");
    let cert = format!("{fixtures}/localhost.crt");
    let key = format!("{fixtures}/localhost.key");
    let server = Server::start(&["--tls-cert", &cert, "--tls-key", &key]);

    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(format!("{fixtures}/ca.crt")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let addr = server.addr;
    let tls = move |c: tokio_rustls::TlsConnector| async move {
        let tcp = within(tokio::net::TcpStream::connect(addr)).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        within(c.connect(name, tcp)).await.expect("tls handshake")
    };

    // https
    let mut stream = tls(connector.clone()).await;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    within(stream.read_to_string(&mut response)).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"healthy\""), "{response}");

    // wss, and routing across two secure clients
    let p = project();
    let mut clients = Vec::new();
    for kind in ["runtime", "data-agent"] {
        let stream = tls(connector.clone()).await;
        let url = format!(
            "wss://localhost:{}/websocket?type={kind}&projectId={p}",
            server.addr.port()
        );
        let (mut ws, _) = within(tokio_tungstenite::client_async(url, stream))
            .await
            .unwrap();
        let hello = within(futures_util::StreamExt::next(&mut ws))
            .await
            .unwrap()
            .unwrap();
        let hello: Value = serde_json::from_str(hello.to_text().unwrap()).unwrap();
        assert_eq!(hello["type"], "connected");
        clients.push((
            ws,
            hello["payload"]["clientId"].as_str().unwrap().to_owned(),
        ));
    }
    let (mut d, _) = clients.pop().unwrap();
    let (mut r, r_id) = clients.pop().unwrap();
    within(r.send(Message::text(
        json!({"id": "s1", "type": "t", "to": {"type": "data-agent"}}).to_string(),
    )))
    .await
    .unwrap();
    let got = within(futures_util::StreamExt::next(&mut d))
        .await
        .unwrap()
        .unwrap();
    let got: Value = serde_json::from_str(got.to_text().unwrap()).unwrap();
    assert_eq!(got["id"], "s1");
    assert_eq!(got["from"]["id"], r_id.as_str());
}

#[tokio::test]
async fn a_bad_tls_key_is_refused_at_start() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");
    let stderr = refused_at_start(&[
        "--tls-cert",
        &format!("{fixtures}/localhost.crt"),
        "--tls-key",
        &format!("{fixtures}/ca.crt"),
    ]);
    assert!(stderr.contains("private key"), "{stderr}");
    // A valid key of the same kind that belongs to another certificate.
    let stderr = refused_at_start(&[
        "--tls-cert",
        &format!("{fixtures}/localhost.crt"),
        "--tls-key",
        &format!("{fixtures}/other.key"),
    ]);
    assert!(stderr.contains("do not fit together"), "{stderr}");
}

#[tokio::test]
async fn websockets_past_the_limit_are_refused_with_503() {
    let server = Server::start(&["--max-connections", "2"]);
    let p = project();
    let (_a, _) = server.connect("runtime", &p).await;
    let (mut b, _) = server.connect("runtime", &p).await;
    let (status, body) = server.refused(&format!("type=runtime&projectId={p}")).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "too_many_connections");
    // HTTP still answers, and a slot frees up when a client leaves.
    let (status, _) = server.get("/health").await;
    assert_eq!(status, 200);
    within(b.close(None)).await.unwrap();
    server
        .wait_health("the client to be gone", |h| h["connections"] == 1)
        .await;
    let (_c, _) = server.connect("admin", &p).await;
}

#[tokio::test]
async fn a_project_at_its_connection_limit_refuses_more_and_others_go_on() {
    let server = Server::start(&["--max-project-connections", "2"]);
    let (p, q) = (project(), project());
    let (_a, _) = server.connect("runtime", &p).await;
    let (mut b, _) = server.connect("admin", &p).await;
    let (status, body) = server.refused(&format!("type=runtime&projectId={p}")).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "too_many_project_connections", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("limit of 2"),
        "{body}"
    );
    let (_, status) = server.get(&format!("/status?projectId={p}")).await;
    assert_eq!(status["clientCount"], 2, "{status}");
    // The limit is per project: another one admits its own two.
    let (_q1, _) = server.connect("runtime", &q).await;
    let (_q2, _) = server.connect("data-agent", &q).await;
    let (_, health) = server.get("/health").await;
    assert_eq!(health["counters"]["connectionsRefused"], 1, "{health}");
    assert_eq!(health["maxProjectConnections"], 2, "{health}");
    server
        .wait_stderr("the refusal logged", |log| {
            log.contains("--max-project-connections reached")
        })
        .await;
    // A client that leaves makes room.
    within(b.close(None)).await.unwrap();
    server
        .wait_health("the client to be gone", |h| h["connections"] == 3)
        .await;
    let (_c, _) = server.connect("data-agent", &p).await;
    let stderr = refused_at_start(&["--max-project-connections", "0"]);
    assert!(
        stderr.contains("--max-project-connections must be positive"),
        "{stderr}"
    );
}

#[tokio::test]
async fn messages_past_the_rate_limit_are_not_routed_and_their_sender_is_told() {
    // One message a second, bursts of two.
    let server = Server::start(&["--max-messages-per-sec", "1"]);
    let p = project();
    let (mut r, r_id) = server.connect("runtime", &p).await;
    let (mut d, _) = server.connect("data-agent", &p).await;
    const N: usize = 10;
    for i in 0..N - 1 {
        send(
            &mut r,
            &json!({"id": format!("m{i}"), "type": "t", "to": {"type": "data-agent"}}),
        )
        .await;
    }
    within(r.send(Message::binary(vec![1u8, 2, 3])))
        .await
        .unwrap();
    // A second later the bucket holds a message again: the connection was
    // only limited, and this marker ends what `d` receives.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    send(
        &mut r,
        &json!({"id": "end", "type": "t", "to": {"type": "data-agent"}}),
    )
    .await;
    let mut delivered = Vec::new();
    loop {
        let got = recv(&mut d).await;
        assert_eq!(got["from"]["id"], r_id.as_str(), "{got}");
        let id = got["id"].as_str().unwrap().to_owned();
        if id == "end" {
            break;
        }
        delivered.push(id);
    }
    // The burst went through, in order: two messages, three if the server
    // took over a second to read the ten (a token refilled meanwhile).
    let k = delivered.len();
    assert!((2..=3).contains(&k), "{delivered:?}");
    let first: Vec<String> = (0..k).map(|i| format!("m{i}")).collect();
    assert_eq!(delivered, first);
    // Every other one was answered with rate_limited, naming it.
    for i in k..N {
        let err = recv(&mut r).await;
        assert_eq!(error_of(&err), "rate_limited", "{err}");
        assert_eq!(err["payload"]["projectId"], p.as_str());
        if i < N - 1 {
            assert_eq!(err["payload"]["messageId"], format!("m{i}"), "{err}");
        } else {
            // The binary message has no id to name.
            assert!(err["payload"].get("messageId").is_none(), "{err}");
        }
    }
    assert_nothing_before_marker(&mut r, &r_id, &mut d).await;
    let (_, health) = server.get("/health").await;
    assert_eq!(
        health["counters"]["messagesRateLimited"],
        (N - k) as u64,
        "{health}"
    );
    assert_eq!(health["maxMessagesPerSec"], 1, "{health}");
}

#[tokio::test]
async fn refused_websockets_are_counted_and_their_warnings_throttled() {
    let server = Server::start(&["--max-connections", "1"]);
    let p = project();
    let (_a, _) = server.connect("runtime", &p).await;
    let query = format!("type=runtime&projectId={p}");
    const N: u64 = 40;
    let started = std::time::Instant::now();
    for _ in 0..N {
        let (status, body) = server.refused(&query).await;
        assert_eq!(status, 503);
        assert_eq!(body["error"], "too_many_connections");
    }
    let took = started.elapsed();
    let (_, health) = server.get("/health").await;
    assert_eq!(health["counters"]["connectionsRefused"], N, "{health}");
    // After a pause one more is logged, saying how many were left out:
    // every refusal is either a line or counted in the next one's `skipped`.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    server.refused(&query).await;
    let lines = |log: &str| -> Vec<u64> {
        log.lines()
            .filter(|l| l.contains("--max-connections reached"))
            .map(|l| {
                let (_, rest) = l.split_once("skipped=").expect("a skipped count");
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("a number")
            })
            .collect()
    };
    let log = server
        .wait_stderr("every refusal logged or counted", |log| {
            lines(log).iter().map(|skipped| skipped + 1).sum::<u64>() == N + 1
        })
        .await;
    let lines = lines(&log);
    // A burst of two, one a second for as long as the refusals took, and
    // the one after the pause: far fewer than the 41 refusals.
    let most = 3 + took.as_secs() as usize + 1;
    assert!(
        lines.len() <= most,
        "{} lines in {took:?}: {lines:?}",
        lines.len()
    );
}

/// The shell's idea of the open-files limits of a process it starts.
fn open_files_limits() -> (u64, Option<u64>) {
    let out = std::process::Command::new("sh")
        .args(["-c", "ulimit -Sn; ulimit -Hn"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let soft = lines.next().unwrap().trim().parse().unwrap();
    let hard = lines.next().unwrap().trim().parse().ok(); // "unlimited": None
    (soft, hard)
}

#[tokio::test]
async fn the_connection_limit_follows_the_open_files_limit() {
    // A hard limit of 200 files: 64 kept, 64 for HTTP connections being
    // served, 72 WebSockets by default; the one past them is refused with
    // 503 instead of waiting unaccepted.
    let server = Server::start_after("ulimit -n 200", &[]);
    let (_, health) = server.get("/health").await;
    assert_eq!(health["maxConnections"], 72, "{health}");
    let p = project();
    let mut open = Vec::new();
    for _ in 0..72 {
        open.push(server.connect("runtime", &p).await.0);
    }
    let (status, body) = server.refused(&format!("type=runtime&projectId={p}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("too_many_connections"))
    );
    // This process's files are shared by every test running at once.
    drop(open);
    drop(server);
    // Asked for more than the files allow: served, with a warning.
    let server = Server::start_after("ulimit -n 200", &["--max-connections", "1000"]);
    let (_, health) = server.get("/health").await;
    assert_eq!(health["maxConnections"], 1000);
    server
        .wait_stderr("the warning", |log| {
            log.contains("--max-connections is more than the open-files limit")
                && log.contains("1207")
        })
        .await;
    // A soft limit under the hard one is raised to it at start.
    let (_, hard) = open_files_limits();
    let server = Server::start_after("ulimit -Sn 100", &[]);
    let (_, health) = server.get("/health").await;
    let expected = wsroom::config::connections_the_files_allow(hard);
    assert_eq!(health["maxConnections"], expected, "{health}");
    if hard.is_none_or(|hard| hard > 400) {
        // 120 WebSockets need more files than the soft limit of 100 gave.
        let mut open = Vec::new();
        for _ in 0..120 {
            open.push(server.connect("runtime", &p).await.0);
        }
    }
}

#[tokio::test]
async fn rooms_past_the_limit_are_refused_with_503() {
    let server = Server::start(&["--max-rooms", "2", "--cleanup-delay-ms", "0"]);
    let (a, b, c) = (project(), project(), project());
    let (_a1, _) = server.connect("runtime", &a).await;
    let (mut b1, _) = server.connect("runtime", &b).await;
    // Another client of a live room makes no new room.
    let (_a2, _) = server.connect("admin", &a).await;
    let (status, body) = server.refused(&format!("type=runtime&projectId={c}")).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "too_many_rooms", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("2 live rooms"),
        "{body}"
    );
    let (_, health) = server.get("/health").await;
    assert_eq!(health["rooms"], 2, "{health}");
    assert_eq!(health["maxRooms"], 2, "{health}");
    // When a room goes, another project can have one.
    within(b1.close(None)).await.unwrap();
    server
        .wait_health("the emptied room to be removed", |h| h["rooms"] == 1)
        .await;
    let (_c1, _) = server.connect("runtime", &c).await;
    // No room at all is refused at start, with the flag named.
    let stderr = refused_at_start(&["--max-rooms", "0"]);
    assert!(stderr.contains("--max-rooms must be positive"), "{stderr}");
}

#[tokio::test]
async fn past_the_instance_limit_the_least_recently_used_room_hibernates_early() {
    // Two instances for three projects; no hibernation by time, so only the
    // limit drops instances.
    let server = Server::start(&["--max-instances", "2", "--hibernate-after-ms", "0"]);
    let (a, b, c) = (project(), project(), project());
    let mut clients = Vec::new();
    for p in [&a, &b, &c] {
        let (r, r_id) = server.connect("runtime", p).await;
        let (d, _) = server.connect("data-agent", p).await;
        clients.push((r, r_id, d));
    }
    let (_, health) = server.get("/health").await;
    assert_eq!(health["rooms"], 3, "{health}");
    assert_eq!(health["maxInstances"], 2, "{health}");
    assert_eq!(health["counters"]["instancesLive"], 2, "{health}");
    // c's first connection made a, the least recently used, make way.
    assert_eq!(health["counters"]["instancesEvicted"], 1, "{health}");
    assert_eq!(health["counters"]["hibernations"], 0, "{health}");
    // Every project still routes, waking its room (and evicting another).
    for (i, (r, r_id, d)) in clients.iter_mut().enumerate() {
        send(
            r,
            &json!({"id": format!("m{i}"), "to": {"type": "data-agent"}}),
        )
        .await;
        let got = recv(d).await;
        assert_eq!(got["id"], format!("m{i}"));
        assert_eq!(got["from"]["id"], r_id.as_str());
    }
    let (_, health) = server.get("/health").await;
    assert_eq!(health["counters"]["instancesLive"], 2, "{health}");
    // Each woke and the least recently used made way: a woke (b made way),
    // b woke (c, not a, which had just been used), c woke (a).
    assert_eq!(health["counters"]["instancesEvicted"], 4, "{health}");
    assert_eq!(health["counters"]["roomsCreated"], 3, "{health}");
    // An evicted room keeps its clients: leaving is announced as before (b,
    // live again, without evicting anyone).
    let (r, _, d) = &mut clients[1];
    within(d.close(None)).await.unwrap();
    let left = recv(r).await;
    assert_eq!(left["type"], "client_left");
    assert_eq!(left["payload"]["clientCount"], 1);
    let (_, metrics) = server
        .request_text("GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await;
    assert!(metrics.contains("\nwsroom_max_instances 2\n"), "{metrics}");
    assert!(
        metrics.contains("\nwsroom_instances_evicted_total 4\n"),
        "{metrics}"
    );
    // No instance at all is refused at start, with the flag named; more
    // than the kernel's mapping limit leaves room for is warned about, with
    // the setting to raise.
    let stderr = refused_at_start(&["--max-instances", "0"]);
    assert!(
        stderr.contains("--max-instances must be positive"),
        "{stderr}"
    );
    let many = Server::start(&["--max-instances", "100000000"]);
    many.wait_stderr("the warning about vm.max_map_count", |log| {
        log.contains("--max-instances is more than vm.max_map_count")
            && log.contains("sysctl -w vm.max_map_count=")
    })
    .await;
    let (_, health) = many.get("/health").await;
    assert_eq!(health["maxInstances"], 100_000_000);
    assert_eq!(health["maxRooms"], health["maxConnections"], "{health}");
}

#[tokio::test]
async fn a_full_room_inbox_slows_senders_down_but_loses_nothing() {
    let server = Server::start(&["--component", FIXTURE_ROOM, "--room-inbox", "2"]);
    let (busy, other) = (project(), project());
    let (mut h, _) = server.connect("runtime", &busy).await;
    let (mut b, _) = server.connect("runtime", &busy).await;
    let (mut o, _) = server.connect("runtime", &other).await;
    // One client keeps the room busy for a while; meanwhile far more than
    // the inbox holds arrives from another.
    send_text(&mut h, "spin:400").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..100 {
        send_text(&mut b, &format!("m{i}")).await;
    }
    // Another project is not held up by it.
    send_text(&mut o, "hello").await;
    assert_eq!(recv(&mut o).await, json!({"echo": "hello"}));
    // Every message is handled, in order, once the room catches up.
    assert_eq!(recv(&mut h).await, json!({"echo": "spin:400"}));
    for i in 0..100 {
        assert_eq!(recv(&mut b).await, json!({ "echo": format!("m{i}") }));
    }
}

#[tokio::test]
async fn a_client_that_vanishes_while_the_room_runs_its_message_does_not_fail_the_room() {
    // A reader runs its client's messages in the room itself when the room
    // is idle; the connection failing meanwhile must not cut the guest's
    // call short (that would fail the room for everyone).
    let server = Server::start(&["--component", FIXTURE_ROOM, "--ping-interval-ms", "150"]);
    let p = project();
    let (mut a, _) = server.connect("runtime", &p).await;
    let (mut b, _) = server.connect("runtime", &p).await;
    send_text(&mut a, "spin:700").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Reset, not closed: the server's next ping to it fails at once.
    match a.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp.set_zero_linger().unwrap(),
        _ => unreachable!("plain ws:// connection"),
    }
    drop(a);
    send_text(&mut b, "still here?").await;
    assert_eq!(recv(&mut b).await, json!({"echo": "still here?"}));
    let (_, health) = server.get("/health").await;
    assert_eq!(health["counters"]["roomFailures"], 0, "{health}");
}

#[tokio::test]
async fn an_alarm_set_by_a_message_fires_with_nothing_else_happening() {
    // The message runs in its reader, not in the room's task, which sleeps
    // until the alarm it last saw: it must learn of the new one. (No
    // hibernation either, whose timer would wake it.)
    let server = Server::start(&["--component", FIXTURE_ROOM, "--hibernate-after-ms", "0"]);
    let (mut c, _) = server.connect("runtime", &project()).await;
    send_text(&mut c, "alarm:100").await;
    assert_eq!(recv(&mut c).await, json!({"echo": "alarm:100"}));
    server
        .wait_stderr("the alarm to fire", |log| {
            log.contains("fixture alarm ran (retry 0)")
        })
        .await;
}

#[tokio::test]
async fn many_senders_in_one_room_each_keep_their_order() {
    // Senders that find the room idle run their messages themselves, the
    // others queue theirs: each sender's messages still arrive in order,
    // every one of them, to the target and to the admin.
    let server = Server::start(&[]);
    let p = project();
    let (mut target, target_id) = server.connect("data-agent", &p).await;
    let (mut admin, _) = server.connect("admin", &p).await;
    const SENDERS: usize = 8;
    const EACH: u64 = 500;
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        senders.push(server.connect("runtime", &p).await);
    }
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|(mut ws, _)| {
            let to = target_id.clone();
            tokio::spawn(async move {
                for seq in 0..EACH {
                    send(&mut ws, &json!({"type": "n", "seq": seq, "to": {"id": to}})).await;
                }
                ws
            })
        })
        .collect();
    for ws in [&mut target, &mut admin] {
        let mut next: HashMap<String, u64> = HashMap::new();
        for _ in 0..SENDERS as u64 * EACH {
            let m = recv(ws).await;
            let from = m["from"]["id"].as_str().expect("from.id").to_owned();
            let expected = next.entry(from).or_insert(0);
            assert_eq!(m["seq"], *expected, "out of order: {m}");
            *expected += 1;
        }
        assert_eq!(next.len(), SENDERS);
    }
    for t in tasks {
        within(t).await.unwrap();
    }
}

#[tokio::test]
async fn a_room_can_list_and_close_its_clients() {
    let server = Server::start(&["--component", FIXTURE_ROOM]);
    let p = project();
    let (mut r, _) = server.connect("runtime", &p).await;
    let (_a, _) = server.connect("admin", &p).await;
    let (mut r2, _) = server.connect("runtime", &p).await;
    send_text(&mut r, "who").await;
    assert_eq!(recv(&mut r).await, json!({"echo": "3 2 runtime"}));
    // A code the protocol allows is sent as is; what the room sent just
    // before arrives first; the client is gone from the table at once and a
    // second close finds nobody.
    send_text(&mut r, "close:4001").await;
    assert_eq!(recv(&mut r).await, json!({"echo": "bye"}));
    assert_eq!(
        recv_close(&mut r).await,
        (4001, "closed by the room".into())
    );
    send_text(&mut r2, "who").await;
    assert_eq!(recv(&mut r2).await, json!({"echo": "2 1 runtime"}));
    // A reserved code is replaced by 1000.
    send_text(&mut r2, "close:1011").await;
    assert_eq!(recv(&mut r2).await, json!({"echo": "bye"}));
    assert_eq!(recv_close(&mut r2).await.0, 1000);
    server
        .wait_stderr("the room's log line", |log| {
            log.contains("fixture close: true then false")
        })
        .await;
}

// ---------------------------------------------------------- access control

const SECRET: &str = "test-secret-0123456789abcdef-0123456789";

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token signed here with the jsonwebtoken crate, independently of the
/// server's code.
fn sign(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn grant(project: &str, types: &[&str]) -> String {
    sign(
        SECRET,
        json!({"project": project, "types": types, "exp": now_secs() + 600}),
    )
}

/// A file in the temp dir with `contents`, unique to this test run.
fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("wsroom-test-{}-{name}", uuid::Uuid::new_v4()));
    std::fs::write(&path, contents).unwrap();
    path
}

fn secured(extra: &[&str]) -> Server {
    let secret = temp_file("secret", &format!("{SECRET}\n"));
    let mut args = vec!["--auth-secret-file", secret.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Opens a WebSocket with extra request headers; on refusal, the status and
/// JSON body.
async fn open(url: &str, headers: &[(&str, &str)]) -> Result<Ws, (u16, Value)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    for (name, value) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    match within(tokio_tungstenite::connect_async(req)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            let json = serde_json::from_slice(&body).unwrap_or_else(|e| {
                panic!(
                    "refusal body is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(&body)
                )
            });
            Err((resp.status().as_u16(), json))
        }
        Err(e) => panic!("unexpected websocket error: {e}"),
    }
}

async fn refused(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    match open(url, headers).await {
        Ok(_) => panic!("{url} was admitted"),
        Err((status, body)) => (status, body["error"].as_str().unwrap_or("").to_owned()),
    }
}

async fn hello(mut ws: Ws) -> (Ws, String) {
    let hello = recv(&mut ws).await;
    assert_eq!(hello["type"], "connected", "{hello}");
    let id = hello["payload"]["clientId"].as_str().unwrap().to_owned();
    (ws, id)
}

#[tokio::test]
async fn with_a_secret_every_websocket_needs_a_token_that_grants_it() {
    let server = secured(&[]);
    let p = project();
    let url = |kind: &str, token: Option<&str>| {
        let mut u = server.url(&format!("type={kind}&projectId={p}"));
        if let Some(t) = token {
            u.push_str(&format!("&token={t}"));
        }
        u
    };
    let runtime = grant(&p, &["runtime"]);

    assert_eq!(
        refused(&url("runtime", None), &[]).await,
        (401, "missing_token".into())
    );
    let expired = sign(
        SECRET,
        json!({"project": p, "types": ["runtime"], "exp": now_secs() - 3600}),
    );
    assert_eq!(
        refused(&url("runtime", Some(&expired)), &[]).await,
        (401, "token_expired".into())
    );
    // Claims of an admin token under a runtime token's signature.
    let admin = grant(&p, &["admin"]);
    let mut parts: Vec<&str> = runtime.split('.').collect();
    parts[1] = admin.split('.').nth(1).unwrap();
    let tampered = parts.join(".");
    assert_eq!(
        refused(&url("admin", Some(&tampered)), &[]).await,
        (401, "invalid_token".into())
    );
    let foreign = sign(
        "another-secret-0123456789abcdef-0123456789",
        json!({"project": p, "types": ["runtime"], "exp": now_secs() + 600}),
    );
    assert_eq!(
        refused(&url("runtime", Some(&foreign)), &[]).await,
        (401, "invalid_token".into())
    );
    let other = grant(&project(), &["runtime"]);
    assert_eq!(
        refused(&url("runtime", Some(&other)), &[]).await,
        (403, "project_not_allowed".into())
    );
    assert_eq!(
        refused(&url("admin", Some(&runtime)), &[]).await,
        (403, "type_not_allowed".into())
    );
    // A bearer header counts like the query parameter.
    let header = format!("Bearer {other}");
    assert_eq!(
        refused(&url("runtime", None), &[("authorization", &header)]).await,
        (403, "project_not_allowed".into())
    );

    // Admitted: a runtime by query, a data-agent by header, an admin whose
    // token names the project by pattern. Routing works as without tokens.
    let (mut r, r_id) = hello(open(&url("runtime", Some(&runtime)), &[]).await.unwrap()).await;
    let agent = format!("Bearer {}", grant(&p, &["data-agent"]));
    let (mut d, _) = hello(
        open(&url("data-agent", None), &[("authorization", &agent)])
            .await
            .unwrap(),
    )
    .await;
    let pattern = grant(&format!("{}*", &p[..6]), &["admin", "runtime"]);
    let (mut a, _) = hello(open(&url("admin", Some(&pattern)), &[]).await.unwrap()).await;
    send(
        &mut r,
        &json!({"id": "m1", "type": "t", "to": {"type": "data-agent"}}),
    )
    .await;
    let got = recv(&mut d).await;
    assert_eq!(
        (got["id"].as_str(), got["from"]["id"].as_str()),
        (Some("m1"), Some(r_id.as_str()))
    );
    // The admin sees the routed message (skipping join notices).
    loop {
        let seen = recv(&mut a).await;
        if seen.to_string().contains("\"m1\"") {
            break;
        }
    }

    let (_, health) = server.get("/health").await;
    assert_eq!(health["counters"]["authRefused"], 7, "{health}");
    // Tokens never reach the log.
    let log = server.stderr();
    for t in [&runtime, &expired, &tampered, &other, &pattern] {
        assert!(!log.contains(t.as_str()), "token in log:\n{log}");
    }
}

#[tokio::test]
async fn with_a_secret_status_needs_admin_and_project_health_needs_a_token() {
    let server = secured(&[]);
    let p = project();
    let get = |path: String, token: Option<String>| {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let raw = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n");
        let server = &server;
        async move { server.request(&raw).await }
    };
    let (status, body) = get(format!("/status?projectId={p}"), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("missing_token"))
    );
    let (status, body) = get(
        format!("/status?projectId={p}"),
        Some(grant(&p, &["runtime"])),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("admin_required"))
    );
    let (status, body) = get(
        format!("/status?projectId={p}"),
        Some(grant("other", &["admin"])),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("project_not_allowed"))
    );
    let (status, body) = get(
        format!("/status?projectId={p}"),
        Some(grant(&p, &["admin"])),
    )
    .await;
    assert_eq!(
        (status, body["projectId"].as_str()),
        (200, Some(p.as_str())),
        "{body}"
    );
    // The query parameter works for /status too.
    let (status, _) = get(
        format!("/status?projectId={p}&token={}", grant(&p, &["admin"])),
        None,
    )
    .await;
    assert_eq!(status, 200);

    let (status, body) = get(format!("/health?projectId={p}"), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("missing_token"))
    );
    let (status, body) = get(
        format!("/health?projectId={p}"),
        Some(grant(&p, &["data-agent"])),
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("healthy")),
        "{body}"
    );
    // Liveness without a project stays open for load balancers.
    let (status, _) = get("/health".into(), None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn only_listed_origins_may_open_websockets() {
    let server = Server::start(&["--allowed-origin", "https://app.example.com/"]);
    let p = project();
    let url = server.url(&format!("type=runtime&projectId={p}"));
    assert_eq!(
        refused(&url, &[("origin", "https://evil.example.com")]).await,
        (403, "origin_not_allowed".into())
    );
    hello(
        open(&url, &[("origin", "https://APP.example.com")])
            .await
            .unwrap(),
    )
    .await;
    // No Origin: not a browser, not affected.
    hello(open(&url, &[]).await.unwrap()).await;
}

#[tokio::test]
async fn wss_with_a_generated_certificate_and_a_minted_token() {
    use tokio_rustls::rustls::{self, pki_types::CertificateDer, pki_types::pem::PemObject};

    let cert = std::env::temp_dir().join(format!("wsroom-test-{}.crt", uuid::Uuid::new_v4()));
    let server = secured(&[
        "--tls-self-signed",
        "--tls-self-signed-out",
        cert.to_str().unwrap(),
    ]);
    server
        .wait_stderr("the fingerprint", |log| log.contains("sha256"))
        .await;

    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));

    // The operator's command mints the token.
    let p = project();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsroom"))
        .args([
            "token",
            "--project",
            &p,
            "--types",
            "runtime,data-agent",
            "--ttl-secs",
            "60",
        ])
        .env("WSROOM_AUTH_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let open_wss = |kind: &'static str, token: Option<String>| {
        let connector = connector.clone();
        let port = server.addr.port();
        let addr = server.addr;
        let p = p.clone();
        async move {
            let tcp = within(tokio::net::TcpStream::connect(addr)).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tls = within(connector.connect(name, tcp))
                .await
                .expect("tls handshake");
            let mut url = format!("wss://localhost:{port}/websocket?type={kind}&projectId={p}");
            if let Some(t) = token {
                url.push_str(&format!("&token={t}"));
            }
            within(tokio_tungstenite::client_async(url, tls)).await
        }
    };
    let Err(tungstenite::Error::Http(resp)) = open_wss("runtime", None).await else {
        panic!("admitted without a token");
    };
    assert_eq!(resp.status(), 401);
    async fn next_json<S>(ws: &mut S) -> Value
    where
        S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
    {
        let msg = within(futures_util::StreamExt::next(ws))
            .await
            .unwrap()
            .unwrap();
        serde_json::from_str(msg.to_text().unwrap()).unwrap()
    }
    let (mut r, _) = open_wss("runtime", Some(token.clone())).await.unwrap();
    let (mut d, _) = open_wss("data-agent", Some(token.clone())).await.unwrap();
    let hello_r = next_json(&mut r).await;
    assert_eq!(hello_r["type"], "connected");
    assert_eq!(next_json(&mut d).await["type"], "connected");
    within(r.send(Message::text(
        json!({"id": "s1", "type": "t", "to": {"type": "data-agent"}}).to_string(),
    )))
    .await
    .unwrap();
    let got = next_json(&mut d).await;
    assert_eq!(got["id"], "s1");
    assert_eq!(got["from"]["id"], hello_r["payload"]["clientId"]);
    let Err(tungstenite::Error::Http(resp)) = open_wss("admin", Some(token)).await else {
        panic!("a runtime/data-agent token joined as admin");
    };
    assert_eq!(resp.status(), 403);
    let _ = std::fs::remove_file(cert);
}

#[tokio::test]
async fn bad_access_settings_are_refused_at_start() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsroom"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("WSROOM_AUTH_SECRET")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run(&["--auth-secret", "short"]).contains("at least 32"));
    assert!(
        run(&["--auth-secret-file", "/nonexistent/secret"])
            .contains("cannot read the auth secret file")
    );
    assert!(run(&["--allowed-origin", "example.com"]).contains("--allowed-origin"));
    assert!(
        run(&[
            "--tls-self-signed",
            "--tls-self-signed-out",
            "/nonexistent/dir/c.pem"
        ])
        .contains("cannot write the self-signed certificate")
    );
    let mint = std::process::Command::new(env!("CARGO_BIN_EXE_wsroom"))
        .args(["token", "--project", "p", "--types", "runtime"])
        .env_remove("WSROOM_AUTH_SECRET")
        .output()
        .unwrap();
    assert!(!mint.status.success());
    assert!(String::from_utf8_lossy(&mint.stderr).contains("secret"));
}

// ------------------------------------------------- components: swap, reload

/// The default room as a file, built by the host's build script.
const DEFAULT_ROOM: &str = concat!(env!("OUT_DIR"), "/default-room.wasm");

fn sighup(server: &Server) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn projects_matching_a_pattern_run_their_own_component() {
    let server = Server::start(&["--project-component", &format!("echo-*={FIXTURE_ROOM}")]);
    // The fixture room answers every text with {"echo": text} ...
    let (mut e, _) = server
        .connect("runtime", &format!("echo-{}", project()))
        .await;
    send_text(&mut e, "hello").await;
    assert_eq!(recv(&mut e).await, json!({"echo": "hello"}));
    // ... the default room, for everyone else, says the text is not JSON.
    let (mut d, _) = server.connect("runtime", &project()).await;
    send_text(&mut d, "hello").await;
    let reply = recv(&mut d).await;
    assert_eq!(reply["type"], "error", "{reply}");
}

#[tokio::test]
async fn a_component_with_an_import_the_host_lacks_is_refused_by_name() {
    let bad = std::env::temp_dir().join(format!("wsroom-test-{}.wasm", uuid::Uuid::new_v4()));
    let wasm = wat::parse_str(
        r#"(component (import "acme:missing/thing@1.0.0" (instance (export "f" (func)))))"#,
    )
    .unwrap();
    std::fs::write(&bad, wasm).unwrap();
    for flag in ["--component".to_owned(), "--project-component".to_owned()] {
        let value = if flag == "--component" {
            bad.display().to_string()
        } else {
            format!("p-*={}", bad.display())
        };
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsroom"))
            .args(["--listen", "127.0.0.1:0", &flag, &value])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("acme:missing/thing@1.0.0"), "{stderr}");
        assert!(stderr.contains(&bad.display().to_string()), "{stderr}");
    }
    // `wsroom check` says the same without starting a server, and passes a
    // component that fits.
    let check = |paths: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wsroom"))
            .arg("check")
            .args(paths)
            .output()
            .unwrap()
    };
    // Each file gets its verdict, the misfit first.
    let out = check(&[bad.to_str().unwrap(), FIXTURE_ROOM]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("acme:missing/thing@1.0.0"), "{stderr}");
    assert!(stderr.contains("1 of 2 components do not fit"), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("{FIXTURE_ROOM}: fits the wsroom:room/room world"))
    );
    let out = check(&[FIXTURE_ROOM]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("fits the wsroom:room/room world"));
    let _ = std::fs::remove_file(bad);
}

#[tokio::test]
async fn sighup_upgrades_room_code_without_dropping_a_socket() {
    let path = std::env::temp_dir().join(format!("wsroom-test-{}.wasm", uuid::Uuid::new_v4()));
    std::fs::copy(DEFAULT_ROOM, &path).unwrap();
    let server = Server::start(&["--component", path.to_str().unwrap()]);
    let p = project();
    let (mut r, r_id) = server.connect("runtime", &p).await;
    let (mut d, _) = server.connect("data-agent", &p).await;
    let msg = |i: usize| json!({"id": format!("m{i}"), "type": "t", "to": {"type": "data-agent"}});

    // Traffic before, across and after a reload of the same code.
    for i in 0..100 {
        send(&mut r, &msg(i)).await;
    }
    sighup(&server);
    for i in 100..150 {
        send(&mut r, &msg(i)).await;
    }
    server
        .wait_health("the reload", |h| h["counters"]["reloads"] == 1)
        .await;
    for i in 150..200 {
        send(&mut r, &msg(i)).await;
    }
    for i in 0..200 {
        let got = recv(&mut d).await;
        assert_eq!(got["id"], format!("m{i}"), "{got}");
        assert_eq!(got["from"]["id"], r_id.as_str());
    }
    let (_, health) = server.get("/health").await;
    assert_eq!(health["counters"]["roomsUpgraded"], 1, "{health}");
    assert_eq!(health["connections"], 2, "{health}");

    // A broken file: the reload fails, the old code keeps running.
    std::fs::write(&path, b"not wasm").unwrap();
    sighup(&server);
    server
        .wait_health("the failed reload", |h| {
            h["counters"]["reloadFailures"] == 1
        })
        .await;
    send(&mut r, &msg(200)).await;
    assert_eq!(recv(&mut d).await["id"], "m200");
    server
        .wait_stderr("the reload error", |log| log.contains("reload failed"))
        .await;

    // New code: the same sockets now talk to the fixture room, which echoes.
    std::fs::copy(FIXTURE_ROOM, &path).unwrap();
    sighup(&server);
    server
        .wait_health("the second reload", |h| h["counters"]["reloads"] == 2)
        .await;
    send_text(&mut r, "after").await;
    assert_eq!(recv(&mut r).await, json!({"echo": "after"}));
    send_text(&mut d, "me too").await;
    assert_eq!(recv(&mut d).await, json!({"echo": "me too"}));
    let (_, health) = server.get("/health").await;
    assert_eq!(health["connections"], 2, "{health}");
    assert_eq!(health["counters"]["roomFailures"], 0, "{health}");
    let _ = std::fs::remove_file(path);
}

// ------------------------------------------------------ the SDK's chat room

/// The SDK's example room, built by the host's build script.
const CHAT_ROOM: &str = concat!(env!("OUT_DIR"), "/chat-room.wasm");

/// Joins the chat; returns the socket and the replayed history.
async fn join_chat(server: &Server, p: &str) -> (Ws, Vec<Value>) {
    let url = server.url(&format!("type=member&projectId={p}"));
    let (mut ws, _) = within(tokio_tungstenite::connect_async(url)).await.unwrap();
    let history = recv(&mut ws).await;
    assert_eq!(history["type"], "history", "{history}");
    let messages = history["messages"].as_array().unwrap().clone();
    (ws, messages)
}

#[tokio::test]
async fn chat_room_replays_recent_lines_and_trims_them_with_its_alarm() {
    let server = Server::start(&[
        "--component",
        CHAT_ROOM,
        "--room-config",
        "chat-history=3",
        "--room-config",
        "chat-trim-ms=100",
        "--hibernate-after-ms",
        "300",
    ]);
    let p = project();
    let (mut a, history) = join_chat(&server, &p).await;
    assert!(history.is_empty(), "{history:?}");
    let (mut b, _) = join_chat(&server, &p).await;
    for i in 1..=5 {
        send(&mut a, &json!({"text": format!("line {i}")})).await;
        // Everyone, the sender too, gets each line as it is said.
        for ws in [&mut a, &mut b] {
            let got = recv(ws).await;
            assert_eq!(
                (got["type"].as_str(), got["text"].as_str()),
                (Some("chat"), Some(format!("line {i}").as_str()))
            );
        }
    }
    // The alarm trims the store to the newest 3; a newcomer gets exactly
    // those, in order (polled: the alarm fires 100 ms after the first line).
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (_c, history) = join_chat(&server, &p).await;
        let texts: Vec<&str> = history
            .iter()
            .map(|m| m["text"].as_str().unwrap())
            .collect();
        if texts == ["line 3", "line 4", "line 5"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never trimmed: {texts:?}"
        );
        assert!(
            texts.len() >= 3 && texts.ends_with(&["line 3", "line 4", "line 5"]),
            "{texts:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The store is the host's: it outlives the instance. Let the room
    // hibernate (its instance and memory dropped), then join again.
    let hibernations = server
        .wait_health("hibernation", |h| {
            h["counters"]["hibernations"].as_u64() >= Some(1)
        })
        .await;
    assert!(
        hibernations["counters"]["instancesLive"] == 0,
        "{hibernations}"
    );
    let (_d, history) = join_chat(&server, &p).await;
    let texts: Vec<&str> = history
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["line 3", "line 4", "line 5"]);
    let from = &history[0]["from"];
    assert!(from.as_str().is_some_and(|f| f.len() == 36), "{from}");
}

// ------------------------------------------------------------ slow clients

/// Reads until the server closes the connection; what it sent.
async fn read_to_close(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    // The servers below give a connection 1 s (--handshake-timeout-ms).
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut got))
        .await
        .expect("the server never closed the stalled connection")
        .ok();
    got
}

#[tokio::test]
async fn stalled_requests_and_handshakes_are_cut_off_without_blocking_others() {
    use tokio::io::AsyncWriteExt;
    let cert = std::env::temp_dir().join(format!("wsroom-test-{}.crt", uuid::Uuid::new_v4()));
    let plain = Server::start(&["--handshake-timeout-ms", "1000"]);
    let tls = Server::start(&[
        "--handshake-timeout-ms",
        "1000",
        "--tls-self-signed",
        "--tls-self-signed-out",
        cert.to_str().unwrap(),
    ]);

    // Half a request line, then nothing (slowloris); and a TCP connection to
    // the TLS port that never starts its handshake.
    let mut slow = within(tokio::net::TcpStream::connect(plain.addr))
        .await
        .unwrap();
    within(slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n"))
        .await
        .unwrap();
    let mut mute = within(tokio::net::TcpStream::connect(tls.addr))
        .await
        .unwrap();

    // Meanwhile everyone else is served.
    let (status, _) = plain.get("/health").await;
    assert_eq!(status, 200);
    let (mut ws, _) = plain.connect("runtime", &project()).await;
    send_text(&mut ws, "{nope").await;
    assert_eq!(recv(&mut ws).await["type"], "error");

    let (slow_got, mute_got) = tokio::join!(read_to_close(&mut slow), read_to_close(&mut mute));
    // hyper answers a timed-out request head with 408 or just closes.
    let text = String::from_utf8_lossy(&slow_got);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert!(mute_got.is_empty());
    let _ = std::fs::remove_file(cert);

    // No timeout at all is refused at start, with the flag named.
    let stderr = refused_at_start(&["--handshake-timeout-ms", "0"]);
    assert!(
        stderr.contains("--handshake-timeout-ms must be positive"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_chatty_room_cannot_flood_the_log() {
    lines_are_budgeted("log", "fixture log line").await;
}

/// A fixture room writes 200 lines with `COMMAND:200` under a budget of 10
/// lines a second: a burst of 20 is logged, the rest dropped and counted,
/// the next line let through says so, and the room serves on.
async fn lines_are_budgeted(command: &str, line: &str) {
    let server = Server::start(&[
        "--component",
        FIXTURE_ROOM,
        "--room-log-lines-per-sec",
        "10",
    ]);
    let (mut ws, _) = server.connect("runtime", &project()).await;
    send_text(&mut ws, &format!("{command}:200")).await;
    assert_eq!(
        recv(&mut ws).await,
        json!({ "echo": format!("{command}:200") })
    );
    let (_, health) = server.get("/health").await;
    let dropped = health["counters"]["logLinesDropped"].as_u64().unwrap();
    assert!((150..=180).contains(&dropped), "{health}");
    let log = server
        .wait_stderr("the burst", |log| log.matches(line).count() >= 20)
        .await;
    let logged = log.matches(line).count();
    assert!((20..=50).contains(&logged), "{logged} lines logged");
    // Once the budget refills, the next line says how many were dropped.
    poll_until(
        "the count of dropped lines",
        std::time::Duration::from_millis(100),
        async || {
            send_text(&mut ws, &format!("{command}:1")).await;
            recv(&mut ws).await;
            server.stderr()
        },
        |log| log.contains("lines dropped"),
    )
    .await;
    send_text(&mut ws, "still here").await;
    assert_eq!(recv(&mut ws).await, json!({"echo": "still here"}));
}

#[tokio::test]
async fn a_client_that_talks_but_never_reads_is_dropped_when_its_socket_stalls() {
    use futures_util::StreamExt;
    // A huge outbox bound, so it is the stalled socket that ends this client,
    // not an overflowing queue.
    let server = Server::start(&[
        "--ping-interval-ms",
        "300",
        "--outbox-limit-bytes",
        "536870912",
    ]);
    let p = project();
    let (stalled, stalled_id) = server.connect("data-agent", &p).await;
    let (mut r, _) = server.connect("runtime", &p).await;
    let (mut observer, _) = server.connect("admin", &p).await;
    // It keeps sending (so it never counts as silent) and never reads.
    let (mut sink, stream) = stalled.split();
    let me = stalled_id.clone();
    let talker = tokio::spawn(async move {
        for _ in 0..300 {
            let msg = json!({"type": "keepalive", "to": {"id": me}}).to_string();
            if sink.send(Message::text(msg)).await.is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        drop(stream);
    });
    // Tens of megabytes for it: far more than the kernel's socket buffers.
    // Sent from a task of its own: the sender's reads are paced by its room
    // (a slow room, such as the Python one, takes a while over each), and
    // meanwhile the observer must keep reading, or its pings go unanswered.
    let to = stalled_id.clone();
    let sender = tokio::spawn(async move {
        let pad = "x".repeat(600_000);
        for i in 0..60 {
            send(
                &mut r,
                &json!({"id": format!("big{i}"), "type": "t", "to": {"id": to}, "payload": pad}),
            )
            .await;
        }
        r
    });
    // The others see it leave.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled client was never dropped"
        );
        let msg = recv(&mut observer).await;
        if msg["type"] == "client_left" && msg["payload"]["clientId"] == stalled_id.as_str() {
            break;
        }
    }
    let (_, health) = server.get("/health").await;
    assert_eq!(health["counters"]["outboxOverflows"], 0, "{health}");
    talker.abort();
    sender.abort();
}

#[tokio::test]
async fn the_reference_server_passes_the_load_tools_checks() {
    use std::io::BufRead;
    // The yardstick the README compares wsroom with must route correctly too.
    /// Kills the server however the test ends.
    struct Reference(std::process::Child);
    impl Drop for Reference {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reference(
        std::process::Command::new(env!("CARGO_BIN_EXE_wsroom-load"))
            .args(["--server", "127.0.0.1:0", "reference-server"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit("://").next().unwrap().to_owned();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsroom-load"))
            .args(["--server", &addr, "--json", "--timeout-secs", "30"])
            .args(args)
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(out.status.success(), "{report}");
        report
    };
    for route in ["type", "id", "broadcast"] {
        let r = run(&[
            "fanout",
            "--receivers",
            "5",
            "--messages",
            "200",
            "--route",
            route,
        ]);
        assert_eq!(r["checks"]["lost"], 0, "{r}");
    }
    let r = run(&["rpc", "--pairs", "4", "--projects", "2", "--requests", "50"]);
    assert_eq!(r["checks"]["errors"], 0, "{r}");
}

#[tokio::test]
async fn fragmented_text_is_reassembled_and_its_utf8_checked() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let server = Server::start(&[]);
    let p = project();
    let (mut r, _) = server.connect("runtime", &p).await;
    let (mut d, _) = server.connect("data-agent", &p).await;
    let part =
        |bytes: &[u8], opcode, fin| Message::Frame(Frame::message(bytes.to_vec(), opcode, fin));
    // A message in two fragments arrives whole.
    within(r.send(part(
        br#"{"type":"t","to":{"type":"da"#,
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    within(r.send(part(
        br#"ta-agent"},"id":"f1"}"#,
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    let got = recv(&mut d).await;
    assert_eq!(
        (got["id"].as_str(), got["type"].as_str()),
        (Some("f1"), Some("t"))
    );
    // Invalid UTF-8 split across fragments (each fragment alone is not
    // checked by the WebSocket layer) closes the sender with 1007.
    within(r.send(part(br#"{"id":"x"#, OpCode::Data(Data::Text), false)))
        .await
        .unwrap();
    within(r.send(part(b"\xff\"}", OpCode::Data(Data::Continue), true)))
        .await
        .unwrap();
    assert_eq!(recv_close(&mut r).await.0, 1007);
    // Nobody else is affected.
    let (mut r2, _) = server.connect("runtime", &p).await;
    send(
        &mut r2,
        &json!({"id": "after", "type": "t", "to": {"type": "data-agent"}}),
    )
    .await;
    loop {
        let got = recv(&mut d).await;
        if got["id"] == "after" {
            break;
        }
    }
}

#[tokio::test]
async fn sighup_reloads_the_tls_certificate_for_new_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{self, pki_types::CertificateDer};

    // Two certificates for localhost, as a renewal would bring.
    let issue = || rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (old, new) = (issue(), issue());
    let dir = std::env::temp_dir().join(format!("wsroom-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let install = |c: &rcgen::CertifiedKey<rcgen::KeyPair>| {
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
    };
    install(&old);
    let server = Server::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    // A client that trusts one of the two certificates only.
    let trusting = |c: &rcgen::CertifiedKey<rcgen::KeyPair>| {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(c.cert.der().to_vec()))
            .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
    };
    let addr = server.addr;
    // /health over https for a client trusting `c`; none if the handshake
    // fails.
    let health = |c: tokio_rustls::TlsConnector| async move {
        let tcp = within(tokio::net::TcpStream::connect(addr)).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut stream = within(c.connect(name, tcp)).await.ok()?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        within(stream.read_to_string(&mut response)).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let (_, body) = response.split_once("\r\n\r\n").unwrap();
        Some(serde_json::from_str::<Value>(body).unwrap())
    };
    let served = |c| async { health(c).await.is_some() };
    let (trusts_old, trusts_new) = (trusting(&old), trusting(&new));
    assert!(served(trusts_old.clone()).await);
    assert!(!served(trusts_new.clone()).await);
    // A secure WebSocket opened before the renewal.
    let tcp = within(tokio::net::TcpStream::connect(addr)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = within(trusts_old.connect(name, tcp)).await.unwrap();
    let p = project();
    let url = format!(
        "wss://localhost:{}/websocket?type=runtime&projectId={p}",
        addr.port()
    );
    let (mut ws, _) = within(tokio_tungstenite::client_async(url, stream))
        .await
        .unwrap();
    // (tungstenite's own stream type has no rustls variant here.)
    async fn next<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let got = within(futures_util::StreamExt::next(ws))
            .await
            .unwrap()
            .unwrap();
        serde_json::from_str(got.to_text().unwrap()).unwrap()
    }
    let me = next(&mut ws).await["payload"]["clientId"]
        .as_str()
        .unwrap()
        .to_owned();

    install(&new);
    sighup(&server);
    server
        .wait_stderr("the certificate reloaded", |log| {
            log.contains("TLS certificate reloaded")
        })
        .await;
    server
        .wait_stderr("the reload done", |log| {
            log.contains("room components reloaded")
        })
        .await;
    let h = health(trusts_new.clone()).await.expect("served");
    assert_eq!(h["counters"]["reloads"], 1, "{h}");
    assert!(!served(trusts_old.clone()).await);
    // The socket opened before is still served.
    within(ws.send(Message::text(
        json!({"id": "still", "to": {"id": me}}).to_string(),
    )))
    .await
    .unwrap();
    assert_eq!(next(&mut ws).await["id"], "still");

    // A broken renewal: logged and counted, the certificate in use stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    sighup(&server);
    server
        .wait_stderr("the failed reload", |log| {
            log.contains("cannot reload the TLS certificate; the current one stays")
        })
        .await;
    server
        .wait_stderr("the reload done", |log| {
            log.matches("room components reloaded").count() == 2
        })
        .await;
    let h = health(trusts_new).await.expect("still served");
    assert_eq!(h["counters"]["reloadFailures"], 1, "{h}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The server's resident memory, in KiB.
fn rss_kib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

#[tokio::test]
async fn a_client_flooding_pings_without_reading_cannot_grow_the_servers_memory() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start(&[]);
    let p = project();
    let (mut flooder, _) = server.connect("runtime", &p).await;
    let before = rss_kib(&server);
    // Four million empty pings (masked, as a client sends them: 6 bytes
    // each), written straight to the socket; the client reads nothing, so
    // every answer would wait in the server.
    let pings = [0x89u8, 0x80, 1, 2, 3, 4].repeat(100_000);
    for _ in 0..40 {
        within(flooder.get_mut().write_all(&pings)).await.unwrap();
    }
    // The server read (nearly) all of it: what each answer cost stays.
    let (mut r, r_id) = server.connect("runtime", &p).await;
    send(&mut r, &json!({"id": "still", "to": {"id": r_id}})).await;
    assert_eq!(recv(&mut r).await["id"], "still");
    let grown = rss_kib(&server).saturating_sub(before);
    // With one pong queued per ping it grew by ~110 MB.
    assert!(grown < 16 * 1024, "grew by {grown} KiB");
}
