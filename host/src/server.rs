//! The server: [`run`] sets everything up, the [`Listener`] accepts
//! connections within the limits, a [`Handler`] serves one connection's
//! HTTP phase (TLS, hyper, until its request is answered or it becomes a
//! WebSocket), and shutdown closes every WebSocket with 1001.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::cluster::Cluster;
use crate::config::Config;
use crate::engine::Runtime;
use crate::handshakes::{HandshakeSlot, Handshakes};
use crate::http::{self, App, HttpError};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::room::log_limit::Throttle;
use crate::room::{Event, Settings};
use crate::store::jetstream::JetStreamStore;
use crate::store::{DurableStore, RoomStore};
use crate::tls::Tls;

/// Refused connections closed gracefully at once (see [`close_after`]):
/// each may take a second, so a flood of them costs at most this many
/// sockets and tasks.
const REFUSALS_CLOSING: usize = 64;
/// How long shutdown waits for clients to receive their close frames.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves until `shutdown` resolves, then closes every WebSocket with 1001
/// and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let tls = config.tls.as_ref().map(Tls::new).transpose()?;
    crate::limits::check_at_start(&config);
    // A file-size limit is a failing disk, not a reason to die; and a data
    // directory that will not do stops the server before the rooms compile.
    crate::signals::survive_file_size_limit();
    // In a cluster, rooms keep their data in JetStream (unless
    // --in-memory), so that a project that moves keeps it.
    let nats = match &config.cluster {
        Some(cluster) => Some(crate::cluster::connect(cluster, "data").await?),
        None => None,
    };
    let store = match (&nats, &config.data_dir) {
        // In a cluster a project moves between nodes: a node's memory
        // would give it back data another node has changed since.
        (None, None) => Some(RoomStore::Memory(Arc::default())),
        (Some(_), None) => None,
        (Some(client), Some(_)) => Some(RoomStore::JetStream(Arc::new(
            JetStreamStore::open(client).await?,
        ))),
        (None, Some(dir)) => Some(RoomStore::File(DurableStore::open(dir)?)),
    };
    let runtime = Runtime::new(&config)?;
    let metrics = Arc::new(Metrics::default());
    crate::signals::reload_on_sighup(
        runtime.clone(),
        tls.clone(),
        config.auth.clone(),
        metrics.clone(),
    );
    let mut settings = Settings::from_config(&config);
    if let Some(RoomStore::JetStream(store)) = &store {
        // A room is one NATS message: its store must fit in one (the
        // store counts 8 bytes an entry for its lengths; the rest of the
        // message is the alarm and a few bytes).
        let fits = store.max_bytes().saturating_sub(1024);
        if settings.storage_bytes > fits {
            warn!(
                limit = fits,
                "--room-storage-bytes lowered to NATS' largest message (its max_payload) in a cluster"
            );
            settings.storage_bytes = fits;
        }
    }
    settings.store = store.clone();
    let registry = Registry::new(
        runtime,
        config.room_config.clone(),
        settings,
        metrics.clone(),
        config.max_rooms,
        config.max_instances,
    );
    if let Some(RoomStore::File(store)) = &store {
        wake_alarms(store, &registry)?;
    }
    let cluster = match (&config.cluster, nats) {
        (Some(config_), Some(client)) => {
            Some(Cluster::join(client, config_, registry.clone(), config.outbox_limit_bytes).await?)
        }
        _ => None,
    };
    if let (Some(cluster), Some(RoomStore::JetStream(store))) = (&cluster, &store) {
        // Alarms whose owner is gone are fired by a live node.
        let cluster = cluster.clone();
        tokio::spawn(store.clone().watch_alarms(move |project| {
            let cluster = cluster.clone();
            async move { cluster.wake(project).await }
        }));
    }
    let http_slots = Arc::new(Semaphore::new(crate::limits::http_connections(
        config.max_connections,
    )));
    let handshakes = Handshakes::new(config.max_handshakes_per_address);
    let app = Arc::new(App {
        registry: registry.clone(),
        websockets: Arc::new(Semaphore::new(config.max_connections)),
        config: Arc::new(config),
        metrics,
        store,
        cluster: cluster.clone(),
        tracker: TaskTracker::new(),
        started: Instant::now(),
        warnings: Default::default(),
    });
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    // The readiness line: tests and scripts wait for it.
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("wsroom listening on {scheme}://{addr}");
    info!(%addr, "listening");
    if app.config.auth.is_none() {
        warn!(
            "no --auth-secret nor --auth-public-keys: anyone who can reach this server and knows a projectId may join it, \
             as admin too"
        );
    }

    let mut server = Listener {
        listener,
        tls,
        app: app.clone(),
        http_slots,
        handshakes,
        refusals_closing: Arc::new(Semaphore::new(REFUSALS_CLOSING)),
        accept_failures: Throttle::new(1),
    };
    tokio::select! {
        () = server.run() => {}
        () = shutdown => {}
    }
    drop(server);

    info!("shutting down: closing every connection with 1001");
    if let Some(cluster) = &cluster {
        // Clients of this node's projects held by other nodes stay open:
        // another node takes the projects over once this one has left.
        cluster.leaving().await;
    }
    for room in registry.all() {
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, room.send(Event::Shutdown)).await;
    }
    if let Some(cluster) = &cluster {
        // Once the rooms here are closed, so that a project never runs on
        // two nodes, even for the moment it takes one to close.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while !registry.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if registry.is_empty() {
            cluster.leave().await;
        } else {
            // A room still closing: its projects go when the lease ends.
            warn!(
                "some rooms did not close in time: their projects move when this node's lease ends"
            );
        }
    }
    app.tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, app.tracker.wait())
        .await
        .is_err()
    {
        warn!("some connections did not close in time");
    }
    Ok(())
}

/// Accepts connections while there is an HTTP slot for them, and hands each
/// to a [`Handler`].
struct Listener {
    listener: TcpListener,
    tls: Option<Tls>,
    app: Arc<App>,
    /// HTTP connections served at once (a seventh of `--max-connections`,
    /// at least 64):
    /// past it, new connections wait in the kernel's accept queue.
    http_slots: Arc<Semaphore>,
    /// `--max-handshakes-per-address`.
    handshakes: Arc<Handshakes>,
    /// Refused connections being closed gracefully at once; past it they
    /// are closed at once.
    refusals_closing: Arc<Semaphore>,
    accept_failures: Throttle,
}

impl Listener {
    async fn run(&mut self) {
        loop {
            let Ok(slot) = self.http_slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match self.listener.accept().await {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait, then go on.
                    if let Some(skipped) = self.accept_failures.admit() {
                        warn!(error = %e, skipped, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(address_slot) = self.handshakes.admit(peer.ip()) else {
                self.refuse(stream, peer);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let handler = Handler {
                stream,
                peer,
                tls: self.tls.as_ref().map(Tls::acceptor),
                app: self.app.clone(),
                _slot: slot,
                _address_slot: address_slot,
            };
            tokio::spawn(handler.run());
        }
    }

    /// A connection over `--max-handshakes-per-address`: told so in plain
    /// HTTP, or just closed on a TLS port.
    fn refuse(&self, stream: TcpStream, peer: SocketAddr) {
        let app = &self.app;
        app.metrics.handshake_refused();
        if let Some(skipped) = app.warnings.handshakes.admit() {
            warn!(%peer, skipped, max = app.config.max_handshakes_per_address,
                "refusing a connection: its address is at --max-handshakes-per-address");
        }
        if self.tls.is_some() {
            return;
        }
        let reply = HttpError::unavailable(
            "too_many_handshakes",
            "too many connections from this address are opening at once; try again later",
        )
        .into_http1_bytes();
        match self.refusals_closing.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    close_after(stream, &reply).await;
                    drop(permit);
                });
            }
            // Many refusals at once: one write that never waits, and close.
            Err(_) => {
                let _ = stream.try_write(&reply);
            }
        }
    }
}

/// Writes `reply`, then reads and drops what the client still sends, for at
/// most a second or 4 KiB: a socket closed with its request unread is
/// reset, and a reset can lose the reply on its way (RFC 9112 9.6).
async fn close_after(mut stream: TcpStream, reply: &[u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(reply).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        let mut read = 0;
        while read < 4096 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => read += n,
            }
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// One accepted connection until its request is answered and it closes, or
/// it becomes a WebSocket (whose own task goes on in [`crate::conn`]).
struct Handler {
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    app: Arc<App>,
    /// Its HTTP slot and its place in its address's count, both given back
    /// when the HTTP phase ends.
    _slot: OwnedSemaphorePermit,
    _address_slot: HandshakeSlot,
}

impl Handler {
    async fn run(self) {
        let app = self.app.clone();
        let service = service_fn(move |req| http::route(app.clone(), req));
        // A client gets this long for its TLS handshake, then for its
        // request headers.
        let timeout = self.app.config.handshake_timeout;
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(timeout);
        let peer = self.peer;
        let served = match self.tls {
            None => {
                http.serve_connection(TokioIo::new(self.stream), service)
                    .with_upgrades()
                    .await
            }
            // Boxed: a TLS connection's state is larger than the plain
            // one's, and this future is moved whole into its task.
            Some(tls) => {
                Box::pin(async move {
                    match tokio::time::timeout(timeout, tls.accept(self.stream)).await {
                        Ok(Ok(stream)) => {
                            http.serve_connection(TokioIo::new(stream), service)
                                .with_upgrades()
                                .await
                        }
                        Ok(Err(e)) => {
                            debug!(%peer, error = %e, "tls handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            debug!(%peer, "tls handshake timed out");
                            Ok(())
                        }
                    }
                })
                .await
            }
        };
        if let Err(e) = served {
            debug!(%peer, error = %e, "http connection ended with an error");
        }
    }
}

/// Starts the room of every project with a pending alarm, so that it fires
/// at its time (at once if that passed while the server was down), clients
/// or not.
fn wake_alarms(store: &DurableStore, registry: &Arc<Registry>) -> anyhow::Result<()> {
    let alarms = store
        .alarms()
        .context("cannot read the rooms' alarms from the store")?;
    let mut started = 0;
    for (project, _) in &alarms {
        if registry.get_or_create(project).is_some() {
            started += 1;
        }
    }
    if started < alarms.len() {
        warn!(
            pending = alarms.len(),
            started,
            "more rooms with a pending alarm than --max-rooms: the others fire when their room next starts"
        );
    }
    info!(dir = %store.dir().display(), rooms_with_alarms = started, "durable store open");
    Ok(())
}
