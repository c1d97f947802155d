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

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    /// A new peer, or a changed one: it replaces whatever its subnet had.
    Added(Peer),
    Removed(Peer),
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

    pub fn peers(&self) -> impl Iterator<Item = Peer> + '_ {
        self.peers.iter().map(|(subnet, attrs)| Peer {
            subnet: *subnet,
            attrs: attrs.clone(),
        })
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Our subnet changed (re-acquired elsewhere): it stops being ignored, the new one starts.
    pub fn set_own(&mut self, own: Ipv4Net) -> Vec<PeerEvent> {
        self.own = own;
        self.remove(&own).into_iter().collect()
    }

    pub fn put(&mut self, lease: &StoredLease) -> Option<PeerEvent> {
        if lease.subnet == self.own || lease.attrs.backend.type_name() != self.backend_type {
            // Not a peer of ours; if it was one (its backend changed), it is gone.
            return self.remove(&lease.subnet);
        }
        if self.peers.get(&lease.subnet) == Some(&lease.attrs) {
            return None;
        }
        self.peers.insert(lease.subnet, lease.attrs.clone());
        Some(PeerEvent::Added(Peer {
            subnet: lease.subnet,
            attrs: lease.attrs.clone(),
        }))
    }

    pub fn remove(&mut self, subnet: &Ipv4Net) -> Option<PeerEvent> {
        self.peers.remove(subnet).map(|attrs| {
            PeerEvent::Removed(Peer {
                subnet: *subnet,
                attrs,
            })
        })
    }

    /// Replaces the table with a full listing (start-up, or after a watch compaction) and
    /// returns the difference as events.
    pub fn resync(&mut self, leases: &[StoredLease]) -> Vec<PeerEvent> {
        let listed: BTreeSet<Ipv4Net> = leases.iter().map(|l| l.subnet).collect();
        let gone: Vec<Ipv4Net> = self
            .peers
            .keys()
            .filter(|s| !listed.contains(s))
            .copied()
            .collect();
        let mut events: Vec<PeerEvent> = gone.iter().filter_map(|s| self.remove(s)).collect();
        events.extend(leases.iter().filter_map(|lease| self.put(lease)));
        events
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
        assert_eq!(
            table.put(&lease("10.1.1.0/24", 2, BackendAttrs::HostGw)),
            None
        );
        assert_eq!(table.put(&lease("10.1.2.0/24", 3, BackendAttrs::Udp)), None);
        assert!(matches!(
            table.put(&lease("10.1.3.0/24", 4, BackendAttrs::HostGw)),
            Some(PeerEvent::Added(_))
        ));
        assert_eq!(
            table.put(&lease("10.1.3.0/24", 4, BackendAttrs::HostGw)),
            None,
            "no change"
        );
        assert!(matches!(
            table.put(&lease("10.1.3.0/24", 5, BackendAttrs::HostGw)),
            Some(PeerEvent::Added(p)) if p.attrs.public_ip == Ipv4Addr::new(192, 168, 64, 5)
        ));
        assert!(matches!(
            table.put(&lease("10.1.3.0/24", 5, BackendAttrs::Udp)),
            Some(PeerEvent::Removed(_))
        ));
        assert!(table.is_empty());
    }

    #[test]
    fn resync_reports_the_difference() {
        let mut table = PeerTable::new("10.1.1.0/24".parse().unwrap(), "udp");
        table.resync(&[
            lease("10.1.2.0/24", 2, BackendAttrs::Udp),
            lease("10.1.3.0/24", 3, BackendAttrs::Udp),
        ]);
        let events = table.resync(&[
            lease("10.1.3.0/24", 3, BackendAttrs::Udp),
            lease("10.1.4.0/24", 4, BackendAttrs::Udp),
        ]);
        assert_eq!(events.len(), 2);
        assert!(
            matches!(&events[0], PeerEvent::Removed(p) if p.subnet.to_string() == "10.1.2.0/24")
        );
        assert!(matches!(&events[1], PeerEvent::Added(p) if p.subnet.to_string() == "10.1.4.0/24"));
        assert_eq!(table.len(), 2);
    }
}
