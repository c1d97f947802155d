//! The packet logic of flannel's TUN udp backend, free of I/O: the route lookup, the TTL
//! decrement on send and receive, and the ICMP "net unreachable" for unknown destinations.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

use flannel_common::headers::{checksum, Header, IcmpHdr, Ipv4Hdr, IPPROTO_ICMP, IPV4_HLEN};
use ipnet::Ipv4Net;

/// Peer subnets to their public IPs, longest prefix first.
#[derive(Default)]
pub struct Routes {
    /// prefix length (longest first) → network address → public IP
    by_len: BTreeMap<std::cmp::Reverse<u8>, HashMap<u32, Ipv4Addr>>,
}

impl Routes {
    pub fn insert(&mut self, subnet: Ipv4Net, public_ip: Ipv4Addr) {
        let key = std::cmp::Reverse(subnet.prefix_len());
        self.by_len
            .entry(key)
            .or_default()
            .insert(u32::from(subnet.network()), public_ip);
    }

    pub fn remove(&mut self, subnet: &Ipv4Net) {
        let key = std::cmp::Reverse(subnet.prefix_len());
        if let Some(table) = self.by_len.get_mut(&key) {
            table.remove(&u32::from(subnet.network()));
            if table.is_empty() {
                self.by_len.remove(&key);
            }
        }
    }

    /// The public IP `subnet` goes to, if it is in the table.
    pub fn get(&self, subnet: &Ipv4Net) -> Option<Ipv4Addr> {
        let table = self.by_len.get(&std::cmp::Reverse(subnet.prefix_len()))?;
        table.get(&u32::from(subnet.network())).copied()
    }

    /// The public IP that carries `dst`, by longest prefix.
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        self.by_len.iter().find_map(|(len, table)| {
            let mask = u32::MAX.checked_shl(32 - u32::from(len.0)).unwrap_or(0);
            table.get(&(u32::from(dst) & mask)).copied()
        })
    }

    /// True when `ip` is a peer's public IP (only peers may send us tunnel packets).
    pub fn is_peer(&self, ip: Ipv4Addr) -> bool {
        self.by_len
            .values()
            .any(|table| table.values().any(|peer| *peer == ip))
    }
}

/// What the proxy does with a packet it read from the TUN device.
#[derive(Debug, PartialEq, Eq)]
pub enum Outbound {
    /// Send the (TTL-decremented) packet to this peer.
    Send(Ipv4Addr),
    /// Write this ICMP error back into the TUN device.
    Reply(Vec<u8>),
    Drop,
}

/// A packet from a local container or the host, bound for the overlay.
pub fn outbound(packet: &mut [u8], routes: &Routes, network: &Ipv4Net) -> Outbound {
    let Some(dst) = ipv4_destination(packet) else {
        return Outbound::Drop;
    };
    match routes.lookup(dst) {
        Some(peer) if decrement_ttl(packet) => Outbound::Send(peer),
        Some(_) => Outbound::Drop,
        None if network.contains(&dst) => match net_unreachable(packet) {
            Some(reply) => Outbound::Reply(reply),
            None => Outbound::Drop,
        },
        None => Outbound::Drop,
    }
}

/// A packet from a peer, for the TUN device: true when it should be written.
pub fn inbound(packet: &mut [u8]) -> bool {
    ipv4_destination(packet).is_some() && decrement_ttl(packet)
}

fn ipv4_destination(packet: &[u8]) -> Option<Ipv4Addr> {
    let ip = Ipv4Hdr::from_bytes(packet)?;
    let header_len = ip.header_len();
    if ip.version() != 4 || header_len < IPV4_HLEN || packet.len() < header_len {
        return None;
    }
    Some(ip.daddr.into())
}

/// Decrements the TTL, updating the header checksum incrementally (RFC 1624); false when the
/// TTL runs out.
pub fn decrement_ttl(packet: &mut [u8]) -> bool {
    Ipv4Hdr::from_bytes_mut(packet).is_some_and(Ipv4Hdr::decrement_ttl)
}

/// ICMP destination unreachable, code 0 (net), to the sender of `original`, quoting its IP
/// header and 8 bytes (RFC 792). It comes from the unreachable address: the host would drop a
/// reply from one of its own addresses arriving on the TUN device as a martian. None for
/// packets that get no ICMP error.
pub fn net_unreachable(original: &[u8]) -> Option<Vec<u8>> {
    const DEST_UNREACHABLE: u8 = 3;
    let ip = Ipv4Hdr::from_bytes(original)?;
    let header_len = ip.header_len();
    // No error about an error (destination unreachable, source quench, redirect, time
    // exceeded, parameter problem), nor about a later fragment.
    let is_icmp_error = ip.protocol == IPPROTO_ICMP
        && original
            .get(header_len)
            .is_some_and(|kind| matches!(kind, 3 | 4 | 5 | 11 | 12));
    if is_icmp_error || ip.is_later_fragment() {
        return None;
    }
    // RFC 792: the header and the first 64 bits of the datagram.
    let quoted = &original[..original.len().min(header_len + 8)];
    let mut icmp = IcmpHdr {
        kind: DEST_UNREACHABLE,
        ..IcmpHdr::default()
    };
    let message = [icmp.as_bytes(), quoted].concat();
    icmp.check = checksum(&message).to_be_bytes();
    let total = IPV4_HLEN + message.len();
    let reply = Ipv4Hdr {
        frag_off: [0; 2],
        ..Ipv4Hdr::new(ip.daddr, ip.saddr, IPPROTO_ICMP, total as u16)
    };
    Some([reply.checksummed().as_bytes(), icmp.as_bytes(), quoted].concat())
}

#[cfg(test)]
mod tests {
    use flannel_common::headers::{UdpHdr, IPPROTO_UDP};

    use super::*;

    /// An IPv4/UDP packet with a valid header checksum.
    fn packet(src: [u8; 4], dst: [u8; 4], ttl: u8, payload: &[u8]) -> Vec<u8> {
        let udp = UdpHdr {
            source: 5000u16.to_be_bytes(),
            dest: 5001u16.to_be_bytes(),
            len: ((8 + payload.len()) as u16).to_be_bytes(),
            check: [0; 2],
        };
        let total = (IPV4_HLEN + 8 + payload.len()) as u16;
        let ip = Ipv4Hdr {
            ttl,
            ..Ipv4Hdr::new(src, dst, IPPROTO_UDP, total)
        };
        [ip.checksummed().as_bytes(), udp.as_bytes(), payload].concat()
    }

    fn ip(packet: &[u8]) -> &Ipv4Hdr {
        Ipv4Hdr::from_bytes(packet).unwrap()
    }

    fn routes() -> Routes {
        let mut routes = Routes::default();
        routes.insert(
            "10.1.74.0/24".parse().unwrap(),
            Ipv4Addr::new(192, 168, 64, 3),
        );
        routes.insert(
            "10.1.0.0/16".parse().unwrap(),
            Ipv4Addr::new(192, 168, 64, 9),
        );
        routes
    }

    #[test]
    fn longest_prefix_wins() {
        let routes = routes();
        assert_eq!(
            routes.lookup(Ipv4Addr::new(10, 1, 74, 2)),
            Some(Ipv4Addr::new(192, 168, 64, 3))
        );
        assert_eq!(
            routes.lookup(Ipv4Addr::new(10, 1, 99, 2)),
            Some(Ipv4Addr::new(192, 168, 64, 9))
        );
        assert_eq!(routes.lookup(Ipv4Addr::new(10, 2, 0, 1)), None);
        let mut routes = routes;
        routes.remove(&"10.1.74.0/24".parse().unwrap());
        assert_eq!(
            routes.lookup(Ipv4Addr::new(10, 1, 74, 2)),
            Some(Ipv4Addr::new(192, 168, 64, 9))
        );
        assert!(routes.is_peer(Ipv4Addr::new(192, 168, 64, 9)));
        assert!(!routes.is_peer(Ipv4Addr::new(192, 168, 64, 3)));
    }

    #[test]
    fn ttl_is_decremented_with_a_valid_checksum_and_runs_out() {
        let mut p = packet([10, 1, 83, 2], [10, 1, 74, 2], 64, b"data");
        assert!(decrement_ttl(&mut p));
        assert_eq!(ip(&p).ttl, 63);
        assert_eq!(
            checksum(ip(&p).as_bytes()),
            0,
            "header checksum still valid"
        );
        let mut last = packet([10, 1, 83, 2], [10, 1, 74, 2], 1, b"data");
        assert!(!decrement_ttl(&mut last));
        assert!(!inbound(&mut last));
    }

    #[test]
    fn outbound_sends_to_the_peer_or_answers_net_unreachable() {
        let network = "10.1.0.0/16".parse().unwrap();
        let mut only_74 = Routes::default();
        only_74.insert(
            "10.1.74.0/24".parse().unwrap(),
            Ipv4Addr::new(192, 168, 64, 3),
        );

        let mut known = packet([10, 1, 83, 2], [10, 1, 74, 2], 64, b"data");
        assert_eq!(
            outbound(&mut known, &only_74, &network),
            Outbound::Send(Ipv4Addr::new(192, 168, 64, 3))
        );
        assert_eq!(ip(&known).ttl, 63);

        let mut outside = packet([10, 1, 83, 2], [8, 8, 8, 8], 64, b"data");
        assert_eq!(outbound(&mut outside, &only_74, &network), Outbound::Drop);

        let original = packet([10, 1, 83, 2], [10, 1, 99, 2], 64, b"some payload");
        let Outbound::Reply(reply) = outbound(&mut original.clone(), &only_74, &network) else {
            panic!("no ICMP reply");
        };
        let header = ip(&reply);
        assert_eq!(checksum(header.as_bytes()), 0);
        assert_eq!(header.saddr, [10, 1, 99, 2], "from the unreachable address");
        assert_eq!(header.daddr, [10, 1, 83, 2], "to the sender");
        assert_eq!(header.protocol, IPPROTO_ICMP);
        let message = &reply[IPV4_HLEN..];
        let icmp = IcmpHdr::from_bytes(message).unwrap();
        assert_eq!(
            (icmp.kind, icmp.code),
            (3, 0),
            "destination unreachable, net"
        );
        assert_eq!(checksum(message), 0, "valid ICMP checksum");
        assert_eq!(
            &message[std::mem::size_of::<IcmpHdr>()..],
            &original[..IPV4_HLEN + 8],
            "quotes the header and 8 bytes"
        );
    }

    #[test]
    fn no_icmp_error_about_an_icmp_error() {
        let ip = Ipv4Hdr::new([10, 1, 83, 2], [10, 1, 99, 2], IPPROTO_ICMP, 28);
        let port_unreachable = IcmpHdr {
            kind: 3,
            code: 3,
            ..IcmpHdr::default()
        };
        let error = [ip.checksummed().as_bytes(), port_unreachable.as_bytes()].concat();
        assert_eq!(net_unreachable(&error), None);
    }
}
