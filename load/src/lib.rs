//! wsroom-load: drives a running wsroom over real WebSockets on loopback and
//! reports throughput, latency percentiles and correctness.
//!
//! The `wsroom-load` binary parses its arguments into a [`Cli`] and calls
//! [`run_and_exit`]; [`run`] does the same run and returns its report, for
//! callers in another program (wsroom's end-to-end tests).
//!
//! Scenarios:
//! - `fanout`: P projects, each with 1 sender and R receivers; by type, by
//!   id or broadcast; saturated (bounded in-flight window) or at a fixed
//!   rate. Checks that nothing is lost, duplicated or reordered and that
//!   `from.id` is stamped on every delivery.
//! - `rpc`: N request/response pairs over P projects, routed by `to.id`.
//! - `connect`: C connections over P projects; connections/s, time to the
//!   `connected` message, and (with `--server-pid`) the server's memory per
//!   idle connection and per room.
//! - `chat`: for the SDK's chat room (`sdk/examples/chat-room`), whose every
//!   line is a durable write: S speakers over P projects each say lines one
//!   at a time, each waiting for its own line to come back (so each line
//!   costs a commit, and concurrent speakers share them); lines/s and the
//!   time from saying a line to hearing it.
//! - `reference-server`: not a scenario but a yardstick: a lean native
//!   server (no wasm) that routes like the default room, to run the same
//!   scenarios against on the same machine.
//!
//! Every run is bounded in messages and in time, and only connects to
//! loopback addresses.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use fastwebsockets::OpCode;
use hdrhistogram::Histogram;
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Notify};

pub mod reference;
mod wire;

/// The command line.
#[derive(Parser)]
#[command(
    name = "wsroom-load",
    version,
    about = "Load generator and checker for a running wsroom (loopback only)"
)]
pub struct Cli {
    /// Address of the wsroom server (a loopback address).
    #[arg(long, default_value = "127.0.0.1:8787", global = true)]
    server: SocketAddr,
    /// Another node of the same cluster (repeatable): clients are spread
    /// over --server and these, round robin; the first client of each
    /// project (a fan-out's sender, an rpc's requester) goes to --server,
    /// so its node owns the project, and an rpc's responder to the next.
    #[arg(long, global = true)]
    also_server: Vec<SocketAddr>,
    /// Print one machine-readable JSON line instead of the report.
    #[arg(long, global = true)]
    json: bool,
    /// Give up after this many seconds, whatever is left.
    #[arg(long, default_value_t = 60, global = true)]
    timeout_secs: u64,
    /// The server's pid: reports the server's CPU time per delivery or
    /// request (fanout, rpc) and its memory (connect), read from /proc.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// One sender and R receivers per project.
    Fanout(FanoutArgs),
    /// Request/response pairs routed by `to.id`, one request in flight each.
    Rpc(RpcArgs),
    /// Many idle connections.
    Connect(ConnectArgs),
    /// Speakers in the SDK's chat room, one line in flight each.
    Chat(ChatArgs),
    /// Serve as a lean native reference server (no wasm, routing like the
    /// default room) on --server, to compare wsroom with on this machine.
    ReferenceServer,
}

#[derive(Args, Clone, Copy)]
struct FanoutArgs {
    #[arg(long, default_value_t = 1)]
    projects: usize,
    #[arg(long, default_value_t = 100)]
    receivers: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Messages each sender sends.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    #[arg(long, value_enum, default_value_t = Route::Type)]
    route: Route,
    /// Messages a sender may be ahead of its receivers (saturated mode).
    /// Deeper windows let the server write more frames per syscall and
    /// cost latency; throughput levels off around 1024.
    #[arg(long, default_value_t = 1024)]
    window: u64,
    /// Messages per second per sender instead of saturating.
    #[arg(long)]
    rate: Option<u64>,
}

#[derive(Args, Clone, Copy)]
struct RpcArgs {
    #[arg(long, default_value_t = 50)]
    pairs: usize,
    #[arg(long, default_value_t = 10)]
    projects: usize,
    /// Requests each pair makes.
    #[arg(long, default_value_t = 2_000)]
    requests: u64,
    #[arg(long, default_value_t = 100)]
    size: usize,
}

#[derive(Args, Clone, Copy)]
struct ChatArgs {
    #[arg(long, default_value_t = 50)]
    speakers: usize,
    #[arg(long, default_value_t = 10)]
    projects: usize,
    /// Lines each speaker says.
    #[arg(long, default_value_t = 1_000)]
    lines: u64,
    #[arg(long, default_value_t = 100)]
    size: usize,
}

#[derive(Args, Clone, Copy)]
struct ConnectArgs {
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    #[arg(long, default_value_t = 1_000)]
    projects: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// A reconnect storm: every connection opened at once (no
    /// --concurrency, rooms not created first), timed to the last one's
    /// `connected`. Run it on a server that just started.
    #[arg(long, conflicts_with = "concurrency")]
    storm: bool,
    /// With --server-pid: keep the connections open this long after the
    /// last is connected (past the server's --hibernate-after-ms, rooms
    /// hibernate), read the server's memory again, then close them all at
    /// once and report the most memory the server held while they left.
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Route {
    /// `to.type`: every receiver gets every message.
    Type,
    /// `to.id`: messages go round-robin to one receiver each.
    Id,
    /// No `to`: every receiver gets every message.
    Broadcast,
}

/// The nodes a run's clients connect to: `--server`, then the
/// `--also-server`s.
#[derive(Clone)]
struct Servers(Arc<[SocketAddr]>);

impl Servers {
    /// The node of a project's first client.
    fn first(&self) -> SocketAddr {
        self.0[0]
    }

    /// The node of the `i`th client, round robin.
    fn nth(&self, i: usize) -> SocketAddr {
        self.0[i % self.0.len()]
    }
}

/// A client connection after the handshake (see [`wire`]).
type Ws = wire::Client<TokioIo<Upgraded>>;

struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::spawn(fut);
    }
}

/// Opens a WebSocket and reads its `connected` message; returns the socket
/// and the client id.
async fn connect(server: SocketAddr, kind: &str, project: &str) -> anyhow::Result<(Ws, String)> {
    connect_from(None, server, kind, project).await
}

/// [`connect`] from the source address `from` (any if `None`).
async fn connect_from(
    from: Option<std::net::IpAddr>,
    server: SocketAddr,
    kind: &str,
    project: &str,
) -> anyhow::Result<(Ws, String)> {
    let mut ws = open_from(from, server, kind, project).await?;
    let hello = read_text(&mut ws).await?;
    #[derive(Deserialize)]
    struct Hello {
        payload: HelloPayload,
    }
    #[derive(Deserialize)]
    struct HelloPayload {
        #[serde(rename = "clientId")]
        client_id: String,
    }
    let hello: Hello = serde_json::from_slice(&hello).context("connected message")?;
    Ok((ws, hello.payload.client_id))
}

/// Opens a WebSocket to a project, reading nothing yet.
async fn open(server: SocketAddr, kind: &str, project: &str) -> anyhow::Result<Ws> {
    open_from(None, server, kind, project).await
}

async fn open_from(
    from: Option<std::net::IpAddr>,
    server: SocketAddr,
    kind: &str,
    project: &str,
) -> anyhow::Result<Ws> {
    let stream = match from {
        None => TcpStream::connect(server).await,
        Some(from) => {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(from, 0))?;
            socket.connect(server).await
        }
    }
    .context("tcp connect")?;
    stream.set_nodelay(true)?;
    let req = hyper::Request::builder()
        .method("GET")
        .uri(format!(
            "http://{server}/websocket?type={kind}&projectId={project}"
        ))
        .header("Host", server.to_string())
        .header(hyper::header::UPGRADE, "websocket")
        .header(hyper::header::CONNECTION, "upgrade")
        .header(
            "Sec-WebSocket-Key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())?;
    let (ws, _) = fastwebsockets::handshake::client(&SpawnExecutor, req, stream)
        .await
        .context("websocket handshake")?;
    // Nothing was read through fastwebsockets yet, so it holds no bytes.
    Ok(wire::Client::new(ws.into_inner()))
}

async fn read_text(ws: &mut Ws) -> anyhow::Result<Vec<u8>> {
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Text => return Ok(frame.payload.to_vec()),
            OpCode::Close => bail!("server closed the connection"),
            _ => continue,
        }
    }
}

async fn send_text(ws: &mut Ws, text: &[u8]) -> anyhow::Result<()> {
    ws.write_text(text).await?;
    Ok(())
}

/// A delivery as the receivers parse it.
#[derive(Deserialize)]
struct Delivery<'a> {
    #[serde(borrow)]
    from: From<'a>,
    payload: BenchPayload,
    #[serde(rename = "type")]
    kind: &'a str,
}

#[derive(Deserialize)]
struct From<'a> {
    id: Option<&'a str>,
}

#[derive(Deserialize)]
struct BenchPayload {
    /// Sequence number within the sender.
    seq: u64,
    /// Send time, nanoseconds since the run started.
    t: u64,
}

/// Correctness tallies of one run.
#[derive(Default)]
struct Checks {
    lost: AtomicU64,
    duplicated_or_reordered: AtomicU64,
    bad_from: AtomicU64,
    errors: AtomicU64,
    /// What the first error was, for the report.
    first_error: std::sync::Mutex<Option<String>>,
}

impl Checks {
    fn ok(&self) -> bool {
        self.lost.load(Relaxed) == 0
            && self.duplicated_or_reordered.load(Relaxed) == 0
            && self.bad_from.load(Relaxed) == 0
            && self.errors.load(Relaxed) == 0
    }
    /// Counts an error; the first one's description goes in the report.
    fn error(&self, what: impl FnOnce() -> String) {
        if self.errors.fetch_add(1, Relaxed) == 0 {
            let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
            first.get_or_insert_with(what);
        }
    }
    fn json(&self) -> serde_json::Value {
        let first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        json!({
            "lost": self.lost.load(Relaxed),
            "duplicatedOrReordered": self.duplicated_or_reordered.load(Relaxed),
            "badFrom": self.bad_from.load(Relaxed),
            "errors": self.errors.load(Relaxed),
            "firstError": *first,
        })
    }
}

fn new_histogram() -> Histogram<u64> {
    // Nanoseconds from 1 ns to 60 s, 2 significant digits (within 1%): at
    // ~30 KB one per receiver stays in cache, where 3 digits (~600 KB each)
    // made recording a cache miss.
    Histogram::new_with_bounds(1, 60_000_000_000, 2).expect("valid histogram bounds")
}

fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    let us = |v: u64| v as f64 / 1000.0;
    json!({
        "p50Us": us(h.value_at_quantile(0.50)),
        "p90Us": us(h.value_at_quantile(0.90)),
        "p99Us": us(h.value_at_quantile(0.99)),
        "p999Us": us(h.value_at_quantile(0.999)),
        "maxUs": us(h.max()),
    })
}

/// How the server stamps `from` on the messages of a `runtime` sender.
fn stamped_from(sender_id: &str) -> String {
    format!(r#""from":{{"id":"{sender_id}","type":"runtime"}}"#)
}

/// The unsigned integer at the start of `digits`, and its length.
fn leading_number(digits: &[u8]) -> Option<(u64, usize)> {
    let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 || len > 19 {
        return None;
    }
    let n = digits[..len]
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some((n, len))
}

/// The unsigned integer right after the first match of `key` in `text`.
fn number_after(text: &[u8], key: &memchr::memmem::Finder<'_>) -> Option<u64> {
    let at = key.find(text)? + key.needle().len();
    leading_number(&text[at..]).map(|(n, _)| n)
}

/// How the load tool's messages start; a room that keeps the order of
/// fields (the default room does) delivers them starting the same way.
const BENCH_PREFIX: &[u8] = br#"{"payload":{"seq":"#;

/// A bench message's sequence number and send time: read in place when the
/// delivery starts as sent, searched for otherwise.
fn seq_and_time(text: &[u8], keys: &Keys) -> Option<(u64, u64)> {
    if let Some(rest) = text.strip_prefix(BENCH_PREFIX)
        && let Some((seq, len)) = leading_number(rest)
        && let Some(rest) = rest[len..].strip_prefix(br#","t":"#)
        && let Some((t, _)) = leading_number(rest)
    {
        return Some((seq, t));
    }
    Some((number_after(text, &keys.seq)?, number_after(text, &keys.t)?))
}

/// Searchers for the two numbers every bench payload carries, built once
/// (building a searcher costs more than one search).
struct Keys {
    seq: memchr::memmem::Finder<'static>,
    t: memchr::memmem::Finder<'static>,
}

impl Keys {
    fn new() -> Self {
        Keys {
            seq: memchr::memmem::Finder::new(b"\"seq\":"),
            t: memchr::memmem::Finder::new(b"\"t\":"),
        }
    }
}

/// Whether a message comes from the room itself (`from.type` "system").
fn is_system(text: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Msg<'a> {
        #[serde(borrow)]
        from: Option<FromType<'a>>,
    }
    #[derive(Deserialize)]
    struct FromType<'a> {
        #[serde(rename = "type")]
        kind: Option<&'a str>,
    }
    serde_json::from_slice::<Msg<'_>>(text)
        .ok()
        .and_then(|m| m.from)
        .and_then(|f| f.kind)
        == Some("system")
}

fn run_id() -> String {
    format!("load-{}", uuid::Uuid::new_v4().simple())
}

/// One project's shared progress: what was sent and what arrived.
struct Progress {
    delivered: AtomicU64,
    wake: Notify,
}

async fn fanout(
    servers: &Servers,
    args: FanoutArgs,
    server_pid: Option<u32>,
    deadline: Instant,
) -> anyhow::Result<serde_json::Value> {
    let FanoutArgs {
        projects,
        receivers,
        size,
        messages,
        route,
        window,
        rate,
    } = args;
    anyhow::ensure!(
        projects > 0 && receivers > 0 && messages > 0 && window > 0,
        "counts must be positive"
    );
    let run = run_id();
    let start = Instant::now();
    let checks = Arc::new(Checks::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    let mut receiver_tasks = Vec::new();
    let hist = Arc::new(Mutex::new(new_histogram()));
    let last_delivery = Arc::new(AtomicU64::new(0));
    let tally = Tally {
        start,
        checks: checks.clone(),
        hist: hist.clone(),
        last_delivery: last_delivery.clone(),
    };
    // How many deliveries a receiver holds before telling its sender: the
    // held-back total stays below the window, so no sender waits on it.
    let window_deliveries = match route {
        Route::Id => window,
        _ => window.saturating_mul(receivers as u64),
    };
    let report_every = (window_deliveries / receivers as u64).clamp(1, 32);
    for p in 0..projects {
        let project = format!("{run}-{p}");
        let progress = Arc::new(Progress {
            delivered: AtomicU64::new(0),
            wake: Notify::new(),
        });
        let (sender_ws, sender_id) = connect(servers.first(), "runtime", &project).await?;
        let mut receiver_ids = Vec::new();
        for r in 0..receivers {
            let (ws, id) = connect(servers.nth(r), "data-agent", &project).await?;
            receiver_ids.push(id);
            let expected = match route {
                Route::Id => (messages + (receivers - 1 - r) as u64) / receivers as u64,
                _ => messages,
            };
            let got = Arc::new(AtomicU64::new(0));
            let task = tokio::spawn(receive(
                ws,
                Expect {
                    sender_id: sender_id.clone(),
                    count: expected,
                    progress: progress.clone(),
                    got: got.clone(),
                    report_every,
                },
                tally.clone(),
            ));
            receiver_tasks.push((task, got, expected));
        }
        senders.push((sender_ws, receiver_ids, progress));
    }
    let pad = "x".repeat(size);
    let cpu0 = server_pid.map(cpu_times).transpose()?;
    let send_start = Instant::now();
    let mut sender_tasks = Vec::new();
    for (mut ws, receiver_ids, progress) in senders {
        // Saturated, a sender writes what its window allows in one go, as a
        // busy client's TCP stream would carry it: frames gather in a buffer
        // written when it passes 16 KiB, before waiting on the window, and
        // at a fixed rate after every message.
        let pad = pad.clone();
        let stop = stop.clone();
        let checks = checks.clone();
        sender_tasks.push(tokio::spawn(async move {
            let fan = match route {
                Route::Id => 1,
                _ => receiver_ids.len() as u64,
            };
            let receiver_ids: Vec<String> = receiver_ids
                .iter()
                .map(|id| serde_json::Value::from(id.as_str()).to_string())
                .collect();
            let mut ticker = rate.map(|r| {
                let mut t = tokio::time::interval(Duration::from_nanos(1_000_000_000 / r.max(1)));
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            let mut buf = Vec::with_capacity(size + 200);
            for seq in 0..messages {
                if stop.load(Relaxed) {
                    break;
                }
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                } else {
                    // Saturated: keep at most `window` messages undelivered.
                    // Receivers store a wake-up permit on every report, so
                    // none is missed between the check and the wait.
                    while seq * fan >= progress.delivered.load(Relaxed) + window * fan
                        && !stop.load(Relaxed)
                    {
                        if let Err(e) = ws.flush().await {
                            checks.error(|| format!("sender: write failed: {e}"));
                            stop.store(true, Relaxed);
                        }
                        progress.wake.notified().await;
                    }
                }
                // The payload comes first and starts with the two numbers
                // the receivers look for, so their search stops early (the
                // room keeps the order of fields).
                buf.clear();
                let t = start.elapsed().as_nanos() as u64;
                let _ = write!(
                    buf,
                    r#"{{"payload":{{"seq":{seq},"t":{t},"pad":"{pad}"}},"type":"bench","id":"{seq}""#
                );
                match route {
                    Route::Type => buf.extend_from_slice(br#","to":{"type":"data-agent"}"#),
                    Route::Id => {
                        let id = &receiver_ids[(seq % receiver_ids.len() as u64) as usize];
                        let _ = write!(buf, r#","to":{{"id":{id}}}"#);
                    }
                    Route::Broadcast => {}
                }
                buf.push(b'}');
                ws.queue_text(&buf);
                let flushed = if ticker.is_some() || ws.queued() >= 16 * 1024 {
                    ws.flush().await
                } else {
                    Ok(())
                };
                if let Err(e) = flushed {
                    checks.error(|| format!("sender: write failed: {e}"));
                    break;
                }
            }
            if let Err(e) = ws.flush().await {
                checks.error(|| format!("sender: write failed: {e}"));
            }
            // Keep the sender connected until the receivers are done.
            ws
        }));
    }
    let mut sender_sockets = Vec::new();
    for mut task in sender_tasks {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, &mut task).await {
            Ok(ws) => sender_sockets.push(ws?),
            Err(_) => {
                // Stuck waiting for deliveries that never came.
                task.abort();
                stop.store(true, Relaxed);
            }
        }
    }
    let sent_at = send_start.elapsed();
    let mut deliveries = 0;
    for (mut task, got, expected) in receiver_tasks {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(remaining, &mut task).await.is_err() {
            task.abort();
            stop.store(true, Relaxed);
        }
        let got = got.load(Relaxed);
        deliveries += got;
        checks.lost.fetch_add(expected.saturating_sub(got), Relaxed);
    }
    stop.store(true, Relaxed);
    let cpu = server_cpu(server_pid, cpu0, deliveries)?;
    drop(sender_sockets);
    let elapsed = Duration::from_nanos(last_delivery.load(Relaxed))
        .saturating_sub(send_start.duration_since(start))
        .max(sent_at);
    let hist = hist.lock().await;
    let per_sec = deliveries as f64 / elapsed.as_secs_f64().max(1e-9);
    Ok(json!({
        "scenario": "fanout",
        "route": format!("{route:?}").to_lowercase(),
        "projects": projects, "receivers": receivers, "size": size,
        "messagesPerSender": messages, "window": window, "rate": rate,
        "deliveries": deliveries,
        "seconds": elapsed.as_secs_f64(),
        "deliveriesPerSec": per_sec,
        "latency": percentiles(&hist),
        "serverCpu": cpu,
        "checks": checks.json(),
        "ok": checks.ok(),
    }))
}

/// What one fan-out receiver expects, and whom it tells.
struct Expect {
    /// The sender whose messages it receives (`from.id`).
    sender_id: String,
    /// Deliveries it should get.
    count: u64,
    /// Its sender's count of deliveries, for the sender's window.
    progress: Arc<Progress>,
    /// Deliveries so far (read from outside if the receiver is aborted).
    got: Arc<AtomicU64>,
    /// Deliveries held back before telling the sender.
    report_every: u64,
}

/// Where every receiver of a run records what it saw.
#[derive(Clone)]
struct Tally {
    /// The run's clock: send times in the messages are nanoseconds from it.
    start: Instant,
    checks: Arc<Checks>,
    hist: Arc<Mutex<Histogram<u64>>>,
    /// The latest delivery of all, in nanoseconds from `start`.
    last_delivery: Arc<AtomicU64>,
}

async fn receive(mut ws: Ws, expect: Expect, tally: Tally) {
    let Expect {
        sender_id,
        count: expected,
        progress,
        got,
        report_every,
    } = expect;
    let Tally {
        start,
        checks,
        hist,
        last_delivery,
    } = tally;
    let mut local = new_histogram();
    let mut last_seq: Option<u64> = None;
    let from_pattern = stamped_from(&sender_id);
    let from = memchr::memmem::Finder::new(from_pattern.as_bytes());
    let keys = Keys::new();
    // Time of this receiver's latest delivery.
    let mut last = 0u64;
    // Deliveries are reported to the sender in small batches (a shared
    // counter touched per delivery costs the tool more than the server's
    // routing). Fewer than `window` per receiver, so a sender never waits
    // for deliveries that are held back.
    let mut unreported = 0u64;
    // Arrival time of the frame at hand. Reading the clock for every
    // delivery cost the tool an eighth of its CPU; it is read when a frame
    // had to be waited for, and for every `CLOCK_EVERY`th frame of those
    // already read from the socket together (which arrived within
    // microseconds of each other), so a time is never more than a few
    // frames' handling old.
    const CLOCK_EVERY: u32 = 8;
    let mut now = 0u64;
    let mut unclocked = 0u32;
    // A receiver that waits forever is aborted from outside and its
    // shortfall read from `got`.
    while got.load(Relaxed) < expected {
        let mut read = std::pin::pin!(ws.read_frame());
        let mut first_poll = true;
        let (frame, waited) = std::future::poll_fn(|cx| {
            let waited = !std::mem::take(&mut first_poll);
            read.as_mut().poll(cx).map(|frame| (frame, waited))
        })
        .await;
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                checks.error(|| format!("receiver: read failed: {e}"));
                break;
            }
        };
        if frame.opcode != OpCode::Text {
            if frame.opcode == OpCode::Close {
                let payload = String::from_utf8_lossy(frame.payload).into_owned();
                checks.error(|| format!("receiver: closed by the server: {payload:?}"));
                break;
            }
            continue;
        }
        if waited || unclocked == 0 {
            now = start.elapsed().as_nanos() as u64;
            unclocked = CLOCK_EVERY;
        }
        unclocked -= 1;
        let text = frame.payload;
        // Every delivery: its sequence number, its send time, and the exact
        // `from` the server must stamp, found by byte search (the load
        // tool's JSON parsing would otherwise cost more CPU than the
        // server). Every 64th delivery is also parsed in full and compared.
        let Some((seq, t)) = seq_and_time(text, &keys) else {
            if !is_system(text) {
                let text = String::from_utf8_lossy(text).into_owned();
                checks.error(|| format!("receiver: unexpected message {text}"));
            }
            continue;
        };
        // The default room appends `from` last; any other place is found
        // by the (slower) search.
        let stamped = text
            .strip_suffix(b"}")
            .is_some_and(|t| t.ends_with(from_pattern.as_bytes()))
            || from.find(text).is_some();
        if !stamped {
            checks.bad_from.fetch_add(1, Relaxed);
        }
        if got.load(Relaxed).is_multiple_of(64) {
            match serde_json::from_slice::<Delivery<'_>>(text) {
                Ok(d) if d.kind == "bench" && d.payload.seq == seq && d.payload.t == t => {
                    if d.from.id != Some(sender_id.as_str()) {
                        checks.bad_from.fetch_add(1, Relaxed);
                    }
                }
                _ => {
                    let text = String::from_utf8_lossy(text).into_owned();
                    checks.error(|| {
                        format!("receiver: delivery does not match what was sent: {text}")
                    });
                }
            }
        }
        if last_seq.is_some_and(|l| seq <= l) {
            checks.duplicated_or_reordered.fetch_add(1, Relaxed);
        }
        last_seq = Some(seq);
        got.fetch_add(1, Relaxed);
        let _ = local.record(now.saturating_sub(t).max(1));
        last = now;
        unreported += 1;
        if unreported == report_every {
            progress.delivered.fetch_add(unreported, Relaxed);
            progress.wake.notify_one();
            unreported = 0;
        }
    }
    progress.delivered.fetch_add(unreported, Relaxed);
    progress.wake.notify_one();
    last_delivery.fetch_max(last, Relaxed);
    let _ = hist.lock().await.add(&local);
}

async fn rpc(
    servers: &Servers,
    args: RpcArgs,
    server_pid: Option<u32>,
    deadline: Instant,
) -> anyhow::Result<serde_json::Value> {
    let RpcArgs {
        pairs,
        projects,
        requests,
        size,
    } = args;
    anyhow::ensure!(
        pairs > 0 && projects > 0 && requests > 0,
        "counts must be positive"
    );
    let run = run_id();
    let checks = Arc::new(Checks::default());
    let pad = "x".repeat(size);
    let mut tasks = Vec::new();
    let mut sockets = Vec::new();
    for i in 0..pairs {
        let project = format!("{run}-{}", i % projects);
        let (client, client_id) = connect(servers.first(), "runtime", &project).await?;
        let (agent, agent_id) = connect(servers.nth(1), "data-agent", &project).await?;
        sockets.push((client, client_id, agent, agent_id));
    }
    let cpu0 = server_pid.map(cpu_times).transpose()?;
    let start = Instant::now();
    for (mut client, client_id, mut agent, agent_id) in sockets {
        let checks = checks.clone();
        let pad = pad.clone();
        // The responder answers each request to its sender.
        let responder = tokio::spawn(async move {
            let mut buf = Vec::new();
            loop {
                let Ok(text) = read_text(&mut agent).await else {
                    break;
                };
                let Ok(d) = serde_json::from_slice::<Delivery<'_>>(&text) else {
                    break;
                };
                let Some(from) = d.from.id else { break };
                buf.clear();
                let BenchPayload { seq, t } = d.payload;
                // Written directly (a `json!` value per message cost the
                // tool a tenth of its CPU); ids are UUIDs, nothing to escape.
                let _ = write!(
                    buf,
                    r#"{{"payload":{{"seq":{seq},"t":{t}}},"type":"bench","id":"{seq}","to":{{"id":"{from}"}}}}"#
                );
                if send_text(&mut agent, &buf).await.is_err() {
                    break;
                }
            }
        });
        tasks.push(tokio::spawn(async move {
            let mut h = new_histogram();
            let mut buf = Vec::new();
            for seq in 0..requests {
                if Instant::now() > deadline {
                    checks.lost.fetch_add(requests - seq, Relaxed);
                    break;
                }
                buf.clear();
                let t = start.elapsed().as_nanos() as u64;
                let _ = write!(
                    buf,
                    r#"{{"payload":{{"seq":{seq},"t":{t},"pad":"{pad}"}},"type":"bench","id":"{seq}","to":{{"id":"{agent_id}"}}}}"#
                );
                let sent = Instant::now();
                if let Err(e) = send_text(&mut client, &buf).await {
                    checks.error(|| format!("rpc: request not sent: {e:#}"));
                    break;
                }
                let remaining = deadline.saturating_duration_since(Instant::now());
                let reply = tokio::time::timeout(remaining, async {
                    loop {
                        let text = read_text(&mut client).await?;
                        // Parsed once: (the sequence number, whether `from`
                        // is the agent), or none for what is not a reply.
                        let reply = serde_json::from_slice::<Delivery<'_>>(&text)
                            .ok()
                            .map(|d| (d.payload.seq, d.from.id == Some(agent_id.as_str())));
                        // System messages (another pair leaving the
                        // project, say) are not replies.
                        if reply.is_none() && is_system(&text) {
                            continue;
                        }
                        return anyhow::Ok(reply);
                    }
                });
                let Ok(Ok(reply)) = reply.await else {
                    checks.lost.fetch_add(requests - seq, Relaxed);
                    break;
                };
                let _ = h.record(sent.elapsed().as_nanos() as u64);
                match reply {
                    Some((s, true)) if s == seq => {}
                    Some((s, _)) if s != seq => {
                        checks.duplicated_or_reordered.fetch_add(1, Relaxed);
                    }
                    Some(_) => {
                        checks.bad_from.fetch_add(1, Relaxed);
                    }
                    None => {
                        checks.error(|| "rpc: a reply that is not one".into());
                    }
                }
            }
            (h, client, client_id, responder)
        }));
    }
    let mut hist = new_histogram();
    let mut keep = Vec::new();
    for t in tasks {
        let (h, client, _, responder) = t.await?;
        let _ = hist.add(h);
        // Nobody leaves before everyone is done: a leaving client would
        // send `client_left` into the other pairs' measurements.
        keep.push((client, responder));
    }
    let elapsed = start.elapsed();
    let done = hist.len();
    let cpu = server_cpu(server_pid, cpu0, done)?;
    Ok(json!({
        "scenario": "rpc",
        "pairs": pairs, "projects": projects, "requestsPerPair": requests, "size": size,
        "requests": done,
        "seconds": elapsed.as_secs_f64(),
        "requestsPerSec": done as f64 / elapsed.as_secs_f64().max(1e-9),
        "roundTrip": percentiles(&hist),
        "serverCpu": cpu,
        "checks": checks.json(),
        "ok": checks.ok(),
    }))
}

/// A process's CPU time so far (all its threads), in seconds: user, system.
async fn chat(
    servers: &Servers,
    args: ChatArgs,
    server_pid: Option<u32>,
    deadline: Instant,
) -> anyhow::Result<serde_json::Value> {
    let ChatArgs {
        speakers,
        projects,
        lines,
        size,
    } = args;
    anyhow::ensure!(
        speakers > 0 && projects > 0 && lines > 0,
        "counts must be positive"
    );
    let run = run_id();
    let checks = Arc::new(Checks::default());
    let pad = "x".repeat(size);
    let mut sockets = Vec::new();
    for i in 0..speakers {
        let mut ws = open(servers.nth(i), "member", &format!("{run}-{}", i % projects)).await?;
        read_text(&mut ws).await.context("the chat history")?;
        sockets.push(ws);
    }
    let cpu0 = server_pid.map(cpu_times).transpose()?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut ws) in sockets.into_iter().enumerate() {
        let checks = checks.clone();
        let pad = pad.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let mut said = 0u64;
            for n in 0..lines {
                let mark = format!("{i}:{n}:{pad}");
                let line = json!({ "text": mark }).to_string();
                let t = Instant::now();
                if let Err(e) = send_text(&mut ws, line.as_bytes()).await {
                    checks.error(|| format!("speaker: write failed: {e}"));
                    break;
                }
                // Lines of the project's other speakers come in between.
                let heard = loop {
                    match read_text(&mut ws).await {
                        Ok(text) if memchr::memmem::find(&text, mark.as_bytes()).is_some() => {
                            break true;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            checks.error(|| format!("speaker: read failed: {e}"));
                            break false;
                        }
                    }
                };
                if !heard || Instant::now() > deadline {
                    break;
                }
                let _ = hist.record(t.elapsed().as_nanos() as u64);
                said += 1;
            }
            (said, hist)
        }));
    }
    let mut said = 0;
    let mut hist = new_histogram();
    for task in tasks {
        let (n, h) = task.await?;
        said += n;
        let _ = hist.add(&h);
    }
    let elapsed = start.elapsed();
    checks
        .lost
        .fetch_add((speakers as u64 * lines).saturating_sub(said), Relaxed);
    let cpu = server_cpu(server_pid, cpu0, said)?;
    Ok(json!({
        "scenario": "chat",
        "speakers": speakers, "projects": projects, "lines": lines, "size": size,
        "said": said,
        "seconds": elapsed.as_secs_f64(),
        "linesPerSec": said as f64 / elapsed.as_secs_f64().max(1e-9),
        "latency": percentiles(&hist),
        "serverCpu": cpu,
        "checks": checks.json(),
        "ok": checks.ok(),
    }))
}

fn cpu_times(pid: u32) -> anyhow::Result<(f64, f64)> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: utime and stime are the 12th and 13th, in clock ticks
    // (USER_HZ, 100 per second on Linux).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        let t: u64 = fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("unexpected format of {path}"))?;
        Ok(t as f64 / 100.0)
    };
    Ok((ticks(11)?, ticks(12)?))
}

/// The server's CPU time since `before`, and per unit of work (`null`
/// without `--server-pid`).
fn server_cpu(
    pid: Option<u32>,
    before: Option<(f64, f64)>,
    units: u64,
) -> anyhow::Result<serde_json::Value> {
    let (Some(pid), Some((user0, sys0))) = (pid, before) else {
        return Ok(serde_json::Value::Null);
    };
    let (user, sys) = cpu_times(pid)?;
    let (user, sys) = (user - user0, sys - sys0);
    Ok(json!({
        "userSeconds": user,
        "systemSeconds": sys,
        "microsPerUnit": (user + sys) * 1e6 / units.max(1) as f64,
    }))
}

/// A process's memory in bytes: resident (RSS) and proportional (PSS).
///
/// Every room instance maps the same copy-on-write image of the component's
/// initial memory; RSS counts those shared pages once per instance, PSS
/// once in all, so PSS is the memory a room really costs.
#[derive(Clone, Copy)]
struct Memory {
    rss: u64,
    pss: u64,
}

fn memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let rollup = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let kb: u64 = rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} line in {path}"))?;
        Ok(kb * 1024)
    };
    Ok(Memory {
        rss: field("Rss:")?,
        pss: field("Pss:")?,
    })
}

async fn connect_many(
    servers: &Servers,
    args: ConnectArgs,
    server_pid: Option<u32>,
    deadline: Instant,
) -> anyhow::Result<serde_json::Value> {
    let ConnectArgs {
        connections,
        projects,
        storm,
        hold_secs,
        ..
    } = args;
    let concurrency = if storm { connections } else { args.concurrency };
    anyhow::ensure!(
        hold_secs == 0 || server_pid.is_some(),
        "--hold-secs measures the server's memory: it needs --server-pid"
    );
    anyhow::ensure!(
        connections > 0 && projects > 0 && concurrency > 0,
        "counts must be positive"
    );
    anyhow::ensure!(
        projects <= connections,
        "--projects must not exceed --connections"
    );
    let run = run_id();
    let mem0 = server_pid.map(memory).transpose()?;
    let hist = Arc::new(Mutex::new(new_histogram()));
    let checks = Arc::new(Checks::default());
    let mut sockets = Vec::with_capacity(connections);
    // Time spent opening connections (the pauses to read memory excluded).
    let mut elapsed = Duration::ZERO;
    let mut mem_rooms = None;
    // CPU time of the server and of this tool while opening, per phase.
    let mut cpu = Vec::with_capacity(2);
    // Phase 1 opens one connection per project (rooms), phase 2 the rest;
    // a storm opens them all in one.
    let phases = if storm {
        vec![(0, connections)]
    } else {
        vec![(0, projects), (projects, connections)]
    };
    for (from, to) in phases {
        let phase = Instant::now();
        let server0 = server_pid.map(cpu_times).transpose()?;
        let tool0 = cpu_times(std::process::id())?;
        let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let mut tasks = Vec::with_capacity(to - from);
        for i in from..to {
            let permit = sem.clone().acquire_owned().await?;
            let project = format!("{run}-{}", i % projects);
            let hist = hist.clone();
            let checks = checks.clone();
            let server = servers.nth(i);
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let remaining = deadline.saturating_duration_since(t);
                // A storm's clients come from many addresses, as clients
                // on many hosts would (a server limits the handshakes of one
                // address at once): 250 in 127.0.0.0/8.
                let from = (storm && server.ip() == std::net::Ipv4Addr::LOCALHOST)
                    .then(|| std::net::Ipv4Addr::new(127, 0, 1, (i % 250) as u8 + 1).into());
                let connecting = connect_from(from, server, "runtime", &project);
                let ws = match tokio::time::timeout(remaining, connecting).await {
                    Ok(Ok((ws, _))) => Some(ws),
                    Ok(Err(e)) => {
                        checks.error(|| format!("connect: {e:#}"));
                        None
                    }
                    Err(_) => {
                        checks.error(|| "connect: not connected before --timeout-secs".into());
                        None
                    }
                };
                let _ = hist.lock().await.record(t.elapsed().as_nanos() as u64);
                drop(permit);
                ws
            }));
        }
        for t in tasks {
            if let Some(ws) = t.await? {
                sockets.push(ws);
            }
        }
        elapsed += phase.elapsed();
        let (user, sys) = cpu_times(std::process::id())?;
        let tool = (user - tool0.0) + (sys - tool0.1);
        let units = (to - from) as u64;
        cpu.push(json!({
            "connections": units,
            "serverCpu": server_cpu(server_pid, server0, units)?,
            "toolMicrosPerUnit": tool * 1e6 / units.max(1) as f64,
        }));
        if from == 0 && !storm {
            // Let the server settle before reading its memory.
            tokio::time::sleep(Duration::from_millis(500)).await;
            mem_rooms = server_pid.map(memory).transpose()?;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mem_all = server_pid.map(memory).transpose()?;
    let memory = match (mem0, mem_rooms, mem_all) {
        (Some(m0), Some(m1), Some(m2)) => {
            let extra = (connections - projects).max(1) as f64;
            // Phase 2 adds only connections; phase 1 a room and a connection
            // per project.
            let split = |b0: u64, b1: u64, b2: u64| {
                let per_conn = b2.saturating_sub(b1) as f64 / extra;
                let per_room = (b1.saturating_sub(b0) as f64 / projects as f64 - per_conn).max(0.0);
                (per_conn, per_room)
            };
            let (pss_conn, pss_room) = split(m0.pss, m1.pss, m2.pss);
            let (rss_conn, rss_room) = split(m0.rss, m1.rss, m2.rss);
            json!({
                "rssBeforeBytes": m0.rss, "rssRoomsBytes": m1.rss, "rssAllBytes": m2.rss,
                "pssBeforeBytes": m0.pss, "pssRoomsBytes": m1.pss, "pssAllBytes": m2.pss,
                "bytesPerIdleConnection": pss_conn,
                "bytesPerRoom": pss_room,
                "rssBytesPerIdleConnection": rss_conn,
                "rssBytesPerRoom": rss_room,
            })
        }
        _ => serde_json::Value::Null,
    };
    let hist = hist.lock().await;
    let opened = sockets.len();
    let held = match server_pid.filter(|_| hold_secs > 0) {
        Some(pid) => {
            hold_and_leave(pid, sockets, Duration::from_secs(hold_secs), projects, mem0).await?
        }
        None => {
            drop(sockets);
            serde_json::Value::Null
        }
    };
    Ok(json!({
        "scenario": "connect",
        "held": held,
        "connections": connections, "projects": projects, "concurrency": concurrency,
        "opened": opened,
        "seconds": elapsed.as_secs_f64(),
        "connectionsPerSec": opened as f64 / elapsed.as_secs_f64().max(1e-9),
        "timeToConnected": percentiles(&hist),
        "storm": storm,
        // Phase 1 creates a room per connection; phase 2 joins live rooms.
        "cpu": if storm { json!({ "storm": cpu[0] }) } else { json!({ "newRooms": cpu[0], "liveRooms": cpu[1] }) },
        "memory": memory,
        "checks": checks.json(),
        "ok": checks.ok(),
    }))
}

/// Keeps `sockets` open for `hold`, reads the server's memory, then closes
/// them all at once and samples its memory while they leave (3 s).
async fn hold_and_leave(
    pid: u32,
    sockets: Vec<Ws>,
    hold: Duration,
    projects: usize,
    before: Option<Memory>,
) -> anyhow::Result<serde_json::Value> {
    tokio::time::sleep(hold).await;
    let held = memory(pid)?;
    drop(sockets);
    let mut peak = held;
    let leaving = Instant::now();
    while leaving.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = memory(pid)?;
        peak.rss = peak.rss.max(now.rss);
        peak.pss = peak.pss.max(now.pss);
    }
    let after = memory(pid)?;
    let per_project = |b: u64, b0: u64| b.saturating_sub(b0) as f64 / projects.max(1) as f64;
    Ok(json!({
        "holdSecs": hold.as_secs_f64(),
        "rssHeldBytes": held.rss, "pssHeldBytes": held.pss,
        "bytesPerProjectHeld": before.map(|b| per_project(held.pss, b.pss)),
        "rssBytesPerProjectHeld": before.map(|b| per_project(held.rss, b.rss)),
        "rssPeakLeavingBytes": peak.rss, "pssPeakLeavingBytes": peak.pss,
        "rssAfterLeavingBytes": after.rss, "pssAfterLeavingBytes": after.pss,
    }))
}

/// `println!` that ignores a closed stdout (`wsroom-load … | head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

fn print_report(r: &serde_json::Value) {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    let lat = |v: &serde_json::Value| {
        format!(
            "p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs",
            f(&v["p50Us"]),
            f(&v["p90Us"]),
            f(&v["p99Us"]),
            f(&v["p999Us"]),
            f(&v["maxUs"])
        )
    };
    match r["scenario"].as_str() {
        Some("fanout") => {
            out!(
                "fanout {} × {} receivers, {} B, route {}: {} deliveries in {:.2} s = {:.0} deliveries/s",
                r["projects"],
                r["receivers"],
                r["size"],
                r["route"].as_str().unwrap_or(""),
                r["deliveries"],
                f(&r["seconds"]),
                f(&r["deliveriesPerSec"])
            );
            out!("latency: {}", lat(&r["latency"]));
        }
        Some("rpc") => {
            out!(
                "rpc {} pairs over {} projects: {} requests in {:.2} s = {:.0} requests/s",
                r["pairs"],
                r["projects"],
                r["requests"],
                f(&r["seconds"]),
                f(&r["requestsPerSec"])
            );
            out!("round trip: {}", lat(&r["roundTrip"]));
        }
        Some("chat") => {
            out!(
                "chat {} speakers over {} projects: {} lines in {:.2} s = {:.0} lines/s",
                r["speakers"],
                r["projects"],
                r["said"],
                f(&r["seconds"]),
                f(&r["linesPerSec"])
            );
            out!("said to heard: {}", lat(&r["latency"]));
        }
        _ => {
            out!(
                "connect {}{} over {} projects: {} opened in {:.2} s = {:.0} connections/s",
                if r["storm"] == true {
                    "(storm, all at once) "
                } else {
                    ""
                },
                r["connections"],
                r["projects"],
                r["opened"],
                f(&r["seconds"]),
                f(&r["connectionsPerSec"])
            );
            out!("time to connected: {}", lat(&r["timeToConnected"]));
            for (phase, what) in [
                ("newRooms", "a new room"),
                ("liveRooms", "a live room"),
                ("storm", "a room in a storm"),
            ] {
                let c = &r["cpu"][phase];
                let server = &c["serverCpu"];
                if c["connections"].as_u64().unwrap_or(0) > 0 && !server.is_null() {
                    out!(
                        "CPU per connection to {what}: server {:.1} µs, this tool {:.1} µs",
                        f(&server["microsPerUnit"]),
                        f(&c["toolMicrosPerUnit"])
                    );
                }
            }
            if !r["held"].is_null() {
                let h = &r["held"];
                out!(
                    "after {:.0} s held: {:.0} B per project with its client (PSS; RSS {:.0} B); \
                     all leaving at once: RSS {:.1} MB -> peak {:.1} MB -> {:.1} MB after 3 s",
                    f(&h["holdSecs"]),
                    f(&h["bytesPerProjectHeld"]),
                    f(&h["rssBytesPerProjectHeld"]),
                    f(&h["rssHeldBytes"]) / 1e6,
                    f(&h["rssPeakLeavingBytes"]) / 1e6,
                    f(&h["rssAfterLeavingBytes"]) / 1e6
                );
            }
            if !r["memory"].is_null() {
                let m = &r["memory"];
                out!(
                    "server memory (PSS): {:.0} B per idle connection, {:.0} B per room \
                     (RSS: {:.0} B, {:.0} B)",
                    f(&m["bytesPerIdleConnection"]),
                    f(&m["bytesPerRoom"]),
                    f(&m["rssBytesPerIdleConnection"]),
                    f(&m["rssBytesPerRoom"])
                );
            }
        }
    }
    if !r["serverCpu"].is_null() {
        let c = &r["serverCpu"];
        let unit = match r["scenario"].as_str() {
            Some("rpc") => "request",
            Some("chat") => "line",
            _ => "delivery",
        };
        out!(
            "server CPU: {:.2} s user, {:.2} s system = {:.2} µs per {unit}",
            f(&c["userSeconds"]),
            f(&c["systemSeconds"]),
            f(&c["microsPerUnit"])
        );
    }
    let mut checks = r["checks"].clone();
    let first_error = checks
        .as_object_mut()
        .and_then(|c| c.remove("firstError"))
        .filter(|e| !e.is_null());
    out!("checks: {checks}");
    if let Some(e) = first_error {
        out!("first error: {}", e.as_str().unwrap_or_default());
    }
}

/// Refuses a run of `connections` that the open-files limit `files`
/// (`None`: no limit) cannot hold, saying how to raise it.
fn check_open_files(connections: usize, files: Option<u64>) -> anyhow::Result<()> {
    let needed = (connections as u64).saturating_add(wsroom::limits::FILES_RESERVED);
    if let Some(files) = files.filter(|&files| files < needed) {
        bail!(
            "this run opens {connections} connections, a file each, and the open-files limit is \
             {files}: raise it to at least {needed} (ulimit -n {needed})"
        );
    }
    Ok(())
}

/// Checks what `cli` asks before anything is measured (a loopback address,
/// open files for every connection, the server's pid) and starts the
/// runtime the run goes on.
fn prepare(cli: &Cli) -> anyhow::Result<tokio::runtime::Runtime> {
    for server in std::iter::once(&cli.server).chain(&cli.also_server) {
        let ip: IpAddr = server.ip();
        if !ip.is_loopback() {
            bail!("wsroom-load only drives servers on loopback addresses; {ip} is not one");
        }
    }
    // As the server does: many systems start processes with a soft limit of
    // 1024 open files, fewer than a run's connections.
    let files = wsroom::limits::raise_open_files_limit().unwrap_or_else(|e| {
        eprintln!("wsroom-load: cannot raise the open-files limit to its hard limit: {e}");
        wsroom::limits::open_files_limit().0
    });
    let connections = match cli.scenario {
        Scenario::Fanout(a) => a.projects.saturating_mul(a.receivers.saturating_add(1)),
        Scenario::Rpc(a) => a.pairs.saturating_mul(2),
        Scenario::Connect(a) => a.connections,
        Scenario::Chat(a) => a.speakers,
        Scenario::ReferenceServer => 0,
    };
    check_open_files(connections, files)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    if let Some(pid) = cli.server_pid {
        // Checked before any connection is made.
        cpu_times(pid).with_context(|| format!("--server-pid {pid}: no such process"))?;
    }
    Ok(runtime)
}

/// Runs the scenario; `reference-server` returns only on error.
async fn scenario(cli: &Cli) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(cli.timeout_secs);
    let servers = Servers(
        std::iter::once(cli.server)
            .chain(cli.also_server.iter().copied())
            .collect(),
    );
    match cli.scenario {
        Scenario::Fanout(args) => fanout(&servers, args, cli.server_pid, deadline).await,
        Scenario::Rpc(args) => rpc(&servers, args, cli.server_pid, deadline).await,
        Scenario::Connect(args) => connect_many(&servers, args, cli.server_pid, deadline).await,
        Scenario::Chat(args) => chat(&servers, args, cli.server_pid, deadline).await,
        // Serves until killed; returns only on error.
        Scenario::ReferenceServer => reference::serve(cli.server)
            .await
            .map(|()| json!({"ok": true})),
    }
}

/// Runs what `cli` asks on a runtime of its own, and returns the report
/// (`--json` prints it as is): its `"ok"` is whether every check passed.
/// An error is a run refused or cut short, with no report. Blocks the
/// calling thread, which must not be a runtime's; `reference-server`
/// serves until the process ends.
pub fn run(cli: &Cli) -> anyhow::Result<serde_json::Value> {
    let runtime = prepare(cli)?;
    runtime.block_on(scenario(cli))
}

/// What the binary does: [`run`], print the report (one JSON line with
/// `--json`) and exit at once, with 0 if every check passed and 1 if not;
/// an error is printed to stderr, as `main` returning it would, and exits
/// with 1.
pub fn run_and_exit(cli: Cli) -> ! {
    let report = prepare(&cli).and_then(|runtime| {
        let report = runtime.block_on(scenario(&cli));
        // Exit at once: idle sockets and tasks need no orderly teardown.
        std::mem::forget(runtime);
        report
    });
    match report {
        Ok(report) => {
            if cli.json {
                out!("{report}");
            } else {
                print_report(&report);
            }
            std::process::exit(if report["ok"] == true { 0 } else { 1 })
        }
        Err(e) => {
            eprintln!("Error: {e:?}");
            std::process::exit(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A delivery exactly as the default room re-serializes a load-tool
    /// message: fields in the sender's order, `from` appended.
    const DELIVERY: &str = r#"{"id":"7","type":"bench","to":{"type":"data-agent"},"payload":{"seq":7,"t":123456,"pad":"xx"},"from":{"id":"abc","type":"runtime"}}"#;

    #[test]
    fn reads_a_process_cpu_time() {
        // Busy for a while, so there is something to count.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let (user, sys) = cpu_times(std::process::id()).unwrap();
        assert!(user > 0.0 && sys >= 0.0, "{user} {sys}");
        assert!(cpu_times(u32::MAX).is_err());
    }

    #[test]
    fn finds_sequence_and_time() {
        let keys = Keys::new();
        assert_eq!(number_after(DELIVERY.as_bytes(), &keys.seq), Some(7));
        assert_eq!(number_after(DELIVERY.as_bytes(), &keys.t), Some(123456));
        assert_eq!(number_after(b"{\"x\":1}", &keys.seq), None);
        assert_eq!(number_after(b"{\"seq\":x}", &keys.seq), None);
        // In place, and searched for when a room reorders the fields.
        let sent = r#"{"payload":{"seq":42,"t":99,"pad":"x"},"type":"bench","id":"42"}"#;
        assert_eq!(seq_and_time(sent.as_bytes(), &keys), Some((42, 99)));
        let reordered = r#"{"type":"bench","payload":{"t":99,"seq":42,"pad":"x"}}"#;
        assert_eq!(seq_and_time(reordered.as_bytes(), &keys), Some((42, 99)));
        assert_eq!(seq_and_time(br#"{"payload":{"seq":42}}"#, &keys), None);
    }

    #[test]
    fn the_from_check_tells_senders_apart() {
        let ok = stamped_from("abc");
        let finder = memchr::memmem::Finder::new(ok.as_bytes());
        assert!(finder.find(DELIVERY.as_bytes()).is_some());
        let forged = DELIVERY.replace(r#""id":"abc""#, r#""id":"abd""#);
        assert!(finder.find(forged.as_bytes()).is_none());
        let unstamped = DELIVERY.replace(r#","from":{"id":"abc","type":"runtime"}"#, "");
        assert!(finder.find(unstamped.as_bytes()).is_none());
        // The sampled full parse agrees with the scan.
        let d: Delivery<'_> = serde_json::from_str(DELIVERY).unwrap();
        assert_eq!(
            (d.payload.seq, d.payload.t, d.from.id),
            (7, 123456, Some("abc"))
        );
    }

    #[test]
    fn system_messages_are_recognised() {
        assert!(is_system(
            br#"{"type":"client_left","from":{"type":"system"}}"#
        ));
        assert!(!is_system(DELIVERY.as_bytes()));
    }

    #[test]
    fn a_run_needing_more_files_than_the_limit_says_how_to_raise_it() {
        let error = check_open_files(1000, Some(200)).unwrap_err().to_string();
        assert!(
            error.contains("open-files limit is 200") && error.contains("ulimit -n 1064"),
            "{error}"
        );
        assert!(check_open_files(1000, Some(1064)).is_ok());
        assert!(check_open_files(1000, None).is_ok());
    }
}
