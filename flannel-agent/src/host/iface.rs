//! Choosing the external interface, as flannel does: `--iface` (names or addresses, in
//! order), then `--iface-regex` (addresses first, then names), then `--iface-can-reach`, then
//! the interface of the default route.

use std::{
    fs,
    net::{Ipv4Addr, Ipv6Addr, UdpSocket},
};

use anyhow::{anyhow, bail, Context, Result};
use nix::ifaddrs::getifaddrs;
use regex::Regex;

use crate::control::config::Backend;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtIface {
    pub name: String,
    /// The interface's own first IPv4 address.
    pub addr: Ipv4Addr,
    /// What we advertise: `--public-ip`, or `addr`.
    pub public_ip: Ipv4Addr,
    /// What we advertise in a dual-stack network: `--public-ipv6`, or the interface's first
    /// global IPv6 address.
    pub public_ipv6: Option<Ipv6Addr>,
    pub mtu: u32,
}

#[derive(Clone, Debug, Default)]
pub struct IfaceOptions {
    pub iface: Vec<String>,
    pub iface_regex: Vec<String>,
    pub iface_can_reach: Option<Ipv4Addr>,
    pub public_ip: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
}

/// (interface name, IPv4 address) pairs, in the kernel's order.
pub fn addresses() -> Result<Vec<(String, Ipv4Addr)>> {
    Ok(getifaddrs()
        .context("listing interface addresses")?
        .filter_map(|ifa| {
            let addr = ifa.address?.as_sockaddr_in()?.ip();
            Some((ifa.interface_name, addr))
        })
        .collect())
}

/// The first IPv6 address of `name` that other hosts can reach: not link-local, loopback or
/// multicast.
fn global_ipv6(name: &str) -> Option<Ipv6Addr> {
    getifaddrs().ok()?.find_map(|ifa| {
        let addr = ifa.address?.as_sockaddr_in6()?.ip();
        let global = !addr.is_loopback() && !addr.is_unicast_link_local() && !addr.is_multicast();
        (ifa.interface_name == name && global).then_some(addr)
    })
}

fn first_addr(all: &[(String, Ipv4Addr)], name: &str) -> Option<Ipv4Addr> {
    all.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
}

fn owner_of(all: &[(String, Ipv4Addr)], addr: Ipv4Addr) -> Option<String> {
    all.iter().find(|(_, a)| *a == addr).map(|(n, _)| n.clone())
}

pub fn choose(options: &IfaceOptions) -> Result<ExtIface> {
    let all = addresses()?;
    let name = if !options.iface.is_empty() {
        options
            .iface
            .iter()
            .find_map(|wanted| match wanted.parse::<Ipv4Addr>() {
                Ok(addr) => owner_of(&all, addr),
                Err(_) => all.iter().any(|(n, _)| n == wanted).then(|| wanted.clone()),
            })
            .ok_or_else(|| {
                anyhow!(
                    "--iface: none of {:?} is an interface with an IPv4 address",
                    options.iface
                )
            })?
    } else if !options.iface_regex.is_empty() {
        let regexes = options
            .iface_regex
            .iter()
            .map(|r| Regex::new(r).with_context(|| format!("--iface-regex: {r:?} is not a regex")))
            .collect::<Result<Vec<_>>>()?;
        regexes
            .iter()
            .find_map(|re| {
                all.iter()
                    .find(|(_, a)| re.is_match(&a.to_string()))
                    .or_else(|| all.iter().find(|(n, _)| re.is_match(n)))
                    .map(|(n, _)| n.clone())
            })
            .ok_or_else(|| {
                anyhow!(
                    "--iface-regex: no interface or IPv4 address matches {:?}",
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
    let addr =
        first_addr(&all, &name).ok_or_else(|| anyhow!("interface {name} has no IPv4 address"))?;
    let mtu_path = format!("/sys/class/net/{name}/mtu");
    let mtu = fs::read_to_string(&mtu_path)
        .with_context(|| format!("reading {mtu_path}"))?
        .trim()
        .parse()
        .with_context(|| format!("{mtu_path} holds no number"))?;
    Ok(ExtIface {
        public_ip: options.public_ip.unwrap_or(addr),
        public_ipv6: options.public_ipv6.or_else(|| global_ipv6(&name)),
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

    /// host-gw routes via the public IP on this interface: refuse anything else.
    pub fn check_public_ip_is_local(&self) -> Result<()> {
        let all = addresses()?;
        if !all
            .iter()
            .any(|(n, a)| *n == self.name && *a == self.public_ip)
        {
            bail!(
                "host-gw: the public IP {} is not an address of {}; host-gw routes through it",
                self.public_ip,
                self.name
            );
        }
        Ok(())
    }
}

/// The local address the kernel would use to reach `target` (no packet is sent).
fn source_for(target: Ipv4Addr) -> Result<Ipv4Addr> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket
        .connect((target, 9))
        .with_context(|| format!("--iface-can-reach: no route to {target}"))?;
    match socket.local_addr()?.ip() {
        std::net::IpAddr::V4(addr) => Ok(addr),
        other => bail!("--iface-can-reach: route to {target} has source {other}"),
    }
}

/// The interface of the IPv4 default route with the lowest metric.
fn default_route_iface() -> Result<String> {
    let table = fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
    table
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
        .map(|(_, iface)| iface)
        .ok_or_else(|| anyhow!("no default route: name the interface with --iface"))
}
