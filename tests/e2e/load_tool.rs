//! The load tool (`load/`, the `wsroom-load` crate) against real servers:
//! its checks pass where delivery is right and fail, saying why, where it
//! is not; it refuses what it must not run; and the reference server it
//! compares wsroom with passes the same checks.
//!
//! The tool runs in this process through its library, with the arguments
//! of its command line, on a thread and a runtime of its own as in a
//! process of its own; what needs a process of its own (a lower open-files
//! limit) runs this test binary again as one.

use std::time::Duration;

use clap::Parser as _;
use serde_json::Value;

use crate::common::*;

/// Bound of one run of the tool here: its own `--timeout-secs` (30 at
/// most) and the time to set up and tear down its connections.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the load tool with `args` as its command line; its report, or the
/// error it would print on stderr (after `Error: `).
async fn run_tool(args: &[&str]) -> Result<Value, String> {
    let argv: Vec<String> = std::iter::once("wsroom-load")
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // The tool blocks its thread on a runtime of its own.
    std::thread::spawn(move || {
        let outcome = wsroom_load::Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())
            .and_then(|cli| wsroom_load::run(&cli).map_err(|e| format!("{e:?}")));
        let _ = tx.send(outcome);
    });
    tokio::time::timeout(RUN_TIMEOUT, rx)
        .await
        .expect("the load tool did not finish")
        .expect("the load tool panicked")
}

/// Runs the load tool against the server at `addr`; returns whether it
/// succeeded (the exit status 0 of the binary), and its report.
async fn load_any_at(addr: &str, args: &[&str]) -> (bool, Value) {
    let args: Vec<&str> = ["--server", addr, "--json"]
        .iter()
        .chain(args)
        .copied()
        .collect();
    let report = run_tool(&args)
        .await
        .unwrap_or_else(|e| panic!("no JSON report: {e}"));
    (report["ok"] == true, report)
}

/// Runs the load tool; returns whether it succeeded, and its report.
async fn load_any(server: &Server, args: &[&str]) -> (bool, Value) {
    load_any_at(&server.addr.to_string(), args).await
}

/// Runs the load tool against the server at `addr` and returns its JSON
/// report; the tool must report success.
async fn load_at(addr: &str, args: &[&str]) -> Value {
    let args: Vec<&str> = ["--timeout-secs", "30"]
        .iter()
        .chain(args)
        .copied()
        .collect();
    let (ok, report) = load_any_at(addr, &args).await;
    assert!(ok, "load tool failed: {report}");
    report
}

/// Runs the load tool against `server` and returns its JSON report; the
/// tool must report success.
async fn load(server: &Server, args: &[&str]) -> Value {
    load_at(&server.addr.to_string(), args).await
}

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
        )
        .await;
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
        )
        .await;
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
    )
    .await;
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
    )
    .await;
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
    )
    .await;
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
    )
    .await;
    assert!(!ok, "{r}");
    assert_eq!(r["ok"], false);
    assert_eq!(r["checks"]["lost"], 20, "{r}");
    // Errors are counted, and the report says what the first one was.
    let server = Server::start(&["--max-connections", "3"]);
    let args = ["connect", "--connections", "5", "--projects", "1"];
    let (ok, r) = load_any(&server, &args).await;
    assert!(!ok, "{r}");
    assert_eq!(r["checks"]["errors"], 2, "{r}");
    let first = r["checks"]["firstError"].as_str().unwrap_or_default();
    assert!(first.contains("connect") && first.contains("503"), "{r}");
}

#[tokio::test]
async fn the_load_tool_refuses_other_hosts() {
    let err = run_tool(&["--server", "10.1.2.3:8787", "rpc"])
        .await
        .expect_err("a run against another host");
    assert!(err.contains("loopback"), "{err}");
    // A pid that is no process is refused before anything is measured.
    let err = run_tool(&["--server-pid", &u32::MAX.to_string(), "rpc"])
        .await
        .expect_err("a run with no such server");
    assert!(
        err.contains("--server-pid") && err.contains("no such process"),
        "{err}"
    );
    // Options that would be ignored are refused, saying why.
    let err = run_tool(&["connect", "--hold-secs", "5"])
        .await
        .expect_err("a hold without a server to measure");
    assert!(
        err.contains("--hold-secs") && err.contains("--server-pid"),
        "{err}"
    );
    let err = run_tool(&["connect", "--storm", "--concurrency", "10"])
        .await
        .expect_err("a storm with a concurrency");
    assert!(
        err.contains("--storm") && err.contains("--concurrency"),
        "{err}"
    );
}

#[tokio::test]
async fn the_reference_server_passes_the_load_tools_checks() {
    // The yardstick the README compares wsroom with must route correctly too.
    let listener = within(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let reference = tokio::spawn(wsroom_load::reference::serve_on(listener));
    for route in ["type", "id", "broadcast"] {
        let r = load_at(
            &addr,
            &[
                "fanout",
                "--receivers",
                "5",
                "--messages",
                "200",
                "--route",
                route,
            ],
        )
        .await;
        assert_eq!(r["checks"]["lost"], 0, "{r}");
    }
    let r = load_at(
        &addr,
        &["rpc", "--pairs", "4", "--projects", "2", "--requests", "50"],
    )
    .await;
    assert_eq!(r["checks"]["errors"], 0, "{r}");
    reference.abort();
}

#[tokio::test]
async fn the_chat_scenario_hears_every_line_back_from_the_durable_chat_room() {
    let server = Server::start(&["--component", crate::lifecycle::CHAT_ROOM]);
    let (ok, report) = load_any(
        &server,
        &[
            "chat",
            "--speakers",
            "6",
            "--projects",
            "2",
            "--lines",
            "30",
        ],
    )
    .await;
    assert!(ok, "{report}");
    assert_eq!(report["said"], 180, "{report}");
    assert!(report["latency"]["p50Us"].as_f64() > Some(0.0), "{report}");
    // Every line was a write the store committed.
    let (_, health) = server.get("/health").await;
    assert!(
        health["store"]["roomCommits"].as_u64() >= Some(1),
        "{health}"
    );
    let p50 = &health["store"]["commitLatencyMs"]["p50"];
    assert!(p50.as_f64().is_some(), "{health}");
}

#[tokio::test]
async fn a_storm_opens_every_connection_at_once_from_many_addresses() {
    // Five handshakes at once per address: 300 clients at once from one
    // address would be refused, from 250 addresses they all get in.
    let server = Server::start(&["--in-memory", "--max-handshakes-per-address", "5"]);
    let r = load(
        &server,
        &[
            "connect",
            "--connections",
            "300",
            "--projects",
            "10",
            "--storm",
        ],
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["storm"], true, "{r}");
    assert_eq!(r["opened"], 300, "{r}");
    assert_eq!(r["concurrency"], 300, "{r}");
    assert!(r["timeToConnected"]["p99Us"].as_f64().unwrap() > 0.0, "{r}");
}

#[tokio::test]
async fn connect_reports_memory_held_and_while_everyone_leaves() {
    let server = Server::start(&["--in-memory", "--hibernate-after-ms", "200"]);
    let pid = server.pid().to_string();
    let r = load(
        &server,
        &[
            "connect",
            "--connections",
            "20",
            "--projects",
            "20",
            "--hold-secs",
            "1",
            "--server-pid",
            &pid,
        ],
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let held = &r["held"];
    assert_eq!(held["holdSecs"], 1.0, "{r}");
    // By RSS: a process's PSS shrinks when other processes start mapping
    // the same binary, as the other tests' servers do meanwhile.
    assert!(
        held["rssBytesPerProjectHeld"].as_f64().unwrap() > 0.0,
        "{r}"
    );
    assert!(held["bytesPerProjectHeld"].is_f64(), "{r}");
    let peak = held["rssPeakLeavingBytes"].as_u64().unwrap();
    assert!(peak >= held["rssHeldBytes"].as_u64().unwrap(), "{r}");
    // The rooms hibernated during the hold.
    let (_, health) = server.get("/health").await;
    assert!(
        health["counters"]["hibernations"].as_u64().unwrap() >= 20,
        "{health}"
    );
}
