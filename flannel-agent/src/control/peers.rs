//! The peer table: the other hosts' leases, fed by the etcd watch, each checked against the
//! same rules before any datapath sees it (and by `status`, which lists what was rejected).
//!
//! A lease is rejected when it is unsafe on its own (a subnet outside the network, wider than
//! a lease, over ours; a public IP that is ours, in the network, or not a unicast host
//! address; a broadcast, multicast or zero VTEP MAC; a VNI over 24 bits), or when it
//! collides with an older lease that is not (an overlapping subnet, or the same public IP).
//! "Older" is etcd's create revision, then the subnet: the same on every host, so all hosts
//! keep the same one of two colliding leases.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tracing::warn;

use crate::control::{
    lease::{overlap, subnet_key, BackendAttrs, LeaseAttrs},
    registry::StoredLease,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub subnet: Ipv4Net,
    pub attrs: LeaseAttrs,
}

/// What a lease is checked against.
#[derive(Clone, Debug)]
pub struct Rules {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    /// Ours; None for `status` on a host without a subnet file.
    pub own_subnet: Option<Ipv4Net>,
    pub own_ip: Option<Ipv4Addr>,
    pub backend_type: String,
    /// The etcd prefix, to name the keys of rejected leases.
    pub prefix: String,
    /// The IPv6 half, in a dual-stack network.
    pub ipv6: Option<Ipv6Rules>,
}

/// What a lease's IPv6 half is checked against: the same rules as the IPv4 half.
#[derive(Clone, Debug)]
pub struct Ipv6Rules {
    pub network: Ipv6Net,
    pub subnet_len: u8,
    pub own_subnet: Option<Ipv6Net>,
    pub own_ip: Option<Ipv6Addr>,
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
    leases: BTreeMap<Ipv4Net, StoredLease>,
    by_ip: BTreeMap<Ipv4Addr, BTreeSet<Ipv4Net>>,
    /// The IPv6 subnets of dual-stack leases, to their IPv4 subnets.
    by_ipv6: BTreeMap<Ipv6Net, BTreeSet<Ipv4Net>>,
    /// The accepted leases of our backend type: what the datapath must hold.
    peers: BTreeMap<Ipv4Net, LeaseAttrs>,
    rejected: BTreeMap<Ipv4Net, Rejection>,
    /// How many times a lease was rejected, by reason.
    rejections: BTreeMap<&'static str, u64>,
}

impl PeerTable {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            leases: BTreeMap::new(),
            by_ip: BTreeMap::new(),
            by_ipv6: BTreeMap::new(),
            peers: BTreeMap::new(),
            rejected: BTreeMap::new(),
            rejections: BTreeMap::new(),
        }
    }

    /// Every peer's subnet with its lease: what the datapath must hold.
    pub fn desired(&self) -> &BTreeMap<Ipv4Net, LeaseAttrs> {
        &self.peers
    }

    /// The rejected leases, with why.
    pub fn rejected(&self) -> &BTreeMap<Ipv4Net, Rejection> {
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

    /// Our subnet changed (re-acquired elsewhere): every lease is judged again. Returns the
    /// subnets whose peer changed.
    pub fn set_own(&mut self, own: Ipv4Net, own_ipv6: Option<Ipv6Net>) -> Vec<Ipv4Net> {
        self.rules.own_subnet = Some(own);
        if let Some(v6) = &mut self.rules.ipv6 {
            v6.own_subnet = own_ipv6;
        }
        self.leases.remove(&own);
        self.judge_all()
    }

    /// Takes a lease in; returns the subnets whose peer changed (it, and leases it collides
    /// with).
    pub fn put(&mut self, lease: &StoredLease) -> Vec<Ipv4Net> {
        if Some(lease.subnet) == self.rules.own_subnet {
            return Vec::new();
        }
        let mut affected = self.remove_lease(&lease.subnet);
        self.by_ip
            .entry(lease.attrs.public_ip)
            .or_default()
            .insert(lease.subnet);
        if let Some(ipv6) = lease.attrs.ipv6_subnet {
            self.by_ipv6.entry(ipv6).or_default().insert(lease.subnet);
        }
        self.leases.insert(lease.subnet, lease.clone());
        affected.extend(self.colliding(lease));
        affected.insert(lease.subnet);
        self.judge(affected)
    }

    /// A lease is gone; returns the subnets whose peer changed.
    pub fn remove(&mut self, subnet: &Ipv4Net) -> Vec<Ipv4Net> {
        let affected = self.remove_lease(subnet);
        self.judge(affected)
    }

    /// Replaces the table with a full listing (start-up, or after a watch compaction);
    /// returns the subnets whose peer changed.
    pub fn resync(&mut self, leases: &[StoredLease]) -> Vec<Ipv4Net> {
        self.leases = leases
            .iter()
            .filter(|l| Some(l.subnet) != self.rules.own_subnet)
            .map(|l| (l.subnet, l.clone()))
            .collect();
        self.by_ip.clear();
        self.by_ipv6.clear();
        for lease in self.leases.values() {
            let subnets = self.by_ip.entry(lease.attrs.public_ip).or_default();
            subnets.insert(lease.subnet);
            if let Some(ipv6) = lease.attrs.ipv6_subnet {
                self.by_ipv6.entry(ipv6).or_default().insert(lease.subnet);
            }
        }
        self.judge_all()
    }

    /// Takes `subnet`'s lease out of the indexes; returns it and the leases it collided with.
    fn remove_lease(&mut self, subnet: &Ipv4Net) -> BTreeSet<Ipv4Net> {
        let Some(old) = self.leases.remove(subnet) else {
            return BTreeSet::from([*subnet]);
        };
        if let Some(ipv6) = old.attrs.ipv6_subnet {
            let subnets = self.by_ipv6.entry(ipv6).or_default();
            subnets.remove(subnet);
            if subnets.is_empty() {
                self.by_ipv6.remove(&ipv6);
            }
        }
        if let Some(subnets) = self.by_ip.get_mut(&old.attrs.public_ip) {
            subnets.remove(subnet);
            if subnets.is_empty() {
                self.by_ip.remove(&old.attrs.public_ip);
            }
        }
        let mut affected = self.colliding(&old);
        affected.insert(*subnet);
        affected
    }

    fn judge_all(&mut self) -> Vec<Ipv4Net> {
        let every: BTreeSet<Ipv4Net> = (self.leases.keys())
            .chain(self.peers.keys())
            .chain(self.rejected.keys())
            .copied()
            .collect();
        self.judge(every)
    }

    /// Decides again for each of `subnets`: a peer, rejected, or neither (another backend
    /// type, or gone). Returns those whose peer changed.
    fn judge(&mut self, subnets: BTreeSet<Ipv4Net>) -> Vec<Ipv4Net> {
        let mut changed = Vec::new();
        for subnet in subnets {
            let verdict = self.leases.get(&subnet).map(|lease| {
                let rejection = self.fault(lease).or_else(|| self.collision(lease));
                (lease.attrs.clone(), rejection)
            });
            let peer = match verdict {
                Some((attrs, None)) => {
                    self.rejected.remove(&subnet);
                    (attrs.backend.type_name() == self.rules.backend_type).then_some(attrs)
                }
                Some((_, Some(rejection))) => {
                    self.reject(subnet, rejection);
                    None
                }
                None => {
                    self.rejected.remove(&subnet);
                    None
                }
            };
            if self.peers.get(&subnet) != peer.as_ref() {
                match peer {
                    Some(attrs) => self.peers.insert(subnet, attrs),
                    None => self.peers.remove(&subnet),
                };
                changed.push(subnet);
            }
        }
        changed
    }

    /// The etcd key of `subnet`'s lease.
    pub fn key(&self, subnet: &Ipv4Net) -> String {
        let ipv6 = self.leases.get(subnet).and_then(|l| l.attrs.ipv6_subnet);
        subnet_key(&self.rules.prefix, subnet, ipv6.as_ref())
    }

    fn reject(&mut self, subnet: Ipv4Net, rejection: Rejection) {
        if self.rejected.get(&subnet) == Some(&rejection) {
            return;
        }
        let key = self.key(&subnet);
        warn!(%key, reason = rejection.reason, "skipping a lease: {}", rejection.detail);
        *self.rejections.entry(rejection.reason).or_default() += 1;
        self.rejected.insert(subnet, rejection);
    }

    /// What is wrong with a lease on its own, if anything.
    fn fault(&self, lease: &StoredLease) -> Option<Rejection> {
        let rules = &self.rules;
        let ipv4 = FamilyRules {
            network: rules.network.into(),
            subnet_len: rules.subnet_len,
            own_subnet: rules.own_subnet.map(Into::into),
            own_ip: rules.own_ip.map(Into::into),
            names: ("", "PublicIP"),
        };
        let ip = Some(lease.attrs.public_ip.into());
        if let Some(rejection) = ipv4.fault(lease.subnet.into(), ip) {
            return Some(rejection);
        }
        if let Some(rejection) = self.ipv6_fault(lease) {
            return Some(rejection);
        }
        if let BackendAttrs::Vxlan {
            vni,
            vtep_mac,
            v6_vtep_mac,
        } = &lease.attrs.backend
        {
            let macs = std::iter::once(vtep_mac).chain(v6_vtep_mac);
            if let Some(mac) = macs.into_iter().find(|m| m.0 == [0; 6] || m.0[0] & 1 == 1) {
                return reject(
                    "bad_vtep_mac",
                    format!("its VtepMAC {mac} is not a unicast address"),
                );
            }
            if *vni >= 1 << 24 {
                return reject("bad_vni", format!("its VNI {vni} does not fit 24 bits"));
            }
        }
        None
    }

    /// What is wrong with a lease's IPv6 half, if it has one (a lease without carries IPv4
    /// only).
    fn ipv6_fault(&self, lease: &StoredLease) -> Option<Rejection> {
        let (rules, subnet) = (self.rules.ipv6.as_ref()?, lease.attrs.ipv6_subnet?);
        let ipv6 = FamilyRules {
            network: rules.network.into(),
            subnet_len: rules.subnet_len,
            own_subnet: rules.own_subnet.map(Into::into),
            own_ip: rules.own_ip.map(Into::into),
            names: ("IPv6 ", "PublicIPv6"),
        };
        let ip = lease.attrs.public_ipv6.map(Into::into);
        if let Some(rejection) = ipv6.fault(subnet.into(), ip) {
            return Some(rejection);
        }
        if let BackendAttrs::Vxlan {
            v6_vtep_mac: None, ..
        } = lease.attrs.backend
        {
            return reject(
                "bad_vtep_mac",
                format!("it names the IPv6 subnet {subnet} but no BackendV6Data.VtepMAC"),
            );
        }
        None
    }

    /// The older, sound lease this one collides with, if any.
    fn collision(&self, lease: &StoredLease) -> Option<Rejection> {
        let age = |l: &StoredLease| (l.created, l.subnet);
        self.colliding(lease)
            .into_iter()
            .filter_map(|subnet| self.leases.get(&subnet))
            .filter(|other| age(other) < age(lease) && self.fault(other).is_none())
            .min_by_key(|other| age(other))
            .map(|older| {
                if older.attrs.public_ip == lease.attrs.public_ip {
                    Rejection {
                        reason: "public_ip_taken",
                        detail: format!(
                            "its PublicIP {} is the older lease {}'s",
                            older.attrs.public_ip, older.subnet
                        ),
                    }
                } else {
                    Rejection {
                        reason: "overlaps_older_lease",
                        detail: format!("it overlaps the older lease {}", older.subnet),
                    }
                }
            })
    }

    /// The other leases whose subnet overlaps `lease`'s or that share its public IP.
    fn colliding(&self, lease: &StoredLease) -> BTreeSet<Ipv4Net> {
        let subnet = lease.subnet;
        let same_ip = self
            .by_ip
            .get(&lease.attrs.public_ip)
            .into_iter()
            .flatten()
            .copied();
        let ipv6 = (lease.attrs.ipv6_subnet.into_iter())
            .flat_map(|ipv6| overlapping(&self.by_ipv6, ipv6).flat_map(|(_, subnets)| subnets))
            .copied();
        (overlapping(&self.leases, subnet).map(|(s, _)| *s))
            .chain(same_ip)
            .chain(ipv6)
            .filter(|s| *s != subnet)
            .collect()
    }
}

/// An aligned prefix of either family, as the indexes order them.
trait Prefix: Ord + Copy {
    /// The first and last prefixes inside this one, in `Ord` order.
    fn span(self) -> (Self, Self);
    fn supernet(self) -> Option<Self>;
}

impl Prefix for Ipv4Net {
    fn span(self) -> (Self, Self) {
        let first = Ipv4Net::new(self.network(), 0).expect("prefix 0");
        (
            first,
            Ipv4Net::new(self.broadcast(), 32).expect("prefix 32"),
        )
    }
    fn supernet(self) -> Option<Self> {
        Ipv4Net::supernet(&self)
    }
}

impl Prefix for Ipv6Net {
    fn span(self) -> (Self, Self) {
        let first = Ipv6Net::new(self.network(), 0).expect("prefix 0");
        (
            first,
            Ipv6Net::new(self.broadcast(), 128).expect("prefix 128"),
        )
    }
    fn supernet(self) -> Option<Self> {
        Ipv6Net::supernet(&self)
    }
}

/// What one half of a lease (IPv4, or a dual-stack lease's IPv6) is checked against; `names`
/// name the network's family ("" or "IPv6 ") and the value's address field in messages.
struct FamilyRules {
    network: IpNet,
    subnet_len: u8,
    own_subnet: Option<IpNet>,
    own_ip: Option<IpAddr>,
    names: (&'static str, &'static str),
}

impl FamilyRules {
    /// What is wrong with a half of subnet `subnet` and public address `ip`, if anything.
    fn fault(&self, subnet: IpNet, ip: Option<IpAddr>) -> Option<Rejection> {
        let (family, field) = self.names;
        let network = self.network;
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
        if let Some(own) = self.own_subnet.filter(|own| overlap(subnet, *own)) {
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
        if Some(ip) == self.own_ip {
            return reject("our_public_ip", format!("its {field} {ip} is ours"));
        }
        let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
        if ip.is_unspecified()
            || ip.is_loopback()
            || ip.is_multicast()
            || broadcast
            || network.contains(&ip)
        {
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
/// inside the other, so these are a range and the few supernets of `net`.
fn overlapping<N: Prefix, V>(index: &BTreeMap<N, V>, net: N) -> impl Iterator<Item = (&N, &V)> {
    let (first, last) = net.span();
    let containing = std::iter::successors(net.supernet(), |n| n.supernet())
        .filter_map(|n| index.get_key_value(&n));
    index.range(first..=last).chain(containing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::lease::Mac;

    fn rules() -> Rules {
        Rules {
            network: "10.1.0.0/16".parse().unwrap(),
            subnet_len: 24,
            own_subnet: Some("10.1.1.0/24".parse().unwrap()),
            own_ip: Some(Ipv4Addr::new(192, 168, 64, 1)),
            backend_type: "vxlan".into(),
            prefix: "/coreos.com/network".into(),
            ipv6: None,
        }
    }

    fn vxlan(subnet: &str, ip: [u8; 4], mac: [u8; 6], created: i64) -> StoredLease {
        StoredLease {
            subnet: subnet.parse().unwrap(),
            attrs: LeaseAttrs {
                ipv6_subnet: None,
                public_ip: Ipv4Addr::from(ip),
                public_ipv6: None,
                backend: BackendAttrs::Vxlan {
                    vni: 1,
                    vtep_mac: Mac(mac),
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
        assert_eq!(changed, ["10.1.2.0/24".parse::<Ipv4Net>().unwrap()]);
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
            assert_eq!(reason(&table, &lease.subnet.to_string()), Some(*rule));
        }
        assert!(table.is_empty());
        assert_eq!(table.rejections()["bad_public_ip"], 5);
    }

    #[test]
    fn of_two_colliding_leases_the_older_wins_and_the_newer_follows_when_it_goes() {
        // Older than the /24 inside it: it wins, whatever the order they arrive in.
        let wide = good("10.1.2.0/23", 3, 4);
        let mut rules = rules();
        rules.subnet_len = 23;
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
        rules.subnet_len = 23;
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
        let changed = table.set_own("10.1.3.0/24".parse().unwrap(), None);
        assert_eq!(changed.len(), 1);
        assert!(table.is_empty());
    }

    #[test]
    fn a_dual_stack_leases_ipv6_half_obeys_the_same_rules() {
        let mut rules = rules();
        rules.ipv6 = Some(Ipv6Rules {
            network: "fd00::/48".parse().unwrap(),
            subnet_len: 64,
            own_subnet: Some("fd00:0:0:1::/64".parse().unwrap()),
            own_ip: Some("fd64::1".parse().unwrap()),
        });
        let dual = |subnet6: &str, ip6: Option<&str>| {
            let mut lease = good("10.1.5.0/24", 5, 1);
            lease.attrs.ipv6_subnet = Some(subnet6.parse().unwrap());
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
        rules.ipv6 = Some(Ipv6Rules {
            network: "fd00::/48".parse().unwrap(),
            subnet_len: 64,
            own_subnet: None,
            own_ip: None,
        });
        let dual = |subnet: &str, host: u8, subnet6: &str, created: i64| {
            let mut lease = good(subnet, host, created);
            lease.attrs.ipv6_subnet = Some(subnet6.parse().unwrap());
            lease.attrs.public_ipv6 = Some(format!("fd64::{host}").parse().unwrap());
            with_v6_vtep_mac(lease, Some(Mac([2, 0, 0, 0, 6, host])))
        };
        let mut table = PeerTable::new(rules);
        table.put(&dual("10.1.6.0/24", 6, "fd00:0:0:5::/64", 2));
        table.put(&dual("10.1.5.0/24", 5, "fd00:0:0:5::/64", 1));
        let peers: Vec<String> = table.desired().keys().map(|s| s.to_string()).collect();
        assert_eq!(peers, ["10.1.5.0/24"]);
        assert_eq!(
            table.rejected()[&"10.1.6.0/24".parse().unwrap()].reason,
            "overlaps_older_lease"
        );
        // The older one goes: the other is a peer again.
        table.remove(&"10.1.5.0/24".parse().unwrap());
        let peers: Vec<String> = table.desired().keys().map(|s| s.to_string()).collect();
        assert_eq!(peers, ["10.1.6.0/24"]);
    }
}
