//! sdk-js's Workers layer, end to end: a Durable Object class written the
//! Cloudflare way (`sdk-js/examples/guestbook/`) served as a room. The
//! component is built with Node (`sdk-js/build.sh`), which `cargo test`
//! does not need: `.ci/run` builds it and sets `WSROOM_TEST_DO` to it.
//! Without that variable these tests say so and check nothing.

use serde_json::{Value, json};

use crate::common::*;

/// The guestbook component, if `.ci/run` (or you) built it; else says so.
fn guestbook() -> Option<String> {
    let Ok(path) = std::env::var("WSROOM_TEST_DO") else {
        eprintln!("WSROOM_TEST_DO is not set: the Workers layer's tests need .ci/run's build");
        return None;
    };
    assert!(
        std::path::Path::new(&path).is_file(),
        "WSROOM_TEST_DO={path} is not a file"
    );
    Some(path)
}

async fn join(server: &Server, project: &str, name: &str) -> (Ws, Value) {
    let url = server.url(&format!("type=guest&projectId={project}&name={name}"));
    let (mut ws, _) = within(tokio_tungstenite::connect_async(url))
        .await
        .expect("websocket connect");
    let welcome = recv(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

async fn entries(server: &Server, project: &str) -> Vec<String> {
    let (status, body) = server.get(&format!("/rooms/{project}/entries")).await;
    assert_eq!(status, 200, "{body}");
    body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["text"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_durable_object_s_storage_alarm_env_and_fetch_work_as_on_cloudflare() {
    let Some(component) = guestbook() else {
        return;
    };
    let server = Server::start(&[
        "--component",
        &component,
        "--room-config",
        "greeting=hi there",
        "--room-config",
        "keep=2",
        "--room-config",
        "trimMs=200",
    ]);
    let p = project();
    let (mut ann, welcome) = join(&server, &p, "ann").await;
    // `this.env` is the room config.
    assert_eq!(welcome["greeting"], "hi there");
    assert_eq!(welcome["entries"], json!([]));
    for text in ["one", "two", "three"] {
        send_text(&mut ann, text).await;
        let entry = recv(&mut ann).await;
        assert_eq!(
            (entry["text"].as_str(), entry["name"].as_str()),
            (Some(text), Some("ann"))
        );
    }
    // storage.setAlarm fired `alarm()`, which trimmed with list and delete.
    let trimmed = recv(&mut ann).await;
    assert_eq!(trimmed, json!({"type": "trimmed", "kept": 2}));
    // HTTP into the room is the object's fetch.
    assert_eq!(entries(&server, &p).await, ["two", "three"]);
    // What the store holds greets the next guest.
    let (mut bob, welcome) = join(&server, &p, "bob").await;
    let greeted: Vec<&str> = welcome["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(greeted, ["two", "three"]);
    // webSocketClose reads the leaving socket's attachment.
    let _ = bob.close(None).await;
    let left = recv(&mut ann).await;
    assert_eq!(
        (left["type"].as_str(), left["name"].as_str()),
        (Some("left"), Some("bob"))
    );
    assert_eq!(left["wasClean"], true);
    // deleteAll, through fetch.
    let (status, _) = server
        .request_text(&format!(
            "DELETE /rooms/{p}/entries HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        ))
        .await;
    assert_eq!(status, 204);
    assert!(entries(&server, &p).await.is_empty());
}

#[tokio::test]
async fn a_message_over_the_limit_reaches_web_socket_error() {
    let Some(component) = guestbook() else {
        return;
    };
    let server = Server::start(&["--component", &component, "--max-message-bytes", "1000"]);
    let p = project();
    let (mut ann, _) = join(&server, &p, "ann").await;
    send_text(&mut ann, &"x".repeat(2000)).await;
    let error = recv(&mut ann).await;
    assert_eq!(error["type"], "error", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("size limit"),
        "{error}"
    );
}

#[tokio::test]
async fn a_handler_that_throws_fails_its_event_only() {
    let Some(component) = guestbook() else {
        return;
    };
    let server = Server::start(&["--component", &component]);
    let p = project();
    let (mut ann, _) = join(&server, &p, "ann").await;
    send_text(&mut ann, "throw").await;
    // The room was not reset: ann is still in it, and it goes on.
    send_text(&mut ann, "after").await;
    let entry = recv(&mut ann).await;
    assert_eq!(entry["text"], "after", "{entry}");
    server
        .wait_stderr("the logged exception", |log| {
            log.contains("webSocketMessage threw")
        })
        .await;
    // An HTTP request that says `Upgrade: websocket` is not a join.
    let (status, body) = server
        .request(&format!(
            "GET /rooms/{p}/entries HTTP/1.1\r\nHost: test\r\nConnection: close\r\nUpgrade: websocket\r\n\r\n"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["entries"].as_array().map(Vec::len), Some(1));
    let (_, health) = server.get("/health").await;
    assert_eq!(health["counters"]["roomFailures"], 0, "{health}");
}

#[tokio::test]
async fn keys_order_joins_tags_and_block_concurrency_while_behave_as_on_cloudflare() {
    let Some(component) = guestbook() else {
        return;
    };
    let server = Server::start(&["--component", &component]);
    let p = project();
    // Keys in the order of their UTF-8 bytes (U+FF01 before U+1F600, the
    // other way round in JavaScript's own string order), from `start` or
    // after `startAfter`, up to `end` excluded.
    let (status, order) = server.get(&format!("/rooms/{p}/order")).await;
    assert_eq!(status, 200, "{order}");
    assert_eq!(order["all"], json!(["k:a", "k:\u{FF01}", "k:\u{1F600}"]));
    assert_eq!(order["after"], json!(["k:\u{FF01}", "k:\u{1F600}"]));
    assert_eq!(order["upTo"], json!(["k:a", "k:\u{FF01}"]));
    // A joining client is not among the object's sockets until accepted,
    // and acceptWebSocket keeps Cloudflare's limit on tags.
    let (mut ann, welcome) = join(&server, &p, "ann").await;
    assert_eq!(welcome["others"], 0, "{welcome}");
    let url = server.url(&format!("type=guest&projectId={p}&name=bob&probe=1"));
    let (mut bob, _) = within(tokio_tungstenite::connect_async(url))
        .await
        .expect("websocket connect");
    let welcome = recv(&mut bob).await;
    assert_eq!(welcome["probe"]["before"], 1, "{welcome}");
    assert_eq!(welcome["others"], 1, "{welcome}");
    assert!(
        welcome["probe"]["tagLimit"]
            .as_str()
            .is_some_and(|m| m.contains("at most 10 tags")),
        "{welcome}"
    );
    // The event after a blockConcurrencyWhile waits for its callback, even
    // when the handler that started it did not.
    send_text(&mut ann, "block").await;
    send_text(&mut ann, "blocked?").await;
    let answer = recv(&mut ann).await;
    assert_eq!(
        answer,
        json!({"type": "blocked", "value": "set by the blocking callback"})
    );
}
