//! What one message costs on its way through a room, without the network
//! and the kernel: a reader running the idle room itself, as a connection's
//! reader does (see `RoomHandle::try_run`), the guest call (the embedded
//! default room, in wasm), the fan-out into the receivers' outboxes and the
//! writers' take. Beside it, the same routing rules compiled
//! natively with the same framing and fan-out: the difference is the price
//! of running the room as a wasm component.
//!
//! A second group, `new room`, prices what a project's first connection
//! costs beyond joining a live room: a room started, its instance created
//! (store, memory, WASI context), the guest's `on-connect`, the greeting
//! queued; then the room shut down and its instance dropped.
//!
//! `cargo bench -p wsroom --bench room`: each path timed by the clock
//! (group `message`) and by the CPU time the process used (group `cpu per
//! message`, steadier on a shared machine).
//!
//! Instructions per message, which do not move with the machine's load: run
//! the bench binary under callgrind twice with `ROOM_BENCH_MESSAGES` (or
//! `ROOM_BENCH_ROOMS`) set (see [`counted`]) and divide the difference of
//! the totals by the difference of the counts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use criterion::{Criterion, Throughput, criterion_group};
use fastwebsockets::OpCode;
use tokio::runtime::Runtime as Tokio;
use wsroom::bench::{
    BATCH, ClientMeta, ConnRef, Event, Incoming, Outbox, Registry, RoomHandle, encode,
};
use wsroom::config::Cli;
use wsroom_default_room::rules::{self, Env, Reached, Target};

// The server's allocator.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A 100-byte payload, as the load tool sends it.
fn message(to: &str) -> String {
    format!(
        r#"{{"payload":{{"seq":1,"t":2,"pad":"{}"}},"type":"bench","id":"1","to":{to}}}"#,
        "x".repeat(100)
    )
}

struct Room {
    handle: RoomHandle,
    sender: ConnRef,
    receivers: Vec<(Arc<str>, Arc<Outbox>)>,
}

/// One project with a `runtime` sender and `receivers` data agents, joined
/// the way the HTTP layer joins them, with what they were sent on joining
/// drained.
async fn room_with(receivers: usize) -> Room {
    let registry = registry();
    let handle = registry
        .get_or_create("bench")
        .expect("the first room is under --max-rooms");
    let (_, sender, sender_box) = join(&handle, "runtime").await;
    let mut joined = Vec::new();
    for _ in 0..receivers {
        let (id, _, outbox) = join(&handle, "data-agent").await;
        joined.push((id, outbox));
    }
    drain_idle(&sender_box).await;
    for (_, outbox) in &joined {
        drain_idle(outbox).await;
    }
    Room {
        handle,
        sender,
        receivers: joined,
    }
}

/// A registry as the server makes one with its defaults (hibernation off).
fn registry() -> Arc<Registry> {
    let config = Cli::parse_from(["wsroom"])
        .config()
        .expect("default config");
    wsroom::bench::registry(&config).expect("engine and default room")
}

/// Joins a client the way the HTTP layer does; returns its id, its
/// connection and its outbox.
async fn join(handle: &RoomHandle, kind: &str) -> (Arc<str>, ConnRef, Arc<Outbox>) {
    let meta = Arc::new(ClientMeta {
        id: uuid::Uuid::new_v4().to_string().into(),
        kind: kind.into(),
        connected_at: 0,
        user_agent: None,
        origin: None,
        ..Default::default()
    });
    // Large enough that nothing measured here overflows.
    let outbox = Arc::new(Outbox::new(1 << 30));
    let (reply, answer) = tokio::sync::oneshot::channel();
    let event = Event::Connect {
        meta: meta.clone(),
        outbox: outbox.clone(),
        reply,
    };
    assert!(handle.send(event).await.is_ok(), "room is gone");
    let conn = answer.await.expect("room answered").expect("admitted");
    (meta.id.clone(), conn, outbox)
}

/// Takes whatever an outbox holds until it stays empty for a moment.
async fn drain_idle(outbox: &Outbox) {
    let mut batch = Vec::new();
    while tokio::time::timeout(Duration::from_millis(20), outbox.take(&mut batch))
        .await
        .is_ok()
    {
        batch.clear();
    }
}

impl Room {
    /// Runs [`Room::round`] on a worker of `tokio`, as a connection's reader
    /// runs in the server (a send from outside the runtime would wake a
    /// worker thread per message).
    fn timed(
        self: &Arc<Self>,
        tokio: &Tokio,
        text: &Arc<str>,
        n: u64,
        expect: &[usize],
    ) -> Duration {
        let (room, text, expect) = (self.clone(), text.clone(), expect.to_vec());
        tokio
            .block_on(tokio.spawn(async move { room.round(&text, n, &expect).await }))
            .expect("round finished")
    }

    /// Like [`Room::timed`], but the result is the CPU time the whole
    /// process spent (every thread: the sender, the room, the takers), which
    /// varies far less on a shared machine than the elapsed time.
    fn cpu(self: &Arc<Self>, tokio: &Tokio, text: &Arc<str>, n: u64, expect: &[usize]) -> Duration {
        let start = process_cpu();
        self.timed(tokio, text, n, expect);
        process_cpu().saturating_sub(start)
    }

    /// Sends `n` copies of `text` from the sender and waits until each
    /// receiver in `expect` has taken its `n` frames.
    async fn round(&self, text: &str, n: u64, expect: &[usize]) -> Duration {
        let start = Instant::now();
        let mut left = n;
        while left > 0 {
            // As a connection's reader: up to 64 messages in a row in the
            // room, queued if the room is busy (it never is here).
            let Some(mut running) = self.handle.try_run() else {
                let event = Event::Message {
                    conn: self.sender,
                    message: Incoming::Text(text.to_owned()),
                    read_at: Instant::now(),
                };
                assert!(self.handle.send(event).await.is_ok(), "room is gone");
                left -= 1;
                continue;
            };
            for _ in 0..left.min(BATCH as u64) {
                let message = Incoming::Text(text.to_owned());
                // Each message as if it came alone (a client that waits for
                // an answer, as rpc's): one call into the room per message.
                let alone = false;
                Box::pin(running.message(self.sender, message, Instant::now(), alone)).await;
                left -= 1;
            }
        }
        let mut batch = Vec::new();
        for &r in expect {
            let outbox = &self.receivers[r].1;
            let mut got = 0;
            while got < n {
                outbox.take(&mut batch).await;
                got += batch.len() as u64;
                batch.clear();
            }
            assert_eq!(got, n, "exactly one frame per message");
        }
        start.elapsed()
    }
}

/// Rooms made one after another, each for a project of its own.
struct NewRooms {
    registry: Arc<Registry>,
    made: u64,
}

impl NewRooms {
    fn new() -> NewRooms {
        NewRooms {
            registry: registry(),
            made: 0,
        }
    }

    /// `n` projects' first connections, one after another, on a worker of
    /// `tokio`: each starts a room, creates its instance, runs `on-connect`
    /// and queues the greeting, which is taken; then the room is shut down
    /// and removed (its instance dropped in its task).
    fn timed(&mut self, tokio: &Tokio, n: u64) -> Duration {
        let (registry, first) = (self.registry.clone(), self.made);
        self.made += n;
        tokio
            .block_on(tokio.spawn(async move {
                let start = Instant::now();
                let mut batch = Vec::new();
                for i in first..first + n {
                    let project = format!("new-{i}");
                    let handle = registry
                        .get_or_create(&project)
                        .expect("one room at a time is under --max-rooms");
                    let (_, _, outbox) = join(&handle, "runtime").await;
                    outbox.take(&mut batch).await;
                    assert_eq!(batch.len(), 1, "the greeting");
                    batch.clear();
                    assert!(handle.send(Event::Shutdown).await.is_ok(), "room is gone");
                    registry.remove_if(&project, handle.generation);
                }
                start.elapsed()
            }))
            .expect("rooms made")
    }

    fn cpu(&mut self, tokio: &Tokio, n: u64) -> Duration {
        let start = process_cpu();
        self.timed(tokio, n);
        process_cpu().saturating_sub(start)
    }
}

fn new_room(c: &mut Criterion) {
    let tokio = two_workers();
    let mut rooms = NewRooms::new();
    let mut g = c.benchmark_group("new room");
    g.throughput(Throughput::Elements(1));
    g.bench_function("first connection of a project", |b| {
        b.iter_custom(|n| rooms.timed(&tokio, n))
    });
    g.bench_function("cpu per first connection of a project", |b| {
        b.iter_custom(|n| rooms.cpu(&tokio, n))
    });
    g.finish();
}

/// CPU time used by this process so far, all threads.
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The default room's rules, natively, with the host's framing and a
/// fan-out that clones the frame into each receiver's queue.
struct Native {
    queues: Vec<Vec<Bytes>>,
}

impl Env for Native {
    fn project_id(&self) -> String {
        "bench".into()
    }
    fn send(&mut self, text: &str, _targets: &[Target<'_>]) -> Reached {
        let frame = encode(OpCode::Text, text.as_bytes());
        for q in &mut self.queues {
            q.push(frame.clone());
        }
        let n = self.queues.len() as u32;
        Reached { first: n, all: n }
    }
    fn client_count(&self) -> u32 {
        self.queues.len() as u32 + 1
    }
    fn now_ms(&self) -> u64 {
        0
    }
    fn new_id(&self) -> String {
        "id".into()
    }
    fn config(&self, _key: &str) -> Option<String> {
        None
    }
    fn set_alarm(&mut self, _delay_ms: u64) {}
    fn cancel_alarm(&mut self) {}
}

/// The two rooms (10 receivers, 1 receiver) on two tokio workers, like the
/// server on these machines, and a message for each.
struct Setup {
    tokio: Tokio,
    ten: Arc<Room>,
    one: Arc<Room>,
    by_type: Arc<str>,
    by_id: Arc<str>,
    all: Vec<usize>,
}

impl Setup {
    fn new() -> Setup {
        let tokio = two_workers();
        let ten = Arc::new(tokio.block_on(room_with(10)));
        let one = Arc::new(tokio.block_on(room_with(1)));
        let by_type = message(r#"{"type":"data-agent"}"#).into();
        let by_id = message(&format!(r#"{{"id":"{}"}}"#, one.receivers[0].0)).into();
        Setup {
            tokio,
            ten,
            one,
            by_type,
            by_id,
            all: (0..10).collect(),
        }
    }

    fn shut(&self) {
        for room in [&self.ten, &self.one] {
            self.tokio.block_on(async {
                let _ = room.handle.send(Event::Shutdown).await;
            });
        }
    }
}

/// Two tokio workers, like the server on these machines.
fn two_workers() -> Tokio {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

impl Native {
    fn new() -> Native {
        Native {
            queues: vec![Vec::new(); 10],
        }
    }

    /// One message through the rules, handed over owned as the host does.
    fn round(&mut self, text: &str) {
        let text = text.to_string();
        rules::on_text(self, "sender-id", "runtime", &text);
        for q in &mut self.queues {
            q.clear();
        }
    }
}

fn per_message(c: &mut Criterion) {
    let s = Setup::new();
    let mut g = c.benchmark_group("message");
    g.throughput(Throughput::Elements(1));
    g.bench_function("wasm room, to.type, 10 receivers", |b| {
        b.iter_custom(|n| s.ten.timed(&s.tokio, &s.by_type, n, &s.all))
    });
    g.bench_function("wasm room, to.id, 1 receiver", |b| {
        b.iter_custom(|n| s.one.timed(&s.tokio, &s.by_id, n, &[0]))
    });
    let mut native = Native::new();
    g.bench_function("native rules, to.type, 10 receivers", |b| {
        b.iter(|| native.round(&s.by_type))
    });
    g.finish();

    // The same paths timed by the CPU the process used instead of by the
    // clock: steadier on a shared machine, and it counts every thread.
    let mut g = c.benchmark_group("cpu per message");
    g.throughput(Throughput::Elements(1));
    g.bench_function("wasm room, to.type, 10 receivers", |b| {
        b.iter_custom(|n| s.ten.cpu(&s.tokio, &s.by_type, n, &s.all))
    });
    g.bench_function("wasm room, to.id, 1 receiver", |b| {
        b.iter_custom(|n| s.one.cpu(&s.tokio, &s.by_id, n, &[0]))
    });
    g.finish();
    s.shut();
}

/// `ROOM_BENCH_MESSAGES=N`: instead of criterion, send N messages by type
/// (10 receivers) and N by id (1 receiver), then run the same rules natively
/// as many times, and exit. For instruction counts under `valgrind
/// --tool=callgrind`, which do not depend on what else the machine is doing:
/// the difference between two runs with different N, divided by the
/// difference in N, is the instructions per pair of messages.
/// `ROOM_BENCH_ROOMS=N` does the same for N first connections of a project
/// (see [`NewRooms`]).
fn counted(n: u64) {
    let s = Setup::new();
    s.ten.timed(&s.tokio, &s.by_type, n, &s.all);
    s.one.timed(&s.tokio, &s.by_id, n, &[0]);
    s.shut();
    let mut native = Native::new();
    for _ in 0..n {
        native.round(&s.by_type);
        native.round(&s.by_id);
    }
}

criterion_group!(benches, per_message, new_room);

/// A count from the environment, if the variable is set.
fn count_from_env(name: &str) -> Option<u64> {
    let n = std::env::var_os(name)?;
    let n = n.to_str().and_then(|n| n.parse().ok());
    Some(n.unwrap_or_else(|| panic!("{name} must be a whole number")))
}

fn main() {
    if let Some(n) = count_from_env("ROOM_BENCH_ROOMS") {
        NewRooms::new().timed(&two_workers(), n);
        return;
    }
    if let Some(n) = count_from_env("ROOM_BENCH_MESSAGES") {
        counted(n);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
