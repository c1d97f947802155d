//! Packet headers and bounds-checked access to them.

use core::mem::size_of;

pub const ETH_HLEN: usize = size_of::<EthHdr>();
pub const ETH_P_IP: u16 = 0x0800;
pub const IPPROTO_UDP: u8 = 17;
/// VXLAN flags word with only the I (valid VNI) bit set.
pub const VXLAN_FLAGS_I: u32 = 0x0800_0000;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type_be: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len_be: u16,
    pub id_be: u16,
    pub frag_off_be: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub saddr_be: u32,
    pub daddr_be: u32,
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
        u16::from_be(self.frag_off_be) & 0x1fff != 0
    }
}

#[repr(C)]
pub struct UdpHdr {
    pub source_be: u16,
    pub dest_be: u16,
    pub len_be: u16,
    pub check: u16,
}

#[repr(C)]
pub struct VxlanHdr {
    pub flags_be: u32,
    /// VNI in the upper 24 bits.
    pub vni_be: u32,
}

/// The packet as the program sees it: the linear bytes `[start, end)`.
#[derive(Clone, Copy)]
pub struct Packet {
    pub start: usize,
    pub end: usize,
}

impl Packet {
    /// A `T` at `offset`, or `None` when the packet is too short to hold it.
    #[inline(always)]
    pub fn header<T>(&self, offset: usize) -> Option<&T> {
        let at = self.start + offset;
        if at + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: the bounds check above is the one the verifier requires; headers are
        // plain integers, valid for any bit pattern.
        Some(unsafe { &*(at as *const T) })
    }
}
