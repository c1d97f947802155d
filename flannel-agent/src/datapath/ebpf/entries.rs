//! What the maps hold for a peer, written once for both families: its subnet's route (in an
//! LPM trie of the family's tunnels) and its public address's entry (the subnet it speaks
//! for). The programs read each family from maps of its own, whose layouts `MapFamily` names;
//! traffic counts by public address, of either family, in one map.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Debug,
    net::{Ipv4Addr, Ipv6Addr},
};

use flannel_common::{map_names, Encap, PeerInfo, PeerInfo6, Tunnel, Tunnel6, TunnelEnds, DIRECT};

use crate::{
    control::lease::{LeaseAttrs, Mac, Subnets},
    datapath::Installed,
    family::Family,
    host::iface::OnLink,
};

/// A family's maps as the programs read them: their names, keys and values.
pub trait MapFamily: Family {
    /// An address as the maps key it: IPv4 as a network-order `u32`, IPv6 as its bytes.
    type Key: aya::Pod;
    type Tunnel: aya::Pod + PartialEq + Debug;
    type Peer: aya::Pod + PartialEq + Debug;
    const ROUTES: &'static str;
    const PEERS: &'static str;
    fn key(self) -> Self::Key;
    fn from_key(key: Self::Key) -> Self;
    /// The route to a peer at `remote` (with VTEP MAC `remote_mac`); `direct`: on our
    /// interface's subnet (`DirectRouting`), reached unencapsulated.
    fn tunnel(wire: &Wire, remote: Self, remote_mac: Mac, direct: bool) -> Self::Tunnel;
    /// The entry of a peer's public address: the subnet it speaks for.
    fn peer(subnet: Self::Net, vtep_mac: Mac) -> Self::Peer;
}

/// What all our tunnels share. IPv4's outer headers are prebuilt from it; IPv6's are built
/// from the IPv6 config per packet.
#[derive(Clone, Copy, Debug)]
pub struct Wire {
    pub encap: Encap,
    pub port: u16,
    pub vni: u32,
    pub local_mac: Mac,
    pub local_ipv4: Ipv4Addr,
}

impl MapFamily for Ipv4Addr {
    type Key = u32;
    type Tunnel = Tunnel;
    type Peer = PeerInfo;
    const ROUTES: &'static str = map_names::ROUTES;
    const PEERS: &'static str = map_names::PEERS;

    fn key(self) -> u32 {
        u32::from(self).to_be()
    }
    fn from_key(key: u32) -> Self {
        Ipv4Addr::from(u32::from_be(key))
    }
    fn tunnel(wire: &Wire, remote: Self, remote_mac: Mac, direct: bool) -> Tunnel {
        if direct {
            return Tunnel::direct(remote.key());
        }
        Tunnel::new(&TunnelEnds {
            encap: wire.encap,
            local_ip_be: wire.local_ipv4.key(),
            remote_ip_be: remote.key(),
            port_be: wire.port.to_be(),
            vni: wire.vni,
            local_mac: wire.local_mac.0,
            remote_mac: remote_mac.0,
        })
    }
    fn peer(subnet: ipnet::Ipv4Net, vtep_mac: Mac) -> PeerInfo {
        PeerInfo {
            subnet_be: subnet.network().key(),
            prefix_len: subnet.prefix_len(),
            vtep_mac: vtep_mac.0,
            ..Default::default()
        }
    }
}

impl MapFamily for Ipv6Addr {
    type Key = [u8; 16];
    type Tunnel = Tunnel6;
    type Peer = PeerInfo6;
    const ROUTES: &'static str = map_names::ROUTES6;
    const PEERS: &'static str = map_names::PEERS6;

    fn key(self) -> [u8; 16] {
        self.octets()
    }
    fn from_key(key: [u8; 16]) -> Self {
        Ipv6Addr::from(key)
    }
    fn tunnel(_: &Wire, remote: Self, remote_mac: Mac, direct: bool) -> Tunnel6 {
        Tunnel6 {
            remote_ip: remote.octets(),
            remote_mac: remote_mac.0,
            flags: if direct { DIRECT } else { 0 },
        }
    }
    fn peer(subnet: ipnet::Ipv6Net, _: Mac) -> PeerInfo6 {
        PeerInfo6 {
            subnet: subnet.network().octets(),
            subnet_mask: subnet.netmask().octets(),
        }
    }
}

/// A peer's entries of family `A`.
#[derive(Clone, Copy, Debug)]
pub struct Entries<A: MapFamily> {
    pub subnet: A::Net,
    pub public: A,
    pub tunnel: A::Tunnel,
    pub peer: A::Peer,
}

impl<A: MapFamily> Entries<A> {
    /// The entries of a lease's half of family `A`, if it has one; `on_link`: the prefixes
    /// of `DirectRouting` (empty without it).
    pub fn of(
        subnets: &Subnets,
        attrs: &LeaseAttrs,
        wire: &Wire,
        on_link: &OnLink,
    ) -> Option<Self> {
        let (subnet, public) = (subnets.half::<A>()?, attrs.public::<A>()?);
        // udp leases have none: their tunnels carry no Ethernet header.
        let mac = attrs.vtep_mac::<A>().unwrap_or_default();
        Some(Self {
            subnet,
            public,
            tunnel: A::tunnel(wire, public, mac, on_link.contains(public)),
            peer: A::peer(subnet, mac),
        })
    }
}

/// One family's routes and peers maps, as read back.
pub struct Maps<A: MapFamily> {
    pub routes: BTreeMap<A::Net, A::Tunnel>,
    pub peers: HashMap<A, A::Peer>,
}

/// What one family's maps should hold for the installed peers: each route by its subnet,
/// and each public address's entry named by the smallest lease using it (as `put` writes
/// it), with the lease each comes from.
pub struct Wanted<A: MapFamily> {
    pub routes: BTreeMap<A::Net, (Subnets, Entries<A>)>,
    pub peers: HashMap<A, A::Peer>,
}

impl<A: MapFamily> Wanted<A> {
    /// `entries` gives an installed lease's entries of family `A`, if any.
    pub fn of(
        installed: &Installed,
        entries: impl Fn(&Subnets, &LeaseAttrs) -> Option<Entries<A>>,
    ) -> Self {
        let mut wanted = Self {
            routes: BTreeMap::new(),
            peers: HashMap::new(),
        };
        // In lease order: the first lease to use an address names it.
        for (subnets, attrs) in installed {
            let Some(entries) = entries(subnets, attrs) else {
                continue;
            };
            wanted.routes.insert(entries.subnet, (*subnets, entries));
            wanted.peers.entry(entries.public).or_insert(entries.peer);
        }
        wanted
    }

    /// The installed peers whose entries `maps` (as read back) lack or hold wrong, or whose
    /// public address is not among the `tracked` traffic counters.
    pub fn drifted(&self, maps: &Maps<A>, tracked: impl Fn(A) -> bool) -> BTreeSet<Subnets> {
        (self.routes.iter())
            .filter(|(subnet, (_, entries))| {
                let public = entries.public;
                maps.routes.get(subnet) != Some(&entries.tunnel)
                    || maps.peers.get(&public) != self.peers.get(&public)
                    || !tracked(public)
            })
            .map(|(_, (subnets, _))| *subnets)
            .collect()
    }
}
