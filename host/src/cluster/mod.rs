//! Cluster mode (`--nats`): nodes that share a NATS JetStream, each live
//! project owned by one node at a time, any node accepting any client.
//!
//! A client's node places it ([`Cluster::connect`]): in the room here when
//! this node owns the project (or takes it, being the first to need it),
//! else through the owner, which admits it into its room's table; the
//! client's messages then go to the owner and what the room sends it comes
//! back. When an owner dies, its lease ends, the next node that needs one
//! of its projects takes it over and gathers the project's clients from
//! the nodes holding their sockets ([`Cluster::place`]). An HTTP request
//! into a room goes to the owner the same way ([`Cluster::fetch`]).
//!
//! - [`lease`]: this node's lease and the projects' owners, in two
//!   key-value buckets.
//! - [`owner`]: what the owner keeps for clients held by other nodes.
//! - [`remote`]: this node's clients of projects other nodes own.
//! - [`wire`]: the subjects and the bodies of what nodes say to each other.
//! - [`counters`]: what the cluster did, for `/metrics`.

mod counters;
mod lease;
mod owner;
mod remote;
mod wire;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::client::RequestErrorKind;
use async_nats::{Message, Request};
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::config::ClusterConfig;
use crate::conn::RoomLink;
use crate::engine::wit;
use crate::outbox::Outbox;
use crate::registry::{ConnectError, Registry};
use crate::room::log_limit::Throttle;
use crate::room::{ClientMeta, Event, Fetched, Incoming, Refusal};
use counters::{Counters, Undelivered};
use lease::{Leases, Owner};
pub(crate) use lease::{Validity, bucket, key};
use owner::Served;
use remote::{Answer, Stub, Stubs};

/// How long a leaving node waits for its links to hand NATS what its
/// rooms sent other nodes' clients.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// How many times a connect looks for the project's owner again when the
/// node it found turned out not to be it.
const PLACE_ATTEMPTS: usize = 4;
/// How long a request to another node (connect, close, gather, report)
/// may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a takeover waits for each node to say which of the project's
/// clients it holds (a node that does not answer is cut off or dying).
const GATHER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a forwarded message may wait for the owner's room to handle
/// it (it may queue behind others).
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long this node's clients of a project may point at a node whose
/// lease ended while another node owns the project before they are
/// closed as left out of its gathering: longer than a gathering takes
/// (the new owner points them at itself when this node answers it).
const STRANDED_AFTER: Duration = GATHER_TIMEOUT.saturating_mul(2);
/// Locks that claims of projects take, by a hash of the projectId.
const CLAIM_STRIPES: usize = 64;
/// Pause between two looks for the owner of a project that is moving.
const RETRY: Duration = Duration::from_millis(100);
/// How long an HTTP request into a room another node owns may take there:
/// the room may be waiting on its own outgoing HTTP.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest pause between two looks (many clients may be looking).
const MAX_RETRY: Duration = Duration::from_secs(1);

pub(crate) struct Cluster {
    client: async_nats::Client,
    node: Arc<str>,
    leases: Arc<Leases>,
    stubs: Stubs,
    served: Served,
    registry: Arc<Registry>,
    outbox_limit: usize,
    /// Claims, and the gathering that follows a takeover, one at a time per
    /// project: a second client of a project being taken waits until its
    /// clients are back in its table. (Striped by a hash of the projectId:
    /// claims of most pairs of projects go on at once.)
    claiming: [tokio::sync::Mutex<()>; CLAIM_STRIPES],
    /// Takeovers whose gathering may still be going on. The project is this
    /// node's from its claim on, before its clients elsewhere are back in
    /// its table: while this is not 0, a client of a project this node owns
    /// waits for its stripe's claim (and so for any gathering) to end, or a
    /// message from a client not yet gathered could miss it.
    takeovers: std::sync::atomic::AtomicUsize,
    /// Warnings a flapping connection to NATS would repeat.
    warnings: Throttle,
    counters: Counters,
    /// Whether this node is leaving, behind a lock every message from
    /// another node's client holds while it is handled and answered: the
    /// node takes no more once leaving, and waits for those it took before
    /// it sends its last frames (see [`Cluster::leaving`]).
    handling: tokio::sync::RwLock<bool>,
}

/// Projects whose clients here a takeover left out, with when they were
/// first found so and the owner (node and epoch) they were found under.
type Stranded = HashMap<Arc<str>, (Instant, (Arc<str>, u64))>;

/// One takeover in [`Cluster::takeovers`], for as long as it lives.
struct TakeoverGuard<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> TakeoverGuard<'a> {
    fn new(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, SeqCst);
        TakeoverGuard(count)
    }
}

impl Drop for TakeoverGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// Why a client could not be placed.
pub(crate) enum PlaceError {
    /// Its room did not take it (as on a single node).
    Connect(ConnectError),
    /// The cluster could not say where its room is (NATS out of reach, this
    /// node without a lease, an owner that does not answer).
    Cluster(String),
}

/// Where a project's room runs.
enum Placement {
    Here,
    On { node: Arc<str>, epoch: u64 },
}

/// Why a client's message did not reach its room on another node; its
/// sender gets an `error` with this code and text.
pub(crate) struct NotDelivered {
    pub(crate) code: &'static str,
    pub(crate) message: &'static str,
    /// The client is no longer in its room's table: it must reconnect.
    pub(crate) reconnect: bool,
    counted_as: Undelivered,
}

const OWNER_SILENT: NotDelivered = NotDelivered {
    code: "not_delivered",
    message: "the node running this project did not answer in time; the message may not have been handled",
    reconnect: false,
    counted_as: Undelivered::OwnerSilent,
};
const OWNER_GONE: NotDelivered = NotDelivered {
    code: "not_delivered",
    message: "the node running this project stopped before answering; the message may not have been handled",
    reconnect: false,
    counted_as: Undelivered::OwnerGone,
};
const ROOM_LOST: NotDelivered = NotDelivered {
    code: "not_delivered",
    message: "the project's room failed or stopped before handling the message",
    reconnect: false,
    counted_as: Undelivered::RoomLost,
};
const TOO_LARGE: NotDelivered = NotDelivered {
    code: "message_too_large",
    message: "the message is larger than a NATS message (the cluster's max_payload) and cannot reach its room on another node",
    reconnect: false,
    counted_as: Undelivered::TooLarge,
};
const NO_OWNER: NotDelivered = NotDelivered {
    code: "not_delivered",
    message: "no node took this project's clients over in time; message not handled, reconnect",
    reconnect: true,
    counted_as: Undelivered::NoOwner,
};

impl Cluster {
    /// Opens the buckets, takes this node's lease and starts answering the
    /// other nodes.
    pub(crate) async fn join(
        client: async_nats::Client,
        config: &ClusterConfig,
        registry: Arc<Registry>,
        outbox_limit: usize,
    ) -> anyhow::Result<Arc<Cluster>> {
        let node: Arc<str> = config.node_name.as_str().into();
        // The lease and the owners on a connection of their own: on the
        // one that carries clients' messages and frames, a renewal would
        // queue behind megabytes of frames under load, and a node that
        // misses its renewals stops its rooms.
        let control = connect(config, "control").await?;
        let js = async_nats::jetstream::new(control);
        let leases = Arc::new(Leases::open(&js, node.clone(), config.lease).await?);
        let subscription = client
            .subscribe(wire::inbox(&node))
            .await
            .context("cannot subscribe to this node's subjects")?;
        let cluster = Arc::new(Cluster {
            client,
            node,
            leases,
            stubs: Stubs::default(),
            served: Served::default(),
            registry: registry.clone(),
            outbox_limit,
            claiming: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
            takeovers: std::sync::atomic::AtomicUsize::new(0),
            warnings: Throttle::new(1),
            counters: Counters::default(),
            handling: tokio::sync::RwLock::new(false),
        });
        tokio::spawn(cluster.clone().serve(subscription));
        cluster.first_lease().await?;
        tokio::spawn(cluster.clone().keep_lease());
        tokio::spawn(cluster.clone().watch_other_nodes());
        registry.run_under(cluster.leases.validity());
        registry.owned_through(cluster.leases.clone());
        info!(node = %cluster.node, lease_ms = cluster.leases.lease().as_millis() as u64, "joined the cluster");
        Ok(cluster)
    }

    /// Takes this node's lease, waiting out the one a previous run under
    /// the same name left (it ends within a lease).
    async fn first_lease(&self) -> anyhow::Result<()> {
        let give_up = tokio::time::Instant::now() + self.leases.lease() * 2;
        loop {
            match self.leases.renew().await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= give_up => return Err(e),
                Err(e) => {
                    warn!("{e:#}; trying again");
                    tokio::time::sleep(self.leases.lease() / 8).await;
                }
            }
        }
    }

    /// Renews the lease a few times a lease; fences when it could not.
    async fn keep_lease(self: Arc<Self>) {
        let period = self.leases.lease() / 4;
        loop {
            let fence_at = self.leases.valid_until();
            let renewed = tokio::select! {
                renewed = self.leases.renew() => renewed,
                () = sleep_until(fence_at) => Err(anyhow::anyhow!("no renewal in time")),
            };
            if let (Err(e), Some(skipped)) = (renewed, self.warnings.admit()) {
                warn!(skipped, "lease: {e:#}");
            }
            let fence_at = self.leases.valid_until();
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                () = sleep_until(fence_at) => {}
            }
            if !self.leases.valid() && (self.leases.owned_count() > 0 || !self.registry.is_empty())
            {
                self.fence();
            }
        }
    }

    /// What follows other nodes' leases, in a task of its own so that it
    /// never delays this node's renewals: their clients here, and the
    /// projects they owned.
    async fn watch_other_nodes(self: Arc<Self>) {
        let period = self.leases.lease() / 4;
        let mut stranded = HashMap::new();
        loop {
            tokio::time::sleep(period).await;
            self.drop_clients_of_ended_nodes().await;
            stranded = self.adopt_orphans(stranded).await;
        }
    }

    /// This node can no longer prove it owns its projects: it stops running
    /// them before anyone else may take them. Clients held here are closed
    /// (1012) and reconnect; clients held elsewhere keep their sockets and
    /// the node that takes the project over serves them.
    fn fence(&self) {
        // Forgetting the lease moves its generation on: every room made
        // under it stops at its next batch, whatever the lease does next.
        let projects = self.leases.forget();
        self.counters.fenced();
        warn!(
            projects = projects.len(),
            "this node's lease ran out: stopping its rooms"
        );
        self.served.clear();
        for room in self.registry.all() {
            // Wakes a room with nothing queued, to stop it now.
            tokio::spawn(async move { room.send(Event::LeaseLost).await });
        }
    }

    /// The clients held by a node whose lease ended left with it: their
    /// rooms here are told (1006), as for a client whose socket dropped.
    async fn drop_clients_of_ended_nodes(&self) {
        for (holder, epoch) in self.served.holders() {
            match self.leases.node_epoch(&holder).await {
                Ok(Some(now)) if now == epoch => continue,
                Ok(_) => {}
                // NATS out of reach: nothing is known.
                Err(_) => return,
            }
            let clients = self.served.drop_holder(&holder, epoch);
            if !clients.is_empty() {
                info!(node = %holder, clients = clients.len(), "a node's lease ended: its clients left");
            }
            left(clients).await;
        }
    }

    /// The projects whose clients here are served by a node whose lease
    /// ended are taken over now, not at their clients' next message: the
    /// node that takes one gathers its clients from every node.
    ///
    /// A project another node took over without gathering this node's
    /// clients (this node did not answer in time) leaves them in no room:
    /// found so for longer than a gathering may take ([`STRANDED_AFTER`];
    /// the rounds may come faster, with a short lease), they are closed
    /// with 1012 and reconnect. Takes and returns such projects with when
    /// they were first found so, and their owner then.
    async fn adopt_orphans(&self, mut stranded_before: Stranded) -> Stranded {
        let mut stranded = HashMap::new();
        let mut alive: HashMap<Arc<str>, Option<u64>> = HashMap::new();
        for (project, node, epoch) in self.stubs.projects() {
            let now = match alive.get(&node) {
                Some(now) => *now,
                None => match self.leases.node_epoch(&node).await {
                    Ok(now) => *alive.entry(node).or_insert(now),
                    Err(_) => {
                        stranded.extend(stranded_before);
                        return stranded;
                    }
                },
            };
            if now == Some(epoch) {
                continue;
            }
            match self.place(&project).await {
                // Taken over: the gathering pointed this node's clients at
                // the new owner.
                Ok(Placement::Here) => {}
                Ok(Placement::On { node, epoch }) => {
                    // Counted from when this owner was first found: a
                    // newer owner's gathering gets its own time.
                    let since = match stranded_before.remove(&project) {
                        Some((since, owner)) if owner == (node.clone(), epoch) => since,
                        _ => Instant::now(),
                    };
                    if since.elapsed() >= STRANDED_AFTER {
                        self.stubs.close_stranded(&project, &node, epoch);
                    } else {
                        stranded.insert(project, (since, (node, epoch)));
                    }
                }
                Err(_) => {}
            }
        }
        stranded
    }

    /// Shutdown, before the rooms close: nothing more goes from here to the
    /// clients other nodes hold, so that they stay open for the node that
    /// takes the projects over.
    pub(crate) async fn leaving(&self) {
        // No message from another node's client is taken from now on (its
        // holder tries the next owner), and those being handled end first:
        // a message answered `handled` whose copies were then dropped with
        // the links below would be lost without its sender hearing.
        *self.handling.write().await = true;
        // What this node's rooms already sent other nodes' clients goes out
        // first: their next owner numbers its frames anew, so a frame lost
        // here would be a gap nobody sees. (A message this node's own
        // clients send from now until the links close may still lose its
        // copies to them; those clients are closed with 1001.)
        self.served.settle(SETTLE_TIMEOUT).await;
        self.served.clear();
        self.leases.let_go();
        self.stubs
            .close_all(crate::room::CLOSE_GOING_AWAY, "server shutting down");
    }

    /// Shutdown, after the rooms closed: the lease is given up, so the
    /// projects this node owned can be taken over at once.
    pub(crate) async fn leave(&self) {
        let _ = self.client.flush().await;
        self.leases.leave().await;
        let _ = self.client.flush().await;
    }

    /// Starts the room of a project whose alarm is due, if no live node owns
    /// it (its owner died): this node takes it, and the room fires the
    /// alarm. When to look again if the alarm is still pending then.
    pub(crate) async fn wake(&self, project: String) -> std::time::Instant {
        let again = std::time::Instant::now() + self.leases.lease();
        if self.registry.get(&project).is_some() {
            return again;
        }
        if let Ok(Placement::Here) = self.place(&project).await
            && self.registry.get_or_create(&project).is_some()
        {
            info!(
                project,
                "started the room of a project whose owner is gone, for its alarm"
            );
        }
        again
    }

    /// Places a client of `project`: in the room here, or through the
    /// project's owner.
    pub(crate) async fn connect(
        self: &Arc<Self>,
        project: &str,
        meta: Arc<ClientMeta>,
        outbox: Arc<Outbox>,
    ) -> Result<RoomLink, PlaceError> {
        for _ in 0..PLACE_ATTEMPTS {
            let (node, epoch) = match self.place(project).await.map_err(PlaceError::Cluster)? {
                Placement::Here => {
                    return self
                        .registry
                        .connect(project, meta, outbox)
                        .await
                        .map(|(room, conn)| RoomLink::Local { room, conn })
                        .map_err(PlaceError::Connect);
                }
                Placement::On { node, epoch } => (node, epoch),
            };
            // Known before the request: the room may send as it admits.
            let placing = Placing {
                cluster: self.clone(),
                stub: self
                    .stubs
                    .add(project, meta.clone(), outbox.clone(), node.clone(), epoch),
                kept: false,
            };
            let request = wire::Connect {
                project: project.into(),
                holder: self.node.to_string(),
                holder_epoch: self.leases.epoch(),
                client: wire::Client::new(placing.stub.key, &meta),
            };
            let reply = self
                .client
                .request(wire::subject(&node, "connect"), to_json(&request))
                .await;
            let reply = match reply {
                Ok(reply) => serde_json::from_slice::<wire::ConnectReply>(&reply.payload).ok(),
                Err(e) if e.kind() == RequestErrorKind::NoResponders => {
                    // The owner is gone; its lease has not ended yet.
                    drop(placing);
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
                Err(e) => {
                    return Err(PlaceError::Cluster(format!(
                        "the project's owner node {node} did not answer: {e}"
                    )));
                }
            };
            let refusal = match reply {
                Some(wire::ConnectReply::Admitted) => {
                    return Ok(RoomLink::Remote(RemoteClient {
                        cluster: self.clone(),
                        stub: placing.keep(),
                        sent: AtomicU64::new(0),
                    }));
                }
                Some(wire::ConnectReply::NotOwner) => {
                    drop(placing);
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
                Some(wire::ConnectReply::Refused {
                    status,
                    error,
                    message,
                }) => ConnectError::Refused(Refusal::Refused {
                    status,
                    error,
                    message,
                }),
                Some(wire::ConnectReply::Full { limit }) => {
                    ConnectError::Refused(Refusal::Full { limit })
                }
                Some(wire::ConnectReply::TooManyRooms { limit }) => {
                    ConnectError::TooManyRooms { limit }
                }
                Some(wire::ConnectReply::Failed) => ConnectError::Refused(Refusal::Failed),
                Some(wire::ConnectReply::Unreachable) | None => ConnectError::Unreachable,
            };
            return Err(PlaceError::Connect(refusal));
        }
        Err(PlaceError::Cluster(
            "the project's owner kept changing".into(),
        ))
    }

    /// Hands an HTTP request to `project`'s room: here, or on the node that
    /// owns the project.
    pub(crate) async fn fetch(
        self: &Arc<Self>,
        project: &str,
        request: wit::HttpRequest,
    ) -> Result<Fetched, PlaceError> {
        use wire::FetchReply as Reply;
        for _ in 0..PLACE_ATTEMPTS {
            let node = match self.place(project).await.map_err(PlaceError::Cluster)? {
                Placement::Here => {
                    return self
                        .registry
                        .fetch(project, request)
                        .await
                        .map_err(PlaceError::Connect);
                }
                Placement::On { node, .. } => node,
            };
            let payload = wire::fetch(project, &request);
            let max_payload = self.client.server_info().max_payload;
            if payload.len() > max_payload {
                return Ok(Fetched::TooLargeToForward(max_payload));
            }
            let ask = Request::new().payload(payload).timeout(Some(FETCH_TIMEOUT));
            let reply = match self
                .client
                .send_request(wire::subject(&node, "fetch"), ask)
                .await
            {
                Ok(reply) => wire::parse_fetch_reply(&reply.payload),
                Err(e) if e.kind() == RequestErrorKind::NoResponders => {
                    // The owner is gone; its lease has not ended yet.
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
                // The owner may have handled it: not to be tried again as
                // if it had not.
                Err(e) if e.kind() == RequestErrorKind::TimedOut => return Ok(Fetched::Unanswered),
                Err(e) => {
                    return Err(PlaceError::Cluster(format!(
                        "the project's owner node {node} did not answer: {e}"
                    )));
                }
            };
            return match reply {
                Some((Reply::Answered { status, headers }, body)) => {
                    Ok(Fetched::Answered(wit::HttpResponse {
                        status,
                        headers,
                        body,
                    }))
                }
                Some((Reply::NotOwner, _)) => {
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
                Some((Reply::NoHandler, _)) => Ok(Fetched::NoHandler),
                Some((Reply::Failed, _)) => Ok(Fetched::Failed),
                Some((Reply::TooManyRooms { limit }, _)) => {
                    Err(PlaceError::Connect(ConnectError::TooManyRooms { limit }))
                }
                Some((Reply::Unreachable, _)) | None => {
                    Err(PlaceError::Connect(ConnectError::Unreachable))
                }
            };
        }
        Err(PlaceError::Cluster(
            "the project's owner kept changing".into(),
        ))
    }

    /// Where `project`'s room runs; takes the project for this node when no
    /// live node owns it, gathering its clients from the other nodes first
    /// when it had an owner.
    async fn place(&self, project: &str) -> Result<Placement, String> {
        if self.leases.owns(project) {
            self.gathered(project).await;
            return Ok(Placement::Here);
        }
        if !self.leases.valid() {
            return Err("this node holds no lease in the cluster (is NATS reachable?)".into());
        }
        let _claiming = self.claim_lock(project).lock().await;
        for _ in 0..PLACE_ATTEMPTS {
            if self.leases.owns(project) {
                return Ok(Placement::Here);
            }
            let owner = self
                .leases
                .owner(project)
                .await
                .map_err(|e| format!("{e:#}"))?;
            let (revision, took_over) = match owner {
                // This node, under its epoch, though it does not hold the
                // project (its release, or the answer to its claim, was
                // lost): it takes it back over that record.
                Owner::Node {
                    node,
                    epoch,
                    revision,
                } if node == self.node && epoch == self.leases.epoch() => (Some(revision), true),
                Owner::Node { node, epoch, .. } => return Ok(Placement::On { node, epoch }),
                Owner::Nobody { revision } => (revision, false),
                Owner::Lapsed { revision } => (Some(revision), true),
            };
            // Counted before the claim makes the project this node's, and
            // until its clients are gathered (see `takeovers`).
            let _taking_over = took_over.then(|| TakeoverGuard::new(&self.takeovers));
            if self
                .leases
                .claim(project, revision)
                .await
                .map_err(|e| format!("{e:#}"))?
            {
                if took_over {
                    info!(
                        project,
                        "took over the project from a node whose lease ended"
                    );
                    self.counters.took_over();
                    self.gather(project).await;
                }
                return Ok(Placement::Here);
            }
        }
        Err("the project's owner kept changing".into())
    }

    /// Returns once a takeover of `project` (which this node owns) has
    /// gathered the project's clients, when one may still be doing so.
    async fn gathered(&self, project: &str) {
        if self.takeovers.load(SeqCst) > 0 {
            drop(self.claim_lock(project).lock().await);
        }
    }

    /// The lock of `project`'s stripe of [`Cluster::claiming`].
    fn claim_lock(&self, project: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher as _, Hasher as _};
        let mut h = foldhash::fast::FixedState::default().build_hasher();
        h.write(project.as_bytes());
        &self.claiming[h.finish() as usize % CLAIM_STRIPES]
    }

    /// Brings the clients other nodes hold of a project just taken over
    /// into its room here: each node points them at this one and says who
    /// they are; a node that does not answer keeps its clients unplaced
    /// (closed with 1012 after [`STRANDED_AFTER`]: they reconnect). This
    /// node's own clients of the project are gathered here, whatever the
    /// list of nodes says, while the other nodes are asked.
    async fn gather(&self, project: &str) {
        let epoch = self.leases.epoch();
        let own = async {
            for client in self.stubs.moved(project, &self.node, epoch) {
                self.rejoin(project, (&self.node, epoch), client).await;
            }
        };
        let ((), ()) = tokio::join!(own, self.gather_from_others(project, epoch));
    }

    /// [`Cluster::gather`]'s part from the other nodes.
    async fn gather_from_others(&self, project: &str, epoch: u64) {
        let mut nodes = match self.leases.live_nodes().await {
            Ok(nodes) => nodes,
            Err(e) => {
                warn!(
                    project,
                    "cannot list the nodes to gather the project's clients: {e:#}"
                );
                return;
            }
        };
        let request = to_json(&wire::Gather {
            project: project.into(),
            owner: self.node.to_string(),
            epoch,
        });
        nodes.retain(|node| **node != *self.node);
        let asked = nodes.iter().map(|node| {
            let request = Request::new()
                .payload(request.clone())
                .timeout(Some(GATHER_TIMEOUT));
            self.client
                .send_request(wire::subject(node, "gather"), request)
        });
        let answers = futures_util::future::join_all(asked).await;
        for (node, answer) in nodes.iter().zip(answers) {
            let gathered = match answer {
                Ok(reply) => {
                    serde_json::from_slice::<wire::Gathered>(&reply.payload).unwrap_or_default()
                }
                // A node that left a moment ago (its key lingers).
                Err(e) if e.kind() == RequestErrorKind::NoResponders => continue,
                Err(e) => {
                    warn!(
                        project,
                        node, "a node did not say which of the project's clients it holds: {e}"
                    );
                    continue;
                }
            };
            for client in gathered.clients {
                self.rejoin(project, (node, gathered.epoch), client).await;
            }
        }
    }

    /// Puts a client another node holds back in the project's table here.
    async fn rejoin(&self, project: &str, holder: (&str, u64), client: wire::Client) {
        // Its holder may have placed it here itself meanwhile: a second
        // entry would make the room tell everyone, the client included, that
        // it left when the first was replaced.
        if self.served.contains(holder.0, holder.1, client.key) {
            return;
        }
        let outbox = Arc::new(Outbox::new(self.outbox_limit));
        let meta = Arc::new(client.meta());
        // Bounded: a takeover holds its project's claim lock meanwhile.
        let rejoined = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.registry.rejoin(project, meta, outbox.clone()),
        )
        .await
        .ok()
        .flatten();
        match rejoined {
            Some((room, conn)) => {
                let gone = self.served.add(
                    &self.client,
                    &self.node,
                    self.leases.epoch(),
                    holder,
                    client.key,
                    room,
                    conn,
                    outbox,
                );
                left(gone).await;
            }
            None => warn!(
                project,
                holder = holder.0,
                "no room could take back a client of the project"
            ),
        }
    }

    /// `/status` (or `/health` with `health`) of a project owned by another
    /// node, as that node answers it; `None` when it is to be answered here
    /// (this node owns it, or nobody does).
    pub(crate) async fn report(
        &self,
        project: &str,
        health: bool,
    ) -> Result<Option<Value>, String> {
        if self.leases.owns(project) {
            return Ok(None);
        }
        let owner = self
            .leases
            .owner(project)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let Owner::Node { node, .. } = owner else {
            return Ok(None);
        };
        if node == self.node {
            return Ok(None);
        }
        let request = to_json(&wire::Report {
            project: project.into(),
            health,
        });
        let reply = self
            .client
            .request(wire::subject(&node, "report"), request)
            .await
            .map_err(|e| format!("the project's owner node {node} did not answer: {e}"))?;
        Ok(serde_json::from_slice::<Value>(&reply.payload)
            .ok()
            .filter(|v| !v.is_null()))
    }

    /// This node's name (`--node-name`).
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// The cluster's part of `/health`.
    pub(crate) fn health_json(&self) -> Value {
        let state = self.state();
        json!({
            "node": &*self.node,
            "nats": if state.nats_connected { "connected" } else { "disconnected" },
            "leaseValid": state.lease_valid,
            "leaseMs": self.leases.lease().as_millis() as u64,
            "ownedProjects": state.owned_projects,
            "clientsServedForOtherNodes": state.clients_served_for_other_nodes,
            "clientsOfOtherNodesProjects": state.clients_of_other_nodes_projects,
        })
    }

    /// What `/health` and `/metrics` say of this node now.
    fn state(&self) -> counters::State {
        counters::State {
            nats_connected: matches!(
                self.client.connection_state(),
                async_nats::connection::State::Connected
            ),
            lease_valid: self.leases.valid(),
            owned_projects: self.leases.owned_count(),
            clients_served_for_other_nodes: self.served.len(),
            clients_of_other_nodes_projects: self.stubs.len(),
        }
    }

    /// The cluster's figures, for a scrape of `/metrics`.
    pub(crate) fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        self.counters.register(self.state(), registry);
    }

    /// Whether the node is fully a member: connected and holding its lease.
    pub(crate) fn healthy(&self) -> bool {
        self.leases.valid()
            && matches!(
                self.client.connection_state(),
                async_nats::connection::State::Connected
            )
    }

    /// Answers what other nodes ask of this one.
    async fn serve(self: Arc<Self>, mut subscription: async_nats::Subscriber) {
        while let Some(message) = subscription.next().await {
            let Some((verb, peer)) = wire::parse_subject(&message.subject) else {
                continue;
            };
            match (verb, peer) {
                // In order, here: a client's frames must not overtake each
                // other.
                ("frames", Some(_)) => self.stubs.deliver(&message.payload),
                // The answer to a client's message, on its own, or NATS
                // saying nobody took it.
                ("ack", Some(key)) => {
                    // `ack.<key>.<seq>`: which attempt NATS found nobody for.
                    let seq = message
                        .subject
                        .rsplit('.')
                        .next()
                        .and_then(|s| s.parse().ok());
                    let Some(stub) = key.parse().ok().and_then(|key| self.stubs.get(key)) else {
                        continue;
                    };
                    if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                        if let Some(seq) = seq {
                            stub.answered(seq, Answer::NoResponders);
                        }
                    } else if let Some((seq, reply)) = wire::MessageReply::decode(&message.payload)
                    {
                        stub.answered(seq, Answer::Replied(reply));
                    }
                }
                ("msg", Some(holder)) => {
                    let holder: Arc<str> = holder.into();
                    tokio::spawn(self.clone().on_message(holder, message));
                }
                ("close", Some(holder)) => {
                    let holder: Arc<str> = holder.into();
                    tokio::spawn(self.clone().on_close(holder, message));
                }
                ("connect", None) => {
                    tokio::spawn(self.clone().on_connect(message));
                }
                ("gather", None) => self.on_gather(message).await,
                ("report", None) => {
                    tokio::spawn(self.clone().on_report(message));
                }
                ("fetch", None) => {
                    tokio::spawn(self.clone().on_fetch(message));
                }
                _ => {}
            }
        }
    }

    async fn reply(&self, to: &Message, body: Bytes) {
        if let Some(reply) = &to.reply {
            let _ = self.client.publish(reply.clone(), body).await;
        }
    }

    async fn on_connect(self: Arc<Self>, message: Message) {
        let Ok(request) = serde_json::from_slice::<wire::Connect>(&message.payload) else {
            return;
        };
        let answer = self.admit(request).await;
        self.reply(&message, to_json(&answer)).await;
    }

    /// Admits a client another node holds into the room of a project this
    /// node owns.
    async fn admit(&self, request: wire::Connect) -> wire::ConnectReply {
        use wire::ConnectReply as Reply;
        if !self.leases.owns(&request.project) || !crate::config::is_node_name(&request.holder) {
            return Reply::NotOwner;
        }
        // Gathered here by a takeover already: admitted once is enough. Its
        // holder asks when its message finds the old owner gone, which is
        // when the takeover gathers it too: checked once the gathering is
        // over, or both would add it, and the second entry would replace
        // the first, so that the room told everyone that it left.
        // Bounded: the holder stops waiting for an answer after
        // REQUEST_TIMEOUT and then forgets the client; told `NotOwner`, it
        // asks again.
        let gathered = tokio::time::timeout(REQUEST_TIMEOUT / 2, self.gathered(&request.project));
        if gathered.await.is_err() {
            return Reply::NotOwner;
        }
        if self
            .served
            .contains(&request.holder, request.holder_epoch, request.client.key)
        {
            return Reply::Admitted;
        }
        let outbox = Arc::new(Outbox::new(self.outbox_limit));
        let meta = Arc::new(request.client.meta());
        match self
            .registry
            .connect(&request.project, meta, outbox.clone())
            .await
        {
            Ok((room, conn)) => {
                let gone = self.served.add(
                    &self.client,
                    &self.node,
                    self.leases.epoch(),
                    (&request.holder, request.holder_epoch),
                    request.client.key,
                    room,
                    conn,
                    outbox,
                );
                tokio::spawn(left(gone));
                Reply::Admitted
            }
            Err(ConnectError::TooManyRooms { limit }) => Reply::TooManyRooms { limit },
            Err(ConnectError::Refused(Refusal::Refused {
                status,
                error,
                message,
            })) => Reply::Refused {
                status,
                error,
                message,
            },
            Err(ConnectError::Refused(Refusal::Full { limit })) => Reply::Full { limit },
            Err(ConnectError::Refused(Refusal::Failed)) => Reply::Failed,
            Err(ConnectError::Unreachable) => Reply::Unreachable,
        }
    }

    /// A message from a client another node holds: answered once the room
    /// handled it.
    async fn on_message(self: Arc<Self>, holder: Arc<str>, message: Message) {
        let Some((key, seq, incoming)) = wire::parse_message(&message.payload) else {
            return;
        };
        // Held until the answer is sent (or queued with frames that
        // `leaving` sends).
        let leaving = self.handling.read().await;
        let answer = match self.served.get(&holder, key) {
            Some((room, conn)) if !*leaving && self.leases.valid() => {
                // A takeover's room takes messages once every node's
                // clients are back in it: one from a client gathered
                // early could otherwise miss a client not yet gathered.
                self.gathered(&room.project).await;
                // An idle room runs it here, as a local reader would,
                // without waking the room's task.
                let read_at = std::time::Instant::now();
                if let Some(mut turn) = room.try_run() {
                    turn.message(conn, incoming, read_at, false).await;
                    drop(turn);
                    wire::MessageReply::Handled
                } else {
                    let (done, handled) = oneshot::channel();
                    let event = Event::Forwarded {
                        conn,
                        message: incoming,
                        done,
                        read_at,
                    };
                    // Bounded: the holder stops waiting then, and a task per
                    // message must not pile up behind a stuck room.
                    let handled = tokio::time::timeout(MESSAGE_TIMEOUT, async {
                        room.send(event).await.is_ok() && handled.await.is_ok()
                    });
                    if handled.await == Ok(true) {
                        wire::MessageReply::Handled
                    } else {
                        wire::MessageReply::Lost
                    }
                }
            }
            _ => wire::MessageReply::Unknown,
        };
        // With the frames for that node when there are (many answers then
        // share a NATS message), else on its own.
        let with_frames = answer != wire::MessageReply::Unknown
            && self.served.ack(&holder, key, seq, answer.clone());
        if !with_frames {
            self.reply(&message, answer.encode(seq)).await;
        }
        drop(leaving);
    }

    async fn on_close(self: Arc<Self>, holder: Arc<str>, message: Message) {
        if let Some((key, code, reason)) = wire::parse_close(&message.payload)
            && let Some((room, conn)) = self.served.remove(&holder, key)
        {
            let _ = room.send(Event::Close { conn, code, reason }).await;
        }
        self.reply(&message, Bytes::new()).await;
    }

    /// Another node took over a project: this node's clients of it are
    /// served from there now.
    async fn on_gather(&self, message: Message) {
        let Ok(request) = serde_json::from_slice::<wire::Gather>(&message.payload) else {
            return;
        };
        if !crate::config::is_node_name(&request.owner) {
            return;
        }
        let gathered = wire::Gathered {
            epoch: self.leases.epoch(),
            clients: self
                .stubs
                .moved(&request.project, &request.owner, request.epoch),
        };
        self.reply(&message, to_json(&gathered)).await;
    }

    async fn on_report(self: Arc<Self>, message: Message) {
        let Ok(request) = serde_json::from_slice::<wire::Report>(&message.payload) else {
            return;
        };
        let answer = if self.leases.owns(&request.project) {
            if request.health {
                crate::http::report::project_health(&self.registry, &request.project)
            } else {
                crate::http::report::project_status(&self.registry, &request.project)
            }
        } else {
            Value::Null
        };
        self.reply(&message, to_json(&answer)).await;
    }

    /// An HTTP request into the room of a project this node owns.
    async fn on_fetch(self: Arc<Self>, message: Message) {
        use wire::FetchReply as Reply;
        let Some((project, request)) = wire::parse_fetch(&message.payload) else {
            self.reply(&message, wire::fetch_reply(&Reply::Unreachable, &[]))
                .await;
            return;
        };
        let (reply, body) = if !self.leases.owns(&project) {
            (Reply::NotOwner, Vec::new())
        } else {
            match self.registry.fetch(&project, request).await {
                Ok(Fetched::Answered(response)) => (
                    Reply::Answered {
                        status: response.status,
                        headers: response.headers,
                    },
                    response.body,
                ),
                Ok(Fetched::NoHandler) => (Reply::NoHandler, Vec::new()),
                Ok(Fetched::Failed) => (Reply::Failed, Vec::new()),
                // Not made here: the owner answers every request it takes.
                Ok(Fetched::Unanswered | Fetched::TooLargeToForward(_)) => {
                    (Reply::Failed, Vec::new())
                }
                Err(ConnectError::TooManyRooms { limit }) => {
                    (Reply::TooManyRooms { limit }, Vec::new())
                }
                // The room moved away meanwhile, or cannot be reached.
                Err(ConnectError::Unreachable | ConnectError::Refused(_)) => {
                    (Reply::Unreachable, Vec::new())
                }
            }
        };
        let mut answer = wire::fetch_reply(&reply, &body);
        if answer.len() > self.client.server_info().max_payload {
            // NATS would not carry it: answered as a room's answer over
            // the size limit is, here.
            warn!(
                project,
                bytes = body.len(),
                "a room's answer to HTTP is over NATS's max_payload; sent 500"
            );
            let body = serde_json::json!({
                "error": "room_response_too_large",
                "message": "the room's answer is too large to cross the cluster (NATS max_payload)",
            })
            .to_string();
            let reply = Reply::Answered {
                status: 500,
                headers: vec![("content-type".into(), "application/json".into())],
            };
            answer = wire::fetch_reply(&reply, body.as_bytes());
        }
        self.reply(&message, answer).await;
    }

    /// Tells an owner a client left.
    async fn send_close(&self, node: &str, key: u64, code: u16, reason: &str) {
        let subject = wire::subject(node, &format!("close.{}", self.node));
        let _ = self
            .client
            .request(subject, wire::close(key, code, reason))
            .await;
    }
}

/// A client being placed with another node's room. Unless kept (admitted),
/// dropping it (a refusal, a failure, or the upgrade abandoned halfway when
/// its client went) removes the stub and tells the owner, which may have
/// admitted it without its answer arriving.
struct Placing {
    cluster: Arc<Cluster>,
    stub: Arc<Stub>,
    kept: bool,
}

impl Placing {
    fn keep(mut self) -> Arc<Stub> {
        self.kept = true;
        self.stub.clone()
    }
}

impl Drop for Placing {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        self.cluster.stubs.remove(&self.stub);
        let cluster = self.cluster.clone();
        let stub = self.stub.clone();
        tokio::spawn(async move {
            let (node, _) = stub.owner();
            cluster.send_close(&node, stub.key, 1006, "").await;
        });
    }
}

/// A client of this node whose project another node owns.
pub(crate) struct RemoteClient {
    cluster: Arc<Cluster>,
    stub: Arc<Stub>,
    /// Messages sent to the owner (attempts, retries included).
    sent: AtomicU64,
}

impl RemoteClient {
    pub(crate) fn project(&self) -> &str {
        &self.stub.project
    }

    /// Sends a client's message to the project's owner and waits until its
    /// room handled it. While the project moves (its owner gone, its lease
    /// not yet ended) the message waits for the next owner; it fails only
    /// when the owner may have taken it without answering, or when no
    /// owner appears within a lease and a few seconds.
    pub(crate) async fn forward(&self, message: &Incoming) -> Result<(), NotDelivered> {
        let counters = &self.cluster.counters;
        counters.forwarded();
        let forwarded = self.try_forward(message).await;
        if let Err(why) = &forwarded {
            counters.undelivered(why.counted_as);
        }
        forwarded
    }

    async fn try_forward(&self, message: &Incoming) -> Result<(), NotDelivered> {
        let cluster = &self.cluster;
        let give_up = tokio::time::Instant::now() + cluster.leases.lease() + REQUEST_TIMEOUT;
        let mut pause = RETRY;
        loop {
            let owner = self.stub.owner();
            let node = &owner.0;
            // A number per attempt: an answer to an earlier one is ignored.
            let seq = self.sent.fetch_add(1, Relaxed) + 1;
            self.stub.sending(seq);
            let subject = wire::subject(node, &format!("msg.{}", cluster.node));
            let body = wire::message(self.stub.key, seq, message);
            if body.len() > cluster.client.server_info().max_payload {
                return Err(TOO_LARGE);
            }
            let reply_to = wire::subject(&cluster.node, &format!("ack.{}.{seq}", self.stub.key));
            // Moved meanwhile (a takeover's gathering): to the new owner.
            if self.stub.owner() != owner {
                continue;
            }
            let sent = cluster
                .client
                .publish_with_reply(subject, reply_to, body)
                .await;
            let answer = match sent {
                Ok(()) => {
                    tokio::time::timeout(MESSAGE_TIMEOUT, self.stub.answer_from(&owner)).await
                }
                Err(_) => Ok(Some(Answer::NoResponders)),
            };
            match answer {
                Ok(Some(Answer::Replied(wire::MessageReply::Handled))) => return Ok(()),
                Ok(Some(Answer::Replied(wire::MessageReply::Lost))) => return Err(ROOM_LOST),
                Ok(Some(Answer::Replied(wire::MessageReply::Unknown) | Answer::NoResponders)) => {}
                // The owner's lease ended before it answered, and the
                // project moved: whether it handled the message is unknown.
                Ok(None) => return Err(OWNER_GONE),
                Err(_) => {
                    // Frozen, cut off, or overloaded: whether it handled
                    // the message is unknown. Its lease may have ended
                    // meanwhile: the next message goes to its successor.
                    let _ = cluster.place(&self.stub.project).await;
                    return Err(OWNER_SILENT);
                }
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(NO_OWNER);
            }
            // The owner is gone or lost the project: find (or become) the
            // next one. A takeover points this stub at the new owner (when
            // the new owner gathers the project's clients).
            let _ = cluster.place(&self.stub.project).await;
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RETRY);
        }
    }

    /// The client left: the owner's room is told.
    pub(crate) async fn close(&self, code: u16, reason: &str) {
        self.cluster.stubs.remove(&self.stub);
        let (node, _) = self.stub.owner();
        self.cluster
            .send_close(&node, self.stub.key, code, reason)
            .await;
    }
}

/// Connects to NATS as `config` says (the connection reconnects by itself,
/// with backoff, whenever it is lost).
pub(crate) async fn connect(
    config: &ClusterConfig,
    purpose: &str,
) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("wsroom {} ({purpose})", config.node_name))
        .request_timeout(Some(REQUEST_TIMEOUT))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => info!("connected to NATS"),
                async_nats::Event::Disconnected => {
                    warn!("lost NATS; reconnecting (this node's rooms keep serving its own clients while its lease lasts)")
                }
                other => warn!("NATS: {other}"),
            }
        });
    if let Some(creds) = &config.creds {
        options = options
            .credentials_file(creds)
            .await
            .with_context(|| format!("cannot read --nats-creds {}", creds.display()))?;
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &config.tls_client {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if config.tls_required {
        options = options.require_tls(true);
    }
    options
        .connect(config.urls.as_slice())
        .await
        .with_context(|| format!("cannot connect to NATS at {}", config.urls.join(",")))
}

/// Tells the rooms of clients held by a node that is gone that they left
/// (1006, as for a socket that dropped).
async fn left(clients: Vec<(crate::room::RoomHandle, crate::room::table::ConnRef)>) {
    for (room, conn) in clients {
        let close = Event::Close {
            conn,
            code: 1006,
            reason: String::new(),
        };
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, room.send(close)).await;
    }
}

/// Sleeps until `at`; forever when there is no such time.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn to_json(value: &impl serde::Serialize) -> Bytes {
    // Serializing these plain types cannot fail.
    serde_json::to_vec(value).unwrap_or_default().into()
}
