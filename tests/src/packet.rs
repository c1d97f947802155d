//! Crafted packets, built field by field so tests state exactly what goes on the wire.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_ICMPV6: u8 = 58;

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

/// An IPv6 header (hop limit 64, no extension headers), then `payload`.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload: &[u8]) -> Vec<u8> {
    let payload_len = u16::try_from(payload.len()).expect("packet fits in IPv6");
    let mut header = [0u8; 40];
    header[0] = 0x60;
    header[4..6].copy_from_slice(&payload_len.to_be_bytes());
    header[6] = next_header;
    header[7] = 64;
    header[8..24].copy_from_slice(&src.octets());
    header[24..40].copy_from_slice(&dst.octets());
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
            let ipv4 = frame.len() > 42
                && frame[12..14] == ETH_P_IP.to_be_bytes()
                && frame[23] == IPPROTO_UDP
                && frame[36..38] == port.to_be_bytes();
            let ipv6 = frame.len() > 62
                && frame[12..14] == ETH_P_IPV6.to_be_bytes()
                && frame[20] == IPPROTO_UDP
                && frame[56..58] == port.to_be_bytes();
            let is_match = ipv4 || ipv6;
            if is_match {
                frames.push(frame.to_vec());
                last = std::time::Instant::now();
            }
        }
        // SAFETY: closing the fd this thread owns.
        unsafe { libc::close(fd) };
        frames
    })
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
