//! Decapsulation: strip the outer headers of a tunnel packet the guard accepted, leaving the
//! outer Ethernet header (addressed to this host) in front of the inner packet: IPv4 behind
//! IPv4, or IPv6 behind IPv6 (TC only). TC and XDP differ only in how they remove the bytes.

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_CSUM_LEVEL_DEC, BPF_F_ADJ_ROOM_FIXED_GSO,
        BPF_F_ADJ_ROOM_NO_CSUM_RESET,
    },
    helpers::{bpf_csum_level, bpf_xdp_adjust_head},
    programs::{TcContext, XdpContext},
};
use flannel_common::{
    mask_be, DatapathConfig, DatapathConfig6, DropReason, Encap, PeerInfo, PeerInfo6,
    CHECK_INNER_SOURCE,
};

use crate::{
    parse::{
        in_prefix6, Context, EthHdr, Ipv4Hdr, Ipv6Hdr, Packet, ETH_HLEN, IPV6_HLEN, UDP_HLEN,
        VXLAN_HLEN,
    },
    ttl,
};

const SHRINK_FLAGS: u64 = (BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_NO_CSUM_RESET) as u64;

/// A hook that can remove bytes right behind the outer Ethernet header.
pub trait Strip: Context {
    fn strip(&self, len: usize) -> Result<(), DropReason>;
}

/// TC: `bpf_skb_adjust_room`, so a GSO packet (a GRO aggregate) stays whole.
impl Strip for TcContext {
    #[inline(always)]
    fn strip(&self, len: usize) -> Result<(), DropReason> {
        self.adjust_room(-(len as i32), BPF_ADJ_ROOM_MAC, SHRINK_FLAGS)
            .map_err(|_| DropReason::DecapFailed)?;
        // The outer UDP checksum, if the NIC checked it, no longer covers anything.
        // SAFETY: the helper only adjusts the skb behind the context.
        unsafe { bpf_csum_level(self.skb.skb, BPF_CSUM_LEVEL_DEC as u64) };
        Ok(())
    }
}

/// XDP: the outer Ethernet header moves up to the inner IPv4 header and the head follows,
/// before the stack (and GRO) see the packet.
impl Strip for XdpContext {
    #[inline(always)]
    fn strip(&self, len: usize) -> Result<(), DropReason> {
        let pkt = self.packet();
        let eth = *pkt.header::<EthHdr>(0).ok_or(DropReason::Truncated)?;
        *pkt.header_mut::<EthHdr>(len).ok_or(DropReason::Truncated)? = eth;
        // SAFETY: plain helper call on our context.
        if unsafe { bpf_xdp_adjust_head(self.ctx, len as i32) } != 0 {
            return Err(DropReason::DecapFailed);
        }
        Ok(())
    }
}

/// Strips the outer headers (`outer_ip_len` bytes of outer IPv4 header, then UDP, and for
/// vxlan the VXLAN and inner Ethernet headers) of a packet from `peer`.
#[inline(always)]
pub fn decapsulate(
    ctx: &impl Strip,
    cfg: &DatapathConfig,
    outer_ip_len: usize,
    peer: &PeerInfo,
) -> Result<(), DropReason> {
    let len = outer_len(ctx.packet(), cfg, &cfg.vtep_mac, outer_ip_len, false)?;
    if cfg.flags & CHECK_INNER_SOURCE != 0 {
        check_source(ctx.packet(), cfg, ETH_HLEN + len, peer)?;
    }
    ctx.strip(len)?;
    if cfg.encap == Encap::Udp as u16 {
        // flannel's udp backend decrements the TTL on receive too.
        let ip = ctx
            .packet()
            .header_mut::<Ipv4Hdr>(ETH_HLEN)
            .ok_or(DropReason::Truncated)?;
        ttl::decrement(ip)?;
    }
    Ok(())
}

/// Strips the outer IPv6, UDP, VXLAN and inner Ethernet headers of a vxlan packet from a
/// dual-stack `peer`, leaving its inner IPv6 packet.
#[inline(always)]
pub fn decapsulate6(
    ctx: &impl Strip,
    cfg: &DatapathConfig,
    cfg6: &DatapathConfig6,
    peer: &PeerInfo6,
) -> Result<(), DropReason> {
    let len = outer_len(ctx.packet(), cfg, &cfg6.vtep_mac, IPV6_HLEN, true)?;
    if cfg.flags & CHECK_INNER_SOURCE != 0 {
        let inner = ctx
            .packet()
            .header::<Ipv6Hdr>(ETH_HLEN + len)
            .ok_or(DropReason::Truncated)?;
        let in_network = in_prefix6(&inner.saddr, &cfg6.network, &cfg6.network_mask);
        if in_network && !in_prefix6(&inner.saddr, &peer.subnet, &peer.subnet_mask) {
            return Err(DropReason::WrongInnerSource);
        }
    }
    ctx.strip(len)
}

/// A peer speaks for its own subnet only: an inner source inside the network must lie in it.
/// Sources outside the network (a peer forwarding an outside client's packet) pass.
#[inline(always)]
fn check_source(
    pkt: Packet,
    cfg: &DatapathConfig,
    inner_ip: usize,
    peer: &PeerInfo,
) -> Result<(), DropReason> {
    let src = pkt
        .header::<Ipv4Hdr>(inner_ip)
        .ok_or(DropReason::Truncated)?
        .saddr_be();
    let in_network = cfg.network_mask_be != 0 && src & cfg.network_mask_be == cfg.network_be;
    if in_network && src & mask_be(peer.prefix_len) != peer.subnet_be {
        return Err(DropReason::WrongInnerSource);
    }
    Ok(())
}

/// How many bytes after the outer Ethernet header to strip, once the inner headers are
/// checked: a kernel vxlan device drops frames not addressed to its own MAC; so do we (our
/// `vtep_mac` of the family). The inner packet must be of the outer one's family (`ipv6`), as
/// flannel carries them.
#[inline(always)]
fn outer_len(
    pkt: Packet,
    cfg: &DatapathConfig,
    vtep_mac: &[u8; 6],
    outer_ip_len: usize,
    ipv6: bool,
) -> Result<usize, DropReason> {
    let udp_end = outer_ip_len + UDP_HLEN;
    if cfg.encap != Encap::Vxlan as u16 {
        return Ok(udp_end);
    }
    let inner = pkt
        .header::<EthHdr>(ETH_HLEN + udp_end + VXLAN_HLEN)
        .ok_or(DropReason::Truncated)?;
    if inner.dst != *vtep_mac {
        return Err(DropReason::WrongMac);
    }
    if (ipv6 && !inner.is_ipv6()) || (!ipv6 && !inner.is_ipv4()) {
        return Err(DropReason::DecapFailed);
    }
    Ok(udp_end + VXLAN_HLEN + ETH_HLEN)
}
