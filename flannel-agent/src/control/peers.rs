//! The peer table: the other hosts' leases, fed by the etcd watch, each checked against the
//! same rules before any datapath sees it (and by `status`, which lists what was rejected).
//!
//! Only the halves of a lease (IPv4, IPv6) that the network has are looked at, as flannel
//! does: a dual-stack lease in an IPv4 network is an IPv4 peer, in an IPv6-only network an
//! IPv6 one, and an IPv6-only lease in a dual-stack network an IPv6 peer. That view of the
//! lease is what the datapath holds.
//!
//! A lease is rejected when it is unsafe on its own (no half of the network's, a subnet
//! outside the network, wider than a lease, over ours; a public IP that is ours, in the
//! network, or not a unicast host address; a broadcast, multicast or zero VTEP MAC; a VNI over
//! 24 bits), or when it collides with an older lease that is not (an overlapping subnet, or
//! the same public IP). "Older" is etcd's create revision, then the subnets: the same on every
//! host, so all hosts keep the same one of two colliding leases.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use tracing::warn;

use crate::{
    control::{
        config::{Config, FamilyConfig},
        lease::{overlap, BackendAttrs, LeaseAttrs, Subnets},
        registry::StoredLease,
    },
    family::Family,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub subnets: Subnets,
    pub attrs: LeaseAttrs,
}

/// What a lease is checked against.
#[derive(Clone, Debug)]
pub struct Rules {
    /// The IPv4 half; None in an IPv6-only network.
    pub ipv4: Option<FamilyRules<Ipv4Addr>>,
    /// The IPv6 half, in a dual-stack or IPv6-only network.
    pub ipv6: Option<FamilyRules<Ipv6Addr>>,
    pub backend_type: String,
    /// The etcd prefix, to name the keys of rejected leases.
    pub prefix: String,
}

impl Rules {
    /// The rules of `config` on a host holding the lease `own` (None: `status` on a host
    /// without one); `prefix` is the etcd prefix.
    pub fn of(config: &Config, prefix: &str, own: Option<(&Subnets, &LeaseAttrs)>) -> Self {
        Self {
            ipv4: (config.ipv4.as_ref()).map(|v4| FamilyRules::new(v4, own)),
            ipv6: (config.ipv6.as_ref()).map(|v6| FamilyRules::new(v6, own)),
            backend_type: config.backend.type_name().to_owned(),
            prefix: prefix.to_owned(),
        }
    }

    /// The halves of `subnets` that the network has.
    fn view(&self, subnets: &Subnets) -> Subnets {
        Subnets {
            ipv4: subnets.ipv4.filter(|_| self.ipv4.is_some()),
            ipv6: subnets.ipv6.filter(|_| self.ipv6.is_some()),
        }
    }

    /// What the datapath needs of a lease seen as `view`: the other half's address and
    /// VTEP MAC dropped.
    fn view_attrs(view: &Subnets, attrs: &LeaseAttrs) -> LeaseAttrs {
        let (v4, v6) = (view.ipv4.is_some(), view.ipv6.is_some());
        let backend = match &attrs.backend {
            BackendAttrs::Vxlan {
                vni,
                vtep_mac,
                v6_vtep_mac,
            } => BackendAttrs::Vxlan {
                vni: *vni,
                vtep_mac: vtep_mac.filter(|_| v4),
                v6_vtep_mac: v6_vtep_mac.filter(|_| v6),
            },
            other => other.clone(),
        };
        LeaseAttrs {
            public_ip: if v4 {
                attrs.public_ip
            } else {
                Ipv4Addr::UNSPECIFIED
            },
            public_ipv6: attrs.public_ipv6.filter(|_| v6),
            backend,
        }
    }

    /// The index entries of a lease: the subnets and public addresses of its halves that the
    /// network has (IPv4's `0.0.0.0` of an IPv6-only lease names none).
    fn index_keys(&self, lease: &StoredLease) -> (Vec<IpNet>, Vec<IpAddr>) {
        let view = self.view(&lease.subnets);
        let ips = [
            view.ipv4.map(|_| lease.attrs.public_ip.into()),
            view.ipv6.and(lease.attrs.public_ipv6).map(Into::into),
        ];
        let ips = ips
            .into_iter()
            .flatten()
            .filter(|ip: &IpAddr| !ip.is_unspecified());
        (view.halves().collect(), ips.collect())
    }
}

/// What one half of a lease (IPv4 or IPv6) is checked against: the same rules for both.
#[derive(Clone, Debug)]
pub struct FamilyRules<A: Family> {
    pub network: A::Net,
    pub subnet_len: u8,
    /// Ours; None for `status` on a host without a subnet file.
    pub own_subnet: Option<A::Net>,
    pub own_ip: Option<A>,
}

/// Why a lease was rejected: a short reason (a metrics label) and what exactly is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub detail: String,
}

pub struct PeerTable {
    rules: Rules,
    /// Every lease but ours, as etcd holds it.
    leases: BTreeMap<Subnets, StoredLease>,
    /// The leases by each half's subnet and by public address (either family), of the
    /// halves the network has.
    by_subnet: BTreeMap<IpNet, BTreeSet<Subnets>>,
    by_ip: BTreeMap<IpAddr, BTreeSet<Subnets>>,
    /// The accepted leases of our backend type, seen as the network sees them (keyed by
    /// that view, which no two accepted leases share): what the datapath must hold.
    peers: BTreeMap<Subnets, LeaseAttrs>,
    rejected: BTreeMap<Subnets, Rejection>,
    /// How many times a lease was rejected, by reason.
    rejections: BTreeMap<&'static str, u64>,
}

fn index_insert<K: Ord>(index: &mut BTreeMap<K, BTreeSet<Subnets>>, key: K, subnets: Subnets) {
    index.entry(key).or_default().insert(subnets);
}

fn index_remove<K: Ord + Copy>(
    index: &mut BTreeMap<K, BTreeSet<Subnets>>,
    key: K,
    subnets: &Subnets,
) {
    if let Some(set) = index.get_mut(&key) {
        set.remove(subnets);
        if set.is_empty() {
            index.remove(&key);
        }
    }
}

impl PeerTable {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            leases: BTreeMap::new(),
            by_subnet: BTreeMap::new(),
            by_ip: BTreeMap::new(),
            peers: BTreeMap::new(),
            rejected: BTreeMap::new(),
            rejections: BTreeMap::new(),
        }
    }

    /// Every peer's subnets with its lease, of the halves the network has: what the
    /// datapath must hold.
    pub fn desired(&self) -> &BTreeMap<Subnets, LeaseAttrs> {
        &self.peers
    }

    /// The rejected leases, with why.
    pub fn rejected(&self) -> &BTreeMap<Subnets, Rejection> {
        &self.rejected
    }

    /// Rejections so far, by reason.
    pub fn rejections(&self) -> &BTreeMap<&'static str, u64> {
        &self.rejections
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Our lease's subnets, once known.
    fn own(&self) -> Option<Subnets> {
        let ipv4 = self.rules.ipv4.as_ref().and_then(|r| r.own_subnet);
        let ipv6 = self.rules.ipv6.as_ref().and_then(|r| r.own_subnet);
        (ipv4.is_some() || ipv6.is_some()).then_some(Subnets { ipv4, ipv6 })
    }

    /// Our subnets changed (re-acquired elsewhere): every lease is judged again. Returns the
    /// peers (by `desired`'s key) that changed.
    pub fn set_own(&mut self, own: Subnets) -> Vec<Subnets> {
        if let Some(v4) = &mut self.rules.ipv4 {
            v4.own_subnet = own.ipv4;
        }
        if let Some(v6) = &mut self.rules.ipv6 {
            v6.own_subnet = own.ipv6;
        }
        self.remove_lease(&own);
        self.judge_all()
    }

    /// Takes a lease in; returns the peers (by `desired`'s key) that changed: its own, and
    /// those of leases it collides with.
    pub fn put(&mut self, lease: &StoredLease) -> Vec<Subnets> {
        if Some(lease.subnets) == self.own() {
            return Vec::new();
        }
        let mut affected = self.remove_lease(&lease.subnets);
        self.index(lease);
        self.leases.insert(lease.subnets, lease.clone());
        affected.extend(self.colliding(lease));
        affected.insert(lease.subnets);
        self.judge(affected)
    }

    /// A lease is gone; returns the peers that changed.
    pub fn remove(&mut self, subnets: &Subnets) -> Vec<Subnets> {
        let affected = self.remove_lease(subnets);
        self.judge(affected)
    }

    /// Replaces the table with a full listing (start-up, or after a watch compaction);
    /// returns the peers that changed.
    pub fn resync(&mut self, leases: &[StoredLease]) -> Vec<Subnets> {
        let own = self.own();
        self.leases = leases
            .iter()
            .filter(|l| Some(l.subnets) != own)
            .map(|l| (l.subnets, l.clone()))
            .collect();
        self.by_subnet.clear();
        self.by_ip.clear();
        for lease in self.leases.values().cloned().collect::<Vec<_>>() {
            self.index(&lease);
        }
        self.judge_all()
    }

    fn index(&mut self, lease: &StoredLease) {
        let (halves, ips) = self.rules.index_keys(lease);
        let subnets = lease.subnets;
        for subnet in halves {
            index_insert(&mut self.by_subnet, subnet, subnets);
        }
        for ip in ips {
            index_insert(&mut self.by_ip, ip, subnets);
        }
    }

    /// Takes a lease out of the indexes; returns it and the leases it collided with.
    fn remove_lease(&mut self, subnets: &Subnets) -> BTreeSet<Subnets> {
        let Some(old) = self.leases.remove(subnets) else {
            return BTreeSet::from([*subnets]);
        };
        let (halves, ips) = self.rules.index_keys(&old);
        for subnet in halves {
            index_remove(&mut self.by_subnet, subnet, subnets);
        }
        for ip in ips {
            index_remove(&mut self.by_ip, ip, subnets);
        }
        let mut affected = self.colliding(&old);
        affected.insert(*subnets);
        affected
    }

    fn judge_all(&mut self) -> Vec<Subnets> {
        let every: BTreeSet<Subnets> = (self.leases.keys())
            .chain(self.peers.keys())
            .chain(self.rejected.keys())
            .copied()
            .collect();
        self.judge(every)
    }

    /// Decides again for each of `leases`: accepted, or rejected; then, for each of their
    /// views, which lease is its peer, if any (none: another backend type, or gone).
    /// Returns the peers that changed.
    fn judge(&mut self, leases: BTreeSet<Subnets>) -> Vec<Subnets> {
        let mut views = BTreeSet::new();
        for subnets in leases {
            let lease = self.leases.get(&subnets);
            match lease.and_then(|lease| self.fault(lease).or_else(|| self.collision(lease))) {
                Some(rejection) => self.reject(subnets, rejection),
                None => {
                    self.rejected.remove(&subnets);
                }
            }
            views.insert(self.rules.view(&subnets));
        }
        let mut changed = Vec::new();
        for view in views {
            let peer = self.peer_seen_as(&view);
            if self.peers.get(&view) != peer.as_ref() {
                match peer {
                    Some(attrs) => self.peers.insert(view, attrs),
                    None => self.peers.remove(&view),
                };
                changed.push(view);
            }
        }
        changed
    }

    /// The accepted lease of our backend type seen as `view`, as the datapath holds it.
    /// Leases with the same view overlap, so at most one of them is accepted; all are in
    /// the index of the view's first half.
    fn peer_seen_as(&self, view: &Subnets) -> Option<LeaseAttrs> {
        let same_subnet = view.either().and_then(|subnet| self.by_subnet.get(&subnet));
        same_subnet
            .into_iter()
            .flatten()
            .filter(|subnets| self.rules.view(subnets) == *view)
            .filter(|subnets| !self.rejected.contains_key(subnets))
            .filter_map(|subnets| self.leases.get(subnets))
            .find(|lease| lease.attrs.backend.type_name() == self.rules.backend_type)
            .map(|lease| Rules::view_attrs(view, &lease.attrs))
    }

    /// The etcd key of a lease.
    pub fn key(&self, subnets: &Subnets) -> String {
        subnets.key(&self.rules.prefix)
    }

    fn reject(&mut self, subnets: Subnets, rejection: Rejection) {
        if self.rejected.get(&subnets) == Some(&rejection) {
            return;
        }
        let key = self.key(&subnets);
        warn!(%key, reason = rejection.reason, "skipping a lease: {}", rejection.detail);
        *self.rejections.entry(rejection.reason).or_default() += 1;
        self.rejected.insert(subnets, rejection);
    }

    /// What is wrong with a lease on its own, if anything. It must name a subnet of the
    /// network (of either family in a dual-stack one); each half the network has obeys the
    /// same rules, and a half it has not is not looked at (no datapath here carries it).
    fn fault(&self, lease: &StoredLease) -> Option<Rejection> {
        let (rules, attrs) = (&self.rules, &lease.attrs);
        let view = rules.view(&lease.subnets);
        if let (Some(v4), Some(v6), None, None) = (&rules.ipv4, &rules.ipv6, view.ipv4, view.ipv6) {
            return reject(
                "outside_network",
                format!(
                    "it names no subnet of the network {} or of the IPv6 network {}",
                    v4.network, v6.network
                ),
            );
        }
        let v4 = (rules.ipv4.as_ref()).and_then(|v4| v4.judge(&view, attrs, rules.ipv6.is_none()));
        let v6 = (rules.ipv6.as_ref()).and_then(|v6| v6.judge(&view, attrs, rules.ipv4.is_none()));
        if let Some(rejection) = v4.or(v6) {
            return Some(rejection);
        }
        let BackendAttrs::Vxlan {
            vni,
            vtep_mac,
            v6_vtep_mac,
        } = &Rules::view_attrs(&view, attrs).backend
        else {
            return None;
        };
        if let (Some(subnet), None) = (view.ipv4, vtep_mac) {
            return reject(
                "bad_vtep_mac",
                format!("it names the subnet {subnet} but no BackendData.VtepMAC"),
            );
        }
        if let (Some(subnet), None) = (view.ipv6, v6_vtep_mac) {
            return reject(
                "bad_vtep_mac",
                format!("it names the IPv6 subnet {subnet} but no BackendV6Data.VtepMAC"),
            );
        }
        let macs = vtep_mac.iter().chain(v6_vtep_mac);
        if let Some(mac) = macs.into_iter().find(|m| m.0 == [0; 6] || m.0[0] & 1 == 1) {
            return reject(
                "bad_vtep_mac",
                format!("its VtepMAC {mac} is not a unicast address"),
            );
        }
        if *vni >= 1 << 24 {
            return reject("bad_vni", format!("its VNI {vni} does not fit 24 bits"));
        }
        None
    }

    /// The older, sound lease this one collides with, if any.
    fn collision(&self, lease: &StoredLease) -> Option<Rejection> {
        let age = |l: &StoredLease| (l.created, l.subnets);
        self.colliding(lease)
            .into_iter()
            .filter_map(|subnets| self.leases.get(&subnets))
            .filter(|other| age(other) < age(lease) && self.fault(other).is_none())
            .min_by_key(|other| age(other))
            .map(|older| {
                let (_, ips) = self.rules.index_keys(lease);
                let (_, older_ips) = self.rules.index_keys(older);
                match ips.into_iter().find(|ip| older_ips.contains(ip)) {
                    Some(ip) => Rejection {
                        reason: "public_ip_taken",
                        detail: format!(
                            "its {} {ip} is the older lease {}'s",
                            if ip.is_ipv4() {
                                "PublicIP"
                            } else {
                                "PublicIPv6"
                            },
                            older.subnets
                        ),
                    },
                    None => Rejection {
                        reason: "overlaps_older_lease",
                        detail: format!("it overlaps the older lease {}", older.subnets),
                    },
                }
            })
    }

    /// The other leases whose subnets overlap `lease`'s or that share a public address.
    fn colliding(&self, lease: &StoredLease) -> BTreeSet<Subnets> {
        let (halves, ips) = self.rules.index_keys(lease);
        let same_subnet = halves
            .into_iter()
            .flat_map(|s| overlapping(&self.by_subnet, s));
        let same_ip = ips.iter().filter_map(|ip| self.by_ip.get(ip));
        (same_subnet.map(|(_, l)| l))
            .chain(same_ip)
            .flatten()
            .filter(|s| **s != lease.subnets)
            .copied()
            .collect()
    }
}

impl<A: Family> FamilyRules<A> {
    /// The rules of `config`'s half of family `A` on a host holding the lease `own`.
    fn new(config: &FamilyConfig<A>, own: Option<(&Subnets, &LeaseAttrs)>) -> Self {
        Self {
            network: config.network,
            subnet_len: config.subnet_len,
            own_subnet: own.and_then(|(subnets, _)| subnets.half::<A>()),
            own_ip: own.and_then(|(_, attrs)| attrs.public::<A>()),
        }
    }

    /// What is wrong with the half of family `A` of a lease seen as `view`, if anything;
    /// `required`: a lease without this half is rejected.
    fn judge(&self, view: &Subnets, attrs: &LeaseAttrs, required: bool) -> Option<Rejection> {
        let subnet = view.half::<A>().map(Into::into);
        let ip = attrs.public::<A>().map(Into::into);
        let ip = ip.filter(|ip: &IpAddr| !ip.is_unspecified());
        let (family, field) = A::pick(("", "PublicIP"), ("IPv6 ", "PublicIPv6"));
        let network: IpNet = self.network.into();
        let subnet = match subnet {
            Some(subnet) => subnet,
            None if required => {
                return reject(
                    "outside_network",
                    format!("it names no subnet of the {family}network {network}"),
                )
            }
            None => return None,
        };
        if !network.contains(&subnet) {
            return reject(
                "outside_network",
                format!("{subnet} lies outside the {family}network {network}"),
            );
        }
        if subnet.prefix_len() < self.subnet_len {
            return reject(
                "wider_than_subnet_len",
                format!("{subnet} is wider than a /{} lease", self.subnet_len),
            );
        }
        if let Some(own) = self
            .own_subnet
            .map(Into::into)
            .filter(|own| overlap(subnet, *own))
        {
            return reject(
                "overlaps_our_subnet",
                format!("{subnet} overlaps our {family}subnet {own}"),
            );
        }
        let Some(ip) = ip else {
            return reject(
                "bad_public_ip",
                format!("it names the {family}subnet {subnet} but no {field}"),
            );
        };
        if Some(ip) == self.own_ip.map(Into::into) {
            return reject("our_public_ip", format!("its {field} {ip} is ours"));
        }
        // 0.0.0.0/8 names "this network", never a host to send to.
        let no_v4_host = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast() || v4.octets()[0] == 0);
        if ip.is_loopback() || ip.is_multicast() || no_v4_host || network.contains(&ip) {
            return reject(
                "bad_public_ip",
                format!("its {field} {ip} is not a unicast host address outside the network"),
            );
        }
        None
    }
}

fn reject(reason: &'static str, detail: String) -> Option<Rejection> {
    Some(Rejection { reason, detail })
}

/// The entries of `index` whose prefix overlaps `net`: aligned prefixes overlap when one lies
/// inside the other, so these are a range (prefixes order by address, then length) and the
/// few supernets of `net`.
fn overlapping<V>(index: &BTreeMap<IpNet, V>, net: IpNet) -> impl Iterator<Item = (&IpNet, &V)> {
    let first = IpNet::new(net.network(), 0).expect("prefix 0");
    let last = IpNet::new(net.broadcast(), net.max_prefix_len()).expect("a host prefix");
    let containing = std::iter::successors(net.supernet(), IpNet::supernet)
        .filter_map(|n| index.get_key_value(&n));
    index.range(first..=last).chain(containing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::lease::Mac;

    fn rules() -> Rules {
        Rules {
            ipv4: Some(FamilyRules {
                network: "10.1.0.0/16".parse().unwrap(),
                subnet_len: 24,
                own_subnet: Some("10.1.1.0/24".parse().unwrap()),
                own_ip: Some(Ipv4Addr::new(192, 168, 64, 1)),
            }),
            backend_type: "vxlan".into(),
            prefix: "/coreos.com/network".into(),
            ipv6: None,
        }
    }

    fn vxlan(subnet: &str, ip: [u8; 4], mac: [u8; 6], created: i64) -> StoredLease {
        StoredLease {
            subnets: subnet.parse().unwrap(),
            attrs: LeaseAttrs {
                public_ip: Ipv4Addr::from(ip),
                public_ipv6: None,
                backend: BackendAttrs::Vxlan {
                    vni: 1,
                    vtep_mac: Some(Mac(mac)),
                    v6_vtep_mac: None,
                },
            },
            lease_id: 1,
            created,
        }
    }

    fn good(subnet: &str, host: u8, created: i64) -> StoredLease {
        vxlan(subnet, [192, 168, 64, host], [2, 0, 0, 0, 0, host], created)
    }

    /// A vxlan lease with `mac` as its IPv6 device's.
    fn with_v6_vtep_mac(mut lease: StoredLease, mac: Option<Mac>) -> StoredLease {
        if let BackendAttrs::Vxlan { v6_vtep_mac, .. } = &mut lease.attrs.backend {
            *v6_vtep_mac = mac;
        }
        lease
    }

    /// `lease` with the IPv6 half `subnet6`, at fd64::`host`.
    fn dual(mut lease: StoredLease, subnet6: &str, host: u8) -> StoredLease {
        lease.subnets.ipv6 = Some(subnet6.parse().unwrap());
        lease.attrs.public_ipv6 = Some(format!("fd64::{host}").parse().unwrap());
        with_v6_vtep_mac(lease, Some(Mac([2, 0, 0, 0, 6, host])))
    }

    fn reason(table: &PeerTable, subnet: &str) -> Option<&'static str> {
        table
            .rejected()
            .get(&subnet.parse().unwrap())
            .map(|r| r.reason)
    }

    #[test]
    fn a_sound_lease_is_a_peer_and_its_change_is_reported() {
        let mut table = PeerTable::new(rules());
        let changed = table.put(&good("10.1.2.0/24", 2, 5));
        assert_eq!(changed, ["10.1.2.0/24".parse::<Subnets>().unwrap()]);
        assert!(
            table.put(&good("10.1.2.0/24", 2, 5)).is_empty(),
            "no change"
        );
        assert_eq!(table.len(), 1);
        assert_eq!(table.remove(&"10.1.2.0/24".parse().unwrap()).len(), 1);
        assert!(table.is_empty());
    }

    #[test]
    fn unsafe_leases_are_rejected_with_their_rule_and_counted() {
        let mut table = PeerTable::new(rules());
        let cases = [
            (good("10.1.0.0/16", 2, 1), "wider_than_subnet_len"),
            (good("0.0.0.0/0", 3, 1), "outside_network"),
            (good("10.2.0.0/24", 4, 1), "outside_network"),
            (good("192.168.64.0/24", 5, 1), "outside_network"),
            (good("10.1.1.128/25", 6, 1), "overlaps_our_subnet"),
            (
                vxlan("10.1.3.0/24", [192, 168, 64, 1], [2, 0, 0, 0, 0, 7], 1),
                "our_public_ip",
            ),
            (
                vxlan("10.1.4.0/24", [0, 0, 0, 0], [2, 0, 0, 0, 0, 8], 1),
                "bad_public_ip",
            ),
            (
                vxlan("10.1.5.0/24", [127, 0, 0, 1], [2, 0, 0, 0, 0, 9], 1),
                "bad_public_ip",
            ),
            (
                vxlan("10.1.6.0/24", [224, 0, 0, 1], [2, 0, 0, 0, 0, 10], 1),
                "bad_public_ip",
            ),
            (
                vxlan("10.1.7.0/24", [255; 4], [2, 0, 0, 0, 0, 11], 1),
                "bad_public_ip",
            ),
            (
                vxlan("10.1.8.0/24", [10, 1, 9, 1], [2, 0, 0, 0, 0, 12], 1),
                "bad_public_ip",
            ),
            (
                vxlan("10.1.12.0/24", [0, 0, 0, 5], [2, 0, 0, 0, 0, 16], 1),
                "bad_public_ip",
            ),
            (
                vxlan("10.1.9.0/24", [192, 168, 64, 13], [0xff; 6], 1),
                "bad_vtep_mac",
            ),
            (
                vxlan("10.1.10.0/24", [192, 168, 64, 14], [1, 0, 0x5e, 0, 0, 1], 1),
                "bad_vtep_mac",
            ),
            (
                vxlan("10.1.11.0/24", [192, 168, 64, 15], [0; 6], 1),
                "bad_vtep_mac",
            ),
        ];
        for (lease, rule) in &cases {
            assert!(table.put(lease).is_empty(), "{lease:?} is no peer");
            assert_eq!(reason(&table, &lease.subnets.to_string()), Some(*rule));
        }
        assert!(table.is_empty());
        assert_eq!(table.rejections()["bad_public_ip"], 6);
    }

    #[test]
    fn of_two_colliding_leases_the_older_wins_and_the_newer_follows_when_it_goes() {
        // Older than the /24 inside it: it wins, whatever the order they arrive in.
        let wide = good("10.1.2.0/23", 3, 4);
        let mut rules = rules();
        rules.ipv4.as_mut().unwrap().subnet_len = 23;
        let mut table_b = PeerTable::new(rules.clone());
        table_b.put(&wide);
        table_b.put(&good("10.1.2.0/24", 2, 7));
        let mut table_a = PeerTable::new(rules);
        table_a.put(&good("10.1.2.0/24", 2, 7));
        let changed = table_a.put(&wide);
        assert_eq!(changed.len(), 2, "the /24 leaves, the /23 comes");
        for table in [&table_a, &table_b] {
            assert_eq!(reason(table, "10.1.2.0/24"), Some("overlaps_older_lease"));
            assert_eq!(table.len(), 1);
        }
        // The winner gone, the other lease is a peer.
        let changed = table_a.remove(&"10.1.2.0/23".parse().unwrap());
        assert_eq!(changed.len(), 2);
        assert_eq!(reason(&table_a, "10.1.2.0/24"), None);
        assert!(table_a
            .desired()
            .contains_key(&"10.1.2.0/24".parse().unwrap()));
    }

    #[test]
    fn a_public_ip_belongs_to_its_oldest_lease() {
        let mut table = PeerTable::new(rules());
        table.put(&good("10.1.3.0/24", 2, 9));
        table.put(&good("10.1.2.0/24", 2, 8));
        assert_eq!(reason(&table, "10.1.3.0/24"), Some("public_ip_taken"));
        let subnets: Vec<String> = table.desired().keys().map(|s| s.to_string()).collect();
        assert_eq!(subnets, ["10.1.2.0/24"]);
    }

    #[test]
    fn a_rejected_lease_does_not_shut_out_a_newer_sound_one() {
        // An older lease with a broadcast MAC loses its claim on the subnet.
        let mut rules = rules();
        rules.ipv4.as_mut().unwrap().subnet_len = 23;
        let mut table = PeerTable::new(rules);
        table.put(&vxlan("10.1.2.0/23", [192, 168, 64, 3], [0xff; 6], 1));
        table.put(&good("10.1.2.0/24", 2, 5));
        assert_eq!(reason(&table, "10.1.2.0/23"), Some("bad_vtep_mac"));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn other_backends_are_not_peers_and_our_new_subnet_leaves_the_table() {
        let mut table = PeerTable::new(rules());
        let mut udp = good("10.1.2.0/24", 2, 1);
        udp.attrs.backend = BackendAttrs::Udp;
        assert!(table.put(&udp).is_empty());
        assert!(table.is_empty());
        table.put(&good("10.1.3.0/24", 3, 1));
        let changed = table.set_own("10.1.3.0/24".parse().unwrap());
        assert_eq!(changed.len(), 1);
        assert!(table.is_empty());
    }

    #[test]
    fn a_dual_stack_leases_ipv6_half_obeys_the_same_rules() {
        let mut rules = rules();
        rules.ipv6 = Some(FamilyRules {
            network: "fd00::/48".parse().unwrap(),
            subnet_len: 64,
            own_subnet: Some("fd00:0:0:1::/64".parse().unwrap()),
            own_ip: Some("fd64::1".parse().unwrap()),
        });
        let dual = |subnet6: &str, ip6: Option<&str>| {
            let mut lease = good("10.1.5.0/24", 5, 1);
            lease.subnets.ipv6 = Some(subnet6.parse().unwrap());
            lease.attrs.public_ipv6 = ip6.map(|ip| ip.parse().unwrap());
            with_v6_vtep_mac(lease, Some(Mac([2, 0, 0, 0, 6, 5])))
        };
        let verdict = |lease: &StoredLease| {
            let mut table = PeerTable::new(rules.clone());
            table.put(lease);
            table.rejected().values().next().map(|r| r.detail.clone())
        };
        assert_eq!(verdict(&dual("fd00:0:0:5::/64", Some("fd64::5"))), None);
        // A lease without an IPv6 half carries IPv4 only.
        assert_eq!(verdict(&good("10.1.5.0/24", 5, 1)), None);
        for (lease, detail) in [
            (
                dual("fd01:0:0:5::/64", Some("fd64::5")),
                "fd01:0:0:5::/64 lies outside the IPv6 network fd00::/48",
            ),
            (
                dual("fd00:0:0:4::/62", Some("fd64::5")),
                "fd00:0:0:4::/62 is wider than a /64 lease",
            ),
            (
                dual("fd00:0:0:1::/64", Some("fd64::5")),
                "fd00:0:0:1::/64 overlaps our IPv6 subnet fd00:0:0:1::/64",
            ),
            (
                dual("fd00:0:0:5::/64", None),
                "it names the IPv6 subnet fd00:0:0:5::/64 but no PublicIPv6",
            ),
            (
                dual("fd00:0:0:5::/64", Some("fd64::1")),
                "its PublicIPv6 fd64::1 is ours",
            ),
            (
                dual("fd00:0:0:5::/64", Some("ff02::1")),
                "its PublicIPv6 ff02::1 is not a unicast host address outside the network",
            ),
            (
                dual("fd00:0:0:5::/64", Some("fd00:0:0:9::1")),
                "its PublicIPv6 fd00:0:0:9::1 is not a unicast host address outside the network",
            ),
            (
                with_v6_vtep_mac(dual("fd00:0:0:5::/64", Some("fd64::5")), None),
                "it names the IPv6 subnet fd00:0:0:5::/64 but no BackendV6Data.VtepMAC",
            ),
            (
                with_v6_vtep_mac(
                    dual("fd00:0:0:5::/64", Some("fd64::5")),
                    Some(Mac([3, 0, 0, 0, 6, 5])),
                ),
                "its VtepMAC 03:00:00:00:06:05 is not a unicast address",
            ),
        ] {
            assert_eq!(verdict(&lease).as_deref(), Some(detail));
        }
    }

    #[test]
    fn the_older_of_two_leases_sharing_an_ipv6_subnet_wins() {
        let mut rules = rules();
        rules.ipv6 = Some(FamilyRules {
            network: "fd00::/48".parse().unwrap(),
            subnet_len: 64,
            own_subnet: None,
            own_ip: None,
        });
        let mut table = PeerTable::new(rules);
        table.put(&dual(good("10.1.6.0/24", 6, 2), "fd00:0:0:5::/64", 6));
        table.put(&dual(good("10.1.5.0/24", 5, 1), "fd00:0:0:5::/64", 5));
        let peers: Vec<String> = table.desired().keys().map(|s| s.to_string()).collect();
        assert_eq!(peers, ["10.1.5.0/24&fd00:0:0:5::/64"]);
        assert_eq!(
            table.rejected()[&"10.1.6.0/24&fd00:0:0:5::/64".parse().unwrap()].reason,
            "overlaps_older_lease"
        );
        // The older one goes: the other is a peer again.
        table.remove(&"10.1.5.0/24&fd00:0:0:5::/64".parse().unwrap());
        let peers: Vec<String> = table.desired().keys().map(|s| s.to_string()).collect();
        assert_eq!(peers, ["10.1.6.0/24&fd00:0:0:5::/64"]);
    }

    /// An IPv6-only network's rules, ours being fd00:0:0:1::/64 at fd64::1.
    fn ipv6_only_rules() -> Rules {
        Rules {
            ipv4: None,
            ipv6: Some(FamilyRules {
                network: "fd00::/48".parse().unwrap(),
                subnet_len: 64,
                own_subnet: Some("fd00:0:0:1::/64".parse().unwrap()),
                own_ip: Some("fd64::1".parse().unwrap()),
            }),
            ..rules()
        }
    }

    /// An IPv6-only vxlan lease, as flannel writes it (PublicIP 0.0.0.0, no BackendData).
    fn ipv6_only(subnet6: &str, host: u8, created: i64) -> StoredLease {
        let mut lease = with_v6_vtep_mac(
            vxlan("10.1.0.0/24", [0; 4], [2, 0, 0, 0, 6, host], created),
            Some(Mac([2, 0, 0, 0, 6, host])),
        );
        lease.subnets = subnet6.parse().unwrap();
        lease.attrs.public_ipv6 = Some(format!("fd64::{host}").parse().unwrap());
        if let BackendAttrs::Vxlan { vtep_mac, .. } = &mut lease.attrs.backend {
            *vtep_mac = None;
        }
        lease
    }

    #[test]
    fn an_ipv6_only_network_judges_the_ipv6_half_and_collides_on_it() {
        let mut table = PeerTable::new(ipv6_only_rules());
        // Many leases say PublicIP 0.0.0.0: that is no collision.
        table.put(&ipv6_only("fd00:0:0:5::/64", 5, 1));
        table.put(&ipv6_only("fd00:0:0:6::/64", 6, 2));
        assert_eq!(table.len(), 2, "{:?}", table.rejected());
        // The same IPv6 subnet, or the same public IPv6, as an older lease.
        table.put(&ipv6_only("fd00:0:0:4::/63", 7, 3));
        let mut same_ip = ipv6_only("fd00:0:0:8::/64", 8, 4);
        same_ip.attrs.public_ipv6 = Some("fd64::5".parse().unwrap());
        table.put(&same_ip);
        fn detail(table: &PeerTable, key: &str) -> String {
            table.rejected()[&key.parse().unwrap()].detail.clone()
        }
        assert_eq!(
            detail(&table, "fd00:0:0:4::/63"),
            "fd00:0:0:4::/63 is wider than a /64 lease"
        );
        assert_eq!(
            detail(&table, "fd00:0:0:8::/64"),
            "its PublicIPv6 fd64::5 is the older lease fd00:0:0:5::/64's"
        );
        // A lease with an IPv4 subnet only is not of this network.
        table.put(&good("10.1.9.0/24", 9, 5));
        assert_eq!(
            detail(&table, "10.1.9.0/24"),
            "it names no subnet of the IPv6 network fd00::/48"
        );
        // One without its IPv6 device's MAC can't be reached.
        let mut no_mac = ipv6_only("fd00:0:0:a::/64", 10, 6);
        no_mac.attrs.backend = BackendAttrs::Vxlan {
            vni: 1,
            vtep_mac: None,
            v6_vtep_mac: None,
        };
        table.put(&no_mac);
        assert_eq!(
            detail(&table, "fd00:0:0:a::/64"),
            "it names the IPv6 subnet fd00:0:0:a::/64 but no BackendV6Data.VtepMAC"
        );
        assert_eq!(table.len(), 2);
        // And an IPv4 network takes no IPv6-only lease.
        let mut table = PeerTable::new(rules());
        table.put(&ipv6_only("fd00:0:0:5::/64", 5, 1));
        assert_eq!(
            table.rejected().values().next().unwrap().detail,
            "it names no subnet of the network 10.1.0.0/16"
        );
    }

    fn key(text: &str) -> Subnets {
        text.parse().unwrap()
    }

    #[test]
    fn a_lease_is_seen_as_the_halves_the_network_has() {
        // IPv6-only network: a dual-stack lease is an IPv6 peer, without its IPv4 half's
        // address and MAC.
        let mut table = PeerTable::new(ipv6_only_rules());
        let changed = table.put(&dual(good("10.1.11.0/24", 11, 1), "fd00:0:0:b::/64", 11));
        assert_eq!(changed, [key("fd00:0:0:b::/64")], "{:?}", table.rejected());
        let attrs = &table.desired()[&key("fd00:0:0:b::/64")];
        assert_eq!(attrs.public_ip, Ipv4Addr::UNSPECIFIED);
        assert_eq!(attrs.public_ipv6, Some("fd64::11".parse().unwrap()));
        assert_eq!(
            attrs.backend,
            BackendAttrs::Vxlan {
                vni: 1,
                vtep_mac: None,
                v6_vtep_mac: Some(Mac([2, 0, 0, 0, 6, 11])),
            }
        );
        // Its IPv4 half is not judged: here its MAC is a broadcast one.
        let mut odd = dual(good("10.1.12.0/24", 12, 2), "fd00:0:0:c::/64", 12);
        if let BackendAttrs::Vxlan { vtep_mac, .. } = &mut odd.attrs.backend {
            *vtep_mac = Some(Mac([0xff; 6]));
        }
        table.put(&odd);
        assert!(table.rejected().is_empty(), "{:?}", table.rejected());
        assert_eq!(table.len(), 2);

        // IPv4 network: the IPv6 halves of two dual-stack leases may be the same.
        let mut table = PeerTable::new(rules());
        table.put(&dual(good("10.1.2.0/24", 2, 1), "fd00:0:0:5::/64", 5));
        table.put(&dual(good("10.1.3.0/24", 3, 2), "fd00:0:0:5::/64", 5));
        let peers: Vec<_> = table.desired().iter().collect();
        assert_eq!(peers.len(), 2, "{:?}", table.rejected());
        assert_eq!(*peers[0].0, key("10.1.2.0/24"));
        assert_eq!(peers[0].1.public_ipv6, None);

        // Dual-stack network: an IPv6-only lease is an IPv6 peer; a lease with neither half
        // is rejected.
        let mut rules = rules();
        rules.ipv6 = ipv6_only_rules().ipv6;
        let mut table = PeerTable::new(rules);
        table.put(&ipv6_only("fd00:0:0:5::/64", 5, 1));
        assert!(table.desired().contains_key(&key("fd00:0:0:5::/64")));
        let mut neither = good("10.1.5.0/24", 5, 2);
        neither.subnets.ipv4 = None;
        table.put(&neither);
        assert_eq!(
            table.rejected()[&neither.subnets].detail,
            "it names no subnet of the network 10.1.0.0/16 or of the IPv6 network fd00::/48"
        );
    }

    #[test]
    fn leases_seen_alike_hand_the_peer_over_when_the_older_goes() {
        // An IPv6-only lease and a newer dual-stack one of the same IPv6 subnet: one peer.
        let mut table = PeerTable::new(ipv6_only_rules());
        let newer = dual(good("10.1.6.0/24", 6, 2), "fd00:0:0:5::/64", 6);
        for lease in [&newer, &ipv6_only("fd00:0:0:5::/64", 5, 1)] {
            table.put(lease);
        }
        assert_eq!(
            reason(&table, &newer.subnets.to_string()),
            Some("overlaps_older_lease")
        );
        let view = key("fd00:0:0:5::/64");
        assert_eq!(
            table.desired()[&view].public_ipv6,
            Some("fd64::5".parse().unwrap())
        );
        // The older one goes: the same peer, now the newer lease's.
        assert_eq!(table.remove(&view), [view]);
        assert_eq!(table.len(), 1);
        assert_eq!(
            table.desired()[&view].public_ipv6,
            Some("fd64::6".parse().unwrap())
        );
        assert!(table.rejected().is_empty());
        // And it leaves when it goes.
        assert_eq!(table.remove(&newer.subnets), [view]);
        assert!(table.is_empty());
    }
}
