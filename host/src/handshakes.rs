//! The limit on connections in the HTTP phase per source address
//! (`--max-handshakes-per-address`): from accept until the connection is a
//! WebSocket or closed. Without it, one address opening thousands of
//! connections that send their request head a byte at a time (slowloris)
//! held every HTTP slot until the header timeout, and every other client's
//! handshake waited. IPv6 addresses count by /64, the block one host is
//! usually given.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Per-address counts; an address is in the map only while it has a
/// connection in the HTTP phase, so the map is bounded by the HTTP slots.
pub(crate) struct Handshakes {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize, foldhash::fast::RandomState>>,
}

/// One connection's place in its address's count, given back on drop.
pub(crate) struct HandshakeSlot {
    handshakes: Arc<Handshakes>,
    address: IpAddr,
}

impl Handshakes {
    pub(crate) fn new(max: usize) -> Arc<Handshakes> {
        Arc::new(Handshakes {
            max,
            counts: Mutex::default(),
        })
    }

    /// A place for a new connection from `peer`, or `None` if its address
    /// already has `max` connections in the HTTP phase.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<HandshakeSlot> {
        let address = key(peer);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        // Checked before the entry is made: a refused address leaves none.
        if counts.get(&address).is_some_and(|&n| n >= self.max) || self.max == 0 {
            return None;
        }
        *counts.entry(address).or_insert(0) += 1;
        Some(HandshakeSlot {
            handshakes: self.clone(),
            address,
        })
    }

    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut counts = self
            .handshakes
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// What an address counts as: itself for IPv4 (and IPv4 mapped into
/// IPv6), its /64 for IPv6.
fn key(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_address_gets_its_own_slots_and_gets_them_back() {
        let h = Handshakes::new(2);
        let a1 = h.admit(ip("127.0.0.1"));
        let a2 = h.admit(ip("127.0.0.1"));
        assert!(a1.is_some() && a2.is_some());
        assert!(
            h.admit(ip("127.0.0.1")).is_none(),
            "a third from one address"
        );
        assert!(
            h.admit(ip("127.0.0.2")).is_some(),
            "another address is not held up"
        );
        drop(a1);
        assert!(
            h.admit(ip("127.0.0.1")).is_some(),
            "a slot given back is reused"
        );
        drop(a2);
        // No address is kept once its connections are gone.
        assert_eq!(h.addresses(), 0);
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_block() {
        let h = Handshakes::new(1);
        let _a = h.admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(h.admit(ip("2001:db8:1:2:ffff::9")).is_none(), "same /64");
        assert!(h.admit(ip("2001:db8:1:3::1")).is_some(), "another /64");
        let _b = h.admit(ip("::ffff:10.0.0.1")).unwrap();
        assert!(
            h.admit(ip("10.0.0.1")).is_none(),
            "IPv4-mapped is the IPv4 address"
        );
    }
}
