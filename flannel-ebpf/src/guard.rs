//! The tunnel guard: only current peers may send us tunnel packets, and only with our VNI.
//!
//! Anything that is not a tunnel packet for us passes untouched; a packet that claims our
//! tunnel port but fails a check is dropped with a reason; a genuine one is handed to decap.

use core::mem::offset_of;

use aya_ebpf::programs::TcContext;
use flannel_common::{
    traffic_key_v4, DatapathConfig, DatapathConfig6, DropReason, Encap, PeerInfo, PeerInfo6,
    IPV6_ONLY,
};

use crate::{
    maps,
    parse::{
        Context, EthHdr, Ipv4Hdr, Ipv6Hdr, Packet, UdpHdr, VxlanHdr, ETH_HLEN, ETH_P_IP,
        ETH_P_IPV6, IPPROTO_UDP, IPV4_HLEN, IPV6_HLEN, UDP_HLEN, VXLAN_HLEN,
    },
};

pub enum Verdict<P = PeerInfo> {
    Pass,
    Drop(DropReason),
    /// A tunnel packet from a current peer: `outer_ip_len` bytes of outer IP header;
    /// `traffic_key` keys its traffic counters (its public address).
    Tunnel {
        traffic_key: [u8; 16],
        peer: P,
        outer_ip_len: usize,
    },
}

/// How many bytes the guard and decap read of a packet that claims our tunnel port (UDP to
/// it): its headers up to the end of the inner IP header. Found without pulling, so that TC
/// pulls into the linear area only what it reads: never a byte of another packet, nor a
/// tunnel packet's payload (which would copy it out of its pages).
#[inline(always)]
pub fn claimed_header_len(ctx: &TcContext, cfg: &DatapathConfig) -> Option<u32> {
    let ipv6 = match u16::from_be_bytes(peek(ctx, offset_of!(EthHdr, ether_type))?) {
        ETH_P_IP => false,
        ETH_P_IPV6 => true,
        _ => return None,
    };
    let (outer_ip_len, protocol_at) = if ipv6 {
        (IPV6_HLEN, ETH_HLEN + offset_of!(Ipv6Hdr, next_header))
    } else {
        let version_ihl = peek::<u8>(ctx, ETH_HLEN + offset_of!(Ipv4Hdr, version_ihl))?;
        (
            usize::from(version_ihl & 0xf) * 4,
            ETH_HLEN + offset_of!(Ipv4Hdr, protocol),
        )
    };
    let port_be = u16::from_ne_bytes(peek(
        ctx,
        ETH_HLEN + outer_ip_len + offset_of!(UdpHdr, dest),
    )?);
    if peek::<u8>(ctx, protocol_at)? != IPPROTO_UDP || port_be != cfg.port_be {
        return None;
    }
    let inner_eth = if cfg.encap == Encap::Vxlan as u16 {
        VXLAN_HLEN + ETH_HLEN
    } else {
        0
    };
    let inner_ip_len = if ipv6 { IPV6_HLEN } else { IPV4_HLEN };
    Some((ETH_HLEN + outer_ip_len + UDP_HLEN + inner_eth + inner_ip_len) as u32)
}

/// A `T` at `offset`: read in place when the linear bytes hold it (a NIC's frame mostly
/// has its headers there), else loaded from wherever it lies (a helper call).
#[inline(always)]
fn peek<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    match ctx.packet().header::<T>(offset) {
        Some(value) => Some(*value),
        None => ctx.load::<T>(offset).ok(),
    }
}

/// The outer IPv4 header of a packet that claims to be one of our tunnel packets: UDP to our
/// tunnel port on our address. Anything else is not ours to judge.
#[inline(always)]
pub fn claimed_tunnel<'a>(pkt: Packet, cfg: &DatapathConfig) -> Option<&'a Ipv4Hdr> {
    if cfg.port_be == 0 || cfg.flags & IPV6_ONLY != 0 || !pkt.header::<EthHdr>(0)?.is_ipv4() {
        return None;
    }
    let ip = pkt.header::<Ipv4Hdr>(ETH_HLEN)?;
    let ip_len = ip.header_len();
    if ip.protocol != IPPROTO_UDP || ip_len < IPV4_HLEN || ip.is_later_fragment() {
        return None;
    }
    if cfg.local_ip_be != 0 && ip.daddr_be() != cfg.local_ip_be {
        return None;
    }
    let udp = pkt.header::<UdpHdr>(ETH_HLEN + ip_len)?;
    (u16::from_ne_bytes(udp.dest) == cfg.port_be).then_some(ip)
}

#[inline(always)]
pub fn check(pkt: Packet, cfg: &DatapathConfig) -> Verdict {
    let Some(ip) = claimed_tunnel(pkt, cfg) else {
        return Verdict::Pass;
    };
    let ip_len = ip.header_len();
    let Some(peer) = maps::peer(ip.saddr_be()) else {
        return Verdict::Drop(DropReason::UnknownPeer);
    };
    if let Err(reason) = check_vni(pkt, cfg, ETH_HLEN + ip_len + UDP_HLEN) {
        return Verdict::Drop(reason);
    }
    Verdict::Tunnel {
        traffic_key: traffic_key_v4(ip.saddr_be()),
        peer,
        outer_ip_len: ip_len,
    }
}

/// The outer IPv6 header of a packet that claims to be one of our tunnel packets: UDP (no
/// extension headers) to our tunnel port on our public IPv6.
#[inline(always)]
pub fn claimed_tunnel6<'a>(
    pkt: Packet,
    cfg: &DatapathConfig,
    cfg6: &DatapathConfig6,
) -> Option<&'a Ipv6Hdr> {
    let ip = pkt.header::<Ipv6Hdr>(ETH_HLEN)?;
    if cfg.port_be == 0 || ip.next_header != IPPROTO_UDP || ip.daddr != cfg6.local_ip {
        return None;
    }
    let udp = pkt.header::<UdpHdr>(ETH_HLEN + IPV6_HLEN)?;
    (u16::from_ne_bytes(udp.dest) == cfg.port_be).then_some(ip)
}

/// The IPv6 guard: a VXLAN packet (UDP, no extension headers, to our port on our public
/// IPv6) from a current dual-stack peer, with our VNI.
#[inline(always)]
pub fn check6(pkt: Packet, cfg: &DatapathConfig, cfg6: &DatapathConfig6) -> Verdict<PeerInfo6> {
    let Some(ip) = claimed_tunnel6(pkt, cfg, cfg6) else {
        return Verdict::Pass;
    };
    let Some(peer) = maps::peer6(&ip.saddr) else {
        return Verdict::Drop(DropReason::UnknownPeer);
    };
    if let Err(reason) = check_vni(pkt, cfg, ETH_HLEN + IPV6_HLEN + UDP_HLEN) {
        return Verdict::Drop(reason);
    }
    Verdict::Tunnel {
        traffic_key: ip.saddr,
        peer,
        outer_ip_len: IPV6_HLEN,
    }
}

/// A vxlan packet's VXLAN header (at `at`) must carry our VNI.
#[inline(always)]
fn check_vni(pkt: Packet, cfg: &DatapathConfig, at: usize) -> Result<(), DropReason> {
    if cfg.encap != Encap::Vxlan as u16 {
        return Ok(());
    }
    let vxlan = pkt.header::<VxlanHdr>(at).ok_or(DropReason::Truncated)?;
    if *vxlan != VxlanHdr::new(cfg.vni) {
        return Err(DropReason::WrongVni);
    }
    Ok(())
}
