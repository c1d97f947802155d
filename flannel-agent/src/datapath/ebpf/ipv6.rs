//! The IPv6 half of a dual-stack vxlan network on the eBPF datapath, carried as flannel
//! carries it: between the hosts' public IPv6 addresses, to each peer's IPv6 VTEP MAC.
//!
//! - `tc_encap` takes IPv6 for a peer's IPv6 subnet at the container bridge's ingress (when
//!   it fits the tunnel's MTU; bigger packets take the stack's way, which answers "packet too
//!   big") and at the overlay device's egress. IPv6 UDP needs a checksum (flannel's IPv6
//!   vxlan device drops packets without one): for a single TCP, UDP or ICMPv6 packet the
//!   program makes it from the inner headers and sends the packet out of the NIC itself; a
//!   GSO packet, whose every segment needs its own, which `bpf_skb_adjust_room` can't give,
//!   goes to the GRO device, the kernel's vxlan in metadata mode, with the peer in its
//!   tunnel key.
//! - `tc_ingress` lets in IPv6 vxlan packets from current peers only, with our VNI, and
//!   decapsulates them for the stack.
//! - The maps: a peer's IPv6 subnet → its tunnel (`ROUTES6`), its public IPv6 → the subnet it
//!   speaks for (`PEERS6`). IPv6 traffic counts under the peer's public IPv4, with its IPv4;
//!   in an IPv6-only network under a key made of its IPv6 subnet (`traffic_key`).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{Ipv4Addr, Ipv6Addr},
};

use flannel_common::{DatapathConfig6, PeerInfo6, Tunnel6, DIRECT};
use ipnet::Ipv6Net;

use crate::{
    control::lease::{BackendAttrs, LeaseAttrs, Subnets},
    datapath::Installed,
    host::iface::OnLink,
};

/// Our IPv6 end: the network, our subnet and our public IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ours6 {
    pub network: Ipv6Net,
    pub subnet: Ipv6Net,
    pub public_ip: Ipv6Addr,
}

/// The programs' IPv6 configuration; `mtu`: the IPv6 tunnel's.
pub fn config(ours: &Ours6, overlay_ifindex: u32, mtu: u32) -> DatapathConfig6 {
    DatapathConfig6 {
        local_ip: ours.public_ip.octets(),
        network: ours.network.network().octets(),
        network_mask: ours.network.netmask().octets(),
        subnet: ours.subnet.network().octets(),
        subnet_mask: ours.subnet.netmask().octets(),
        overlay_ifindex,
        inner_mtu: mtu,
    }
}

/// A vxlan peer's IPv6 entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entries {
    pub subnet: Ipv6Net,
    pub tunnel: Tunnel6,
    pub public_ip: Ipv6Addr,
    pub peer: PeerInfo6,
}

impl Entries {
    /// The entries with the route `DirectRouting` gives a peer on our interface's subnet.
    pub fn routed(mut self, on_link: &OnLink) -> Self {
        if on_link.contains(self.public_ip) {
            self.tunnel.flags = DIRECT;
        }
        self
    }

    /// The key of the peer's traffic counters (network byte order, as an address).
    pub fn traffic_key(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from_be(self.peer.traffic_key_be))
    }
}

/// The entries for a lease with an IPv6 half; None for an IPv4-only one.
pub fn entries(subnets: &Subnets, attrs: &LeaseAttrs) -> Option<Entries> {
    let (subnet, public_ip) = (subnets.ipv6?, attrs.public_ipv6?);
    let BackendAttrs::Vxlan {
        v6_vtep_mac: Some(mac),
        ..
    } = attrs.backend
    else {
        return None;
    };
    let key_be = u32::from(traffic_key(subnets, attrs)?).to_be();
    Some(Entries {
        subnet,
        tunnel: Tunnel6 {
            remote_ip: public_ip.octets(),
            remote_mac: mac.0,
            flags: 0,
            traffic_key_be: key_be,
        },
        public_ip,
        peer: PeerInfo6 {
            subnet: subnet.network().octets(),
            subnet_mask: subnet.netmask().octets(),
            traffic_key_be: key_be,
        },
    })
}

/// The key a peer's traffic counts under: its public IPv4; for an IPv6-only lease, its IPv6
/// subnet's number, the bits between the network's prefix and the subnet's length (unique
/// among leases that don't overlap, while at most 32 bits; 16 with flannel's /48 network and
/// /64 subnets; up to 24 bits it lies in 0.0.0.0/8, which no peer's public IPv4 does). None
/// for a lease that names no subnet.
pub fn traffic_key(subnets: &Subnets, attrs: &LeaseAttrs) -> Option<Ipv4Addr> {
    match (subnets.ipv4, subnets.ipv6) {
        (Some(_), _) => Some(attrs.public_ip),
        (None, Some(subnet)) => {
            let number = u128::from(subnet.network()) >> (128 - u32::from(subnet.prefix_len()));
            Some(Ipv4Addr::from(number as u32))
        }
        (None, None) => None,
    }
}

/// What the IPv6 maps should hold for the installed peers: each route by its IPv6 subnet,
/// each public IPv6's entry, named by the smallest subnet using it (as `put` writes it), and
/// the traffic keys of IPv6-only peers; with the lease each comes from.
pub struct Wanted {
    pub routes: BTreeMap<Ipv6Net, (Subnets, Tunnel6)>,
    pub peers: HashMap<Ipv6Addr, (Subnets, PeerInfo6)>,
    pub traffic: HashMap<Ipv4Addr, Subnets>,
}

impl Wanted {
    pub fn of(installed: &Installed, on_link: &OnLink) -> Self {
        let mut wanted = Self {
            routes: BTreeMap::new(),
            peers: HashMap::new(),
            traffic: HashMap::new(),
        };
        for (key, attrs) in installed {
            let Some(entries) = entries(key, attrs).map(|e| e.routed(on_link)) else {
                continue;
            };
            wanted.routes.insert(entries.subnet, (*key, entries.tunnel));
            wanted
                .peers
                .entry(entries.public_ip)
                .or_insert((*key, entries.peer));
            if key.ipv4.is_none() {
                wanted.traffic.insert(entries.traffic_key(), *key);
            }
        }
        wanted
    }

    /// The installed peers whose IPv6 entries `routes` and `peers` (the maps as read back)
    /// lack or hold wrong.
    pub fn drifted(
        &self,
        routes: &BTreeMap<Ipv6Net, Tunnel6>,
        peers: &HashMap<Ipv6Addr, PeerInfo6>,
    ) -> BTreeSet<Subnets> {
        (self.routes.iter())
            .filter(|(subnet, (_, tunnel))| {
                let public_ip = Ipv6Addr::from(tunnel.remote_ip);
                routes.get(subnet) != Some(tunnel)
                    || peers.get(&public_ip) != self.peers.get(&public_ip).map(|w| &w.1)
            })
            .map(|(_, (key, _))| *key)
            .collect()
    }
}
