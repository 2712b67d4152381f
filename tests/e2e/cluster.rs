//! Cluster mode: a real nats-server with JetStream and several nodes on
//! loopback ports. Clients of one project spread over the nodes behave as
//! on one node (routing, admin copies, `client_left`, `/status`); an owner
//! killed with -9, or frozen past its lease, gives its projects to a live
//! node while the clients other nodes hold keep their sockets; a project
//! never runs on two nodes (a frozen owner that wakes up runs nothing).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

/// The lease the tests' nodes use: short, so that a takeover is quick.
const LEASE_MS: &str = "2000";

/// The lease of the tests where every node lives to the end: long, so that
/// a machine that stalls for a second does not fence a node mid-test.
const STEADY_LEASE_MS: &str = "20000";

/// A nats-server with JetStream on a free loopback port, its store in a
/// directory of its own; stopped (and the directory removed) on drop.
pub(crate) struct Nats {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Nats {
    pub(crate) fn start() -> Nats {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = scratch_dir("nats");
        let child = Nats::spawn(port, &dir);
        Nats { child, port, dir }
    }

    fn spawn(port: u16, dir: &std::path::Path) -> Child {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start nats-server ({e}): the cluster tests need it on PATH \
                     (Debian: apt-get install nats-server)"
                )
            });
        let deadline = std::time::Instant::now() + TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (kill -9).
    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and store.
    pub(crate) fn start_again(&mut self) {
        self.child = Nats::spawn(self.port, &self.dir);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A node named `name` of the cluster on `nats`, with a lease of
/// `lease_ms`.
pub(crate) fn node(nats: &Nats, name: &str, lease_ms: &str) -> Server {
    node_with(nats, name, lease_ms, &[])
}

/// A node with more flags.
fn node_with(nats: &Nats, name: &str, lease_ms: &str, extra: &[&str]) -> Server {
    let url = nats.url();
    let mut args = vec![
        "--in-memory",
        "--nats",
        &url,
        "--node-name",
        name,
        "--lease-ms",
        lease_ms,
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Three nodes on one nats-server.
fn three_nodes(nats: &Nats) -> [Server; 3] {
    nodes(nats, LEASE_MS)
}

/// Three nodes on one nats-server, none of which is to die or stop.
fn three_steady_nodes(nats: &Nats) -> [Server; 3] {
    nodes(nats, STEADY_LEASE_MS)
}

fn nodes<const N: usize>(nats: &Nats, lease_ms: &str) -> [Server; N] {
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    std::array::from_fn(|i| node(nats, &format!("n{i}-{tag}"), lease_ms))
}

/// Sends SIGSTOP or SIGCONT to a server.
fn signal(server: &Server, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn kill_9(server: Server) {
    signal(&server, "-KILL");
    drop(server);
}

/// A client of `p` on each node: a runtime on the first (which makes it
/// the owner), a runtime on the second, a data-agent on the third.
async fn one_per_node(nodes: [&Server; 3], p: &str) -> (Client, Client, Client) {
    (
        nodes[0].connect("runtime", p).await,
        nodes[1].connect("runtime", p).await,
        nodes[2].connect("data-agent", p).await,
    )
}

/// How many rooms each node runs now.
async fn rooms(nodes: &[&Server]) -> Vec<u64> {
    let mut counts = Vec::new();
    for n in nodes {
        let (_, health) = n.get("/health").await;
        counts.push(health["rooms"].as_u64().unwrap());
    }
    counts
}

#[tokio::test]
async fn clients_on_three_nodes_are_one_room() {
    let nats = Nats::start();
    let [n1, n2, n3] = three_steady_nodes(&nats);
    let p = project();
    // The first client makes its node the owner; the others join through it.
    let mut r1 = n1.connect("runtime", &p).await;
    let mut d = n2.connect("data-agent", &p).await;
    let mut a = n3.connect("admin", &p).await;
    let mut r2 = n3.connect("runtime", &p).await;
    assert_eq!(rooms(&[&n1, &n2, &n3]).await, [1, 0, 0]);

    // By id, across nodes, with the admin's copy from a third node.
    let msg = json!({"id": "m1", "type": "graphql_query", "to": {"id": d.id}, "payload": {"q": 1}});
    r2.send_json(&msg).await;
    let got = d.next_json().await;
    assert_eq!(got["id"], "m1");
    assert_eq!(got["from"], json!({"type": "runtime", "id": r2.id}));
    assert_eq!(got["payload"], msg["payload"]);
    assert_eq!(a.next_json().await, got);
    // By type: both runtimes, on two nodes, once each.
    d.send_json(&json!({"id": "m2", "type": "t", "to": {"type": "runtime"}}))
        .await;
    assert_eq!(r1.next_json().await["id"], "m2");
    assert_eq!(r2.next_json().await["id"], "m2");
    assert_eq!(a.next_json().await["id"], "m2");
    // Nothing else arrived, and nothing twice.
    r1.assert_nothing_before_marker(&mut d).await;
    r2.assert_nothing_before_marker(&mut d).await;
    for _ in 0..2 {
        assert_eq!(a.next_json().await["type"], "marker");
    }
    // Order from one sender across nodes, to the target and the admin.
    for i in 0..200 {
        r1.send_json(&json!({"id": format!("o{i}"), "type": "t", "to": {"id": d.id}}))
            .await;
    }
    for i in 0..200 {
        assert_eq!(d.next_json().await["id"], format!("o{i}"));
        assert_eq!(a.next_json().await["id"], format!("o{i}"));
    }
    // An unknown target: the sender's error comes back across nodes.
    r2.send_json(&json!({"id": "m3", "type": "t", "to": {"id": "nobody"}}))
        .await;
    let error = r2.next_json().await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["payload"]["messageId"], "m3");
    assert_eq!(a.next_json().await["id"], "m3");

    // /status and /health from every node describe the whole project.
    for n in [&n1, &n2, &n3] {
        let (code, status) = n.get(&format!("/status?projectId={p}")).await;
        assert_eq!(code, 200);
        assert_eq!(status["clientCount"], 4, "{status}");
        let mut ids: Vec<&str> = status["clients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        ids.sort();
        let mut want = vec![r1.id.as_str(), d.id.as_str(), a.id.as_str(), r2.id.as_str()];
        want.sort();
        assert_eq!(ids, want);
        let (_, health) = n.get(&format!("/health?projectId={p}")).await;
        assert_eq!(health["clientCount"], 4, "{health}");
        let (_, node) = n.get("/health").await;
        assert_eq!(node["status"], "healthy", "{node}");
        assert_eq!(node["cluster"]["nats"], "connected");
    }

    // client_left reaches every node's clients.
    d.close().await;
    for c in [&mut r1, &mut a, &mut r2] {
        let left = c.next_json().await;
        assert_eq!(left["type"], "client_left", "{left}");
        assert_eq!(left["payload"]["clientId"], d.id.as_str());
        assert_eq!(left["payload"]["clientCount"], 3);
    }
}

#[tokio::test]
async fn projects_stay_apart_across_nodes() {
    let nats = Nats::start();
    let [n1, n2, _n3] = three_steady_nodes(&nats);
    let (p, q) = (project(), project());
    let mut p1 = n1.connect("runtime", &p).await;
    let mut q1 = n2.connect("runtime", &q).await;
    let mut p2 = n2.connect("admin", &p).await;
    let mut q2 = n1.connect("admin", &q).await;
    p1.send_json(&json!({"id": "to-p", "type": "t"})).await;
    q1.send_json(&json!({"id": "to-q", "type": "t"})).await;
    assert_eq!(p2.next_json().await["id"], "to-p");
    assert_eq!(q2.next_json().await["id"], "to-q");
    // Each project's room runs on the node of its first client.
    assert_eq!(rooms(&[&n1, &n2]).await, [1, 1]);
    p2.assert_nothing_before_marker(&mut p1).await;
    q2.assert_nothing_before_marker(&mut q1).await;
}

#[tokio::test]
async fn a_killed_owner_s_project_moves_and_other_nodes_clients_stay() {
    let nats = Nats::start();
    let [n1, n2, n3] = three_nodes(&nats);
    let p = project();
    let (_own, mut r, mut d) = one_per_node([&n1, &n2, &n3], &p).await;
    let mut a = n3.connect("admin", &p).await;
    kill_9(n1);
    // Sent while the project has no owner: delivered once it has one. Or,
    // when NATS handed it to the owner in the instant the owner died (NATS
    // had not yet seen its socket close), its sender is told it may not have
    // been handled, once the project has moved: never silence.
    let during = json!({"id": "during", "type": "t", "to": {"id": d.id}});
    r.send_json(&during).await;
    let got = tokio::select! {
        // Delivered first if delivered at all: a refusal that comes too
        // would be a lie (the resend would duplicate it).
        biased;
        got = d.next_json() => got,
        refused = r.next_json() => {
            assert_eq!(refused["type"], "error", "{refused}");
            assert_eq!(refused["payload"]["code"], "not_delivered", "{refused}");
            assert!(
                refused["payload"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("may not have been handled")),
                "{refused}"
            );
            r.send_json(&during).await;
            d.next_json().await
        }
    };
    assert_eq!(got["id"], "during", "{got}");
    assert_eq!(a.next_json().await["id"], "during");
    // /metrics says so: one takeover among the live nodes, r's message
    // forwarded by its node (refused at most once, as the owner left).
    let (m2, m3) = (Scrape::of(&n2).await, Scrape::of(&n3).await);
    let takeovers =
        m2.value("wsroom_cluster_takeovers_total") + m3.value("wsroom_cluster_takeovers_total");
    assert_eq!(takeovers, 1.0);
    assert!(m2.value("wsroom_cluster_messages_forwarded_total") >= 1.0);
    assert!(m2.value(r#"wsroom_cluster_messages_not_delivered_total{reason="owner_gone"}"#) <= 1.0);
    assert_eq!(m2.value("wsroom_cluster_lease_valid"), 1.0);
    // Exactly one live node runs the project now, and it knows the clients
    // that kept their sockets (not the killed node's own).
    let counts = rooms(&[&n2, &n3]).await;
    assert_eq!(counts.iter().sum::<u64>(), 1, "{counts:?}");
    let (_, status) = n2.get(&format!("/status?projectId={p}")).await;
    assert_eq!(status["clientCount"], 3, "{status}");
    // Routing works on as before, both ways.
    d.send_json(&json!({"id": "after", "type": "t", "to": {"id": r.id}}))
        .await;
    assert_eq!(r.next_json().await["id"], "after");
    assert_eq!(a.next_json().await["id"], "after");
    a.assert_nothing_before_marker(&mut r).await;
    d.assert_nothing_before_marker(&mut r).await;
}

#[tokio::test]
async fn a_frozen_owner_that_wakes_up_runs_nothing() {
    let nats = Nats::start();
    let [n1, n2, _n3] = three_nodes(&nats);
    let p = project();
    let mut old = n1.connect("runtime", &p).await;
    let mut r = n2.connect("runtime", &p).await;
    // Frozen past its lease: it cannot renew, and cannot know.
    signal(&n1, "-STOP");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The next client takes the project over for n2, gathering r.
    let mut x = n2.connect("data-agent", &p).await;
    assert_eq!(rooms(&[&n2]).await, [1]);
    r.send_json(&json!({"id": "m1", "type": "t", "to": {"id": x.id}}))
        .await;
    let got = x.next_json().await;
    assert_eq!(got["id"], "m1", "{got}");
    // Woken, the old owner must not run its copy of the room: its client's
    // message reaches nobody, and the client is told to reconnect.
    signal(&n1, "-CONT");
    old.send_json(&json!({"id": "stale", "type": "t", "to": {"id": r.id}}))
        .await;
    let (code, _) = old.recv_close().await;
    assert_eq!(code, 1012);
    assert_eq!(rooms(&[&n1, &n2]).await, [0, 1]);
    // r never saw "stale".
    r.assert_nothing_before_marker(&mut x).await;
}

/// What a node's `/health` says of the cluster.
async fn cluster_health(n: &Server) -> Value {
    n.get("/health").await.1["cluster"].clone()
}

#[tokio::test]
async fn a_node_alone_without_nats_has_no_cluster() {
    let server = Server::start(&["--in-memory"]);
    assert_eq!(cluster_health(&server).await, Value::Null);
    let error = refused_at_start(&["--nats", "nats://127.0.0.1:1", "--node-name", "x"]);
    assert!(error.contains("cannot connect to NATS"), "{error}");
    let error = refused_at_start(&["--nats", "nats://127.0.0.1:1", "--node-name", "a.b"]);
    assert!(error.contains("--node-name"), "{error}");
}

#[tokio::test]
async fn sigterm_hands_the_owner_s_projects_over_and_other_nodes_clients_notice_nothing() {
    let nats = Nats::start();
    let [n1, n2, n3] = three_nodes(&nats);
    let p = project();
    let (mut own, mut r, mut d) = one_per_node([&n1, &n2, &n3], &p).await;
    let status = n1.terminate();
    assert!(status.success(), "{status}");
    // Its own client was told the server went away.
    assert_eq!(own.recv_close().await.0, 1001);
    // The others kept their sockets, and their room moved with them.
    r.send_json(&json!({"id": "after", "type": "t", "to": {"id": d.id}}))
        .await;
    let got = d.next_json().await;
    assert_eq!(got["id"], "after", "{got}");
    let counts = rooms(&[&n2, &n3]).await;
    assert_eq!(counts.iter().sum::<u64>(), 1, "{counts:?}");
    let (_, status) = n3.get(&format!("/status?projectId={p}")).await;
    assert_eq!(status["clientCount"], 2, "{status}");
    // Nothing else reached them: no close, no error.
    d.assert_nothing_before_marker(&mut r).await;
    r.assert_nothing_before_marker(&mut d).await;
}

#[tokio::test]
async fn a_message_sent_while_its_owner_leaves_reaches_its_target_or_its_sender_hears() {
    let nats = Nats::start();
    let [n1, n2, n3] = three_nodes(&nats);
    let p = project();
    let (_own, mut r, mut d) = one_per_node([&n1, &n2, &n3], &p).await;
    // A burst from one node to another through the owner, which leaves
    // (SIGTERM) in the middle of it.
    const N: usize = 300;
    for i in 0..N {
        r.send_json(&json!({"id": format!("m{i}"), "type": "t", "to": {"id": d.id}}))
            .await;
    }
    let status = n1.terminate();
    assert!(status.success(), "{status}");
    r.send_json(&json!({"id": "after", "type": "t", "to": {"id": d.id}}))
        .await;
    let mut received = Vec::new();
    loop {
        let got = d.next_json().await;
        let id = got["id"].as_str().unwrap_or_default().to_owned();
        if id == "after" {
            break;
        }
        received.push(id);
    }
    d.send_json(&json!({"id": "marker", "type": "t", "to": {"id": r.id}}))
        .await;
    let mut refused = Vec::new();
    loop {
        let got = r.next_json().await;
        if got["id"] == "marker" {
            break;
        }
        assert_eq!(got["type"], "error", "{got}");
        refused.push(got["payload"]["messageId"].as_str().unwrap().to_owned());
    }
    // In order, once each, and every other one was refused to its sender.
    let numbers: Vec<usize> = received.iter().map(|id| id[1..].parse().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    for i in 0..N {
        let id = format!("m{i}");
        assert!(
            received.contains(&id) || refused.contains(&id),
            "{id} reached nobody and its sender heard nothing: received {received:?}, refused {refused:?}"
        );
    }
}

#[tokio::test]
async fn a_short_nats_outage_costs_the_clients_nothing() {
    let mut nats = Nats::start();
    // A lease long enough that the outage stays under its fence, however
    // long the NATS client's back-off (up to 4 s between tries) and a
    // loaded machine make it.
    let [n1, n2] = nodes(&nats, "30000");
    let p = project();
    let mut r = n1.connect("runtime", &p).await;
    let mut local = n1.connect("data-agent", &p).await;
    let mut remote = n2.connect("admin", &p).await;
    nats.stop();
    n1.wait_health("degraded while NATS is down", |h| {
        h["status"] == "degraded" && h["cluster"]["nats"] == "disconnected"
    })
    .await;
    // The owner serves its own clients meanwhile.
    r.send_json(&json!({"id": "local", "type": "t", "to": {"id": local.id}}))
        .await;
    assert_eq!(local.next_json().await["id"], "local");
    nats.start_again();
    for n in [&n1, &n2] {
        n.wait_health("healthy once NATS is back", |h| h["status"] == "healthy")
            .await;
    }
    r.send_json(&json!({"id": "after", "type": "t", "to": {"id": local.id}}))
        .await;
    assert_eq!(local.next_json().await["id"], "after");
    // The admin on the other node gets its copy of "local" once NATS is
    // back, or, when the outage swallowed it (core NATS delivers at most
    // once), is closed with 1011 rather than skip it unknowingly.
    let mut remote = match within(remote.ws.next()).await {
        Some(Ok(Message::Text(text))) => {
            let got: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(got["id"], "local", "{got}");
            assert_eq!(remote.next_json().await["id"], "after");
            remote
        }
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 1011, "{frame:?}");
            n2.connect("admin", &p).await
        }
        other => panic!("expected the copy or a close, got {other:?}"),
    };
    remote
        .send_json(&json!({"id": "back", "type": "t", "to": {"id": r.id}}))
        .await;
    assert_eq!(r.next_json().await["id"], "back");
}

#[tokio::test]
async fn without_nats_a_node_refuses_what_it_cannot_place_and_stops_its_rooms_at_its_fence() {
    let mut nats = Nats::start();
    let [n1] = nodes(&nats, LEASE_MS);
    let p = project();
    let mut r = n1.connect("runtime", &p).await;
    nats.stop();
    // A project nobody owns cannot be placed: 503, with why.
    let (code, body) = n1
        .refused(&format!("type=runtime&projectId={}", project()))
        .await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["error"], "cluster_unavailable", "{body}");
    // Past three quarters of its lease the node cannot tell whether another
    // node took its projects: it stops them, and its clients reconnect.
    let (code, _) = r.recv_close().await;
    assert_eq!(code, 1012);
    assert_eq!(rooms(&[&n1]).await, [0]);
}

#[tokio::test]
async fn the_clients_of_a_killed_node_leave_their_rooms_elsewhere() {
    let nats = Nats::start();
    let [n1, n2, _n3] = three_nodes(&nats);
    let p = project();
    let mut r = n1.connect("runtime", &p).await;
    let d = n2.connect("data-agent", &p).await;
    let d_id = d.id.clone();
    kill_9(n2);
    // Its lease ends, and the owner's room hears its client left.
    let left = r.next_json().await;
    assert_eq!(left["type"], "client_left", "{left}");
    assert_eq!(left["payload"]["clientId"], d_id.as_str());
    assert_eq!(left["payload"]["clientCount"], 1);
    let (_, status) = n1.get(&format!("/status?projectId={p}")).await;
    assert_eq!(status["clientCount"], 1, "{status}");
}

#[tokio::test]
async fn a_project_keeps_its_store_when_it_moves_and_a_live_node_fires_its_alarm() {
    let nats = Nats::start();
    let url = nats.url();
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    // The chat room keeps one line, trimmed by its alarm 3 s after the
    // first is said; its store and alarm are in JetStream.
    let chat_node = |name: String| {
        Server::start(&[
            "--nats",
            &url,
            "--node-name",
            &name,
            "--lease-ms",
            LEASE_MS,
            "--component",
            crate::lifecycle::CHAT_ROOM,
            "--room-config",
            "chat-history=1",
            "--room-config",
            "chat-trim-ms=3000",
        ])
    };
    let n1 = chat_node(format!("x-{tag}"));
    let n2 = chat_node(format!("y-{tag}"));
    let p = project();
    let (mut a, _) = crate::lifecycle::join_chat(&n1, &p).await;
    for i in 1..=3 {
        send(&mut a, &json!({ "text": format!("line {i}") })).await;
        assert_eq!(recv(&mut a).await["text"], format!("line {i}"));
    }
    // The owner dies with the alarm pending and nobody connected anywhere.
    kill_9(n1);
    // Once the owner's lease ended and the alarm is due, n2 starts the
    // room, which reads its store from JetStream, fires the alarm, and goes.
    n2.wait_stderr("the room to fire its alarm on n2 and be removed", |log| {
        log.lines()
            .any(|l| l.contains("room removed") && l.contains(&p))
    })
    .await;
    let (_b, history) = crate::lifecycle::join_chat(&n2, &p).await;
    let texts: Vec<&str> = history
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["line 3"]);
    let (_, health) = n2.get("/health").await;
    assert_eq!(health["store"]["backend"], "jetstream", "{health}");
    assert!(
        health["store"]["commits"].as_u64().unwrap() >= 1,
        "{health}"
    );
}

#[tokio::test]
async fn a_dead_owner_s_project_is_taken_over_without_waiting_for_a_message() {
    let nats = Nats::start();
    let [n1, n2, n3] = three_nodes(&nats);
    let p = project();
    let (own, mut r, mut d) = one_per_node([&n1, &n2, &n3], &p).await;
    kill_9(n1);
    // Nobody sends anything: the nodes holding its clients notice the
    // owner's lease ended, and one of them takes the project over.
    poll_until(
        "the project's clients gathered by a live node",
        Duration::from_millis(100),
        async || n2.get(&format!("/status?projectId={p}")).await.1,
        |status| status["clientCount"] == 2,
    )
    .await;
    let counts = rooms(&[&n2, &n3]).await;
    assert_eq!(counts.iter().sum::<u64>(), 1, "{counts:?}");
    r.send_json(&json!({"id": "m", "type": "t", "to": {"id": d.id}}))
        .await;
    // The dead node's client left the room: d may hear of it first (its
    // `client_left` and the message come from the new owner in either
    // order), and nothing else.
    let mut got = d.next_json().await;
    if got["type"] == "client_left" {
        assert_eq!(
            got["payload"]["clientId"],
            own.id.as_str(),
            "{got}; own {}, r {}, d {}",
            own.id,
            r.id,
            d.id
        );
        got = d.next_json().await;
    }
    assert_eq!(got["id"], "m", "{got}");
}

#[tokio::test]
async fn a_project_s_limits_and_its_room_s_refusals_hold_across_nodes() {
    let nats = Nats::start();
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let [n1, n2, n3]: [Server; 3] = std::array::from_fn(|i| {
        node_with(
            &nats,
            &format!("l{i}-{tag}"),
            STEADY_LEASE_MS,
            &["--max-project-connections", "2"],
        )
    });
    let p = project();
    let _a = n1.connect("runtime", &p).await;
    // The room on n1 refuses, through n2, what it refuses locally.
    let (code, body) = n2.refused(&format!("type=robot&projectId={p}")).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"], "invalid_type");
    let _b = n2.connect("admin", &p).await;
    // The project's limit counts its clients on every node.
    let (code, body) = n3.refused(&format!("type=runtime&projectId={p}")).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["error"], "too_many_project_connections");
    let (_, status) = n3.get(&format!("/status?projectId={p}")).await;
    assert_eq!(status["clientCount"], 2, "{status}");
}

#[tokio::test]
async fn a_message_near_the_size_limit_crosses_nodes_intact() {
    let nats = Nats::start();
    let [n1, n2, n3] = three_steady_nodes(&nats);
    let p = project();
    let (mut own, mut r, mut d) = one_per_node([&n1, &n2, &n3], &p).await;
    // 1 MB, under --max-message-bytes (1 MiB): with the frame's header and
    // the JSON around it, more than a NATS message holds; the frames for d
    // go from n1 to n3 in pieces.
    let text = "x".repeat(1_000_000);
    let big = json!({"id": "big", "type": "t", "to": {"type": "data-agent"}, "payload": text});
    r.send_json(&big).await;
    let got = d.next_json().await;
    assert_eq!(got["id"], "big");
    assert_eq!(got["payload"].as_str().unwrap().len(), 1_000_000);
    own.assert_nothing_before_marker(&mut d).await;
}

#[tokio::test]
async fn an_http_request_to_any_node_is_served_by_the_project_s_owner() {
    let nats = Nats::start();
    let [n1, n2, n3] = three_steady_nodes(&nats);
    let p = project();
    let (mut r1, mut r2, mut d3) = one_per_node([&n1, &n2, &n3], &p).await;
    // Posted to a node that does not own the project: its owner's room
    // routes it, to the clients of every node.
    let (status, body) = crate::room_http::post_message(
        &n3,
        &p,
        &json!({"id": "from-backend", "to": {"type": "runtime"}}),
    )
    .await;
    assert_eq!(
        (status, body["delivered"].as_u64()),
        (202, Some(2)),
        "{body}"
    );
    for c in [&mut r1, &mut r2] {
        let got = c.next_json().await;
        assert_eq!(got["id"], "from-backend");
        assert_eq!(got["from"]["type"], "server");
    }
    d3.expect_silence(200).await;
    // The room's state, asked of another node, is the owner's.
    let (status, body) = n2.get(&format!("/rooms/{p}")).await;
    assert_eq!(
        (status, body["clientCount"].as_u64()),
        (200, Some(3)),
        "{body}"
    );
    // Still one room, on the owner.
    assert_eq!(rooms(&[&n1, &n2, &n3]).await, [1, 0, 0]);
}

#[tokio::test]
async fn a_room_s_answer_too_large_for_nats_is_a_clear_500_from_other_nodes() {
    use crate::room_http::{PROBE_ROOM, join_probe, raw};
    let nats = Nats::start();
    // Bodies up to 2 MB over HTTP; NATS carries at most 1 MiB (its default
    // max_payload).
    let extra = [
        "--component",
        PROBE_ROOM,
        "--room-http-body-bytes",
        "2000000",
        "--room-storage-bytes",
        "4000000",
    ];
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let n1 = node_with(&nats, &format!("n1-{tag}"), STEADY_LEASE_MS, &extra);
    let n2 = node_with(&nats, &format!("n2-{tag}"), STEADY_LEASE_MS, &extra);
    let p = project();
    let big = "b".repeat(1_200_000);
    // A client on n1 makes it the owner and keeps the room (and its
    // in-memory store) alive.
    let (_client, _) = join_probe(&n1, &format!("type=x&projectId={p}"), None).await;
    let (status, body) = n1
        .request(&raw("PUT", &format!("/rooms/{p}/kv/big"), "", &big))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, text) = n1
        .request_text(&raw("GET", &format!("/rooms/{p}/kv/big"), "", ""))
        .await;
    assert_eq!((status, text.len()), (200, big.len()));
    // Asked of another node, the answer cannot cross: a 500 that says why.
    let (status, body) = n2
        .request(&raw("GET", &format!("/rooms/{p}/kv/big"), "", ""))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (500, Some("room_response_too_large")),
        "{body}"
    );
    // A request too large to cross is refused as clearly.
    let (status, body) = n2
        .request(&raw("PUT", &format!("/rooms/{p}/kv/other"), "", &big))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("body_too_large")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_payload")),
        "{body}"
    );
    // And both nodes go on serving the project.
    let (status, _) = n2
        .request(&raw("PUT", &format!("/rooms/{p}/kv/small"), "", "s"))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn in_memory_no_node_serves_a_project_data_another_node_changed_since() {
    use crate::room_http::{PROBE_ROOM, raw};
    let nats = Nats::start();
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let n1 = node_with(
        &nats,
        &format!("n1-{tag}"),
        LEASE_MS,
        &["--component", PROBE_ROOM],
    );
    let n2 = node_with(
        &nats,
        &format!("n2-{tag}"),
        LEASE_MS,
        &["--component", PROBE_ROOM],
    );
    let p = project();
    // Each request makes the project's room and removes it after (no
    // clients): the project goes to whichever node asks next.
    let put = |value: &str| raw("PUT", &format!("/rooms/{p}/kv/k"), "", value);
    let (status, body) = n1.request(&put("from n1")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = n2.request(&put("from n2")).await;
    assert_eq!(status, 200, "{body}");
    for node in [&n1, &n2] {
        let (status, text) = node
            .request_text(&raw("GET", &format!("/rooms/{p}/kv/k"), "", ""))
            .await;
        assert!(
            !(status == 200 && text == "from n1"),
            "a node served the project's data as it left it, not as another node changed it"
        );
    }
}
