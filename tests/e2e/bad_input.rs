//! What the server does with input it cannot use: bad HTTP requests and
//! upgrades, messages that are not JSON or not a message, unknown targets,
//! frames over the size limit, broken UTF-8 across fragments.

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

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
        r1.send_message(msg).await;
        let err = r1.next_json().await;
        assert_eq!(error_of(&err), code, "{shown}");
        match message_id {
            Some(id) => assert_eq!(err["payload"]["messageId"], id, "{shown}"),
            None => assert!(err["payload"].get("messageId").is_none(), "{shown}"),
        }
    }
    // Nothing was routed: the next thing r2 and a1 see is this message, and
    // the connection still works.
    r1.send_json(&json!({"id": "ok", "type": "t", "to": {"id": r2.id}}))
        .await;
    assert_eq!(r2.next_json().await["id"], "ok");
    assert_eq!(a1.next_json().await["id"], "ok");
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
    r1.send_json(&json!({"id": "m1", "type": "t", "to": {"id": "no-such-client"}}))
        .await;
    let err = r1.next_json().await;
    assert_eq!(error_of(&err), "unknown_target");
    assert_eq!(err["payload"]["messageId"], "m1");
    assert_eq!(a1.next_json().await["id"], "m1");
    assert_eq!(a2.next_json().await["id"], "m1");
}

#[tokio::test]
async fn an_oversize_frame_closes_with_1009() {
    let server = Server::start(&["--max-message-bytes", "1000"]);
    let p = project();
    let mut c = server.connect("runtime", &p).await;
    c.send_message(Message::text("x".repeat(10_000))).await;
    let (code, _) = c.recv_close().await;
    assert_eq!(code, 1009);
    // The server is fine.
    let _ = server.connect("runtime", &p).await;
}

#[tokio::test]
async fn fragmented_text_is_reassembled_and_its_utf8_checked() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let server = Server::start(&[]);
    let p = project();
    let mut r = server.connect("runtime", &p).await;
    let mut d = server.connect("data-agent", &p).await;
    let part =
        |bytes: &[u8], opcode, fin| Message::Frame(Frame::message(bytes.to_vec(), opcode, fin));
    // A message in two fragments arrives whole.
    r.send_message(part(
        br#"{"type":"t","to":{"type":"da"#,
        OpCode::Data(Data::Text),
        false,
    ))
    .await;
    r.send_message(part(
        br#"ta-agent"},"id":"f1"}"#,
        OpCode::Data(Data::Continue),
        true,
    ))
    .await;
    let got = d.next_json().await;
    assert_eq!(
        (got["id"].as_str(), got["type"].as_str()),
        (Some("f1"), Some("t"))
    );
    // Invalid UTF-8 split across fragments (each fragment alone is not
    // checked by the WebSocket layer) closes the sender with 1007.
    r.send_message(part(br#"{"id":"x"#, OpCode::Data(Data::Text), false))
        .await;
    r.send_message(part(b"\xff\"}", OpCode::Data(Data::Continue), true))
        .await;
    assert_eq!(r.recv_close().await.0, 1007);
    // Nobody else is affected.
    let mut r2 = server.connect("runtime", &p).await;
    r2.send_json(&json!({"id": "after", "type": "t", "to": {"type": "data-agent"}}))
        .await;
    loop {
        let got = d.next_json().await;
        if got["id"] == "after" {
            break;
        }
    }
}
