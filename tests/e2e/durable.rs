//! Durable rooms: a room's store and alarm outlive the process (a restart, a
//! kill -9 in the middle of writes), the output gate (a line whose write
//! failed is never delivered), a failing disk, one server per data
//! directory, and `wsroom data`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;
use crate::lifecycle::{CHAT_ROOM, join_chat};

/// The chat room on `dir`, keeping every line (no trimming within a test).
fn chat_args(dir: &Path) -> Vec<String> {
    [
        "--component",
        CHAT_ROOM,
        "--data-dir",
        dir.to_str().unwrap(),
        "--room-config",
        "chat-history=1000000",
        "--room-config",
        "chat-trim-ms=3600000",
    ]
    .map(String::from)
    .to_vec()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn texts(history: &[Value]) -> Vec<String> {
    history
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

/// What `wsroom data ...` prints for `dir`, and whether it succeeded.
fn data_command(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsroom"))
        .args(["--data-dir", dir.to_str().unwrap(), "data"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn every_line_a_client_received_survives_kill_9_in_the_middle_of_writes() {
    let dir = scratch_dir("kill9");
    let args = chat_args(&dir);
    let server = Server::start(&strs(&args));
    let p = project();
    let (writer, _) = join_chat(&server, &p).await;
    let (mut reader, _) = join_chat(&server, &p).await;
    // The writer says lines as fast as it can, and never waits for them.
    let (mut say, mut hear) = writer.split();
    let saying = tokio::spawn(async move {
        for i in 0.. {
            let line = json!({ "text": format!("line {i}") }).to_string();
            if say.send(Message::text(line)).await.is_err() {
                break;
            }
        }
    });
    let draining = tokio::spawn(async move { while let Some(Ok(_)) = hear.next().await {} });
    // The reader records every line it gets, up to the kill and the
    // moment its socket breaks: the last ones are the test.
    let received = Arc::new(Mutex::new(Vec::new()));
    let record = received.clone();
    let reading = tokio::spawn(async move {
        while let Some(Ok(Message::Text(t))) = reader.next().await {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "chat" {
                record
                    .lock()
                    .unwrap()
                    .push(v["text"].as_str().unwrap().to_owned());
            }
        }
    });
    poll_until(
        "400 lines heard",
        std::time::Duration::from_millis(5),
        async || received.lock().unwrap().len(),
        |n: &usize| *n >= 400,
    )
    .await;
    // SIGKILL while lines are still being said, written and heard.
    drop(server);
    within(reading).await.unwrap();
    saying.abort();
    draining.abort();
    let received = received.lock().unwrap().clone();

    let server = Server::start(&strs(&args));
    let (_c, history) = join_chat(&server, &p).await;
    let stored = texts(&history);
    // Nothing a client was told is lost, and the store holds what was said
    // in order, with no gap: a prefix of the lines.
    assert!(
        stored.len() >= received.len(),
        "{} stored, {} received",
        stored.len(),
        received.len()
    );
    assert_eq!(stored[..received.len()], received[..]);
    for (i, text) in stored.iter().enumerate() {
        assert_eq!(text, &format!("line {i}"));
    }
    drop(server);
    // The store opens cleanly for the command too, which lists the project.
    let (ok, list, err) = data_command(&dir, &["list"]);
    assert!(ok, "{err}");
    assert!(
        list.lines()
            .any(|l| l.split('\t').next() == Some(p.as_str())),
        "{list}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_pending_alarm_fires_after_a_restart_with_no_client_there() {
    let dir = scratch_dir("alarm");
    let mut args = chat_args(&dir);
    // Keep one line, trimmed 5 s after the first is said (time enough to
    // stop the server before, on a slow machine too).
    args[5] = "chat-history=1".into();
    args[7] = "chat-trim-ms=5000".into();
    let server = Server::start(&strs(&args));
    let p = project();
    let (mut a, _) = join_chat(&server, &p).await;
    for i in 1..=3 {
        send(&mut a, &json!({ "text": format!("line {i}") })).await;
        assert_eq!(recv(&mut a).await["text"], format!("line {i}"));
    }
    drop(a);
    // Stopped before the alarm's time.
    assert!(server.terminate().success());

    let server = Server::start(&strs(&args));
    // The room starts for its alarm, fires it with nobody there, and goes.
    server
        .wait_stderr("the room to fire its alarm and be removed", |log| {
            log.lines()
                .any(|l| l.contains("room removed") && l.contains(&p))
        })
        .await;
    let (_c, history) = join_chat(&server, &p).await;
    assert_eq!(texts(&history), ["line 3"]);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_line_whose_write_failed_reaches_nobody_and_the_room_serves_on() {
    let dir = scratch_dir("full");
    let args = chat_args(&dir);
    let p = project();
    // A first run makes the file; the next may not grow it by much
    // (`ulimit -f`, in blocks of 512 bytes): a disk that fills up.
    let server = Server::start(&strs(&args));
    let (mut a, _) = join_chat(&server, &p).await;
    send(&mut a, &json!({ "text": "line 0" })).await;
    recv(&mut a).await;
    drop(a);
    assert!(server.terminate().success());
    let size = std::fs::metadata(dir.join("rooms.redb")).unwrap().len();
    let blocks = size / 512 + 64;
    let server = Server::start_after(&format!("ulimit -f {blocks}"), &strs(&args));

    let (mut a, _) = join_chat(&server, &p).await;
    let (mut b, _) = join_chat(&server, &p).await;
    let mut received = vec!["line 0".to_owned()];
    let mut failed = None;
    for i in 1..20_000 {
        let line = format!("line {i}");
        send(&mut a, &json!({ "text": line })).await;
        let got = within(b.next()).await.unwrap().unwrap();
        match got {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["text"], line);
                received.push(line);
                assert_eq!(recv(&mut a).await["text"], v["text"]);
            }
            Message::Close(frame) => {
                // The commit failed: the line was not sent to anyone, and
                // the room's clients were closed as after a trap.
                let frame = frame.expect("a close code");
                assert_eq!(u16::from(frame.code), 1011, "{frame:?}");
                // Nor does its sender hear it: the close comes next.
                match within(a.next()).await.unwrap().unwrap() {
                    Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1011),
                    other => panic!("the sender got {other:?}"),
                }
                failed = Some(line);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let failed = failed.expect("the file size limit was never reached");
    let health = server
        .wait_health("the failure counted", |h| {
            h["store"]["commitFailures"].as_u64() >= Some(1)
        })
        .await;
    assert!(health["store"]["commits"].as_u64() >= Some(1), "{health}");
    assert!(server.stderr().contains("commit failed"));
    // The server and the project go on: a newcomer is served (once the
    // store is reopened: until then, `503` `room_failed`, try again) and
    // gets the history as committed (the failed line is not in it).
    let url = server.url(&format!("type=member&projectId={p}"));
    let (mut c, history) = poll_until(
        "a newcomer admitted",
        std::time::Duration::from_millis(50),
        async || match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((mut ws, _)) => {
                let history = recv(&mut ws).await;
                Admitted(Some((ws, history["messages"].as_array().unwrap().clone())))
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 503 => {
                Admitted(None)
            }
            Err(e) => panic!("{e}"),
        },
        |a| a.0.is_some(),
    )
    .await
    .0
    .unwrap();
    assert_eq!(texts(&history), received);
    send(&mut c, &json!({ "text": "still here" })).await;
    let got = within(c.next()).await.unwrap().unwrap();
    assert!(
        matches!(&got, Message::Text(t) if t.contains("still here"))
            || matches!(&got, Message::Close(Some(f)) if u16::from(f.code) == 1011),
        "{got:?}"
    );
    drop(server);
    // Nothing committed was damaged: with room on the disk again, the
    // store holds exactly what its clients were told.
    let server = Server::start(&strs(&args));
    let (_d, history) = join_chat(&server, &p).await;
    let stored = texts(&history);
    assert!(!stored.contains(&failed), "{failed} was stored");
    assert_eq!(stored[..received.len()], received[..]);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn one_server_per_data_directory_and_one_it_cannot_write_is_named() {
    let dir = scratch_dir("twice");
    let dir_s = dir.to_str().unwrap();
    let first = Server::start(&["--data-dir", dir_s]);
    let err = refused_at_start(&["--data-dir", dir_s]);
    assert!(
        err.contains("in use by another wsroom server") && err.contains(dir_s),
        "{err}"
    );
    // The first one is unharmed, and `wsroom data` says to stop it first.
    let (status, _) = first.get("/health").await;
    assert_eq!(status, 200);
    let (ok, _, err) = data_command(&dir, &["list"]);
    assert!(!ok && err.contains("stop the server first"), "{err}");
    drop(first);

    let file = temp_file("not-a-dir", "");
    let under_file = file.join("data");
    let err = refused_at_start(&["--data-dir", under_file.to_str().unwrap()]);
    assert!(
        err.contains("cannot create the data directory") && err.contains("not-a-dir"),
        "{err}"
    );
    // A directory that exists but takes no files (root included).
    let err = refused_at_start(&["--data-dir", "/proc/self"]);
    assert!(
        err.contains("cannot write in the data directory /proc/self"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&file);
}

#[tokio::test]
async fn wsroom_data_dumps_a_project_as_json() {
    let dir = scratch_dir("dump");
    let args = chat_args(&dir);
    let server = Server::start(&strs(&args));
    let p = project();
    let (mut a, _) = join_chat(&server, &p).await;
    send(&mut a, &json!({ "text": "hello \"there\"" })).await;
    recv(&mut a).await;
    drop(a);
    assert!(server.terminate().success());
    let (ok, out, err) = data_command(&dir, &["dump", &p]);
    assert!(ok, "{err}");
    let dump: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(dump["projectId"], p);
    let entries = dump["entries"].as_array().unwrap();
    let keys: Vec<&str> = entries.iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["line:00000000000000000000", "next"]);
    let line: Value = serde_json::from_str(entries[0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(line["text"], "hello \"there\"");
    assert_eq!(entries[1]["text"], "1");
    // The trimming alarm is pending, an hour away.
    assert!(dump["alarm"]["at"].as_u64().is_some(), "{dump}");
    // A project with nothing stored dumps as empty.
    let (ok, out, _) = data_command(&dir, &["dump", "nobody"]);
    assert!(ok);
    let empty: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(empty["entries"], json!([]));
    assert_eq!(empty["alarm"], Value::Null);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_room_that_deletes_all_its_data_is_gone_after_a_restart() {
    let dir = scratch_dir("clear");
    let args = chat_args(&dir);
    let server = Server::start(&strs(&args));
    let p = project();
    let (mut a, _) = join_chat(&server, &p).await;
    send(&mut a, &json!({ "text": "forget me" })).await;
    recv(&mut a).await;
    send_text(&mut a, "/clear").await;
    assert_eq!(recv(&mut a).await["type"], "cleared");
    drop(a);
    assert!(server.terminate().success());
    let (ok, list, err) = data_command(&dir, &["list"]);
    assert!(ok, "{err}");
    // Nothing is left of the project: no key, and no alarm either.
    assert!(!list.contains(&p), "{list}");
    let server = Server::start(&strs(&args));
    let (_b, history) = join_chat(&server, &p).await;
    assert!(history.is_empty(), "{history:?}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A join's outcome, for `poll_until` (which shows what it waits for).
struct Admitted(Option<(Ws, Vec<Value>)>);

impl std::fmt::Display for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "admitted" } else { "503" })
    }
}
