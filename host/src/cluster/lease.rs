//! Who owns what, in two JetStream key-value buckets.
//!
//! - `wsroom-nodes`: each live node's key holds its *epoch*, a number it
//!   draws when it joins. The bucket's entries expire a lease after their
//!   last write, so a node renews its key (compare-and-set on the revision
//!   it last wrote) several times a lease. A node that could not renew for
//!   three quarters of a lease stops running its projects (the *fence*,
//!   see `Cluster::fence`) and draws a new epoch when it can write again:
//!   it stops before its key can expire, so before anyone may take its
//!   projects (it measures from the moment it sent the renewal the server
//!   accepted; the server measures expiry from when it stored it, later).
//! - `wsroom-owners`: each live project's key (its projectId in base64url)
//!   holds `<node> <epoch>`. A project is owned while that node's key
//!   holds that epoch; a node takes a project that is not owned with
//!   compare-and-set on the key's revision, so of two nodes that try at
//!   once one wins. Keys hold no lease of their own: one renewal per node
//!   keeps all its projects, whether it owns ten or ten thousand.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, kv};
use base64::Engine as _;
use futures_util::TryStreamExt as _;
use tokio::time::Instant;
use tracing::warn;

const NODES_BUCKET: &str = "wsroom-nodes";
const OWNERS_BUCKET: &str = "wsroom-owners";

/// Who owns a project, as the owners bucket says.
#[derive(Debug)]
pub(super) enum Owner {
    /// Nobody: the key is missing or deleted (`revision` of the deletion).
    Nobody { revision: Option<u64> },
    /// A live node, maybe this one (`revision`: of the key).
    Node {
        node: Arc<str>,
        epoch: u64,
        revision: u64,
    },
    /// A node whose lease ended (dead, or since re-joined with a new epoch),
    /// or this node under an epoch it no longer has.
    Lapsed { revision: u64 },
}

/// Until when this node's lease holds, readable without a lock: every room
/// checks it before each batch of events (see `Registry::lease_holds`), so
/// a node that missed its renewals stops running rooms at its deadline,
/// even before its fence has closed them.
pub(crate) struct Validity {
    start: std::time::Instant,
    /// Nanoseconds from `start`; 0: no lease.
    until: AtomicU64,
    /// Moves on each time the node loses its lease: a room made under an
    /// earlier one never runs again, even once the node holds a new lease.
    generation: AtomicU64,
}

impl Validity {
    /// The lease's generation now (a room records it when it is made).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    /// Whether a room made under `generation` may run now.
    pub(crate) fn holds_for(&self, generation: u64) -> bool {
        self.generation.load(Relaxed) == generation && self.holds()
    }

    fn set(&self, until: Option<Instant>) {
        let nanos = until.map_or(0, |until| {
            (until.into_std().saturating_duration_since(self.start)).as_nanos() as u64
        });
        self.until.store(nanos, Relaxed);
    }

    pub(crate) fn holds(&self) -> bool {
        (self.start.elapsed().as_nanos() as u64) < self.until.load(Relaxed)
    }
}

pub(super) struct Leases {
    validity: Arc<Validity>,
    nodes: kv::Store,
    owners: kv::Store,
    node: Arc<str>,
    lease: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// This node's epoch; 0 before it holds a lease.
    epoch: u64,
    /// The revision of the last write of this node's key.
    revision: u64,
    /// Until when what this node owns is its own, unless renewed.
    valid_until: Option<Instant>,
    /// The projects this node owns, with their key's revision.
    owned: HashMap<Arc<str>, u64>,
}

impl Leases {
    /// Opens (or makes) the buckets. The nodes bucket keeps the lease of the
    /// node that made it; a node with another `--lease-ms` uses the
    /// bucket's, and says so.
    pub(super) async fn open(
        js: &jetstream::Context,
        node: Arc<str>,
        lease: Duration,
    ) -> anyhow::Result<Leases> {
        let nodes = bucket(
            js,
            NODES_BUCKET,
            "wsroom: each live node's epoch, expiring a lease after its last renewal",
            lease,
        )
        .await?;
        let bucket_lease = nodes
            .status()
            .await
            .context("cannot read the bucket wsroom-nodes")?
            .max_age();
        let lease = if bucket_lease != lease && !bucket_lease.is_zero() {
            warn!(
                bucket_ms = bucket_lease.as_millis() as u64,
                flag_ms = lease.as_millis() as u64,
                "--lease-ms differs from the cluster's lease (kept in the bucket wsroom-nodes); using the cluster's"
            );
            bucket_lease
        } else {
            lease
        };
        let owners = bucket(
            js,
            OWNERS_BUCKET,
            "wsroom: each live project's owner node and its epoch",
            Duration::ZERO,
        )
        .await?;
        Ok(Leases {
            validity: Arc::new(Validity {
                start: std::time::Instant::now(),
                until: AtomicU64::new(0),
                generation: AtomicU64::new(0),
            }),
            nodes,
            owners,
            node,
            lease,
            state: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn lease(&self) -> Duration {
        self.lease
    }

    pub(super) fn validity(&self) -> Arc<Validity> {
        self.validity.clone()
    }

    /// This node's epoch (0: it holds no lease).
    pub(super) fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Until when this node's ownerships hold without a renewal.
    pub(super) fn valid_until(&self) -> Option<Instant> {
        self.lock().valid_until
    }

    /// Whether this node holds its lease now.
    pub(super) fn valid(&self) -> bool {
        self.lock()
            .valid_until
            .is_some_and(|until| Instant::now() < until)
    }

    /// Whether this node owns `project` now.
    pub(super) fn owns(&self, project: &str) -> bool {
        let state = self.lock();
        state.owned.contains_key(project)
            && state
                .valid_until
                .is_some_and(|until| Instant::now() < until)
    }

    pub(super) fn owned_count(&self) -> usize {
        self.lock().owned.len()
    }

    /// Writes this node's key: the first time (or after a fence) with a new
    /// epoch, then with compare-and-set on the last revision.
    pub(super) async fn renew(&self) -> anyhow::Result<()> {
        let (epoch, revision) = {
            let state = self.lock();
            (state.epoch, state.revision)
        };
        let sent = Instant::now();
        let valid_until = sent + self.lease * 3 / 4;
        if epoch != 0 {
            match self
                .nodes
                .update(&*self.node, epoch.to_string().into(), revision)
                .await
            {
                Ok(revision) => {
                    let mut state = self.lock();
                    if state.epoch == epoch {
                        state.revision = revision;
                        state.valid_until = Some(valid_until);
                        self.validity.set(state.valid_until);
                    }
                    return Ok(());
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    // The key expired (or was overwritten): whatever this
                    // node owned may be someone else's now.
                    self.forget();
                    bail!("this node's lease ended before it could renew it");
                }
                Err(e) => bail!("cannot renew this node's lease: {e}"),
            }
        }
        let epoch = loop {
            let drawn = rand_u64();
            if drawn != 0 {
                break drawn;
            }
        };
        match self
            .nodes
            .create(&*self.node, epoch.to_string().into())
            .await
        {
            Ok(revision) => {
                let mut state = self.lock();
                state.epoch = epoch;
                state.revision = revision;
                state.valid_until = Some(valid_until);
                self.validity.set(state.valid_until);
                Ok(())
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => bail!(
                "the node name {:?} is taken by a live node (or by this one before it \
                 stopped without leaving; its lease ends within {} ms)",
                &*self.node,
                self.lease.as_millis()
            ),
            Err(e) => bail!("cannot take a lease for this node: {e}"),
        }
    }

    /// Drops the lease and every ownership: after a fence, the next renewal
    /// draws a new epoch, so ownerships under the old one are void.
    pub(super) fn forget(&self) -> Vec<Arc<str>> {
        let mut state = self.lock();
        state.epoch = 0;
        state.valid_until = None;
        self.validity.set(None);
        self.validity.generation.fetch_add(1, Relaxed);
        state.owned.drain().map(|(project, _)| project).collect()
    }

    /// Shutdown: this node stops answering for its projects (they stay
    /// recorded as its own until [`Leases::leave`], so nobody takes them
    /// before their rooms here have closed).
    pub(super) fn let_go(&self) {
        self.lock().owned.clear();
    }

    /// Leaves the cluster: deletes this node's key so that its projects can
    /// be taken at once (after they were released, at shutdown).
    pub(super) async fn leave(&self) {
        let revision = {
            let mut state = self.lock();
            state.epoch = 0;
            state.valid_until = None;
            self.validity.set(None);
            state.revision
        };
        let _ = self
            .nodes
            .delete_expect_revision(&*self.node, Some(revision))
            .await;
    }

    /// Who owns `project`.
    pub(super) async fn owner(&self, project: &str) -> anyhow::Result<Owner> {
        let key = key(project);
        let Some(entry) = self
            .owners
            .entry(key)
            .await
            .context("cannot read the owners bucket")?
        else {
            return Ok(Owner::Nobody { revision: None });
        };
        if entry.operation != kv::Operation::Put {
            return Ok(Owner::Nobody {
                revision: Some(entry.revision),
            });
        }
        let Some((node, epoch)) = std::str::from_utf8(&entry.value)
            .ok()
            .and_then(|v| v.split_once(' '))
            .and_then(|(node, epoch)| Some((node, epoch.parse::<u64>().ok()?)))
        else {
            // Not written by wsroom: taken over like a lapsed one.
            return Ok(Owner::Lapsed {
                revision: entry.revision,
            });
        };
        let alive = if node == &*self.node {
            epoch == self.epoch()
        } else {
            self.node_epoch(node).await? == Some(epoch)
        };
        Ok(if alive {
            Owner::Node {
                node: node.into(),
                epoch,
                revision: entry.revision,
            }
        } else {
            Owner::Lapsed {
                revision: entry.revision,
            }
        })
    }

    /// The epoch of `node`'s lease, if it holds one.
    pub(super) async fn node_epoch(&self, node: &str) -> anyhow::Result<Option<u64>> {
        let entry = self
            .nodes
            .entry(node)
            .await
            .context("cannot read the nodes bucket")?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| std::str::from_utf8(&e.value).ok()?.parse().ok()))
    }

    /// The nodes holding a lease now, and those that left a moment ago (a
    /// node that leaves marks its key deleted; the mark expires with the
    /// lease).
    ///
    /// Read from the bucket's stream's own list of subjects, which the
    /// server answers from its index: listing the keys
    /// (`kv::Store::keys`) walks a consumer that can stop short when a
    /// node renews its lease meanwhile (each renewal replaces its key's
    /// only message), and a takeover that missed a live node would leave
    /// that node's clients out of its room.
    pub(super) async fn live_nodes(&self) -> anyhow::Result<Vec<String>> {
        let prefix = self.nodes.prefix.as_str();
        let subjects: Vec<(String, usize)> = self
            .nodes
            .stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .context("cannot list the nodes bucket")?
            .try_collect()
            .await
            .context("cannot list the nodes bucket")?;
        Ok(subjects
            .into_iter()
            .filter_map(|(subject, _)| subject.strip_prefix(prefix).map(str::to_owned))
            .collect())
    }

    /// Takes `project` for this node: creates its key (`revision` `None`)
    /// or replaces the revision read. False if another node was quicker.
    pub(super) async fn claim(&self, project: &str, revision: Option<u64>) -> anyhow::Result<bool> {
        let epoch = self.epoch();
        if epoch == 0 || !self.valid() {
            bail!("this node holds no lease");
        }
        let value = format!("{} {epoch}", self.node);
        let written = match revision {
            None => match self.owners.create(key(project), value.into()).await {
                Ok(revision) => revision,
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => return Ok(false),
                Err(e) => bail!("cannot write the owners bucket: {e}"),
            },
            Some(revision) => match self
                .owners
                .update(key(project), value.into(), revision)
                .await
            {
                Ok(revision) => revision,
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => return Ok(false),
                Err(e) => bail!("cannot write the owners bucket: {e}"),
            },
        };
        let mut state = self.lock();
        if state.epoch != epoch {
            // Fenced meanwhile: the claim is void under the old epoch.
            return Ok(false);
        }
        state.owned.insert(project.into(), written);
        Ok(true)
    }

    /// Gives `project` up (its room was removed): it is no longer this
    /// node's at once, and its key is deleted if it is still the one this
    /// node wrote, so that the next client's node may take it.
    fn release(&self, project: &str) {
        let Some(revision) = self.lock().owned.remove(project) else {
            return;
        };
        let owners = self.owners.clone();
        let key = key(project);
        tokio::spawn(async move {
            let _ = owners.delete_expect_revision(key, Some(revision)).await;
        });
    }
}

/// Opens a key-value bucket of one value per key, making it if it is
/// missing. Made as async-nats' `create_key_value` makes one, but without
/// reading the account's figures first: nats-server 2.9 (Debian's) answers
/// that request in a shape async-nats 0.51 no longer parses.
pub(crate) async fn bucket(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    max_age: Duration,
) -> anyhow::Result<kv::Store> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    js.get_or_create_stream(jetstream::stream::Config {
        name: format!("KV_{name}"),
        description: Some(description.into()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    })
    .await
    .map_err(|e| {
        anyhow::anyhow!("cannot create the JetStream bucket {name} (is JetStream enabled?): {e}")
    })?;
    js.get_key_value(name)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the JetStream bucket {name}: {e}"))
}

impl crate::registry::Ownership for Leases {
    fn owns(&self, project: &str) -> bool {
        Leases::owns(self, project)
    }

    fn removed(&self, project: &str) {
        self.release(project);
    }
}

/// A project's key in every bucket (owners, data, alarms): its projectId
/// in base64url (any UTF-8 may be a projectId; keys allow letters, digits
/// and `-_=./`).
pub(crate) fn key(project: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(project)
}

/// A random number (the epochs of a node's leases).
fn rand_u64() -> u64 {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default())
}
