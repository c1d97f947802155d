//! The wire headers our tunnels are made of, described once for the programs, the agent's
//! tunnel templates and userspace udp datapath, `status` and the tests' packet builders.
//!
//! Each is a `#[repr(C)]` struct of bytes, multi-byte fields in network order: alignment 1
//! and no padding, so a reference to one is valid at any offset of a packet (behind
//! Ethernet, IPv4 addresses start at byte 26), and its size is its length on the wire
//! (asserted below).

use core::mem::size_of;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
/// VXLAN flags word with only the I (valid VNI) bit set.
pub const VXLAN_FLAGS_I: u32 = 0x0800_0000;
/// IPv4's "don't fragment" flag, in the flags and fragment offset word.
pub const IPV4_DF: u16 = 0x4000;

pub const ETH_HLEN: usize = size_of::<EthHdr>();
/// An IPv4 header without options.
pub const IPV4_HLEN: usize = size_of::<Ipv4Hdr>();
pub const IPV6_HLEN: usize = size_of::<Ipv6Hdr>();
pub const UDP_HLEN: usize = size_of::<UdpHdr>();
pub const VXLAN_HLEN: usize = size_of::<VxlanHdr>();

/// A wire header: its bytes as they are on the wire, and back.
///
/// # Safety
///
/// Implemented only by `#[repr(C)]` structs whose fields are all `u8` or `[u8; N]` (or such
/// structs): alignment 1, no padding, and any bytes are a value.
pub unsafe trait Header: Sized {
    #[inline(always)]
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: the trait's contract: `size_of::<Self>()` initialised plain bytes.
        unsafe { core::slice::from_raw_parts((self as *const Self).cast(), size_of::<Self>()) }
    }

    /// The header at the start of `bytes`, if they hold one.
    #[inline(always)]
    fn from_bytes(bytes: &[u8]) -> Option<&Self> {
        let bytes = bytes.get(..size_of::<Self>())?;
        // SAFETY: long enough, alignment 1, and any bytes are a value (the contract).
        Some(unsafe { &*bytes.as_ptr().cast() })
    }

    /// `from_bytes`, to change the header in place.
    #[inline(always)]
    fn from_bytes_mut(bytes: &mut [u8]) -> Option<&mut Self> {
        let bytes = bytes.get_mut(..size_of::<Self>())?;
        // SAFETY: as `from_bytes`; the borrow of `bytes` is handed on.
        Some(unsafe { &mut *bytes.as_mut_ptr().cast() })
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: [u8; 2],
}

impl EthHdr {
    pub const fn new(dst: [u8; 6], src: [u8; 6], ether_type: u16) -> Self {
        Self {
            dst,
            src,
            ether_type: ether_type.to_be_bytes(),
        }
    }

    #[inline(always)]
    pub fn is_ipv4(&self) -> bool {
        self.ether_type == ETH_P_IP.to_be_bytes()
    }

    #[inline(always)]
    pub fn is_ipv6(&self) -> bool {
        self.ether_type == ETH_P_IPV6.to_be_bytes()
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub check: [u8; 2],
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

impl Ipv4Hdr {
    /// A header without options, DF set, TTL 64 (as the kernel's vxlan device and flannel
    /// send), its checksum left 0.
    pub const fn new(saddr: [u8; 4], daddr: [u8; 4], protocol: u8, total_len: u16) -> Self {
        Self {
            version_ihl: 0x45,
            tos: 0,
            tot_len: total_len.to_be_bytes(),
            id: [0; 2],
            frag_off: IPV4_DF.to_be_bytes(),
            ttl: 64,
            protocol,
            check: [0; 2],
            saddr,
            daddr,
        }
    }

    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.version_ihl >> 4
    }

    /// Header length in bytes (IHL * 4); at most 60, which keeps the verifier's range small.
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        ((self.version_ihl & 0x0f) as usize) * 4
    }

    /// True for the second and later fragments, which carry no L4 header.
    #[inline(always)]
    pub fn is_later_fragment(&self) -> bool {
        u16::from_be_bytes(self.frag_off) & 0x1fff != 0
    }

    /// The source address as the maps key it: network byte order.
    #[inline(always)]
    pub fn saddr_be(&self) -> u32 {
        u32::from_ne_bytes(self.saddr)
    }

    /// The destination address in network byte order.
    #[inline(always)]
    pub fn daddr_be(&self) -> u32 {
        u32::from_ne_bytes(self.daddr)
    }

    #[inline(always)]
    pub fn total_len(&self) -> u16 {
        u16::from_be_bytes(self.tot_len)
    }

    /// Decrements the TTL, patching the checksum to match (RFC 1624); false, and nothing
    /// changed, when it has run out: the packet is to be dropped.
    #[inline(always)]
    pub fn decrement_ttl(&mut self) -> bool {
        if self.ttl <= 1 {
            return false;
        }
        // The TTL shares a 16-bit checksum word with the protocol.
        let old = u16::from_be_bytes([self.ttl, self.protocol]);
        self.ttl -= 1;
        let new = u16::from_be_bytes([self.ttl, self.protocol]);
        self.check = replace16(u16::from_be_bytes(self.check), old, new).to_be_bytes();
        true
    }

    /// The header with its checksum filled in.
    pub fn checksummed(mut self) -> Self {
        self.check = [0; 2];
        self.check = checksum(self.as_bytes()).to_be_bytes();
        self
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ipv6Hdr {
    pub version_class_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

impl Ipv6Hdr {
    /// A header with traffic class and flow label 0 and hop limit 64, as flannel's IPv6
    /// vxlan device sends.
    pub const fn new(saddr: [u8; 16], daddr: [u8; 16], next_header: u8, payload_len: u16) -> Self {
        Self {
            version_class_flow: [0x60, 0, 0, 0],
            payload_len: payload_len.to_be_bytes(),
            next_header,
            hop_limit: 64,
            saddr,
            daddr,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpHdr {
    pub source: [u8; 2],
    pub dest: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

/// The first 20 bytes of a TCP header (what precedes its options).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpHdr {
    pub source: [u8; 2],
    pub dest: [u8; 2],
    pub seq: [u8; 4],
    pub ack_seq: [u8; 4],
    /// The header's length in 32-bit words, in the upper four bits.
    pub data_offset: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urg_ptr: [u8; 2],
}

/// An ICMP header: type, code, checksum, and the type's four bytes (unused in errors).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: [u8; 2],
    pub rest: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VxlanHdr {
    pub flags: [u8; 4],
    /// VNI in the upper 24 bits.
    pub vni: [u8; 4],
}

impl VxlanHdr {
    /// The header of VXLAN network `vni`: the I flag and the VNI.
    pub const fn new(vni: u32) -> Self {
        Self {
            flags: VXLAN_FLAGS_I.to_be_bytes(),
            vni: (vni << 8).to_be_bytes(),
        }
    }
}

/// What flannel's vxlan puts in front of an inner IPv4 packet: outer IPv4, UDP, VXLAN and
/// the inner Ethernet header. The first `UDP_OVERHEAD` bytes (IPv4 and UDP) are what its udp
/// backend puts there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelHeader {
    pub ip: Ipv4Hdr,
    pub udp: UdpHdr,
    pub vxlan: VxlanHdr,
    pub inner: EthHdr,
}

/// What flannel's IPv6 vxlan puts in front of an inner IPv6 packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelHeader6 {
    pub ip: Ipv6Hdr,
    pub udp: UdpHdr,
    pub vxlan: VxlanHdr,
    pub inner: EthHdr,
}

// SAFETY: #[repr(C)], only u8, [u8; N] and such structs as fields (each below alike).
unsafe impl Header for EthHdr {}
// SAFETY: as above.
unsafe impl Header for Ipv4Hdr {}
// SAFETY: as above.
unsafe impl Header for Ipv6Hdr {}
// SAFETY: as above.
unsafe impl Header for UdpHdr {}
// SAFETY: as above.
unsafe impl Header for TcpHdr {}
// SAFETY: as above.
unsafe impl Header for IcmpHdr {}
// SAFETY: as above.
unsafe impl Header for VxlanHdr {}
// SAFETY: as above.
unsafe impl Header for TunnelHeader {}
// SAFETY: as above.
unsafe impl Header for TunnelHeader6 {}

// Sizes are lengths on the wire; alignment 1 leaves no padding anywhere.
const _: () = {
    use core::mem::align_of;
    assert!(ETH_HLEN == 14 && IPV4_HLEN == 20 && IPV6_HLEN == 40);
    assert!(UDP_HLEN == 8 && VXLAN_HLEN == 8 && size_of::<TcpHdr>() == 20);
    assert!(size_of::<IcmpHdr>() == 8);
    assert!(size_of::<TunnelHeader>() == IPV4_HLEN + UDP_HLEN + VXLAN_HLEN + ETH_HLEN);
    assert!(size_of::<TunnelHeader6>() == IPV6_HLEN + UDP_HLEN + VXLAN_HLEN + ETH_HLEN);
    assert!(align_of::<TunnelHeader>() == 1 && align_of::<TunnelHeader6>() == 1);
    assert!(align_of::<TcpHdr>() == 1);
};

/// The sum of `bytes` as big-endian 16-bit words (an odd last byte padded with zero),
/// unfolded.
#[inline(always)]
pub fn sum16(bytes: &[u8]) -> u32 {
    let mut sum = 0;
    let mut i = 0;
    while i < bytes.len() {
        let low = if i + 1 < bytes.len() { bytes[i + 1] } else { 0 };
        sum += u32::from(u16::from_be_bytes([bytes[i], low]));
        i += 2;
    }
    sum
}

/// The one's-complement checksum of a 32-bit sum of 16-bit words: folded and inverted.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// A header checksum after one 16-bit word changed from `old` to `new` (RFC 1624, eqn. 3).
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    fold(u32::from(!check) + u32::from(!old) + u32::from(new))
}

/// The Internet checksum (RFC 1071) of `bytes`.
pub fn checksum(bytes: &[u8]) -> u16 {
    fold(sum16(bytes))
}
