//! What the server reports over HTTP and in its log: `/health`, `/status`,
//! `/metrics`, the log format.

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

use crate::common::*;

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
    let server = Server::start(&[]);
    let p = project();
    let mut c = server.connect("runtime", &p).await;
    c.send_json(&json!({"type": "hello", "payload": {}})).await;
    server
        .wait_health("the message counted", |h| h["counters"]["messagesIn"] == 1)
        .await;
    let response = server
        .exchange("GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
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
    // The durable store's figures, its commit latency a histogram (10
    // buckets, +Inf, sum and count), agree with /health's.
    let histogram = "wsroom_store_commit_duration_seconds";
    assert!(
        body.contains(&format!("# TYPE {histogram} histogram\n")),
        "{body}"
    );
    let (buckets, samples): (Vec<&str>, Vec<&str>) = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .partition(|l| l.starts_with(histogram));
    assert_eq!(buckets.len(), 13, "{body}");
    let commits = value("wsroom_store_commits_total");
    assert!(buckets.contains(&format!("{histogram}_count {commits}").as_str()));
    assert!(value("wsroom_store_bytes") > 0);
    assert_eq!(value("wsroom_store_commit_failures_total"), 0);
    // Every other sample has its HELP and TYPE, and every /health counter
    // is there.
    let counters = health["counters"].as_object().unwrap().len();
    assert_eq!(samples.len(), counters + 7 + 4, "{body}");
    assert_eq!(value("wsroom_max_project_connections"), 32768);
    assert_eq!(health["maxProjectConnections"], 32768);
    assert_eq!(value("wsroom_max_messages_per_sec"), 0);
    assert_eq!(health["maxMessagesPerSec"], 0);
    assert_eq!(
        value("wsroom_max_handshakes_per_address"),
        health["maxHandshakesPerAddress"].as_u64().unwrap()
    );
    assert_eq!(value("wsroom_handshakes_refused_total"), 0);
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
    let _c = server.connect("runtime", &p).await;
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
    let (ws, _) = within(tokio_tungstenite::connect_async(req)).await.unwrap();
    let r = Client::hello(ws).await;
    let _admin = server.connect("admin", &p).await;

    let (status, body) = server.get(&format!("/status?projectId={p}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["clientCount"], 2);
    assert!(body["lastActivity"].is_u64());
    assert!(body["timestamp"].is_u64());
    let clients = body["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 2);
    let first = &clients[0];
    assert_eq!(first["id"], r.id.as_str());
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
