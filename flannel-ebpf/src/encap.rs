//! Encapsulation: grow the packet in front of its IPv4 header and write the outer headers
//! (IPv4, UDP, and for vxlan the VXLAN header and inner Ethernet) from the peer's template,
//! the way the kernel's `test_tc_tunnel` grows it, so a GSO packet stays one packet and is
//! segmented late. IPv6 needs an outer UDP checksum: we write it for single packets, and
//! leave GSO packets, whose every segment needs its own, to the kernel's vxlan.

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_tunnel_key, BPF_F_ADJ_ROOM_ENCAP_L2_ETH,
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        BPF_F_ADJ_ROOM_FIXED_GSO, BPF_F_DONT_FRAGMENT, BPF_F_TUNINFO_IPV6,
    },
    helpers::{bpf_get_hash_recalc, bpf_redirect, bpf_redirect_neigh, bpf_skb_set_tunnel_key},
    programs::TcContext,
};
use core::mem::offset_of;

use flannel_common::{
    headers as csum, DatapathConfig, DatapathConfig6, DropReason, Encap, Tunnel, Tunnel6,
    UDP_OVERHEAD, VXLAN6_OVERHEAD, VXLAN_SOURCE_PORTS,
};

use crate::{
    parse::{
        set_macs, Context, EthHdr, Header, Ipv4Hdr, Ipv6Hdr, TunnelHeader6, UdpHdr, VxlanHdr,
        ETH_HLEN, ETH_P_IPV6, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN, IPV6_HLEN,
    },
    ttl,
};

const GROW_FLAGS: u64 =
    (BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP) as u64;
/// The inner Ethernet header of VXLAN: its length goes in the top byte of the flags (the C
/// macro `BPF_F_ADJ_ROOM_ENCAP_L2(len)`).
const VXLAN_GROW_FLAGS: u64 =
    GROW_FLAGS | BPF_F_ADJ_ROOM_ENCAP_L2_ETH as u64 | ((ETH_HLEN as u64) << 56);

/// Outer IPv6, UDP and VXLAN and the inner Ethernet header, for an inner IPv6 packet.
const VXLAN6_GROW_FLAGS: u64 = (BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP) as u64
    | BPF_F_ADJ_ROOM_ENCAP_L2_ETH as u64
    | ((ETH_HLEN as u64) << 56);

/// What `bpf_skb_adjust_room` says of a packet already marked as tunnelled.
const EALREADY: i64 = -114;

/// Outer IPv4 and UDP: what the udp format puts in front.
const UDP_FORMAT_LEN: usize = UDP_OVERHEAD as usize;

/// The kernel's formula spans the range's ends' difference.
const SPORT_MIN: u32 = VXLAN_SOURCE_PORTS.0 as u32;
const SPORT_RANGE: u32 = (VXLAN_SOURCE_PORTS.1 - VXLAN_SOURCE_PORTS.0) as u32;

/// The outer UDP source port for a flow's `hash`, picked as the kernel's vxlan picks it
/// (`udp_flow_src_port`), so ECMP and RSS spread flows as they do for the kernel's vxlan,
/// and a flow whose packets take both ways (ours, and the GRO device's for GSO packets it
/// cannot have ours) stays one outer flow: one receive queue, one GRO flow, no reordering.
#[inline(always)]
fn source_port(hash: u32) -> [u8; 2] {
    let hash = hash ^ (hash << 16);
    let port = SPORT_MIN + ((u64::from(hash) * u64::from(SPORT_RANGE)) >> 32) as u32;
    (port as u16).to_be_bytes()
}

/// Grows the packet in front of its IPv4 header and writes the peer's prebuilt outer headers
/// there, with this packet's lengths, IPv4 checksum and UDP source port; returns the TC
/// action that sends it out of the NIC. `gso`: the packet is to be segmented later.
pub fn encapsulate(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    tunnel: &Tunnel,
    gso: bool,
) -> Result<i32, DropReason> {
    let vxlan = cfg.encap == Encap::Vxlan as u16;
    if !vxlan {
        // flannel's udp backend decrements the TTL on send.
        let ip = ctx
            .packet()
            .header_mut::<Ipv4Hdr>(ETH_HLEN)
            .ok_or(DropReason::EncapFailed)?;
        ttl::decrement(ip)?;
    }
    let overhead = if vxlan {
        Encap::Vxlan.overhead()
    } else {
        Encap::Udp.overhead()
    };
    // A GSO packet's lengths are per segment once segmented; the clamp only keeps the field
    // in range meanwhile.
    let outer_len = (ctx.len() - ETH_HLEN as u32 + overhead).min(0xffff) as u16;
    // SAFETY: the helper only reads the skb behind the context.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    let flags = if vxlan { VXLAN_GROW_FLAGS } else { GROW_FLAGS };
    match ctx.adjust_room(overhead as i32, BPF_ADJ_ROOM_MAC, flags) {
        Ok(()) => {}
        // Still marked as tunnelled (see `via_kernel`). One packet, not to be segmented later,
        // needs no tunnel GSO state: plain room for the outer headers does.
        Err(EALREADY) if !gso => ctx
            .adjust_room(overhead as i32, BPF_ADJ_ROOM_MAC, 0)
            .map_err(|_| DropReason::EncapFailed)?,
        Err(EALREADY) if vxlan && cfg.gro_ifindex != 0 => return via_kernel(ctx, cfg, tunnel),
        Err(_) => return Err(DropReason::EncapFailed),
    }

    let mut header = tunnel.header;
    header.ip.tot_len = outer_len.to_be_bytes();
    header.ip.check = csum::fold(tunnel.ip_sum + u32::from(outer_len)).to_be_bytes();
    header.udp.source = source_port(hash);
    header.udp.len = (outer_len - IPV4_HLEN as u16).to_be_bytes();
    let stored = if vxlan {
        ctx.store(ETH_HLEN, &header, 0)
    } else {
        let outer = header
            .as_bytes()
            .first_chunk::<UDP_FORMAT_LEN>()
            .ok_or(DropReason::EncapFailed)?;
        ctx.store(ETH_HLEN, outer, 0)
    };
    stored.map_err(|_| DropReason::EncapFailed)?;
    // The neighbour subsystem fills in the outer Ethernet header for the NIC.
    // SAFETY: plain helper call; no pointers passed.
    Ok(unsafe { bpf_redirect_neigh(cfg.nic_ifindex, core::ptr::null_mut(), 0, 0) as i32 })
}

/// `bpf_skb_adjust_room` refuses to encapsulate a packet still marked as tunnelled: one that
/// we decapsulated and a container now forwards to another host. A GRO aggregate keeps that
/// mark and its tunnel GSO state (this kernel has no flag to clear them on decap), and so does
/// every frame on a veth underlay, which hands on the skb its sender encapsulated. The
/// kernel's vxlan device in metadata mode, the GRO device, encapsulates an aggregate instead,
/// in the same wire format: the inner Ethernet header from our VTEP MAC to the peer's, then
/// VXLAN to the peer's public IP.
fn via_kernel(ctx: &TcContext, cfg: &DatapathConfig, tunnel: &Tunnel) -> Result<i32, DropReason> {
    // SAFETY: an all-zero key is valid; the fields set are plain integers.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.__bindgen_anon_1.remote_ipv4 = u32::from_be(tunnel.remote_ip_be);
    // The template's inner Ethernet header: from our VTEP MAC to the peer's.
    let inner = &tunnel.header.inner;
    send_via_kernel(ctx, cfg, inner, key, BPF_F_DONT_FRAGMENT as u64)
}

/// IPv6 to a peer: one packet, not to be segmented later, whose outer UDP checksum can be
/// had from its headers alone (see `inner_sum`), is encapsulated here, in flannel's IPv6
/// vxlan format, and sent straight out of the NIC; any other goes by the GRO device. None
/// (untouched) for those while there is no GRO device: a classic vxlan device we take over
/// from holds the port until our programs are attached, and its routes carry them meanwhile.
pub fn encapsulate6(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    cfg6: &DatapathConfig6,
    tunnel: &Tunnel6,
    gso: bool,
) -> Result<Option<i32>, DropReason> {
    let inner = if gso { None } else { inner_sum(ctx) };
    let Some(inner) = inner else {
        return via_kernel6(ctx, cfg, cfg6, tunnel);
    };
    // SAFETY: the helper only reads the skb behind the context.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    let grow = VXLAN6_OVERHEAD as i32;
    if ctx
        .adjust_room(grow, BPF_ADJ_ROOM_MAC, VXLAN6_GROW_FLAGS)
        .is_err()
    {
        // Unchanged (still marked as tunnelled, say): the kernel's encapsulation takes it.
        return via_kernel6(ctx, cfg, cfg6, tunnel);
    }
    let udp_len = (ctx.len() - (ETH_HLEN + IPV6_HLEN) as u32) as u16;
    let mut h = TunnelHeader6 {
        ip: Ipv6Hdr::new(cfg6.local_ip, tunnel.remote_ip, IPPROTO_UDP, udp_len),
        udp: UdpHdr {
            source: source_port(hash),
            dest: cfg.port_be.to_ne_bytes(),
            len: udp_len.to_be_bytes(),
            check: [0; 2],
        },
        vxlan: VxlanHdr::new(cfg.vni),
        inner: EthHdr::new(tunnel.remote_mac, cfg6.vtep_mac, ETH_P_IPV6),
    };
    // The pseudo-header (addresses, length, protocol), the outer UDP header on, and the
    // inner packet's share.
    let pseudo = csum::sum16(&h.ip.saddr) + csum::sum16(&h.ip.daddr);
    let pseudo = pseudo + u32::from(udp_len) + u32::from(IPPROTO_UDP);
    let outer = csum::sum16(h.udp.as_bytes())
        + csum::sum16(h.vxlan.as_bytes())
        + csum::sum16(h.inner.as_bytes());
    h.udp.check = match csum::fold(pseudo + outer + inner) {
        0 => 0xffff, // 0 means "no checksum" in UDP
        check => check,
    }
    .to_be_bytes();
    ctx.store(ETH_HLEN, &h, 0)
        .map_err(|_| DropReason::EncapFailed)?;
    // SAFETY: plain helper call; no pointers passed.
    Ok(Some(unsafe {
        bpf_redirect_neigh(cfg.nic_ifindex, core::ptr::null_mut(), 0, 0) as i32
    }))
}

/// The one's-complement sum of the inner IPv6 packet (at `ETH_HLEN`) as the outer UDP
/// checksum covers it, from its header alone: a TCP, UDP or ICMPv6 packet with its checksum
/// right (or for the device to fill in) sums, over its upper-layer part, to the negated sum
/// of its pseudo-header, which shares the addresses and length with the IPv6 header (the
/// kernel's local checksum offload rests on the same). None for other packets (extension
/// headers, fragments) and for UDP without a checksum.
#[inline(always)]
fn inner_sum(ctx: &TcContext) -> Option<u32> {
    let ip = ctx.packet().header::<Ipv6Hdr>(ETH_HLEN)?;
    let next = ip.next_header;
    match next {
        IPPROTO_TCP | IPPROTO_ICMPV6 => {}
        IPPROTO_UDP => {
            let check_at = ETH_HLEN + IPV6_HLEN + offset_of!(UdpHdr, check);
            let check = ctx.load::<[u8; 2]>(check_at).ok()?;
            if check == [0, 0] {
                return None;
            }
        }
        _ => return None,
    }
    // Header minus pseudo-header: the addresses and the length cancel, which leaves the
    // first word pair, the next-header/hop-limit word, and the pseudo-header's protocol
    // word subtracted (one's complement: its complement added).
    let v = &ip.version_class_flow;
    Some(
        csum::sum16(v)
            + u32::from(u16::from_be_bytes([next, ip.hop_limit]))
            + u32::from(!u16::from(next)),
    )
}

/// IPv6 by the GRO device, whose kernel vxlan encapsulation gives the outer UDP the checksum
/// IPv6 needs (flannel's IPv6 vxlan device drops packets without one), for a GSO packet's
/// every segment too. None (untouched) while there is no GRO device.
fn via_kernel6(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    cfg6: &DatapathConfig6,
    tunnel: &Tunnel6,
) -> Result<Option<i32>, DropReason> {
    if cfg.gro_ifindex == 0 {
        return Ok(None);
    }
    // SAFETY: an all-zero key is valid; the fields set are plain integers.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // The kernel copies IPv6 addresses as bytes, in network order.
    key.__bindgen_anon_1.remote_ipv6 = words(&tunnel.remote_ip);
    key.__bindgen_anon_3.local_ipv6 = words(&cfg6.local_ip);
    let inner = EthHdr::new(tunnel.remote_mac, cfg6.vtep_mac, ETH_P_IPV6);
    send_via_kernel(ctx, cfg, &inner, key, BPF_F_TUNINFO_IPV6 as u64).map(Some)
}

/// Addresses the packet's Ethernet header as the tunnel's `inner` one, puts the tunnel
/// `key` (with our VNI and a TTL of 64) on the packet and redirects it to the GRO device.
#[inline(always)]
fn send_via_kernel(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    inner: &EthHdr,
    mut key: bpf_tunnel_key,
    flags: u64,
) -> Result<i32, DropReason> {
    set_macs(ctx, &inner.dst, &inner.src).map_err(|_| DropReason::EncapFailed)?;
    key.tunnel_id = cfg.vni;
    key.tunnel_ttl = 64;
    // SAFETY: the key lives on our stack for the call; its size is passed.
    let set = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            &mut key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            flags,
        )
    };
    if set != 0 {
        return Err(DropReason::EncapFailed);
    }
    // SAFETY: plain helper call.
    Ok(unsafe { bpf_redirect(cfg.gro_ifindex, 0) as i32 })
}

/// An IPv6 address's bytes as the four words of `bpf_tunnel_key`.
#[inline(always)]
fn words(ip: &[u8; 16]) -> [u32; 4] {
    let mut words = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        words[i] = u32::from_ne_bytes([ip[4 * i], ip[4 * i + 1], ip[4 * i + 2], ip[4 * i + 3]]);
        i += 1;
    }
    words
}
