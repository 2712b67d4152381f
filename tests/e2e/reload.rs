//! Room components: one per project pattern, checked at start and by
//! `wsroom check`, swapped by SIGHUP without dropping a socket; SIGHUP also
//! reloads the TLS certificate.

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

/// The default room as a file, built by the host's build script.
const DEFAULT_ROOM: &str = concat!(env!("OUT_DIR"), "/default-room.wasm");

/// A room built against contract 0.3.0 (`tests/compat-room/`).
const COMPAT_ROOM: &str = concat!(env!("OUT_DIR"), "/compat-room.wasm");

pub(crate) fn sighup(server: &Server) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn projects_matching_a_pattern_run_their_own_component() {
    let server = Server::start(&["--project-component", &format!("echo-*={FIXTURE_ROOM}")]);
    // The fixture room answers every text with {"echo": text} ...
    let mut e = server
        .connect("runtime", &format!("echo-{}", project()))
        .await;
    e.send_text("hello").await;
    assert_eq!(e.next_json().await, json!({"echo": "hello"}));
    // ... the default room, for everyone else, says the text is not JSON.
    let mut d = server.connect("runtime", &project()).await;
    d.send_text("hello").await;
    let reply = d.next_json().await;
    assert_eq!(reply["type"], "error", "{reply}");
    // The console names the component each project runs.
    let (_, page) = server.get("/console/api/projects").await;
    let components: Vec<(bool, &str)> = page["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let echo = p["projectId"].as_str().unwrap().starts_with("echo-");
            (echo, p["component"].as_str().unwrap())
        })
        .collect();
    assert!(components.contains(&(true, "fixture-room.wasm")), "{page}");
    // (A server given --project-component runs the embedded room for the
    // rest, whatever WSROOM_TEST_ROOM says: the harness adds no --component.)
    assert!(components.contains(&(false, "default")), "{page}");
}

#[tokio::test]
async fn a_component_that_does_not_fit_is_refused_at_start() {
    let dir = std::env::temp_dir().join(format!("wsroom-bad-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("not-a-room.wasm");
    // An empty component: valid, but it exports nothing a room must.
    std::fs::write(&bad, b"\0asm\x0d\x00\x01\x00").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsroom"))
        .args(["--listen", "127.0.0.1:0", "--in-memory", "--component"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not-a-room.wasm"), "{stderr}");
    assert!(
        stderr.contains("does not fit the wsroom:room/room world"),
        "{stderr}"
    );
    // A core module is not a component at all.
    std::fs::write(&bad, b"\0asm\x01\0\0\0").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsroom"))
        .args(["--listen", "127.0.0.1:0", "--in-memory", "--component"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_wsroom"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--in-memory",
            "--component",
            "/no/such/room.wasm",
        ])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/no/such/room.wasm"));
}

#[tokio::test]
async fn a_component_with_an_import_the_host_lacks_is_refused_by_name() {
    let bad = std::env::temp_dir().join(format!("wsroom-test-{}.wasm", uuid::Uuid::new_v4()));
    let wasm = wat::parse_str(
        r#"(component (import "acme:missing/thing@1.0.0" (instance (export "f" (func)))))"#,
    )
    .unwrap();
    std::fs::write(&bad, wasm).unwrap();
    for flag in ["--component".to_owned(), "--project-component".to_owned()] {
        let value = if flag == "--component" {
            bad.display().to_string()
        } else {
            format!("p-*={}", bad.display())
        };
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsroom"))
            .args(["--listen", "127.0.0.1:0", "--in-memory", &flag, &value])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("acme:missing/thing@1.0.0"), "{stderr}");
        assert!(stderr.contains(&bad.display().to_string()), "{stderr}");
    }
    // `wsroom check` says the same without starting a server, and passes a
    // component that fits.
    let check = |paths: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wsroom"))
            .arg("check")
            .args(paths)
            .output()
            .unwrap()
    };
    // Each file gets its verdict, the misfit first.
    let out = check(&[bad.to_str().unwrap(), FIXTURE_ROOM]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("acme:missing/thing@1.0.0"), "{stderr}");
    assert!(stderr.contains("1 of 2 components do not fit"), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("{FIXTURE_ROOM}: fits the wsroom:room/room world"))
    );
    // It says which version of the contract each was built against: the
    // fixture room still against the first, the chat room the current one
    // (with the SDK's `on-texts`).
    let chat = crate::lifecycle::CHAT_ROOM;
    let out = check(&[FIXTURE_ROOM, chat, COMPAT_ROOM]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "{FIXTURE_ROOM}: fits the wsroom:room/room world (built against wsroom:room@0.1.0)"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "{chat}: fits the wsroom:room/room world (built against wsroom:room@0.4.0, taking text messages in batches)"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "{COMPAT_ROOM}: fits the wsroom:room/room world (built against wsroom:room@0.3.0)"
        )),
        "{stdout}"
    );
    let _ = std::fs::remove_file(bad);
}

#[tokio::test]
async fn a_room_built_against_0_3_0_is_served_as_that_contract_says() {
    let server = Server::start(&["--component", COMPAT_ROOM]);
    let p = project();
    let url = server.url(&format!("type=runtime&projectId={p}&x=1"));
    let (ws, _) = within(tokio_tungstenite::connect_async(url))
        .await
        .expect("websocket connect");
    let mut a = Client::hello(ws).await;
    let mut b = server.connect("runtime", &p).await;
    // A text message reaches its `on-message`; its `send` to the sender and
    // to the sender's type reaches each client once, and answers what each
    // target added; `client` tells the sender's params.
    a.send_json(&json!({"hi": 1})).await;
    assert_eq!(a.next_json().await, json!({"hi": 1}));
    assert_eq!(b.next_json().await, json!({"hi": 1}));
    assert_eq!(
        a.next_json().await,
        json!({"counts": [1, 1], "params": [["x", "1"]]})
    );
    b.send_json(&json!({"hey": 2})).await;
    assert_eq!(b.next_json().await, json!({"hey": 2}));
    assert_eq!(a.next_json().await, json!({"hey": 2}));
    assert_eq!(b.next_json().await, json!({"counts": [1, 1], "params": []}));
}

#[tokio::test]
async fn sighup_upgrades_room_code_without_dropping_a_socket() {
    let path = std::env::temp_dir().join(format!("wsroom-test-{}.wasm", uuid::Uuid::new_v4()));
    std::fs::copy(DEFAULT_ROOM, &path).unwrap();
    let server = Server::start(&["--component", path.to_str().unwrap()]);
    let p = project();
    let mut r = server.connect("runtime", &p).await;
    let mut d = server.connect("data-agent", &p).await;
    let msg = |i: usize| json!({"id": format!("m{i}"), "type": "t", "to": {"type": "data-agent"}});

    // Traffic before, across and after a reload of the same code.
    for i in 0..100 {
        r.send_json(&msg(i)).await;
    }
    sighup(&server);
    for i in 100..150 {
        r.send_json(&msg(i)).await;
    }
    server
        .wait_health("the reload", |h| h["counters"]["reloads"] == 1)
        .await;
    for i in 150..200 {
        r.send_json(&msg(i)).await;
    }
    for i in 0..200 {
        let got = d.next_json().await;
        assert_eq!(got["id"], format!("m{i}"), "{got}");
        assert_eq!(got["from"]["id"], r.id.as_str());
    }
    let (_, health) = server.get("/health").await;
    assert_eq!(health["counters"]["roomsUpgraded"], 1, "{health}");
    assert_eq!(health["connections"], 2, "{health}");

    // A broken file: the reload fails, the old code keeps running.
    std::fs::write(&path, b"not wasm").unwrap();
    sighup(&server);
    server
        .wait_health("the failed reload", |h| {
            h["counters"]["reloadFailures"] == 1
        })
        .await;
    r.send_json(&msg(200)).await;
    assert_eq!(d.next_json().await["id"], "m200");
    server
        .wait_stderr("the reload error", |log| log.contains("reload failed"))
        .await;

    // New code: the same sockets now talk to the fixture room, which echoes.
    std::fs::copy(FIXTURE_ROOM, &path).unwrap();
    sighup(&server);
    server
        .wait_health("the second reload", |h| h["counters"]["reloads"] == 2)
        .await;
    r.send_text("after").await;
    assert_eq!(r.next_json().await, json!({"echo": "after"}));
    d.send_text("me too").await;
    assert_eq!(d.next_json().await, json!({"echo": "me too"}));
    let (_, health) = server.get("/health").await;
    assert_eq!(health["connections"], 2, "{health}");
    assert_eq!(health["counters"]["roomFailures"], 0, "{health}");
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn sighup_reloads_the_tls_certificate_for_new_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{self, pki_types::CertificateDer};

    // Two certificates for localhost, as a renewal would bring.
    let issue = || rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (old, new) = (issue(), issue());
    let dir = std::env::temp_dir().join(format!("wsroom-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let install = |c: &rcgen::CertifiedKey<rcgen::KeyPair>| {
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
    };
    install(&old);
    let server = Server::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    // A client that trusts one of the two certificates only.
    let trusting = |c: &rcgen::CertifiedKey<rcgen::KeyPair>| {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(c.cert.der().to_vec()))
            .unwrap();
        tls_connector(roots)
    };
    let addr = server.addr;
    // /health over https for a client trusting `c`; none if the handshake
    // fails.
    let health = |c: tokio_rustls::TlsConnector| async move {
        let tcp = within(tokio::net::TcpStream::connect(addr)).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut stream = within(c.connect(name, tcp)).await.ok()?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        within(stream.read_to_string(&mut response)).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let (_, body) = response.split_once("\r\n\r\n").unwrap();
        Some(serde_json::from_str::<Value>(body).unwrap())
    };
    let served = |c| async { health(c).await.is_some() };
    let (trusts_old, trusts_new) = (trusting(&old), trusting(&new));
    assert!(served(trusts_old.clone()).await);
    assert!(!served(trusts_new.clone()).await);
    // A secure WebSocket opened before the renewal.
    let tcp = within(tokio::net::TcpStream::connect(addr)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = within(trusts_old.connect(name, tcp)).await.unwrap();
    let p = project();
    let url = format!(
        "wss://localhost:{}/websocket?type=runtime&projectId={p}",
        addr.port()
    );
    let (ws, _) = within(tokio_tungstenite::client_async(url, stream))
        .await
        .unwrap();
    let mut c = Client::hello(ws).await;

    install(&new);
    sighup(&server);
    server
        .wait_stderr("the certificate reloaded", |log| {
            log.contains("TLS certificate reloaded")
        })
        .await;
    server
        .wait_stderr("the reload done", |log| {
            log.contains("room components reloaded")
        })
        .await;
    let h = health(trusts_new.clone()).await.expect("served");
    assert_eq!(h["counters"]["reloads"], 1, "{h}");
    assert!(!served(trusts_old.clone()).await);
    // The socket opened before is still served.
    c.send_message(Message::text(
        json!({"id": "still", "to": {"id": c.id}}).to_string(),
    ))
    .await;
    assert_eq!(c.next_json().await["id"], "still");

    // A broken renewal: logged and counted, the certificate in use stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    sighup(&server);
    server
        .wait_stderr("the failed reload", |log| {
            log.contains("cannot reload the TLS certificate; the current one stays")
        })
        .await;
    server
        .wait_stderr("the reload done", |log| {
            log.matches("room components reloaded").count() == 2
        })
        .await;
    let h = health(trusts_new).await.expect("still served");
    assert_eq!(h["counters"]["reloadFailures"], 1, "{h}");
    let _ = std::fs::remove_dir_all(&dir);
}
