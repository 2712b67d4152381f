//! https and wss: with a certificate given, with one generated at start
//! (and a token minted by `wsroom token`), and a key that does not fit.

use serde_json::json;
use tokio_rustls::rustls::{self, pki_types::CertificateDer, pki_types::pem::PemObject};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::common::*;

#[tokio::test]
async fn wss_and_https_with_a_certificate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");
    let cert = format!("{fixtures}/localhost.crt");
    let key = format!("{fixtures}/localhost.key");
    let server = Server::start(&["--tls-cert", &cert, "--tls-key", &key]);

    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(format!("{fixtures}/ca.crt")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let connector = tls_connector(roots);
    let addr = server.addr;
    let tls = move |c: tokio_rustls::TlsConnector| async move {
        let tcp = within(tokio::net::TcpStream::connect(addr)).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        within(c.connect(name, tcp)).await.expect("tls handshake")
    };

    // https
    let mut stream = tls(connector.clone()).await;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    within(stream.read_to_string(&mut response)).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"healthy\""), "{response}");

    // wss, and routing across two secure clients
    let p = project();
    let mut clients = Vec::new();
    for kind in ["runtime", "data-agent"] {
        let stream = tls(connector.clone()).await;
        let url = format!(
            "wss://localhost:{}/websocket?type={kind}&projectId={p}",
            server.addr.port()
        );
        let (ws, _) = within(tokio_tungstenite::client_async(url, stream))
            .await
            .unwrap();
        clients.push(Client::hello(ws).await);
    }
    let mut d = clients.pop().unwrap();
    let mut r = clients.pop().unwrap();
    r.send_message(Message::text(
        json!({"id": "s1", "type": "t", "to": {"type": "data-agent"}}).to_string(),
    ))
    .await;
    let got = d.next_json().await;
    assert_eq!(got["id"], "s1");
    assert_eq!(got["from"]["id"], r.id.as_str());
}

#[tokio::test]
async fn a_bad_tls_key_is_refused_at_start() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");
    let stderr = refused_at_start(&[
        "--tls-cert",
        &format!("{fixtures}/localhost.crt"),
        "--tls-key",
        &format!("{fixtures}/ca.crt"),
    ]);
    assert!(stderr.contains("private key"), "{stderr}");
    // A valid key of the same kind that belongs to another certificate.
    let stderr = refused_at_start(&[
        "--tls-cert",
        &format!("{fixtures}/localhost.crt"),
        "--tls-key",
        &format!("{fixtures}/other.key"),
    ]);
    assert!(stderr.contains("do not fit together"), "{stderr}");
}

#[tokio::test]
async fn wss_with_a_generated_certificate_and_a_minted_token() {
    let cert = std::env::temp_dir().join(format!("wsroom-test-{}.crt", uuid::Uuid::new_v4()));
    let server = secured(&[
        "--tls-self-signed",
        "--tls-self-signed-out",
        cert.to_str().unwrap(),
    ]);
    server
        .wait_stderr("the fingerprint", |log| log.contains("sha256"))
        .await;

    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let connector = tls_connector(roots);

    // The operator's command mints the token.
    let p = project();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsroom"))
        .args([
            "token",
            "--project",
            &p,
            "--types",
            "runtime,data-agent",
            "--ttl-secs",
            "60",
        ])
        .env("WSROOM_AUTH_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let open_wss = |kind: &'static str, token: Option<String>| {
        let connector = connector.clone();
        let port = server.addr.port();
        let addr = server.addr;
        let p = p.clone();
        async move {
            let tcp = within(tokio::net::TcpStream::connect(addr)).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tls = within(connector.connect(name, tcp))
                .await
                .expect("tls handshake");
            let mut url = format!("wss://localhost:{port}/websocket?type={kind}&projectId={p}");
            if let Some(t) = token {
                url.push_str(&format!("&token={t}"));
            }
            within(tokio_tungstenite::client_async(url, tls)).await
        }
    };
    let Err(tungstenite::Error::Http(resp)) = open_wss("runtime", None).await else {
        panic!("admitted without a token");
    };
    assert_eq!(resp.status(), 401);
    let (ws, _) = open_wss("runtime", Some(token.clone())).await.unwrap();
    let mut r = Client::hello(ws).await;
    let (ws, _) = open_wss("data-agent", Some(token.clone())).await.unwrap();
    let mut d = Client::hello(ws).await;
    r.send_message(Message::text(
        json!({"id": "s1", "type": "t", "to": {"type": "data-agent"}}).to_string(),
    ))
    .await;
    let got = d.next_json().await;
    assert_eq!(got["id"], "s1");
    assert_eq!(got["from"]["id"], r.id.as_str());
    let Err(tungstenite::Error::Http(resp)) = open_wss("admin", Some(token)).await else {
        panic!("a runtime/data-agent token joined as admin");
    };
    assert_eq!(resp.status(), 403);
    let _ = std::fs::remove_file(cert);
}
