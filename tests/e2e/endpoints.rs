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
async fn a_message_s_time_from_its_read_to_its_write_is_measured() {
    let server = Server::start(&["--in-memory"]);
    let p = project();
    let mut from = server.connect("runtime", &p).await;
    let mut to = server.connect("data-agent", &p).await;
    // Writes are timed one in 8 per connection (its first included, here
    // the `connected` message, which answers no message): 16 routed
    // messages, each written alone, include timed ones.
    for i in 0..16 {
        from.send_json(&json!({"id": format!("m{i}"), "type": "t", "to": {"id": to.id}}))
            .await;
        assert_eq!(to.next_json().await["id"], format!("m{i}"));
    }
    let health = server
        .wait_health("a message's latency", |h| {
            h["latencyMs"]["message"]["count"].as_u64() >= Some(1)
        })
        .await;
    let message = &health["latencyMs"]["message"];
    // Loopback and an idle room: within the histogram's last bucket (a
    // second) even on a loaded machine, and not nothing.
    assert!(message["max"].as_f64().unwrap() < 1000.0, "{message}");
    assert!(message["mean"].as_f64().unwrap() > 0.0, "{message}");
    let m = Scrape::of(&server).await;
    let count = m.value("wsroom_message_duration_seconds_count");
    assert!(
        (1.0..=2.0).contains(&count),
        "two timed writes at most: {count}"
    );
    assert_eq!(
        m.value(r#"wsroom_message_duration_seconds_bucket{le="1"}"#),
        count
    );
}

#[tokio::test]
async fn metrics_are_served_for_prometheus() {
    let server = Server::start(&[]);
    let p = project();
    let mut c = server.connect("runtime", &p).await;
    let hello = json!({"type": "hello", "payload": {}}).to_string();
    c.send_text(&hello).await;
    // Refused by the room, and a client that closes without a code.
    let (status, _) = server.refused(&format!("type=robot&projectId={p}")).await;
    assert_eq!(status, 400);
    let mut leaving = server.connect("admin", &p).await;
    leaving.close().await;
    server
        .wait_health("the message, the close and the writes counted", |h| {
            h["counters"]["messagesIn"] == 1
                && h["connections"] == 1
                && h["latencyMs"]["roomCall"]["count"] == 5
                && h["latencyMs"]["delivery"]["count"].as_u64() >= Some(2)
        })
        .await;
    let m = Scrape::of(&server).await;
    let (_, health) = server.get("/health").await;
    assert_eq!(m.value("wsroom_connections_total"), 2.0);
    assert_eq!(m.value("wsroom_connections_open"), 1.0);
    assert_eq!(m.value("wsroom_messages_in_total"), 1.0);
    assert_eq!(m.value("wsroom_received_bytes_total"), hello.len() as f64);
    assert!(m.value("wsroom_sent_bytes_total") > 0.0);
    assert_eq!(m.value("wsroom_rooms_live"), 1.0);
    // Refusals and closes by reason; /health's counter is their sum.
    assert_eq!(
        m.value(r#"wsroom_connections_refused_total{reason="room"}"#),
        1.0
    );
    assert_eq!(
        m.value(r#"wsroom_connections_refused_total{reason="max_rooms"}"#),
        0.0
    );
    assert_eq!(health["counters"]["connectionsRefused"], 1);
    assert_eq!(
        m.value(r#"wsroom_connections_closed_total{reason="no_status"}"#),
        1.0
    );
    assert_eq!(
        m.value(r#"wsroom_connections_closed_total{reason="abnormal"}"#),
        0.0
    );
    // Room calls timed by export: three connects (one refused), a message,
    // a close; every written frame's wait is in the delivery histogram.
    let calls = |call: &str| {
        m.value(&format!(
            "wsroom_room_call_duration_seconds_count{{call=\"{call}\"}}"
        ))
    };
    assert_eq!(calls("on_connect"), 3.0);
    assert_eq!(calls("on_message"), 1.0);
    assert_eq!(calls("on_close"), 1.0);
    assert_eq!(calls("on_alarm"), 0.0);
    assert_eq!(
        m.value(r#"wsroom_room_call_duration_seconds_bucket{call="on_connect",le="+Inf"}"#),
        3.0
    );
    assert!(m.value("wsroom_delivery_duration_seconds_count") >= 2.0);
    assert_eq!(
        health["latencyMs"]["roomCall"]["count"].as_f64().unwrap(),
        calls("on_connect") + calls("on_message") + calls("on_close")
    );
    // Limits, as /health has them.
    for (name, key) in [
        ("wsroom_max_rooms", "maxRooms"),
        ("wsroom_max_instances", "maxInstances"),
        ("wsroom_max_project_connections", "maxProjectConnections"),
        ("wsroom_max_messages_per_sec", "maxMessagesPerSec"),
        (
            "wsroom_max_handshakes_per_address",
            "maxHandshakesPerAddress",
        ),
    ] {
        assert_eq!(m.value(name), health[key].as_f64().unwrap(), "{name}");
    }
    assert_eq!(m.value("wsroom_max_project_connections"), 32768.0);
    // The durable store's figures; its commit latency a histogram (16
    // buckets, +Inf, sum and count) that agrees with its commit count.
    let histogram = "wsroom_store_commit_duration_seconds";
    let commits = m.value("wsroom_store_commits_total");
    assert_eq!(m.value(&format!("{histogram}_count")), commits);
    assert_eq!(
        m.value(&format!("{histogram}_bucket{{le=\"+Inf\"}}")),
        commits
    );
    let buckets = m
        .samples()
        .filter(|(n, _)| n.starts_with(histogram))
        .count();
    assert_eq!(buckets, 16 + 1 + 2, "{}", m.body);
    assert!(m.value("wsroom_store_bytes") > 0.0);
    assert_eq!(m.value("wsroom_store_commit_failures_total"), 0.0);
    // The process, as every Prometheus client exports it.
    assert!(m.value("process_resident_memory_bytes") > 1e6);
    assert!(m.value("process_open_fds") >= 3.0);
    assert!(m.value("process_start_time_seconds") > 1.7e9);
    // Every /health counter is there, and every sample has its HELP and
    // TYPE.
    let families: std::collections::BTreeSet<&str> = m
        .samples()
        .map(|(name, _)| {
            let name = name.split('{').next().unwrap();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|base| m.body.contains(&format!("# TYPE {base} histogram\n")))
                })
                .unwrap_or(name)
        })
        .collect();
    assert!(families.len() > health["counters"].as_object().unwrap().len());
    for name in families {
        assert!(m.body.contains(&format!("# HELP {name} ")), "{name}");
        assert!(
            ["counter", "gauge", "histogram"]
                .iter()
                .any(|t| m.body.contains(&format!("# TYPE {name} {t}\n"))),
            "{name}"
        );
    }
    // OpenMetrics, for a scraper that asks for it.
    let response = server
        .exchange(
            "GET /metrics HTTP/1.1\r\nHost: t\r\nAccept: application/openmetrics-text; version=1.0.0\r\nConnection: close\r\n\r\n",
        )
        .await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
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

#[tokio::test]
async fn the_grafana_dashboard_queries_only_metrics_the_server_exports() {
    let dashboard: Value =
        serde_json::from_str(include_str!("../../contrib/grafana/wsroom.json")).unwrap();
    let server = Server::start(&[]);
    let scrape = Scrape::of(&server).await;
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut names = 0;
    for expr in &exprs {
        let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        for word in words.filter(|w| w.starts_with("wsroom_") || w.starts_with("process_")) {
            let family = word.strip_suffix("_bucket").unwrap_or(word);
            assert!(
                scrape.body.contains(&format!("# TYPE {family} ")),
                "the dashboard queries {word}, which /metrics does not export ({expr})"
            );
            names += 1;
        }
    }
    assert!(names >= exprs.len(), "every query names a metric");
}
