//! Packet headers and bounds-checked access to them.
//!
//! Headers sit at 2-byte-aligned offsets (behind Ethernet, the IPv4 addresses start at 26),
//! so every multi-byte field is a byte array in network order: each header struct then has
//! alignment 1, and a reference to it is valid at any offset.

use core::mem::{align_of, size_of};

use aya_ebpf::programs::{TcContext, XdpContext};

pub const ETH_HLEN: usize = size_of::<EthHdr>();
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPV6_HLEN: usize = size_of::<Ipv6Hdr>();
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
/// VXLAN flags word with only the I (valid VNI) bit set.
pub const VXLAN_FLAGS_I: u32 = 0x0800_0000;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: [u8; 2],
}

impl EthHdr {
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
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub version_class_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// True when `addr` lies in the prefix `net`/`mask` (all in network byte order).
#[inline(always)]
pub fn in_prefix6(addr: &[u8; 16], net: &[u8; 16], mask: &[u8; 16]) -> bool {
    let mut i = 0;
    while i < 16 {
        if addr[i] & mask[i] != net[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[repr(C)]
pub struct UdpHdr {
    pub source: [u8; 2],
    pub dest: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

#[repr(C)]
pub struct VxlanHdr {
    pub flags: [u8; 4],
    /// VNI in the upper 24 bits.
    pub vni: [u8; 4],
}

/// The packet as the program sees it: the linear bytes `[start, end)`.
#[derive(Clone, Copy)]
pub struct Packet {
    pub start: usize,
    pub end: usize,
}

impl Packet {
    /// A pointer to a `T` at `offset`, or `None` when the packet is too short to hold it.
    #[inline(always)]
    fn at<T>(self, offset: usize) -> Option<*mut T> {
        const { assert!(align_of::<T>() == 1, "packet headers must have alignment 1") };
        let at = self.start + offset;
        if at + size_of::<T>() > self.end {
            return None;
        }
        Some(at as *mut T)
    }

    /// A `T` at `offset`, or `None` when the packet is too short to hold it. The reference
    /// is good until the packet is resized.
    #[inline(always)]
    pub fn header<'a, T>(self, offset: usize) -> Option<&'a T> {
        // SAFETY: in bounds (checked as the verifier requires) and alignment 1 (asserted);
        // headers are plain bytes, valid for any bit pattern.
        self.at(offset).map(|p| unsafe { &*p })
    }

    /// `header`, to change it in place; one at a time.
    #[inline(always)]
    pub fn header_mut<'a, T>(self, offset: usize) -> Option<&'a mut T> {
        // SAFETY: as `header`; the packet's bytes are not borrowed elsewhere meanwhile.
        self.at(offset).map(|p| unsafe { &mut *p })
    }
}

/// A program's context: where its packet's linear bytes are now (they move whenever the
/// packet is resized).
pub trait Context {
    fn packet(&self) -> Packet;
}

impl Context for TcContext {
    #[inline(always)]
    fn packet(&self) -> Packet {
        Packet {
            start: self.data(),
            end: self.data_end(),
        }
    }
}

impl Context for XdpContext {
    #[inline(always)]
    fn packet(&self) -> Packet {
        Packet {
            start: self.data(),
            end: self.data_end(),
        }
    }
}
