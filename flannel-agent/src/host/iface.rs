//! Choosing the external interface, as flannel does: `--iface` (names or addresses, in
//! order), then `--iface-regex` (addresses first, then names), then `--iface-can-reach`, then
//! the interface of the default route. Addresses of either family count, so an IPv6-only host
//! finds its interface too.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket},
};

use anyhow::{anyhow, bail, Context, Result};
use nix::ifaddrs::getifaddrs;
use regex::Regex;

use crate::control::{config::Backend, lease::Mac};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtIface {
    pub name: String,
    /// The interface's own first IPv4 address; 0.0.0.0 on a host without IPv4 (an
    /// IPv6-only network's, as flannel's leases write it).
    pub addr: Ipv4Addr,
    /// What we advertise: `--public-ip`, or `addr`.
    pub public_ip: Ipv4Addr,
    /// What we advertise for IPv6: `--public-ipv6`, or the interface's first global IPv6
    /// address.
    pub public_ipv6: Option<Ipv6Addr>,
    pub mtu: u32,
}

#[derive(Clone, Debug, Default)]
pub struct IfaceOptions {
    pub iface: Vec<String>,
    pub iface_regex: Vec<String>,
    pub iface_can_reach: Option<IpAddr>,
    pub public_ip: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
}

/// The index of the device `name`; an error naming it when there is none.
pub fn index(name: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(name).with_context(|| format!("finding the device {name}"))
}

/// The MAC address of the device `name`.
pub fn mac(name: &str) -> Result<Mac> {
    let path = format!("/sys/class/net/{name}/address");
    fs::read_to_string(&path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .parse()
}

/// (interface name, address) pairs of both families, in the kernel's order (IPv4 first).
pub fn addresses() -> Result<Vec<(String, IpAddr)>> {
    let all: Vec<_> = getifaddrs()
        .context("listing interface addresses")?
        .filter_map(|ifa| {
            let address = ifa.address?;
            let addr = match (address.as_sockaddr_in(), address.as_sockaddr_in6()) {
                (Some(v4), _) => IpAddr::V4(v4.ip()),
                (_, Some(v6)) => IpAddr::V6(v6.ip()),
                _ => return None,
            };
            Some((ifa.interface_name, addr))
        })
        .collect();
    let (v4, v6): (Vec<_>, Vec<_>) = all.into_iter().partition(|(_, a)| a.is_ipv4());
    Ok(v4.into_iter().chain(v6).collect())
}

/// An address other hosts can reach: not link-local, loopback or multicast.
fn reachable(addr: &IpAddr) -> bool {
    let link_local = match addr {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    !addr.is_loopback() && !addr.is_multicast() && !link_local
}

fn owner_of(all: &[(String, IpAddr)], addr: IpAddr) -> Option<String> {
    all.iter().find(|(_, a)| *a == addr).map(|(n, _)| n.clone())
}

/// flannel's choice of interface: `--iface` (names or addresses of either family, in
/// order), then `--iface-regex` (addresses first, then names), then `--iface-can-reach`,
/// then the interface of the default route (IPv4's, else IPv6's).
pub fn choose(options: &IfaceOptions) -> Result<ExtIface> {
    let all = addresses()?;
    let name = if !options.iface.is_empty() {
        options
            .iface
            .iter()
            .find_map(|wanted| match wanted.parse::<IpAddr>() {
                Ok(addr) => owner_of(&all, addr),
                Err(_) => all.iter().any(|(n, _)| n == wanted).then(|| wanted.clone()),
            })
            .ok_or_else(|| {
                anyhow!(
                    "--iface: none of {:?} is an interface with an address, or an address of one",
                    options.iface
                )
            })?
    } else if !options.iface_regex.is_empty() {
        let regexes = options
            .iface_regex
            .iter()
            .map(|r| Regex::new(r).with_context(|| format!("--iface-regex: {r:?} is not a regex")))
            .collect::<Result<Vec<_>>>()?;
        let candidates: Vec<_> = all.iter().filter(|(_, a)| reachable(a)).collect();
        regexes
            .iter()
            .find_map(|re| {
                (candidates.iter())
                    .find(|(_, a)| re.is_match(&a.to_string()))
                    .or_else(|| candidates.iter().find(|(n, _)| re.is_match(n)))
                    .map(|(n, _)| n.clone())
            })
            .ok_or_else(|| {
                anyhow!(
                    "--iface-regex: no interface or address matches {:?}",
                    options.iface_regex
                )
            })?
    } else if let Some(target) = options.iface_can_reach {
        let source = source_for(target)?;
        owner_of(&all, source).ok_or_else(|| {
            anyhow!("--iface-can-reach: the route to {target} uses {source}, on no interface")
        })?
    } else {
        default_route_iface()?
    };
    let of_iface = || all.iter().filter(|(n, _)| *n == name).map(|(_, a)| *a);
    let addr = of_iface().find_map(|a| match a {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    });
    let global_ipv6 = of_iface().find_map(|a| match a {
        IpAddr::V6(v6) if reachable(&a) => Some(v6),
        _ => None,
    });
    if addr.is_none() && global_ipv6.is_none() {
        bail!("interface {name} has neither an IPv4 nor a global IPv6 address");
    }
    let addr = addr.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let mtu_path = format!("/sys/class/net/{name}/mtu");
    let mtu = fs::read_to_string(&mtu_path)
        .with_context(|| format!("reading {mtu_path}"))?
        .trim()
        .parse()
        .with_context(|| format!("{mtu_path} holds no number"))?;
    Ok(ExtIface {
        public_ip: options.public_ip.unwrap_or(addr),
        public_ipv6: options.public_ipv6.or(global_ipv6),
        name,
        addr,
        mtu,
    })
}

impl ExtIface {
    /// The overlay MTU written to subnet.env: what is left after the encapsulation.
    pub fn overlay_mtu(&self, backend: &Backend) -> u32 {
        match backend {
            Backend::Vxlan { mtu: Some(mtu), .. } => *mtu,
            Backend::Vxlan { .. } => self.mtu - 50,
            Backend::Udp { .. } => self.mtu - 28,
            Backend::HostGw => self.mtu,
        }
    }

    /// The IPv6 tunnel's MTU, for an overlay MTU `mtu`: what fits once vxlan over IPv6
    /// encapsulates it (the kernel caps an IPv6 vxlan device there too).
    pub fn ipv6_tunnel_mtu(&self, mtu: u32) -> u32 {
        mtu.min(self.mtu.saturating_sub(flannel_common::VXLAN6_OVERHEAD))
    }

    /// host-gw routes via the public addresses (of the families in use, `(ipv4, ipv6)`) on
    /// this interface: refuse anything else.
    pub fn check_public_ips_are_local(&self, (ipv4, ipv6): (bool, bool)) -> Result<()> {
        let all = addresses()?;
        let wanted = [
            ipv4.then_some(IpAddr::V4(self.public_ip)),
            self.public_ipv6.filter(|_| ipv6).map(IpAddr::V6),
        ];
        for ip in wanted.into_iter().flatten() {
            if !all.iter().any(|(n, a)| *n == self.name && *a == ip) {
                bail!(
                    "host-gw: the public IP {ip} is not an address of {}; host-gw routes through it",
                    self.name
                );
            }
        }
        Ok(())
    }
}

/// The local address the kernel would use to reach `target` (no packet is sent).
fn source_for(target: IpAddr) -> Result<IpAddr> {
    let any: IpAddr = match target {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind((any, 0))?;
    socket
        .connect((target, 9))
        .with_context(|| format!("--iface-can-reach: no route to {target}"))?;
    Ok(socket.local_addr()?.ip())
}

/// The interface of the default route with the lowest metric: IPv4's, else IPv6's (an
/// IPv6-only host).
fn default_route_iface() -> Result<String> {
    let table = fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
    let v4 = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (iface, dest, mask, metric) = (
                fields.first()?,
                fields.get(1)?,
                fields.get(7)?,
                fields.get(6)?,
            );
            (*dest == "00000000" && *mask == "00000000")
                .then(|| (metric.parse::<u32>().unwrap_or(u32::MAX), iface.to_string()))
        })
        .min()
        .map(|(_, iface)| iface);
    let v6 = || {
        // dest, dest prefix, src, src prefix, next hop, metric, refs, use, flags, iface
        let table = fs::read_to_string("/proc/net/ipv6_route").ok()?;
        table
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (dest, len, metric, iface) = (
                    fields.first()?,
                    fields.get(1)?,
                    fields.get(5)?,
                    fields.get(9)?,
                );
                let default = dest.chars().all(|c| c == '0') && *len == "00" && *iface != "lo";
                default.then(|| {
                    (
                        u32::from_str_radix(metric, 16).unwrap_or(u32::MAX),
                        iface.to_string(),
                    )
                })
            })
            .min()
            .map(|(_, iface)| iface)
    };
    v4.or_else(v6)
        .ok_or_else(|| anyhow!("no default route: name the interface with --iface"))
}

/// Where `DirectRouting` routes without a tunnel: the prefixes of the interface's own
/// addresses, whose hosts it reaches without a router. (Empty: nothing is direct.)
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OnLink(Vec<ipnet::IpNet>);

impl OnLink {
    /// The prefixes of `iface`'s addresses, of both families.
    pub fn of(iface: &str) -> Result<Self> {
        let prefixes = getifaddrs()
            .context("listing interface addresses")?
            .filter(|ifa| ifa.interface_name == iface)
            .filter_map(|ifa| {
                let (address, mask) = (ifa.address?, ifa.netmask?);
                let net = match (address.as_sockaddr_in(), mask.as_sockaddr_in()) {
                    (Some(a), Some(m)) => ipnet::Ipv4Net::with_netmask(a.ip(), m.ip()).ok()?.into(),
                    _ => {
                        let (a, m) = (address.as_sockaddr_in6()?, mask.as_sockaddr_in6()?);
                        ipnet::Ipv6Net::with_netmask(a.ip(), m.ip()).ok()?.into()
                    }
                };
                Some(ipnet::IpNet::trunc(&net))
            })
            .collect();
        Ok(Self(prefixes))
    }

    pub fn contains(&self, ip: impl Into<IpAddr>) -> bool {
        let ip = ip.into();
        self.0.iter().any(|net| net.contains(&ip))
    }
}
