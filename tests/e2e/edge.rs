//! Edge hardening: what no well-behaved client library sends, sent by hand
//! over raw sockets (RFC 6455 framing rules, the opening handshake's rules,
//! HTTP methods), and one address trying to starve everyone else of
//! handshakes (slowloris).

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::*;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A WebSocket opened by hand, to send frames no client library would.
struct RawWs {
    s: TcpStream,
}

impl RawWs {
    /// Upgrades into `project` as `kind` and reads the `connected` message.
    async fn open(server: &Server, kind: &str, project: &str) -> RawWs {
        RawWs::open_sending(server, kind, project, &[]).await
    }

    /// The same, with `early` (frames) in the request's own write.
    async fn open_sending(server: &Server, kind: &str, project: &str, early: &[u8]) -> RawWs {
        let mut s = within(TcpStream::connect(server.addr)).await.unwrap();
        let req = format!(
            "GET /websocket?type={kind}&projectId={project} HTTP/1.1\r\nHost: t\r\n\
             Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: {KEY}\r\n\r\n"
        );
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(early);
        within(s.write_all(&bytes)).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            within(s.read_exact(&mut byte)).await.unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let mut ws = RawWs { s };
        let (opcode, payload) = ws.read_frame().await;
        assert_eq!(opcode, 1);
        let hello: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(hello["type"], "connected");
        ws
    }

    /// Sends one frame, masked with a fixed key or not masked at all.
    async fn send(&mut self, opcode: u8, payload: &[u8], masked: bool) {
        within(self.s.write_all(&frame(opcode, payload, masked)))
            .await
            .unwrap();
    }

    /// Reads one (unmasked) frame from the server: its opcode and payload.
    async fn read_frame(&mut self) -> (u8, Vec<u8>) {
        let mut head = [0u8; 2];
        within(self.s.read_exact(&mut head)).await.unwrap();
        assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
        let len = match head[1] & 0x7f {
            126 => {
                let mut n = [0u8; 2];
                within(self.s.read_exact(&mut n)).await.unwrap();
                u16::from_be_bytes(n) as usize
            }
            127 => {
                let mut n = [0u8; 8];
                within(self.s.read_exact(&mut n)).await.unwrap();
                u64::from_be_bytes(n) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        within(self.s.read_exact(&mut payload)).await.unwrap();
        (head[0] & 0x0f, payload)
    }

    /// Reads frames up to the server's close frame: its code, and its
    /// whole payload's length.
    async fn read_close(&mut self) -> (u16, usize) {
        loop {
            let (opcode, payload) = self.read_frame().await;
            if opcode == 8 {
                assert!(payload.len() >= 2, "a close frame with a code");
                return (u16::from_be_bytes([payload[0], payload[1]]), payload.len());
            }
        }
    }
}

/// One client frame, masked with a fixed key or not masked at all.
fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => frame.push(mask_bit | n as u8),
        n => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    if masked {
        let key = [7u8, 1, 9, 3];
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        frame.extend_from_slice(payload);
    }
    frame
}

fn broadcast(id: &str) -> Vec<u8> {
    json!({"id": id, "type": "t", "payload": 1})
        .to_string()
        .into_bytes()
}

#[tokio::test]
async fn an_unmasked_frame_closes_with_1002_and_is_not_routed() {
    let server = Server::start(&[]);
    let p = project();
    let mut watcher = server.connect("data-agent", &p).await;
    let mut raw = RawWs::open(&server, "runtime", &p).await;
    // RFC 6455 5.1: a client's frames are masked; a server closes on one
    // that is not.
    raw.send(1, &broadcast("unmasked"), false).await;
    assert_eq!(raw.read_close().await.0, 1002);
    // The other client hears that it left, never the message.
    let next = watcher.next_json().await;
    assert_eq!(next["type"], "client_left", "{next}");
    // A masked frame on a new connection is routed as ever.
    let mut raw = RawWs::open(&server, "runtime", &p).await;
    raw.send(1, &broadcast("masked"), true).await;
    let next = watcher.next_json().await;
    assert_eq!(next["id"], "masked", "{next}");
}

#[tokio::test]
async fn frames_sent_in_the_upgrade_request_s_own_write_are_read_in_order() {
    let server = Server::start(&[]);
    let p = project();
    let mut watcher = server.connect("data-agent", &p).await;
    // A client that does not wait for the 101 before its first frames (they
    // reach the server with the request, read along with it).
    let mut early = frame(1, &broadcast("first"), true);
    early.extend(frame(1, &broadcast("second"), true));
    let mut raw = RawWs::open_sending(&server, "runtime", &p, &early).await;
    for id in ["first", "second"] {
        let next = watcher.next_json().await;
        assert_eq!(next["id"], id, "{next}");
    }
    // And the connection reads on from its socket.
    raw.send(1, &broadcast("third"), true).await;
    let next = watcher.next_json().await;
    assert_eq!(next["id"], "third", "{next}");
}

#[tokio::test]
async fn messages_sent_in_one_write_each_reach_the_room_in_order_before_what_follows_them() {
    let server = Server::start(&[]);
    let p = project();
    let mut watcher = server.connect("data-agent", &p).await;
    let mut raw = RawWs::open(&server, "runtime", &p).await;
    // Forty messages with an invalid one among them, then a close, in one
    // write: the default room (which takes batches) gets the messages
    // together.
    let mut burst = Vec::new();
    for i in 0..40 {
        if i == 20 {
            burst.extend(frame(1, b"{not json", true));
        }
        burst.extend(frame(1, &broadcast(&format!("m{i}")), true));
    }
    burst.extend(frame(8, &1000u16.to_be_bytes(), true));
    within(raw.s.write_all(&burst)).await.unwrap();
    // The sender hears of the invalid one before the echo of its close.
    let mut errors = 0;
    loop {
        let (opcode, payload) = raw.read_frame().await;
        if opcode == 8 {
            assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1000);
            break;
        }
        let message: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(message["type"], "error", "{message}");
        errors += 1;
    }
    assert_eq!(errors, 1);
    // Every other message reached the other client once, in order, before
    // the sender left.
    for i in 0..40 {
        let next = watcher.next_json().await;
        assert_eq!(next["id"], format!("m{i}"), "{next}");
    }
    let next = watcher.next_json().await;
    assert_eq!(next["type"], "client_left", "{next}");
}

#[tokio::test]
async fn a_message_sent_with_a_ping_behind_it_is_routed_and_the_ping_answered() {
    let server = Server::start(&[]);
    let p = project();
    let mut watcher = server.connect("data-agent", &p).await;
    let mut raw = RawWs::open(&server, "runtime", &p).await;
    // The message is read with a frame behind it, so it is gathered for a
    // batch, which ends up holding it alone (a batch of one goes to
    // `on-text`).
    let mut burst = frame(1, &broadcast("alone"), true);
    burst.extend(frame(9, b"are you there", true));
    within(raw.s.write_all(&burst)).await.unwrap();
    assert_eq!(raw.read_frame().await, (10, b"are you there".to_vec()));
    let next = watcher.next_json().await;
    assert_eq!(next["id"], "alone", "{next}");
}

#[tokio::test]
async fn control_frames_over_125_bytes_close_with_1002_and_nothing_over_125_is_sent() {
    let server = Server::start(&[]);
    // A project of its own for each socket: another socket of the same
    // project leaving would send this one a `client_left` first.
    // A close frame with a 200-byte payload: answered with 1002, never
    // echoed as a 200-byte control frame.
    let mut raw = RawWs::open(&server, "runtime", &project()).await;
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(&[b'r'; 198]);
    raw.send(8, &close, true).await;
    let (code, len) = raw.read_close().await;
    assert_eq!(code, 1002);
    assert!(len <= 125, "a {len}-byte close frame");
    // A pong or a ping of 126 bytes: the same.
    for opcode in [10u8, 9] {
        let mut raw = RawWs::open(&server, "runtime", &project()).await;
        raw.send(opcode, &[b'x'; 126], true).await;
        assert_eq!(raw.read_close().await.0, 1002, "opcode {opcode}");
    }
    // At 125 bytes a ping is answered with its pong, and a close echoed.
    let mut raw = RawWs::open(&server, "runtime", &project()).await;
    raw.send(9, &[b'y'; 125], true).await;
    let (opcode, payload) = raw.read_frame().await;
    assert_eq!((opcode, payload.len()), (10, 125));
    let mut close = 4000u16.to_be_bytes().to_vec();
    close.extend_from_slice(&[b'z'; 123]);
    raw.send(8, &close, true).await;
    assert_eq!(raw.read_close().await, (4000, 125));
    // A close code that may not be sent on the wire.
    let mut raw = RawWs::open(&server, "runtime", &project()).await;
    raw.send(8, &1005u16.to_be_bytes(), true).await;
    assert_eq!(raw.read_close().await.0, 1002);
}

#[tokio::test]
async fn an_http_1_0_upgrade_is_refused_with_400_before_any_101() {
    let server = Server::start(&[]);
    let (status, body) = server
        .request(&format!(
            "GET /websocket?type=runtime&projectId=p HTTP/1.0\r\nHost: t\r\n\
             Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: {KEY}\r\n\r\n"
        ))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "bad_upgrade", "{body}");
    // Nothing was admitted.
    let health = server.get("/health").await.1;
    assert_eq!(health["counters"]["connectionsTotal"], 0, "{health}");
}

#[tokio::test]
async fn requests_without_host_bad_keys_and_head_get_what_the_rfcs_say() {
    let server = Server::start(&[]);
    let upgrade = |host: &str, key: &str| {
        format!(
            "GET /websocket?type=runtime&projectId=p HTTP/1.1\r\n{host}\
             Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: {key}\r\n\r\n"
        )
    };
    // RFC 9112 3.2: an HTTP/1.1 request without Host is a 400.
    let (status, body) = server.request(&upgrade("", KEY)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("missing_host"))
    );
    let (status, body) = server
        .request("GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("missing_host"))
    );
    // ...and to one with two.
    let (status, body) = server
        .request("GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("missing_host"))
    );
    // Two version or key lines: which one would a proxy read?
    for twice in [
        "Host: t\r\nSec-WebSocket-Version: 8\r\n",
        "Host: t\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n",
    ] {
        let (status, body) = server.request(&upgrade(twice, KEY)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_upgrade")),
            "{twice}"
        );
    }
    // RFC 6455 4.2.1: the key is 16 bytes in base64.
    for key in ["abc", "dGhlIHNhbXBsZSBub25jZQ", "not base64 at all, but 24"] {
        let (status, body) = server.request(&upgrade("Host: t\r\n", key)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_upgrade")),
            "{key}"
        );
    }
    // RFC 9110 9.1: HEAD is answered as GET, without the body.
    for path in ["/health", "/status?projectId=p", "/metrics"] {
        let (status, text) = server
            .request_text(&format!(
                "HEAD {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            ))
            .await;
        assert_eq!((status, text.as_str()), (200, ""), "{path}");
    }
    // Other methods: 405, naming both.
    let raw = server
        .exchange("DELETE /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await;
    assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
    assert!(
        raw.to_ascii_lowercase().contains("allow: get, head"),
        "{raw}"
    );
}

/// Opens a connection from `source` (a loopback address) that sends half
/// a request head and then nothing.
async fn slow_handshake(server: &Server, source: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut s = within(socket.connect(server.addr)).await.unwrap();
    within(s.write_all(b"GET /websocket?type=runtime&projectId=p HTTP/1.1\r\nHost: x\r\n"))
        .await
        .unwrap();
    s
}

#[tokio::test]
async fn one_address_holding_slow_handshakes_does_not_delay_another() {
    // 64 HTTP connections are served at once (the least there is); one
    // address may hold 8 of them in the HTTP phase. The header timeout is
    // long, as an attacker would have it.
    let server = Server::start(&[
        "--max-connections",
        "64",
        "--max-handshakes-per-address",
        "8",
        "--handshake-timeout-ms",
        "30000",
    ]);
    let health = server.get("/health").await.1;
    assert_eq!(health["maxHandshakesPerAddress"], 8, "{health}");
    // 127.0.0.2 opens as many as there are HTTP slots and stalls them all.
    let mut slow = Vec::new();
    for _ in 0..64 {
        slow.push(slow_handshake(&server, "127.0.0.2").await);
    }
    // Past its 8, each is answered 503 at once and closed.
    let mut refused = 0;
    for s in &mut slow {
        let mut buf = vec![0u8; 512];
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(text.starts_with("HTTP/1.1 503"), "{text}");
                assert!(text.contains("too_many_handshakes"), "{text}");
                refused += 1;
            }
            _ => {}
        }
    }
    assert_eq!(refused, 56);
    // A client from another address gets its WebSocket at once, not after
    // the 30 s the slow ones may stall.
    let mut client = tokio::time::timeout(
        Duration::from_secs(5),
        server.connect("runtime", &project()),
    )
    .await
    .expect("a handshake from 127.0.0.1 waited for 127.0.0.2's");
    client.close().await;
    let health = server.get("/health").await.1;
    assert_eq!(health["counters"]["handshakesRefused"], 56, "{health}");
    drop(slow);
}

#[tokio::test]
async fn a_client_that_only_sends_pings_is_dropped_for_not_answering_ours() {
    let server = Server::start(&["--ping-interval-ms", "200"]);
    let mut raw = RawWs::open(&server, "runtime", &project()).await;
    // Its own pings every 50 ms, never a pong to the server's: its pings
    // show it can send, not that it reads, so it is dropped after two
    // silent intervals, as a client sending nothing is.
    let ping = [0x89u8, 0x80, 1, 2, 3, 4];
    let mut buf = [0u8; 256];
    within(async {
        loop {
            if raw.s.write_all(&ping).await.is_err() {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(50), raw.s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                _ => {}
            }
        }
    })
    .await;
}
