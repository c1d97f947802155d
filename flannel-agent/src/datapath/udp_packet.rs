//! The packet logic of flannel's TUN udp backend, free of I/O: the route lookup, the TTL
//! decrement on send and receive, and the ICMP "net unreachable" for unknown destinations.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

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
    let header_len = usize::from(*packet.first()? & 0x0f) * 4;
    if packet[0] >> 4 != 4 || header_len < 20 || packet.len() < header_len {
        return None;
    }
    Some(Ipv4Addr::new(
        packet[16], packet[17], packet[18], packet[19],
    ))
}

/// Decrements the TTL, updating the header checksum incrementally (RFC 1624); false when the
/// TTL runs out.
pub fn decrement_ttl(packet: &mut [u8]) -> bool {
    if packet.len() < 20 || packet[8] <= 1 {
        return false;
    }
    let old = u16::from_be_bytes([packet[8], packet[9]]);
    packet[8] -= 1;
    let new = u16::from_be_bytes([packet[8], packet[9]]);
    let check = u16::from_be_bytes([packet[10], packet[11]]);
    let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    packet[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    true
}

/// The Internet checksum of `bytes`.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// ICMP destination unreachable, code 0 (net), to the sender of `original`, quoting its IP
/// header and 8 bytes (RFC 792). It comes from the unreachable address: the host would drop a
/// reply from one of its own addresses arriving on the TUN device as a martian. None for
/// packets that get no ICMP error.
pub fn net_unreachable(original: &[u8]) -> Option<Vec<u8>> {
    let header_len = usize::from(original[0] & 0x0f) * 4;
    let is_icmp_error = original[9] == 1
        && original
            .get(header_len)
            .is_some_and(|t| matches!(t, 3 | 4 | 5 | 11 | 12));
    let later_fragment = u16::from_be_bytes([original[6], original[7]]) & 0x1fff != 0;
    if is_icmp_error || later_fragment {
        return None;
    }
    let quoted = &original[..original.len().min(header_len + 8)];
    let mut icmp = vec![3, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(quoted);
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&original[16..20]);
    ip.extend_from_slice(&original[12..16]);
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&icmp);
    Some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4/UDP packet with a valid header checksum.
    fn packet(src: [u8; 4], dst: [u8; 4], ttl: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, ttl, 17, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&[0x13, 0x88, 0x13, 0x89, 0, 12, 0, 0]);
        p.extend_from_slice(payload);
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        let sum = checksum(&p[..20]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p
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
        assert_eq!(p[8], 63);
        assert_eq!(checksum(&p[..20]), 0, "header checksum still valid");
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
        assert_eq!(known[8], 63);

        let mut outside = packet([10, 1, 83, 2], [8, 8, 8, 8], 64, b"data");
        assert_eq!(outbound(&mut outside, &only_74, &network), Outbound::Drop);

        let original = packet([10, 1, 83, 2], [10, 1, 99, 2], 64, b"some payload");
        let Outbound::Reply(reply) = outbound(&mut original.clone(), &only_74, &network) else {
            panic!("no ICMP reply");
        };
        assert_eq!(checksum(&reply[..20]), 0);
        assert_eq!(
            &reply[12..16],
            &[10, 1, 99, 2],
            "from the unreachable address"
        );
        assert_eq!(&reply[16..20], &[10, 1, 83, 2], "to the sender");
        assert_eq!(reply[9], 1, "ICMP");
        assert_eq!(&reply[20..22], &[3, 0], "destination unreachable, net");
        assert_eq!(checksum(&reply[20..]), 0, "valid ICMP checksum");
        assert_eq!(
            &reply[28..],
            &original[..28],
            "quotes the header and 8 bytes"
        );
    }

    #[test]
    fn no_icmp_error_about_an_icmp_error() {
        let mut error = packet([10, 1, 83, 2], [10, 1, 99, 2], 64, b"");
        error[9] = 1;
        error.truncate(20);
        error.extend_from_slice(&[3, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(net_unreachable(&error), None);
    }
}
