//! A room's life: created by its first client, removed after the cleanup
//! delay, hibernated when idle and woken by the next message, its alarms
//! (retried, given up), its own list of clients to close; the SDK's chat
//! room, whose store outlives its instance; the server's graceful exit.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

#[tokio::test]
async fn an_empty_room_is_removed_after_the_cleanup_delay() {
    let server = Server::start(&["--cleanup-delay-ms", "300"]);
    let p = project();
    let mut c = server.connect("runtime", &p).await;
    let (_, health) = server.get("/health").await;
    assert_eq!(health["rooms"], 1);
    c.close().await;
    // Still there right after the last client left (the alarm is pending)...
    server
        .wait_health("the client to be gone", |h| h["connections"] == 0)
        .await;
    // (/health counts the connection gone once its close is queued; the
    // room's count follows when the room handles it.)
    let status = format!("/status?projectId={p}");
    poll_until(
        "the room to count the client gone",
        Duration::from_millis(20),
        async || server.get(&status).await.1,
        |s| s["clientCount"] == 0,
    )
    .await;
    // ...and gone once the alarm fired.
    server
        .wait_health("the room to be removed", |h| h["rooms"] == 0)
        .await;
    let (_, s) = server.get(&format!("/health?projectId={p}")).await;
    assert_eq!(s["lastActivity"], Value::Null);
    // A new connection gets a new room.
    let _c = server.connect("runtime", &p).await;
    let (_, health) = server.get("/health").await;
    assert_eq!(health["rooms"], 1);
    assert_eq!(health["counters"]["roomsCreated"], 2);
}

#[tokio::test]
async fn a_new_client_cancels_the_cleanup() {
    // The new client comes well within the delay, however slow the machine.
    let server = Server::start(&["--cleanup-delay-ms", "2000"]);
    let p = project();
    let mut c = server.connect("runtime", &p).await;
    c.close().await;
    server
        .wait_health("the client to be gone", |h| h["connections"] == 0)
        .await;
    let mut c2 = server.connect("admin", &p).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, health) = server.get("/health").await;
    assert_eq!(health["rooms"], 1, "the room was removed under a client");
    assert_eq!(health["counters"]["roomsCreated"], 1);
    // Cancelled, not fired into a room with a client (which would wake a
    // hibernated room for nothing).
    let alarms = Scrape::of(&server)
        .await
        .value(r#"wsroom_room_call_duration_seconds_count{call="on_alarm"}"#);
    assert_eq!(alarms, 0.0, "the cleanup alarm fired");
    let to_self = json!({"id": "self", "type": "t", "to": {"id": c2.id}});
    c2.send_json(&to_self).await;
    assert_eq!(c2.next_json().await["id"], "self");
}

#[tokio::test]
async fn sigterm_closes_every_client_with_1001_and_exits_0() {
    let server = Server::start(&[]);
    let mut a = server.connect("runtime", &project()).await;
    let mut b = server.connect("admin", &project()).await;
    let waiter = tokio::spawn(async move {
        let a = a.recv_close().await;
        let b = b.recv_close().await;
        (a.0, b.0)
    });
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert_eq!(within(waiter).await.unwrap(), (1001, 1001));
}

// ---- hibernation

#[tokio::test]
async fn a_room_that_keeps_getting_messages_does_not_hibernate() {
    // Messages that readers run in the idle room themselves (not through the
    // room's task) move the hibernation deadline on just the same.
    // Longer in all than the delay; each pause far shorter.
    let server = Server::start(&["--component", FIXTURE_ROOM, "--hibernate-after-ms", "2000"]);
    let mut c = server.connect("runtime", &project()).await;
    for i in 0..25 {
        let text = format!("m{i}");
        c.send_text(&text).await;
        assert_eq!(c.next_json().await, json!({ "echo": text }));
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
    // A client that is not read for a while (while the test waits for the
    // server) answers no ping: it has two intervals before it is dropped.
    let server = Server::start(&["--hibernate-after-ms", "300", "--ping-interval-ms", "500"]);
    let p = project();
    let mut r = server.connect("runtime", &p).await;
    let mut d = server.connect("data-agent", &p).await;
    let mut a = server.connect("admin", &p).await;
    // The clients keep reading (so they answer the pings) while the room
    // falls asleep (more than once if the connects were slow).
    expect_silence(&mut [&mut r, &mut d, &mut a], 700).await;
    let (_, health) = server.get("/health").await;
    let asleep = health["counters"]["hibernations"].as_u64().unwrap();
    assert!(asleep >= 1, "{health}");
    // Pings keep flowing without waking the room.
    expect_silence(&mut [&mut r, &mut d, &mut a], 1200).await;
    let (_, health) = server.get("/health").await;
    assert_eq!(
        health["counters"]["instancesLive"], 0,
        "pings woke the room: {health}"
    );
    // (A ping that woke it, the room asleep again by now, would show here.)
    assert_eq!(
        health["counters"]["hibernations"], asleep,
        "pings woke the room: {health}"
    );
    // /status needs no instance.
    let (_, status) = server.get(&format!("/status?projectId={p}")).await;
    assert_eq!(status["clientCount"], 3);
    // The next message wakes it, and routing works as before.
    r.send_json(&json!({"id": "m1", "type": "t", "to": {"id": d.id}}))
        .await;
    let got = d.next_json().await;
    assert_eq!(got["id"], "m1");
    assert_eq!(got["from"]["id"], r.id.as_str());
    assert_eq!(a.next_json().await["id"], "m1");
    // Hibernate again, then leave: client_left still counts right.
    server
        .wait_health("the room to hibernate again", |h| {
            h["counters"]["hibernations"] == asleep + 1
        })
        .await;
    d.close().await;
    for c in [&mut r, &mut a] {
        let left = c.next_json().await;
        assert_eq!(left["type"], "client_left");
        assert_eq!(left["payload"]["clientId"], d.id.as_str());
        assert_eq!(left["payload"]["clientCount"], 2);
    }
    let (_, health) = server.get("/health").await;
    assert_eq!(health["counters"]["roomsCreated"], 1);
}

#[tokio::test]
async fn a_room_whose_last_client_left_drops_its_instance_at_once() {
    // Clients leaving many rooms at once (a deploy) must not leave a live
    // instance per room waiting out --hibernate-after-ms.
    let server = Server::start(&["--in-memory", "--hibernate-after-ms", "600000"]);
    let projects: Vec<String> = (0..20).map(|_| project()).collect();
    let mut clients = Vec::new();
    for p in &projects {
        clients.push(server.connect("runtime", p).await);
    }
    let (_, health) = server.get("/health").await;
    assert_eq!(health["counters"]["instancesLive"], 20, "{health}");
    for c in &mut clients {
        c.close().await;
    }
    let health = server
        .wait_health("every empty room's instance to go", |h| {
            h["connections"] == 0 && h["counters"]["instancesLive"] == 0
        })
        .await;
    // The rooms are still there (the default room's cleanup alarm waits in
    // each), and the next client is served as before.
    assert_eq!(health["rooms"], 20, "{health}");
    let mut back = server.connect("runtime", &projects[0]).await;
    let mut other = server.connect("admin", &projects[0]).await;
    back.send_json(&json!({"id": "m", "type": "t"})).await;
    assert_eq!(other.next_json().await["id"], "m");
}

#[tokio::test]
async fn attachments_survive_hibernation() {
    let server = Server::start(&["--component", FIXTURE_ROOM, "--hibernate-after-ms", "150"]);
    let mut c = server.connect("runtime", &project()).await;
    c.send_text("attach:kept across instances").await;
    assert_eq!(c.next_json().await, json!({"echo": "ok"}));
    server
        .wait_health("the room to hibernate", |h| {
            h["counters"]["hibernations"] == 1
        })
        .await;
    c.send_text("attachment").await;
    assert_eq!(
        c.next_json().await,
        json!({"echo": "kept across instances"})
    );
    let too_big = format!("attach:{}", "x".repeat(17 * 1024));
    c.send_text(&too_big).await;
    assert_eq!(c.next_json().await, json!({"echo": "too-large"}));
}

// ---- alarms

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
    let mut c = server.connect("runtime", &p).await;
    c.close().await;
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
    let mut c = server.connect("runtime", &p).await;
    c.close().await;
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

#[tokio::test]
async fn an_alarm_set_by_a_message_fires_with_nothing_else_happening() {
    // The message runs in its reader, not in the room's task, which sleeps
    // until the alarm it last saw: it must learn of the new one. (No
    // hibernation either, whose timer would wake it.)
    let server = Server::start(&["--component", FIXTURE_ROOM, "--hibernate-after-ms", "0"]);
    let mut c = server.connect("runtime", &project()).await;
    c.send_text("alarm:100").await;
    assert_eq!(c.next_json().await, json!({"echo": "alarm:100"}));
    server
        .wait_stderr("the alarm to fire", |log| {
            log.contains("fixture alarm ran (retry 0)")
        })
        .await;
}

// ---- what a room does with its clients and its store

#[tokio::test]
async fn a_room_can_list_and_close_its_clients() {
    let server = Server::start(&["--component", FIXTURE_ROOM]);
    let p = project();
    let mut r = server.connect("runtime", &p).await;
    let _a = server.connect("admin", &p).await;
    let mut r2 = server.connect("runtime", &p).await;
    r.send_text("who").await;
    assert_eq!(r.next_json().await, json!({"echo": "3 2 runtime"}));
    // A code the protocol allows is sent as is; what the room sent just
    // before arrives first; the client is gone from the table at once and a
    // second close finds nobody.
    r.send_text("close:4001").await;
    assert_eq!(r.next_json().await, json!({"echo": "bye"}));
    assert_eq!(r.recv_close().await, (4001, "closed by the room".into()));
    r2.send_text("who").await;
    assert_eq!(r2.next_json().await, json!({"echo": "2 1 runtime"}));
    // A reserved code is replaced by 1000.
    r2.send_text("close:1011").await;
    assert_eq!(r2.next_json().await, json!({"echo": "bye"}));
    assert_eq!(r2.recv_close().await.0, 1000);
    server
        .wait_stderr("the room's log line", |log| {
            log.contains("fixture close: true then false")
        })
        .await;
}

/// The SDK's example room, built by the host's build script.
pub(crate) const CHAT_ROOM: &str = concat!(env!("OUT_DIR"), "/chat-room.wasm");

/// Joins the chat; returns the socket and the replayed history.
pub(crate) async fn join_chat(server: &Server, p: &str) -> (Ws, Vec<Value>) {
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
    // (An earlier hibernation, in a slow pass of the loop, is followed by
    // a close that woke it: the instance must be gone now.)
    server
        .wait_health("hibernation", |h| {
            h["counters"]["hibernations"].as_u64() >= Some(1) && h["counters"]["instancesLive"] == 0
        })
        .await;
    let (_d, history) = join_chat(&server, &p).await;
    let texts: Vec<&str> = history
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["line 3", "line 4", "line 5"]);
    let from = &history[0]["from"];
    assert!(from.as_str().is_some_and(|f| f.len() == 36), "{from}");
}
