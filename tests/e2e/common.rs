//! Test harness: starts the real `wsroom` binary on port 0, waits for its
//! readiness line, and talks to it over real sockets with an independent
//! client (tokio-tungstenite, and plain HTTP/1.1 over TCP).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Upper bound of every await in the tests.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `probe` every `every` until `done` holds for what it returned, and
/// returns that; fails after [`TIMEOUT`] naming `what` and the last value.
pub(crate) async fn poll_until<T: std::fmt::Display>(
    what: &str,
    every: Duration,
    mut probe: impl AsyncFnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let value = probe().await;
        if done(&value) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last seen:\n{value}"
        );
        tokio::time::sleep(every).await;
    }
}

/// The misbehaving room built by the host's build script.
pub(crate) const FIXTURE_ROOM: &str = concat!(env!("OUT_DIR"), "/fixture-room.wasm");

/// What the console calls the component of a project no
/// `--project-component` names: `default`, or `WSROOM_TEST_ROOM`'s file name.
pub(crate) fn default_component_name() -> String {
    std::env::var_os("WSROOM_TEST_ROOM").map_or("default".to_owned(), |room| {
        std::path::Path::new(&room)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    })
}

/// A project id of its own for a test.
pub(crate) fn project() -> String {
    format!("p-{}", uuid::Uuid::new_v4())
}

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    child: Child,
    stderr: Arc<Mutex<String>>,
    /// The data directory made for it, removed with it.
    own_data_dir: Option<PathBuf>,
}

/// A fresh directory under the system's temporary one (not created).
pub(crate) fn scratch_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("wsroom-test-{name}-{}", uuid::Uuid::new_v4()))
}

impl Server {
    /// Starts the server with `args`. With `WSROOM_TEST_ROOM=PATH` in the
    /// environment, a server whose args name no component runs PATH instead
    /// of the built-in room: the same tests then check another room (the
    /// Python port of the default room, for one).
    pub(crate) fn start(args: &[&str]) -> Server {
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let own = args
            .iter()
            .any(|a| a == "--component" || a == "--project-component");
        if let (Some(room), false) = (std::env::var_os("WSROOM_TEST_ROOM"), own) {
            args.push("--component".into());
            args.push(room.to_string_lossy().into_owned());
            // The first server compiles the room into wasmtime's cache while
            // the others wait, instead of all compiling it at once.
            static WARM: Mutex<bool> = Mutex::new(false);
            let mut warm = WARM.lock().unwrap_or_else(|e| e.into_inner());
            if !*warm {
                drop(Server::spawn(&args));
                *warm = true;
            }
        }
        Server::spawn(&args)
    }

    /// Starts the server (with the built-in room) after the shell command
    /// `setup` ran in the process that becomes it: `ulimit -n 200`, say.
    pub(crate) fn start_after(setup: &str, args: &[&str]) -> Server {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("{setup} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_wsroom"));
        Server::spawn_with(command, &args)
    }

    fn spawn(args: &[String]) -> Server {
        Server::spawn_with(Command::new(env!("CARGO_BIN_EXE_wsroom")), args)
    }

    /// Every server keeps its rooms durable, as the binary does by default,
    /// in a directory of its own unless `args` choose one (or memory).
    pub(crate) fn spawn_with(mut command: Command, args: &[String]) -> Server {
        let chosen = args.iter().any(|a| a == "--data-dir" || a == "--in-memory")
            || command
                .get_envs()
                .any(|(k, v)| k == "WSROOM_DATA_DIR" && v.is_some());
        let own_data_dir = (!chosen).then(|| scratch_dir("data"));
        if let Some(dir) = &own_data_dir {
            command.arg("--data-dir").arg(dir);
        }
        let mut child = command
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the wsroom binary");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().expect("stderr is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
            }
        });
        let out = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so a chatty guest cannot block on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(TIMEOUT * 3) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "server printed no readiness line; stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        let addr = line
            .rsplit("://")
            .next()
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected readiness line {line:?}"));
        Server {
            addr,
            child,
            stderr,
            own_data_dir,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn url(&self, query: &str) -> String {
        format!("ws://{}/websocket?{query}", self.addr)
    }

    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Opens a WebSocket of type `kind` to `project` and reads its
    /// `connected` message.
    pub(crate) async fn connect(&self, kind: &str, project: &str) -> Client {
        let url = self.url(&format!("type={kind}&projectId={project}"));
        let (ws, _) = within(tokio_tungstenite::connect_async(url))
            .await
            .expect("websocket connect");
        Client::hello(ws).await
    }

    /// A WebSocket upgrade the server must refuse; returns the HTTP status
    /// and the JSON body of the refusal.
    pub(crate) async fn refused(&self, query: &str) -> (u16, Value) {
        let err = within(tokio_tungstenite::connect_async(self.url(query)))
            .await
            .expect_err("the upgrade must be refused");
        let tokio_tungstenite::tungstenite::Error::Http(resp) = err else {
            panic!("expected an HTTP error, got {err}");
        };
        let body = serde_json::from_slice(resp.body().as_deref().unwrap_or(b""))
            .expect("the refusal's body is JSON");
        (resp.status().as_u16(), body)
    }

    /// A GET request; returns the status and the body parsed as JSON.
    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        self.request(&format!(
            "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        ))
        .await
    }

    /// Sends a raw HTTP request; returns the status and the JSON body.
    pub(crate) async fn request(&self, raw: &str) -> (u16, Value) {
        let (status, body) = self.request_text(raw).await;
        let json = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {body:?}"));
        (status, json)
    }

    pub(crate) async fn request_text(&self, raw: &str) -> (u16, String) {
        let text = self.exchange(raw).await;
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad response {text:?}"));
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// Sends a raw HTTP request on a connection of its own; the whole
    /// response, head and body, until the server closes.
    pub(crate) async fn exchange(&self, raw: &str) -> String {
        within(async {
            let mut s = TcpStream::connect(self.addr).await.expect("tcp connect");
            s.write_all(raw.as_bytes()).await.expect("write request");
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.expect("read response");
            String::from_utf8_lossy(&buf).into_owned()
        })
        .await
    }

    /// Polls `/health` until `f` holds, or fails after [`TIMEOUT`].
    pub(crate) async fn wait_health(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        poll_until(
            what,
            Duration::from_millis(50),
            async || self.get("/health").await.1,
            f,
        )
        .await
    }

    /// Waits until the server's stderr (read by another thread, so a line
    /// may lag behind what /health already shows) satisfies `f`; returns it.
    pub(crate) async fn wait_stderr(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        poll_until(
            what,
            Duration::from_millis(20),
            async || self.stderr(),
            |log: &String| f(log),
        )
        .await
    }

    /// Sends SIGTERM and waits for the exit status.
    pub(crate) fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for server") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- server stderr ---\n{}", self.stderr());
        }
        if let Some(dir) = &self.own_data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Runs the binary (on port 0) with `args`, which must make it refuse to
/// start; its stderr.
pub(crate) fn refused_at_start(args: &[&str]) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wsroom"));
    command.args(["--listen", "127.0.0.1:0"]);
    if !args.contains(&"--data-dir") {
        // Not in the working directory's wsroom-data.
        command.arg("--in-memory");
    }
    let out = command.args(args).output().unwrap();
    assert!(!out.status.success(), "it started with {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Awaits `f` for at most [`TIMEOUT`].
pub(crate) async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, f).await.expect("timed out")
}

/// A WebSocket past its `connected` message: the socket, and the client id
/// the server gave it. `S` is the stream under the WebSocket (plain TCP or
/// a `ws://` URL's, or a TLS stream of the tests' own).
pub(crate) struct Client<S = MaybeTlsStream<TcpStream>> {
    pub(crate) ws: WebSocketStream<S>,
    pub(crate) id: String,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Reads the `connected` message of a socket just opened.
    pub(crate) async fn hello(mut ws: WebSocketStream<S>) -> Self {
        let hello = recv(&mut ws).await;
        assert_eq!(hello["type"], "connected", "first frame: {hello}");
        let id = hello["payload"]["clientId"]
            .as_str()
            .expect("connected carries clientId")
            .to_owned();
        Client { ws, id }
    }

    /// Sends `msg` as a text message.
    pub(crate) async fn send_json(&mut self, msg: &Value) {
        send(&mut self.ws, msg).await;
    }

    pub(crate) async fn send_text(&mut self, text: &str) {
        send_text(&mut self.ws, text).await;
    }

    /// Sends any message (binary, a fragment, ...).
    pub(crate) async fn send_message(&mut self, msg: Message) {
        within(self.ws.send(msg)).await.expect("send");
    }

    /// The next text message, parsed as JSON (pings and pongs skipped).
    pub(crate) async fn next_json(&mut self) -> Value {
        recv(&mut self.ws).await
    }

    /// Waits for the close frame; returns its code and reason.
    pub(crate) async fn recv_close(&mut self) -> (u16, String) {
        recv_close(&mut self.ws).await
    }

    /// Closes the connection (a close frame, code 1005).
    pub(crate) async fn close(&mut self) {
        within(self.ws.close(None)).await.expect("close");
    }
}

impl Client {
    /// Keeps reading for `ms` milliseconds (so pings get their pongs),
    /// failing on any message.
    pub(crate) async fn expect_silence(&mut self, ms: u64) {
        expect_silence(&mut [self], ms).await;
    }

    /// Proves this client received nothing before this point: `from` sends
    /// a direct message to it, which must be the very next thing it gets
    /// (messages from one sender arrive in order, so anything earlier would
    /// show first).
    pub(crate) async fn assert_nothing_before_marker(&mut self, from: &mut Client) {
        let marker = uuid::Uuid::new_v4().to_string();
        from.send_json(&json!({"id": marker, "type": "marker", "to": {"id": self.id}}))
            .await;
        let got = self.next_json().await;
        assert_eq!(got["id"], marker, "expected the marker, got {got}");
    }
}

/// Keeps reading every client for `ms` milliseconds, all at once (so pings
/// get their pongs), failing on any message.
pub(crate) async fn expect_silence(clients: &mut [&mut Client], ms: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    let polls = clients.iter_mut().map(|c| async move {
        loop {
            match tokio::time::timeout_at(deadline, c.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    });
    futures_util::future::join_all(polls).await;
}

/// The next text message, parsed as JSON.
pub(crate) async fn recv<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Value {
    loop {
        let msg = within(ws.next())
            .await
            .expect("connection ended while waiting for a message")
            .expect("websocket error while waiting for a message");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).expect("server sent invalid JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Waits for the close frame; returns its code and reason.
pub(crate) async fn recv_close<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> (u16, String) {
    loop {
        match within(ws.next()).await {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (frame.code.into(), frame.reason.to_string());
            }
            Some(Ok(Message::Close(None))) => return (1005, String::new()),
            Some(Ok(Message::Text(t))) => {
                // Messages queued before the close are still delivered.
                let _: Value = serde_json::from_str(&t).expect("server sent invalid JSON");
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("connection broke instead of closing: {e}"),
            None => panic!("connection ended without a close frame"),
        }
    }
}

pub(crate) async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    msg: &Value,
) {
    within(ws.send(Message::text(msg.to_string())))
        .await
        .expect("send");
}

pub(crate) async fn send_text<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    text: &str,
) {
    within(ws.send(Message::text(text.to_owned())))
        .await
        .expect("send");
}

/// r1, r2: runtime; d: data-agent; a1, a2: admin; all in one project.
pub(crate) struct Room {
    pub(crate) r1: Client,
    pub(crate) r2: Client,
    pub(crate) d: Client,
    pub(crate) a1: Client,
    pub(crate) a2: Client,
}

/// Connects the five clients of a [`Room`] to a new project.
pub(crate) async fn room(server: &Server) -> Room {
    let p = project();
    let r1 = server.connect("runtime", &p).await;
    let r2 = server.connect("runtime", &p).await;
    let d = server.connect("data-agent", &p).await;
    let a1 = server.connect("admin", &p).await;
    let a2 = server.connect("admin", &p).await;
    Room { r1, r2, d, a1, a2 }
}

/// The code of an error message from the server, checking its shape.
pub(crate) fn error_of(v: &Value) -> &str {
    assert_eq!(v["type"], "error", "expected an error, got {v}");
    assert_eq!(v["from"], json!({"type": "system"}));
    assert!(v["payload"]["message"].is_string());
    assert!(v["payload"]["timestamp"].is_u64());
    assert!(v["payload"]["projectId"].is_string());
    v["payload"]["code"].as_str().unwrap()
}

/// The secret of the servers that [`secured`] starts.
pub(crate) const SECRET: &str = "test-secret-0123456789abcdef-0123456789";

/// A file in the temp dir with `contents`, unique to this test run.
pub(crate) fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("wsroom-test-{}-{name}", uuid::Uuid::new_v4()));
    std::fs::write(&path, contents).unwrap();
    path
}

/// A server that wants tokens signed with [`SECRET`], started with `extra`.
pub(crate) fn secured(extra: &[&str]) -> Server {
    let secret = temp_file("secret", &format!("{SECRET}\n"));
    let mut args = vec!["--auth-secret-file", secret.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// A TLS client that trusts `roots` only.
pub(crate) fn tls_connector(
    roots: tokio_rustls::rustls::RootCertStore,
) -> tokio_rustls::TlsConnector {
    use tokio_rustls::rustls;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// A scrape: each sample (`name{labels}` as written) with its value, and
/// the text.
pub(crate) struct Scrape {
    pub(crate) body: String,
}

impl Scrape {
    pub(crate) async fn of(server: &Server) -> Scrape {
        let response = server
            .exchange("GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await;
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        Scrape { body: body.into() }
    }

    pub(crate) fn samples(&self) -> impl Iterator<Item = (&str, f64)> {
        self.body.lines().filter(|l| !l.starts_with('#')).map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name, value.parse().unwrap())
        })
    }

    pub(crate) fn value(&self, sample: &str) -> f64 {
        self.samples()
            .find(|(name, _)| *name == sample)
            .unwrap_or_else(|| panic!("no {sample} in\n{}", self.body))
            .1
    }
}
