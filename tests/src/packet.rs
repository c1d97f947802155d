//! Crafted packets, built field by field so tests state exactly what goes on the wire.

use std::net::Ipv4Addr;

pub const ETH_P_IP: u16 = 0x0800;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_TCP: u8 = 6;

/// The Internet checksum (RFC 1071) of `bytes`.
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

pub fn ethernet(dst: [u8; 6], src: [u8; 6], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An IPv4 header (no options, DF set, TTL 64) with a valid checksum, then `payload`.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let total_len = u16::try_from(20 + payload.len()).expect("packet fits in IPv4");
    let mut header = [0u8; 20];
    header[0] = 0x45;
    header[2..4].copy_from_slice(&total_len.to_be_bytes());
    header[6] = 0x40;
    header[8] = 64;
    header[9] = protocol;
    header[12..16].copy_from_slice(&src.octets());
    header[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&header);
    header[10..12].copy_from_slice(&sum.to_be_bytes());
    [&header[..], payload].concat()
}

/// A UDP header with checksum 0 (legal over IPv4), then `payload`.
pub fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).expect("datagram fits");
    let mut datagram = Vec::with_capacity(len.into());
    datagram.extend_from_slice(&src_port.to_be_bytes());
    datagram.extend_from_slice(&dst_port.to_be_bytes());
    datagram.extend_from_slice(&len.to_be_bytes());
    datagram.extend_from_slice(&[0, 0]);
    datagram.extend_from_slice(payload);
    datagram
}

/// A VXLAN header (flags 0x08, VNI in the upper 24 bits of the second word), then `payload`.
pub fn vxlan(vni: u32, payload: &[u8]) -> Vec<u8> {
    let mut header = vec![0x08, 0, 0, 0];
    header.extend_from_slice(&(vni << 8).to_be_bytes());
    header.extend_from_slice(payload);
    header
}

/// A whole frame: Ethernet, IPv4 and UDP from `src` to `dst`, carrying `payload`.
pub fn udp_frame(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let ip = ipv4(src, dst, IPPROTO_UDP, &udp(src_port, dst_port, payload));
    ethernet([0x02, 0, 0, 0, 0, 2], [0x02, 0, 0, 0, 0, 1], ETH_P_IP, &ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksums_to_zero() {
        let packet = ipv4(
            Ipv4Addr::new(192, 168, 64, 3),
            Ipv4Addr::new(10, 1, 83, 2),
            IPPROTO_UDP,
            &[1, 2, 3],
        );
        assert_eq!(checksum(&packet[..20]), 0);
        assert_eq!(u16::from_be_bytes([packet[2], packet[3]]), 23);
    }

    #[test]
    fn vxlan_header_carries_the_vni_in_the_upper_bits() {
        assert_eq!(vxlan(0x123456, &[]), [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
    }
}
