//! What the cluster did, for `/metrics`: messages forwarded to owners on
//! other nodes and those that did not arrive (by why), projects taken over,
//! and the times this node lost its lease; with the node's state as gauges.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::metrics::ByLabel;

/// Why a forwarded message did not reach its room (the label of
/// `wsroom_cluster_messages_not_delivered_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Undelivered {
    OwnerSilent,
    OwnerGone,
    RoomLost,
    TooLarge,
    NoOwner,
}

impl Undelivered {
    const ALL: [Undelivered; 5] = [
        Undelivered::OwnerSilent,
        Undelivered::OwnerGone,
        Undelivered::RoomLost,
        Undelivered::TooLarge,
        Undelivered::NoOwner,
    ];

    fn label(self) -> &'static str {
        match self {
            Undelivered::OwnerSilent => "owner_silent",
            Undelivered::OwnerGone => "owner_gone",
            Undelivered::RoomLost => "room_lost",
            Undelivered::TooLarge => "too_large",
            Undelivered::NoOwner => "no_owner",
        }
    }
}

#[derive(Default)]
pub(super) struct Counters {
    forwarded: AtomicU64,
    undelivered: [AtomicU64; Undelivered::ALL.len()],
    takeovers: AtomicU64,
    fences: AtomicU64,
}

/// The node's state when scraped.
pub(super) struct State {
    pub(super) nats_connected: bool,
    pub(super) lease_valid: bool,
    pub(super) owned_projects: usize,
    pub(super) clients_served_for_other_nodes: usize,
    pub(super) clients_of_other_nodes_projects: usize,
}

impl Counters {
    pub(super) fn forwarded(&self) {
        self.forwarded.fetch_add(1, Relaxed);
    }
    pub(super) fn undelivered(&self, why: Undelivered) {
        self.undelivered[why as usize].fetch_add(1, Relaxed);
    }
    pub(super) fn took_over(&self) {
        self.takeovers.fetch_add(1, Relaxed);
    }
    pub(super) fn fenced(&self) {
        self.fences.fetch_add(1, Relaxed);
    }

    pub(super) fn register(&self, state: State, registry: &mut Registry) {
        let gauge = |v: usize| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
        registry.register(
            "wsroom_cluster_nats_connected",
            "1 while this node is connected to NATS",
            gauge(usize::from(state.nats_connected)),
        );
        registry.register(
            "wsroom_cluster_lease_valid",
            "1 while this node holds its lease (it runs rooms only then)",
            gauge(usize::from(state.lease_valid)),
        );
        registry.register(
            "wsroom_cluster_owned_projects",
            "projects this node owns",
            gauge(state.owned_projects),
        );
        registry.register(
            "wsroom_cluster_clients_served_for_other_nodes",
            "clients in this node's rooms whose sockets other nodes hold",
            gauge(state.clients_served_for_other_nodes),
        );
        registry.register(
            "wsroom_cluster_clients_of_other_nodes_projects",
            "sockets held here for rooms other nodes run",
            gauge(state.clients_of_other_nodes_projects),
        );
        registry.register(
            "wsroom_cluster_messages_forwarded",
            "client messages sent to their project's owner on another node (retries while a project moves counted once)",
            ConstCounter::new(self.forwarded.load(Relaxed)),
        );
        registry.register(
            "wsroom_cluster_messages_not_delivered",
            "forwarded messages whose sender got an error instead, by reason (owner_silent and owner_gone: may have been handled)",
            ByLabel::new(
                "reason",
                Undelivered::ALL.iter().map(|why| {
                    let n = self.undelivered[*why as usize].load(Relaxed);
                    (why.label(), ConstCounter::new(n))
                }),
            ),
        );
        registry.register(
            "wsroom_cluster_takeovers",
            "projects this node took over from a node whose lease ended",
            ConstCounter::new(self.takeovers.load(Relaxed)),
        );
        registry.register(
            "wsroom_cluster_lease_losses",
            "times this node could not renew its lease in time and stopped its rooms",
            ConstCounter::new(self.fences.load(Relaxed)),
        );
    }
}
