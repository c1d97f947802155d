//! Decapsulation: strip the outer headers of a tunnel packet the guard accepted, leaving the
//! outer Ethernet header (addressed to this host) in front of the inner IPv4 packet.

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_CSUM_LEVEL_DEC, BPF_F_ADJ_ROOM_FIXED_GSO,
        BPF_F_ADJ_ROOM_NO_CSUM_RESET,
    },
    helpers::{bpf_csum_level, bpf_xdp_adjust_head},
    programs::{TcContext, XdpContext},
};
use flannel_common::{DatapathConfig, DropReason, Encap};

use crate::{
    csum,
    parse::{EthHdr, Ipv4Hdr, Packet, ETH_HLEN, ETH_P_IP},
    ttl,
};

const SHRINK_FLAGS: u64 = (BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_NO_CSUM_RESET) as u64;

/// How many bytes after the outer Ethernet header to strip, once the inner headers are
/// checked: a kernel vxlan device drops frames not addressed to its own MAC; so do we.
#[inline(always)]
fn outer_len(pkt: Packet, cfg: &DatapathConfig, outer_ip_len: usize) -> Result<usize, DropReason> {
    let udp_end = outer_ip_len + 8;
    if cfg.encap != Encap::Vxlan as u16 {
        return Ok(udp_end);
    }
    let inner = pkt
        .header::<EthHdr>(ETH_HLEN + udp_end + 8)
        .ok_or(DropReason::Truncated)?;
    if inner.dst != cfg.vtep_mac {
        return Err(DropReason::WrongMac);
    }
    if inner.ether_type_be != ETH_P_IP.to_be() {
        return Err(DropReason::DecapFailed);
    }
    Ok(udp_end + 8 + ETH_HLEN)
}

/// TC: strips the outer headers with `bpf_skb_adjust_room`, so a GSO packet stays whole.
pub fn decapsulate(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    outer_ip_len: usize,
) -> Result<(), DropReason> {
    let pkt = Packet {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let strip = outer_len(pkt, cfg, outer_ip_len)?;
    ctx.adjust_room(-(strip as i32), BPF_ADJ_ROOM_MAC, SHRINK_FLAGS)
        .map_err(|_| DropReason::DecapFailed)?;
    // The outer UDP checksum, if the NIC checked it, no longer covers anything.
    // SAFETY: the helper only adjusts the skb behind the context.
    unsafe { bpf_csum_level(ctx.skb.skb, BPF_CSUM_LEVEL_DEC as u64) };
    if cfg.encap == Encap::Udp as u16 {
        // flannel's udp backend decrements the TTL on receive too.
        ttl::decrement(ctx)?;
    }
    Ok(())
}

/// XDP: moves the outer Ethernet header up to the inner IPv4 header and drops what was in
/// between, before the stack (and GRO) see the packet.
pub fn decapsulate_xdp(
    ctx: &XdpContext,
    cfg: &DatapathConfig,
    outer_ip_len: usize,
) -> Result<(), DropReason> {
    let pkt = Packet {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let strip = outer_len(pkt, cfg, outer_ip_len)?;
    let eth = *pkt
        .header::<[u8; ETH_HLEN]>(0)
        .ok_or(DropReason::Truncated)?;
    if pkt.start + strip + ETH_HLEN > pkt.end {
        return Err(DropReason::Truncated);
    }
    // SAFETY: bounds-checked just above.
    unsafe { core::ptr::write_unaligned((pkt.start + strip) as *mut [u8; ETH_HLEN], eth) };
    // SAFETY: plain helper call on our context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, strip as i32) } != 0 {
        return Err(DropReason::DecapFailed);
    }
    if cfg.encap == Encap::Udp as u16 {
        let pkt = Packet {
            start: ctx.data(),
            end: ctx.data_end(),
        };
        let ip = pkt
            .header::<Ipv4Hdr>(ETH_HLEN)
            .ok_or(DropReason::Truncated)?;
        if ip.ttl <= 1 {
            return Err(DropReason::TtlExpired);
        }
        let old = u16::from_be_bytes([ip.ttl, ip.protocol]);
        let new = u16::from_be_bytes([ip.ttl - 1, ip.protocol]);
        let check = csum::replace16(u16::from_be(ip.check), old, new).to_be();
        let ip = (pkt.start + ETH_HLEN) as *mut Ipv4Hdr;
        // SAFETY: the header was bounds-checked above.
        unsafe {
            (*ip).ttl -= 1;
            (*ip).check = check;
        }
    }
    Ok(())
}
