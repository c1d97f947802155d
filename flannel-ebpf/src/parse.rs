//! Bounds-checked access to a packet's headers (whose layouts are `flannel_common::headers`,
//! all of alignment 1).

use core::mem::{align_of, size_of};

use aya_ebpf::programs::{TcContext, XdpContext};
pub use flannel_common::headers::*;

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

/// Sets the destination and source MACs of the packet's Ethernet header (the first two of
/// its fields).
#[inline(always)]
pub fn set_macs(ctx: &TcContext, dst: &[u8; 6], src: &[u8; 6]) -> Result<(), i64> {
    const { assert!(core::mem::offset_of!(EthHdr, src) == 6) };
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(dst);
    macs[6..].copy_from_slice(src);
    ctx.store(0, &macs, 0)
}
