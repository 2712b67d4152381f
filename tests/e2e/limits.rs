//! The limits: connections (in all, per project, by the open-files limit),
//! messages per second, live rooms, live instances, the room's inbox;
//! what is refused past them, and how it is counted and logged.

use std::time::Duration;

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

#[tokio::test]
async fn websockets_past_the_limit_are_refused_with_503() {
    let server = Server::start(&["--max-connections", "2"]);
    let p = project();
    let _a = server.connect("runtime", &p).await;
    let mut b = server.connect("runtime", &p).await;
    let (status, body) = server.refused(&format!("type=runtime&projectId={p}")).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "too_many_connections");
    // HTTP still answers, and a slot frees up when a client leaves.
    let (status, _) = server.get("/health").await;
    assert_eq!(status, 200);
    b.close().await;
    server
        .wait_health("the client to be gone", |h| h["connections"] == 1)
        .await;
    let _c = server.connect("admin", &p).await;
}

#[tokio::test]
async fn a_project_at_its_connection_limit_refuses_more_and_others_go_on() {
    let server = Server::start(&["--max-project-connections", "2"]);
    let (p, q) = (project(), project());
    let _a = server.connect("runtime", &p).await;
    let mut b = server.connect("admin", &p).await;
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
    let _q1 = server.connect("runtime", &q).await;
    let _q2 = server.connect("data-agent", &q).await;
    let (_, health) = server.get("/health").await;
    assert_eq!(health["counters"]["connectionsRefused"], 1, "{health}");
    assert_eq!(health["maxProjectConnections"], 2, "{health}");
    server
        .wait_stderr("the refusal logged", |log| {
            log.contains("--max-project-connections reached")
        })
        .await;
    // A client that leaves makes room.
    b.close().await;
    server
        .wait_health("the client to be gone", |h| h["connections"] == 3)
        .await;
    let _c = server.connect("data-agent", &p).await;
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
    let mut r = server.connect("runtime", &p).await;
    let mut d = server.connect("data-agent", &p).await;
    const N: usize = 10;
    for i in 0..N - 1 {
        r.send_json(&json!({"id": format!("m{i}"), "type": "t", "to": {"type": "data-agent"}}))
            .await;
    }
    r.send_message(Message::binary(vec![1u8, 2, 3])).await;
    // Two seconds after the server read the ten, the bucket is full again:
    // the connection was only limited, and this marker ends what `d`
    // receives.
    server
        .wait_health("the ten to be read", |h| {
            h["counters"]["messagesIn"] == N as u64
        })
        .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    r.send_json(&json!({"id": "end", "type": "t", "to": {"type": "data-agent"}}))
        .await;
    let mut delivered = Vec::new();
    loop {
        let got = d.next_json().await;
        assert_eq!(got["from"]["id"], r.id.as_str(), "{got}");
        let id = got["id"].as_str().unwrap().to_owned();
        if id == "end" {
            break;
        }
        delivered.push(id);
    }
    // The burst went through first, then at most a message a second, in
    // the order sent: two messages, a third only if reading the ten took
    // the server over a second (a token refilled meanwhile, for whichever
    // message was read then: a text or the binary one).
    let sent: Vec<String> = (0..N - 1).map(|i| format!("m{i}")).collect();
    assert!((2..=3).contains(&delivered.len()), "{delivered:?}");
    assert_eq!(delivered[..2], sent[..2], "{delivered:?}");
    let positions: Vec<usize> = delivered
        .iter()
        .map(|id| sent.iter().position(|s| s == id).expect("an id sent"))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{delivered:?}");
    // Every other one was answered with rate_limited, naming it, in order.
    let limited: Vec<&String> = sent.iter().filter(|id| !delivered.contains(id)).collect();
    for id in &limited {
        let err = r.next_json().await;
        assert_eq!(error_of(&err), "rate_limited", "{err}");
        assert_eq!(err["payload"]["projectId"], p.as_str());
        assert_eq!(err["payload"]["messageId"], id.as_str(), "{err}");
    }
    // The binary message too (it has no id to name), unless it got the
    // refilled token: then the room answered it, as it answers any binary
    // message.
    let err = r.next_json().await;
    assert!(err["payload"].get("messageId").is_none(), "{err}");
    let binary_passed = error_of(&err) != "rate_limited";
    if binary_passed {
        assert_eq!(error_of(&err), "invalid_message", "{err}");
    }
    let passed = delivered.len() + usize::from(binary_passed);
    assert!((2..=3).contains(&passed), "{delivered:?} {err}");
    r.assert_nothing_before_marker(&mut d).await;
    let (_, health) = server.get("/health").await;
    assert_eq!(
        health["counters"]["messagesRateLimited"],
        (N - passed) as u64,
        "{health}"
    );
    assert_eq!(health["maxMessagesPerSec"], 1, "{health}");
}

#[tokio::test]
async fn refused_websockets_are_counted_and_their_warnings_throttled() {
    let server = Server::start(&["--max-connections", "1"]);
    let p = project();
    let _a = server.connect("runtime", &p).await;
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
        open.push(server.connect("runtime", &p).await);
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
    let expected = wsroom::limits::connections_the_files_allow(hard);
    assert_eq!(health["maxConnections"], expected, "{health}");
    if hard.is_none_or(|hard| hard > 400) {
        // 120 WebSockets need more files than the soft limit of 100 gave.
        let mut open = Vec::new();
        for _ in 0..120 {
            open.push(server.connect("runtime", &p).await);
        }
    }
}

#[tokio::test]
async fn rooms_past_the_limit_are_refused_with_503() {
    let server = Server::start(&["--max-rooms", "2", "--cleanup-delay-ms", "0"]);
    let (a, b, c) = (project(), project(), project());
    let _a1 = server.connect("runtime", &a).await;
    let mut b1 = server.connect("runtime", &b).await;
    // Another client of a live room makes no new room.
    let _a2 = server.connect("admin", &a).await;
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
    b1.close().await;
    server
        .wait_health("the emptied room to be removed", |h| h["rooms"] == 1)
        .await;
    let _c1 = server.connect("runtime", &c).await;
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
    // Which room makes way depends on which rooms are idle: the clock
    // passes over a room whose lock is held, and a room's own task takes
    // its lock for a moment after each event. A pause before each step that
    // needs an instance lets those moments pass, so that "least recently
    // used" is what the clock finds.
    let settle = || tokio::time::sleep(Duration::from_millis(200));
    let mut clients = Vec::new();
    for p in [&a, &b, &c] {
        settle().await;
        let r = server.connect("runtime", p).await;
        let d = server.connect("data-agent", p).await;
        clients.push((r, d));
    }
    let (_, health) = server.get("/health").await;
    assert_eq!(health["rooms"], 3, "{health}");
    assert_eq!(health["maxInstances"], 2, "{health}");
    assert_eq!(health["counters"]["instancesLive"], 2, "{health}");
    // c's first connection made a, the least recently used, make way.
    assert_eq!(health["counters"]["instancesEvicted"], 1, "{health}");
    assert_eq!(health["counters"]["hibernations"], 0, "{health}");
    // Every project still routes, waking its room (and evicting another).
    for (i, (r, d)) in clients.iter_mut().enumerate() {
        settle().await;
        r.send_json(&json!({"id": format!("m{i}"), "to": {"type": "data-agent"}}))
            .await;
        let got = d.next_json().await;
        assert_eq!(got["id"], format!("m{i}"));
        assert_eq!(got["from"]["id"], r.id.as_str());
    }
    let (_, health) = server.get("/health").await;
    assert_eq!(health["counters"]["instancesLive"], 2, "{health}");
    // Each woke and the least recently used made way: a woke (b made way),
    // b woke (c, not a, which had just been used), c woke (a).
    assert_eq!(health["counters"]["instancesEvicted"], 4, "{health}");
    assert_eq!(health["counters"]["roomsCreated"], 3, "{health}");
    // An evicted room keeps its clients: leaving is announced as before (c,
    // evicted once and live since it woke last, without evicting anyone).
    let (r, d) = &mut clients[2];
    d.close().await;
    let left = r.next_json().await;
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
    let mut h = server.connect("runtime", &busy).await;
    let mut b = server.connect("runtime", &busy).await;
    let mut o = server.connect("runtime", &other).await;
    // One client keeps the room busy for a while; meanwhile far more than
    // the inbox holds arrives from another.
    h.send_text("spin:400").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..100 {
        b.send_text(&format!("m{i}")).await;
    }
    // Another project is not held up by it.
    o.send_text("hello").await;
    assert_eq!(o.next_json().await, json!({"echo": "hello"}));
    // Every message is handled, in order, once the room catches up.
    assert_eq!(h.next_json().await, json!({"echo": "spin:400"}));
    for i in 0..100 {
        assert_eq!(b.next_json().await, json!({ "echo": format!("m{i}") }));
    }
}

/// How many of `n` TCP connects to a stopped server complete within a
/// second: those its accept queue has room for (the kernel answers their
/// handshake); the others wait for their SYN to be sent again.
async fn connects_a_stopped_server_queues(server: &Server, n: usize) -> Vec<tokio::net::TcpStream> {
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &server.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    let addr = server.addr;
    let connects: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(async move {
                tokio::time::timeout(
                    Duration::from_millis(900),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
            })
        })
        .collect();
    let mut queued = Vec::new();
    for connect in connects {
        if let Ok(Ok(Ok(stream))) = connect.await {
            queued.push(stream);
        }
    }
    signal("-CONT");
    queued
}

#[tokio::test]
async fn a_burst_of_connects_waits_in_a_deep_accept_queue_not_for_a_syn_retransmit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let burst = 400.min(somaxconn);
    // By default the queue is as deep as the kernel allows: a burst of
    // clients all complete their handshake while the server is busy.
    let server = Server::start(&["--in-memory"]);
    server
        .wait_stderr("the accept queue's size", |e| e.contains("accept queue"))
        .await;
    let mut queued = connects_a_stopped_server_queues(&server, burst).await;
    assert_eq!(queued.len(), burst, "every connect of the burst was queued");
    // And they are served once the server runs again.
    for stream in queued.iter_mut().take(20) {
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut answer))
            .await
            .expect("the queued connection is answered")
            .unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    drop(queued);

    // A shallow queue, as asked: most of the burst is left waiting.
    let shallow = Server::start(&["--in-memory", "--listen-backlog", "16"]);
    let queued = connects_a_stopped_server_queues(&shallow, burst).await;
    assert!(
        queued.len() < 40,
        "{} of {burst} queued with a backlog of 16",
        queued.len()
    );
}
