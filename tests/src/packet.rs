//! Crafted packets, built field by field so tests state exactly what goes on the wire.

use std::net::{Ipv4Addr, Ipv6Addr};

pub use flannel_common::headers::{
    checksum, EthHdr, Header, IcmpHdr, Ipv4Hdr, Ipv6Hdr, TcpHdr, TunnelHeader, TunnelHeader6,
    UdpHdr, VxlanHdr, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    IPV4_DF, IPV4_HLEN, IPV6_HLEN, UDP_HLEN,
};

/// The header `H` at the start of `bytes`, and the bytes after it; None when too short.
pub fn try_split<H: Header>(bytes: &[u8]) -> Option<(&H, &[u8])> {
    Some((H::from_bytes(bytes)?, &bytes[size_of::<H>()..]))
}

/// `try_split` of bytes known to hold the header.
pub fn split<H: Header>(bytes: &[u8]) -> (&H, &[u8]) {
    try_split(bytes).expect("long enough for the header")
}

/// A tunnel frame's outer headers `H` (a `TunnelHeader` or `TunnelHeader6`) behind its
/// Ethernet header, and the inner packet; None when too short.
pub fn tunnelled<H: Header>(frame: &[u8]) -> Option<(&H, &[u8])> {
    try_split::<H>(try_split::<EthHdr>(frame)?.1)
}

/// `split`, to change the header in place.
pub fn split_mut<H: Header>(bytes: &mut [u8]) -> &mut H {
    H::from_bytes_mut(bytes).expect("long enough for the header")
}

pub fn ethernet(dst: [u8; 6], src: [u8; 6], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    [EthHdr::new(dst, src, ether_type).as_bytes(), payload].concat()
}

/// An IPv4 header (no options, DF set, TTL 64) with a valid checksum, then `payload`.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let total_len = u16::try_from(IPV4_HLEN + payload.len()).expect("packet fits in IPv4");
    let header = Ipv4Hdr::new(src.octets(), dst.octets(), protocol, total_len).checksummed();
    [header.as_bytes(), payload].concat()
}

/// An IPv6 header (hop limit 64, no extension headers), then `payload`.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload: &[u8]) -> Vec<u8> {
    let payload_len = u16::try_from(payload.len()).expect("packet fits in IPv6");
    let header = Ipv6Hdr::new(src.octets(), dst.octets(), next_header, payload_len);
    [header.as_bytes(), payload].concat()
}

/// A UDP header with checksum 0 (legal over IPv4), then `payload`.
pub fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(UDP_HLEN + payload.len()).expect("datagram fits");
    let header = UdpHdr {
        source: src_port.to_be_bytes(),
        dest: dst_port.to_be_bytes(),
        len: len.to_be_bytes(),
        check: [0; 2],
    };
    [header.as_bytes(), payload].concat()
}

/// A VXLAN header (the I flag, the VNI in the upper 24 bits of the second word), then
/// `payload`.
pub fn vxlan(vni: u32, payload: &[u8]) -> Vec<u8> {
    [VxlanHdr::new(vni).as_bytes(), payload].concat()
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

/// The checksum of an IPv6 upper-layer packet (TCP, UDP, ICMPv6) of protocol `next_header`
/// from `src` to `dst`: over its pseudo-header and `upper` (RFC 8200, 8.1). 0 when `upper`
/// carries a right one.
pub fn ipv6_upper_checksum(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, upper: &[u8]) -> u16 {
    let len = u32::try_from(upper.len()).expect("fits in IPv6");
    let pseudo = [
        &src.octets()[..],
        &dst.octets(),
        &len.to_be_bytes(),
        &[0, 0, 0, next_header],
        upper,
    ];
    checksum(&pseudo.concat())
}

/// A whole IPv6 frame: Ethernet, IPv6 and UDP from `src` to `dst`, carrying `payload` (the
/// UDP checksum left 0: our programs do not check it).
pub fn udp6_frame(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let ip = ipv6(src, dst, IPPROTO_UDP, &udp(src_port, dst_port, payload));
    ethernet(
        [0x02, 0, 0, 0, 0, 2],
        [0x02, 0, 0, 0, 0, 1],
        ETH_P_IPV6,
        &ip,
    )
}

/// Starts capturing, on every interface of the calling thread's network namespace, the first
/// UDP frame (IPv4 or IPv6) to `port`; the returned thread yields it (None after 5 s without
/// one).
/// The socket exists when this returns, so a frame sent afterwards is not missed.
pub fn capture_udp(port: u16) -> std::thread::JoinHandle<Option<Vec<u8>>> {
    let frames = capture_udp_frames(port, 1);
    std::thread::spawn(move || frames.join().ok()?.pop())
}

/// `capture_udp` for the first `count` frames (fewer if 5 s pass without one). A GSO packet
/// handed to a device whole is captured whole (up to 64 KiB).
pub fn capture_udp_frames(port: u16, count: usize) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    // SAFETY: plain socket calls on a socket this function owns.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            (libc::ETH_P_ALL as u16).to_be().into(),
        )
    };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    let timeout = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: valid fd and a timeval of the right size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let mut frames = Vec::new();
        // Other traffic wakes the socket too: the 5 s run from the last frame captured.
        let mut last = std::time::Instant::now();
        while frames.len() < count && last.elapsed() < std::time::Duration::from_secs(5) {
            // SAFETY: buf is valid for its length.
            let len = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if len < 0 {
                break;
            }
            let frame = &buf[..len as usize];
            if udp_to(frame) == Some(port) {
                frames.push(frame.to_vec());
                last = std::time::Instant::now();
            }
        }
        // SAFETY: closing the fd this thread owns.
        unsafe { libc::close(fd) };
        frames
    })
}

/// The destination port of a UDP frame (IPv4 without options, or IPv6 without extension
/// headers).
fn udp_to(frame: &[u8]) -> Option<u16> {
    let (eth, ip) = try_split::<EthHdr>(frame)?;
    let datagram = if eth.is_ipv4() {
        let (header, datagram) = try_split::<Ipv4Hdr>(ip)?;
        (header.protocol == IPPROTO_UDP).then_some(datagram)?
    } else if eth.is_ipv6() {
        let (header, datagram) = try_split::<Ipv6Hdr>(ip)?;
        (header.next_header == IPPROTO_UDP).then_some(datagram)?
    } else {
        return None;
    };
    try_split::<UdpHdr>(datagram).map(|(udp, _)| u16::from_be_bytes(udp.dest))
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
        let (header, _) = split::<Ipv4Hdr>(&packet);
        assert_eq!(checksum(header.as_bytes()), 0);
        assert_eq!(header.total_len(), 23);
    }

    #[test]
    fn vxlan_header_carries_the_vni_in_the_upper_bits() {
        assert_eq!(vxlan(0x123456, &[]), [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
    }
}
