//! The peer table: the other hosts' leases of our backend type, fed by the etcd watch, and
//! the add / remove events the datapaths consume.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;

use crate::control::{lease::LeaseAttrs, registry::StoredLease};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub subnet: Ipv4Net,
    pub attrs: LeaseAttrs,
}

pub struct PeerTable {
    own: Ipv4Net,
    backend_type: String,
    peers: BTreeMap<Ipv4Net, LeaseAttrs>,
}

impl PeerTable {
    pub fn new(own: Ipv4Net, backend_type: &str) -> Self {
        Self {
            own,
            backend_type: backend_type.to_owned(),
            peers: BTreeMap::new(),
        }
    }

    /// Every peer's subnet with its lease: what the datapath must hold.
    pub fn desired(&self) -> &BTreeMap<Ipv4Net, LeaseAttrs> {
        &self.peers
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Our subnet changed (re-acquired elsewhere): it stops being ignored, the new one starts.
    /// True when the table changed.
    pub fn set_own(&mut self, own: Ipv4Net) -> bool {
        self.own = own;
        self.remove(&own)
    }

    /// Takes a lease in; true when the table changed.
    pub fn put(&mut self, lease: &StoredLease) -> bool {
        if lease.subnet == self.own || lease.attrs.backend.type_name() != self.backend_type {
            // Not a peer of ours; if it was one (its backend changed), it is gone.
            return self.remove(&lease.subnet);
        }
        self.peers
            .insert(lease.subnet, lease.attrs.clone())
            .as_ref()
            != Some(&lease.attrs)
    }

    /// True when the table changed.
    pub fn remove(&mut self, subnet: &Ipv4Net) -> bool {
        self.peers.remove(subnet).is_some()
    }

    /// Replaces the table with a full listing (start-up, or after a watch compaction); true
    /// when the table changed.
    pub fn resync(&mut self, leases: &[StoredLease]) -> bool {
        let listed: BTreeSet<Ipv4Net> = leases.iter().map(|l| l.subnet).collect();
        let before = self.peers.len();
        self.peers.retain(|subnet, _| listed.contains(subnet));
        let mut changed = self.peers.len() != before;
        for lease in leases {
            changed |= self.put(lease);
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::control::lease::BackendAttrs;

    fn lease(subnet: &str, ip: u8, backend: BackendAttrs) -> StoredLease {
        StoredLease {
            subnet: subnet.parse().unwrap(),
            attrs: LeaseAttrs {
                public_ip: Ipv4Addr::new(192, 168, 64, ip),
                backend,
            },
            lease_id: 1,
        }
    }

    #[test]
    fn ignores_our_subnet_and_other_backends() {
        let mut table = PeerTable::new("10.1.1.0/24".parse().unwrap(), "host-gw");
        assert!(!table.put(&lease("10.1.1.0/24", 2, BackendAttrs::HostGw)));
        assert!(!table.put(&lease("10.1.2.0/24", 3, BackendAttrs::Udp)));
        assert!(table.put(&lease("10.1.3.0/24", 4, BackendAttrs::HostGw)));
        assert!(
            !table.put(&lease("10.1.3.0/24", 4, BackendAttrs::HostGw)),
            "no change"
        );
        assert!(table.put(&lease("10.1.3.0/24", 5, BackendAttrs::HostGw)));
        let subnet: Ipv4Net = "10.1.3.0/24".parse().unwrap();
        assert_eq!(
            table.desired()[&subnet].public_ip,
            Ipv4Addr::new(192, 168, 64, 5)
        );
        assert!(table.put(&lease("10.1.3.0/24", 5, BackendAttrs::Udp)));
        assert!(table.is_empty());
    }

    #[test]
    fn resync_keeps_exactly_the_listing() {
        let mut table = PeerTable::new("10.1.1.0/24".parse().unwrap(), "udp");
        assert!(table.resync(&[
            lease("10.1.2.0/24", 2, BackendAttrs::Udp),
            lease("10.1.3.0/24", 3, BackendAttrs::Udp),
        ]));
        assert!(table.resync(&[
            lease("10.1.3.0/24", 3, BackendAttrs::Udp),
            lease("10.1.4.0/24", 4, BackendAttrs::Udp),
        ]));
        let subnets: Vec<String> = table.desired().keys().map(|s| s.to_string()).collect();
        assert_eq!(subnets, ["10.1.3.0/24", "10.1.4.0/24"]);
        assert!(!table.resync(&[
            lease("10.1.4.0/24", 4, BackendAttrs::Udp),
            lease("10.1.3.0/24", 3, BackendAttrs::Udp),
        ]));
    }

    #[test]
    fn our_new_subnet_stops_being_a_peer() {
        let mut table = PeerTable::new("10.1.1.0/24".parse().unwrap(), "udp");
        table.put(&lease("10.1.2.0/24", 2, BackendAttrs::Udp));
        assert!(table.set_own("10.1.2.0/24".parse().unwrap()));
        assert!(table.is_empty());
        assert!(table.put(&lease("10.1.1.0/24", 1, BackendAttrs::Udp)));
    }
}
