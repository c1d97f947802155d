//! IPv4 and IPv6 as one trait. A network carries either or both, and every per-family
//! operation (the config's subnets, a lease's half, routes and neighbours, the vxlan devices,
//! host-gw's routes, the eBPF maps) is written once, generic over `Family`.

use std::{
    fmt::{Debug, Display},
    hash::Hash,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// An address family: its address type (`Ipv4Addr`, `Ipv6Addr`) with its prefix type.
pub trait Family:
    Copy + Eq + Ord + Hash + Debug + Display + FromStr + Into<IpAddr> + Send + Sync + 'static
{
    type Net: Copy + Eq + Ord + Hash + Debug + Display + FromStr + Into<IpNet> + Send + Sync;
    /// "IPv4" or "IPv6".
    const NAME: &'static str;
    /// Bits in an address: the prefix length of a host.
    const BITS: u8;

    /// Of two values, one per family, this family's: `A::pick("flannel.", "flannel-v6.")`.
    fn pick<T>(v4: T, v6: T) -> T;
    /// The address if it is of this family.
    fn of(ip: IpAddr) -> Option<Self>;
    /// The prefix if it is of this family.
    fn net_of(net: IpNet) -> Option<Self::Net>;
    fn bits(self) -> u128;
    fn from_bits(bits: u128) -> Self;
    /// The prefix of `prefix_len` at `addr`, host bits kept; None for a length over `BITS`.
    fn net(addr: Self, prefix_len: u8) -> Option<Self::Net>;
    fn network(net: &Self::Net) -> Self;
    fn broadcast(net: &Self::Net) -> Self;
    fn prefix_len(net: &Self::Net) -> u8;
    /// The prefix one bit shorter; None for /0.
    fn supernet(net: &Self::Net) -> Option<Self::Net>;

    /// The first and last addresses of `net`, as numbers.
    fn span(net: &Self::Net) -> (u128, u128) {
        (Self::network(net).bits(), Self::broadcast(net).bits())
    }

    /// `net` with its host bits cleared.
    fn trunc(net: &Self::Net) -> Self::Net {
        Self::net(Self::network(net), Self::prefix_len(net)).expect("a valid prefix length")
    }
}

impl Family for Ipv4Addr {
    type Net = Ipv4Net;
    const NAME: &'static str = "IPv4";
    const BITS: u8 = 32;

    fn pick<T>(v4: T, _: T) -> T {
        v4
    }
    fn of(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        }
    }
    fn net_of(net: IpNet) -> Option<Ipv4Net> {
        match net {
            IpNet::V4(net) => Some(net),
            IpNet::V6(_) => None,
        }
    }
    fn bits(self) -> u128 {
        u32::from(self).into()
    }
    fn from_bits(bits: u128) -> Self {
        (bits as u32).into()
    }
    fn net(addr: Self, prefix_len: u8) -> Option<Ipv4Net> {
        Ipv4Net::new(addr, prefix_len).ok()
    }
    fn network(net: &Ipv4Net) -> Self {
        net.network()
    }
    fn broadcast(net: &Ipv4Net) -> Self {
        net.broadcast()
    }
    fn prefix_len(net: &Ipv4Net) -> u8 {
        net.prefix_len()
    }
    fn supernet(net: &Ipv4Net) -> Option<Ipv4Net> {
        net.supernet()
    }
}

impl Family for Ipv6Addr {
    type Net = Ipv6Net;
    const NAME: &'static str = "IPv6";
    const BITS: u8 = 128;

    fn pick<T>(_: T, v6: T) -> T {
        v6
    }
    fn of(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(ip) => Some(ip),
            IpAddr::V4(_) => None,
        }
    }
    fn net_of(net: IpNet) -> Option<Ipv6Net> {
        match net {
            IpNet::V6(net) => Some(net),
            IpNet::V4(_) => None,
        }
    }
    fn bits(self) -> u128 {
        self.into()
    }
    fn from_bits(bits: u128) -> Self {
        bits.into()
    }
    fn net(addr: Self, prefix_len: u8) -> Option<Ipv6Net> {
        Ipv6Net::new(addr, prefix_len).ok()
    }
    fn network(net: &Ipv6Net) -> Self {
        net.network()
    }
    fn broadcast(net: &Ipv6Net) -> Self {
        net.broadcast()
    }
    fn prefix_len(net: &Ipv6Net) -> u8 {
        net.prefix_len()
    }
    fn supernet(net: &Ipv6Net) -> Option<Ipv6Net> {
        net.supernet()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span_and_supernet<A: Family>(net: &str, first: &str, last: &str, supernet: &str) {
        let net: A::Net = net.parse().ok().unwrap();
        let (first, last): (A, A) = (first.parse().ok().unwrap(), last.parse().ok().unwrap());
        assert_eq!(A::span(&net), (first.bits(), last.bits()));
        assert_eq!(A::supernet(&net).unwrap().to_string(), supernet);
        assert_eq!(A::of(first.into()), Some(first));
    }

    #[test]
    fn both_families_answer_alike() {
        span_and_supernet::<Ipv4Addr>("10.1.83.0/24", "10.1.83.0", "10.1.83.255", "10.1.82.0/23");
        span_and_supernet::<Ipv6Addr>(
            "fd00:0:0:53::/64",
            "fd00:0:0:53::",
            "fd00:0:0:53:ffff:ffff:ffff:ffff",
            "fd00:0:0:52::/63",
        );
        assert_eq!(Ipv4Addr::of(Ipv6Addr::LOCALHOST.into()), None);
        assert_eq!(
            Ipv4Addr::trunc(&"10.1.83.7/24".parse().unwrap()).to_string(),
            "10.1.83.0/24"
        );
    }
}
