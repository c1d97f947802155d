//! flannel's eBPF programs. Each entry point reads like the packet's path through it.
#![no_std]
#![no_main]

mod decap;
mod direct;
mod encap;
mod events;
mod guard;
mod maps;
mod parse;
mod ttl;

use core::mem::offset_of;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{bpf_redirect, bpf_redirect_peer},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use flannel_common::{
    traffic_key_v4, DatapathConfig, DropReason, Encap, Endpoint, Hook, DIRECT, DIRECT_ROUTING,
    IPV6_ONLY, THROUGH_NETFILTER,
};

use events::Peer;
use guard::Verdict;
use parse::{
    in_prefix6, set_macs, Context, EthHdr, Ipv4Hdr, Ipv6Hdr, TcpHdr, ETH_HLEN, IPPROTO_TCP,
    IPPROTO_UDP, IPV4_HLEN, IPV6_HLEN, UDP_HLEN,
};

/// The TC programs' verdict for what is not ours: the next program or filter on the hook
/// decides. Our programs are TCX links where the kernel has them, which run before every
/// filter; `TC_ACT_OK` would skip other tools' filters there.
const NEXT: i32 = TC_ACT_UNSPEC;

/// XDP on the host NIC (`--bpf-decap=xdp`): drop forged tunnel packets before the stack
/// allocates an skb, and decapsulate genuine ones before GRO.
#[xdp]
pub fn xdp_ingress(ctx: XdpContext) -> u32 {
    let Some(cfg) = maps::config() else {
        return xdp_action::XDP_PASS;
    };
    match xdp_receive(&ctx, cfg) {
        Ok(action) => action,
        Err(reason) => {
            // SAFETY: reading a field of the context.
            let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
            events::dropped(ctx.packet(), cfg, Hook::Xdp, reason, ifindex, Peer::Unknown);
            xdp_action::XDP_DROP
        }
    }
}

#[inline(always)]
fn xdp_receive(ctx: &XdpContext, cfg: &DatapathConfig) -> Result<u32, DropReason> {
    let pkt = ctx.packet();
    let (traffic_key, peer, outer_ip_len) = match guard::check(pkt, cfg) {
        Verdict::Pass => return Ok(xdp_action::XDP_PASS),
        Verdict::Drop(reason) => return Err(reason),
        Verdict::Tunnel {
            traffic_key,
            peer,
            outer_ip_len,
        } => (traffic_key, peer, outer_ip_len),
    };
    let bytes = (pkt.end - pkt.start) as u32;
    decap::decapsulate(ctx, cfg, outer_ip_len, &peer)?;
    maps::count_rx(&traffic_key, bytes);
    Ok(xdp_action::XDP_PASS)
}

/// TC ingress on the host NIC: tunnel packets from current peers are decapsulated and go on
/// into the stack as the inner packet; forged ones are dropped; the rest goes on to the next
/// program or filter on the hook ([`NEXT`]).
#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    let Some(cfg) = maps::config() else {
        return NEXT;
    };
    let Some(header_len) = guard::claimed_header_len(&ctx, cfg) else {
        return direct_receive(&ctx, cfg);
    };
    if !linear(&ctx, header_len) {
        return NEXT;
    }
    match tc_receive(&ctx, cfg) {
        Ok(action) => action,
        Err(reason) => tc_drop(&ctx, cfg, Hook::TcIngress, reason, Peer::Unknown),
    }
}

#[inline(always)]
fn tc_receive(ctx: &TcContext, cfg: &DatapathConfig) -> Result<i32, DropReason> {
    if ctx
        .packet()
        .header::<EthHdr>(0)
        .is_some_and(EthHdr::is_ipv6)
    {
        return tc_receive6(ctx, cfg);
    }
    let (traffic_key, peer, outer_ip_len) = match guard::check(ctx.packet(), cfg) {
        Verdict::Pass => return Ok(NEXT),
        Verdict::Drop(reason) => return Err(reason),
        Verdict::Tunnel {
            traffic_key,
            peer,
            outer_ip_len,
        } => (traffic_key, peer, outer_ip_len),
    };
    let bytes = ctx.len();
    decap::decapsulate(ctx, cfg, outer_ip_len, &peer)?;
    maps::count_rx(&traffic_key, bytes);
    if cfg.flags & THROUGH_NETFILTER != 0 {
        return Ok(TC_ACT_OK);
    }
    if cfg.encap == Encap::Udp as u16 && cfg.gro_ifindex != 0 && gso_size(ctx) == 0 {
        return Ok(to_gro_device(ctx, cfg));
    }
    Ok(deliver(ctx, false))
}

/// `DirectRouting`: a plain packet from a direct peer's subnet to a local container goes
/// straight into it, as a decapsulated one does; anything else goes on to the next program.
#[inline(always)]
fn direct_receive(ctx: &TcContext, cfg: &DatapathConfig) -> i32 {
    if cfg.flags & DIRECT_ROUTING == 0 || cfg.flags & THROUGH_NETFILTER != 0 {
        return NEXT;
    }
    let Some(eth) = ctx.packet().header::<EthHdr>(0) else {
        return NEXT;
    };
    let (ipv4, ipv6) = (eth.is_ipv4(), eth.is_ipv6());
    // (Pulling data invalidates what was read of the packet before.)
    let ip_len = if ipv6 { IPV6_HLEN } else { IPV4_HLEN };
    if !(ipv4 || ipv6) || !linear(ctx, (ETH_HLEN + ip_len) as u32) {
        return NEXT;
    }
    let pkt = ctx.packet();
    let traffic_key = if ipv6 {
        let Some(ip) = pkt.header::<Ipv6Hdr>(ETH_HLEN) else {
            return NEXT;
        };
        match maps::tunnel6_to(ip.saddr) {
            Some(tunnel) if tunnel.flags & DIRECT != 0 => tunnel.remote_ip,
            _ => return NEXT,
        }
    } else {
        let Some(ip) = pkt.header::<Ipv4Hdr>(ETH_HLEN) else {
            return NEXT;
        };
        match maps::tunnel_to(ip.saddr_be()) {
            Some(tunnel) if tunnel.flags & DIRECT != 0 => traffic_key_v4(tunnel.remote_ip_be),
            _ => return NEXT,
        }
    };
    if endpoint(ctx, ipv6).is_none() {
        return NEXT;
    }
    maps::count_rx(&traffic_key, ctx.len());
    deliver(ctx, ipv6)
}

/// udp: nothing merged the frames of the udp format before us, so a decapsulated frame for
/// a local container takes the GRO device, a veth whose far end's GRO merges the inner
/// packets; `tc_merged` there delivers them. (A packet for anyone else goes into the stack.)
#[inline(always)]
fn to_gro_device(ctx: &TcContext, cfg: &DatapathConfig) -> i32 {
    if endpoint(ctx, false).is_none() {
        return TC_ACT_OK;
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(cfg.gro_ifindex, 0) as i32 }
}

/// TC ingress on the far end of the udp GRO device: what GRO merged goes on to its container.
#[classifier]
pub fn tc_merged(ctx: TcContext) -> i32 {
    let ipv6 = ctx
        .packet()
        .header::<EthHdr>(0)
        .is_some_and(EthHdr::is_ipv6);
    let ip_len = if ipv6 { IPV6_HLEN } else { IPV4_HLEN };
    if !linear(&ctx, (ETH_HLEN + ip_len) as u32) {
        return TC_ACT_OK;
    }
    deliver(&ctx, ipv6)
}

/// IPv6 tunnel packets (dual stack, vxlan): decapsulated here, whatever `--bpf-decap` says,
/// and delivered as IPv4 ones are.
#[inline(always)]
fn tc_receive6(ctx: &TcContext, cfg: &DatapathConfig) -> Result<i32, DropReason> {
    let Some(cfg6) = maps::config6() else {
        return Ok(NEXT);
    };
    let (traffic_key, peer) = match guard::check6(ctx.packet(), cfg, cfg6) {
        Verdict::Pass => return Ok(NEXT),
        Verdict::Drop(reason) => return Err(reason),
        Verdict::Tunnel {
            traffic_key, peer, ..
        } => (traffic_key, peer),
    };
    let bytes = ctx.len();
    decap::decapsulate6(ctx, cfg, cfg6, &peer)?;
    maps::count_rx(&traffic_key, bytes);
    if cfg.flags & THROUGH_NETFILTER != 0 {
        return Ok(TC_ACT_OK);
    }
    Ok(deliver(ctx, true))
}

/// A decapsulated packet for a local container goes straight into the container's network
/// namespace: no routing, no bridge, and a GSO packet stays whole (the bridge would segment
/// it, as it still carries the tunnel's GSO type). Anything else goes into the stack.
#[inline(always)]
fn deliver(ctx: &TcContext, ipv6: bool) -> i32 {
    let Some(endpoint) = endpoint(ctx, ipv6) else {
        return TC_ACT_OK;
    };
    if set_macs(ctx, &endpoint.mac, &endpoint.bridge_mac).is_err() {
        return TC_ACT_OK;
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect_peer(endpoint.ifindex, 0) as i32 }
}

/// The local container a decapsulated packet is for, if any.
#[inline(always)]
fn endpoint(ctx: &TcContext, ipv6: bool) -> Option<Endpoint> {
    let pkt = ctx.packet();
    if ipv6 {
        (pkt.header::<Ipv6Hdr>(ETH_HLEN)).and_then(|ip| maps::endpoint6(&ip.daddr))
    } else {
        (pkt.header::<Ipv4Hdr>(ETH_HLEN)).and_then(|ip| maps::endpoint(ip.daddr_be()))
    }
}

/// TC on the overlay device's egress (everything routed to the overlay) and on the
/// container bridge's ingress (container traffic, before routing): packets for a peer's
/// subnet are encapsulated and sent straight out of the NIC (IPv6 GSO packets through the
/// kernel's vxlan encapsulation). Anything else goes on to the next program or filter on
/// the hook ([`NEXT`]): on a container's port `tc_encap` is a TCX program, which runs before
/// every filter there, and `TC_ACT_OK` would skip them.
#[classifier]
pub fn tc_encap(ctx: TcContext) -> i32 {
    let Some(cfg) = maps::config() else {
        return NEXT;
    };
    if cfg.port_be == 0 || !linear(&ctx, (ETH_HLEN + IPV4_HLEN) as u32) {
        return NEXT;
    }
    let pkt = ctx.packet();
    let Some(eth) = pkt.header::<EthHdr>(0) else {
        return NEXT;
    };
    if eth.is_ipv6() {
        return tc_encap6(&ctx, cfg);
    }
    if !eth.is_ipv4() || cfg.flags & IPV6_ONLY != 0 {
        return NEXT;
    }
    let Some(ip) = pkt.header::<Ipv4Hdr>(ETH_HLEN) else {
        return NEXT;
    };
    // Local traffic is never ours to tunnel, whatever the routes map says: our own subnet,
    // and anything outside the network.
    let dst = ip.daddr_be();
    let ours = cfg.subnet_mask_be != 0 && dst & cfg.subnet_mask_be == cfg.subnet_be;
    let outside = cfg.network_mask_be != 0 && dst & cfg.network_mask_be != cfg.network_be;
    if ours || outside {
        return NEXT;
    }
    let Some(tunnel) = maps::tunnel_to(dst) else {
        return NEXT;
    };
    if tunnel.flags & DIRECT != 0 {
        maps::count_tx(&traffic_key_v4(tunnel.remote_ip_be), ctx.len());
        return direct::send(cfg.nic_ifindex, tunnel.remote_ip_be);
    }
    // Too big to tunnel whole: the stack fragments it or answers "fragmentation needed".
    let gso = gso_size(&ctx) != 0;
    if !gso && u32::from(ip.total_len()) > cfg.inner_mtu {
        return NEXT;
    }
    let tunnel = *tunnel;
    let bytes = ctx.len();
    match encap::encapsulate(&ctx, cfg, &tunnel, gso) {
        Ok(send) => {
            maps::count_tx(&traffic_key_v4(tunnel.remote_ip_be), bytes);
            send
        }
        Err(reason) => tc_drop(
            &ctx,
            cfg,
            Hook::TcEncap,
            reason,
            Peer::V4(tunnel.remote_ip_be),
        ),
    }
}

/// IPv6 for a peer's IPv6 subnet: encapsulated here and sent out of the NIC, or, when a GSO
/// packet, handed to the GRO device, whose kernel vxlan encapsulation gives every segment
/// the UDP checksum IPv6 needs.
#[inline(always)]
fn tc_encap6(ctx: &TcContext, cfg: &DatapathConfig) -> i32 {
    let Some(cfg6) = maps::config6() else {
        return NEXT;
    };
    if cfg6.inner_mtu == 0 || !linear(ctx, (ETH_HLEN + IPV6_HLEN) as u32) {
        return NEXT;
    }
    let Some(ip) = ctx.packet().header::<Ipv6Hdr>(ETH_HLEN) else {
        return NEXT;
    };
    let dst = ip.daddr;
    let ours = in_prefix6(&dst, &cfg6.subnet, &cfg6.subnet_mask);
    let outside = !in_prefix6(&dst, &cfg6.network, &cfg6.network_mask);
    if ours || outside {
        return NEXT;
    }
    let Some(tunnel) = maps::tunnel6_to(dst) else {
        return NEXT;
    };
    if tunnel.flags & DIRECT != 0 {
        maps::count_tx(&tunnel.remote_ip, ctx.len());
        return direct::send6(cfg.nic_ifindex, &tunnel.remote_ip);
    }
    // At the overlay device the stack has applied the tunnel's MTU already. At the bridge,
    // a packet (or a GSO packet's segment) too big for it takes the stack's way, which
    // answers "packet too big".
    // SAFETY: reading a field of the skb behind the context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let gso_size = gso_size(ctx);
    if ifindex != cfg6.overlay_ifindex && !fits6(ctx, ip, cfg6.inner_mtu, gso_size) {
        return NEXT;
    }
    let tunnel = *tunnel;
    let bytes = ctx.len();
    match encap::encapsulate6(ctx, cfg, cfg6, &tunnel, gso_size != 0) {
        Ok(Some(send)) => {
            maps::count_tx(&tunnel.remote_ip, bytes);
            send
        }
        Ok(None) => NEXT,
        Err(reason) => tc_drop(ctx, cfg, Hook::TcEncap, reason, Peer::V6(tunnel.remote_ip)),
    }
}

/// True when the IPv6 packet `ip`, or each segment of a GSO packet (`gso_size` not 0), is at
/// most `mtu` long. A GSO packet of a transport other than TCP or UDP is never taken to fit.
#[inline(always)]
fn fits6(ctx: &TcContext, ip: &Ipv6Hdr, mtu: u32, gso_size: u32) -> bool {
    if gso_size == 0 {
        return (IPV6_HLEN + usize::from(u16::from_be_bytes(ip.payload_len))) as u32 <= mtu;
    }
    let transport_len = match ip.next_header {
        IPPROTO_TCP => {
            let at = ETH_HLEN + IPV6_HLEN + offset_of!(TcpHdr, data_offset);
            match ctx.load::<u8>(at) {
                Ok(words) => u32::from(words >> 4) * 4,
                Err(_) => return false,
            }
        }
        IPPROTO_UDP => UDP_HLEN as u32,
        _ => return false,
    };
    IPV6_HLEN as u32 + transport_len + gso_size <= mtu
}

/// The segment size of a GSO packet, to be segmented later; 0 for any other.
#[inline(always)]
fn gso_size(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the skb behind the context.
    unsafe { (*ctx.skb.skb).gso_size }
}

/// Makes sure the first `len` bytes (or the whole packet, if shorter) are linear.
#[inline(always)]
fn linear(ctx: &TcContext, len: u32) -> bool {
    let wanted = len.min(ctx.len());
    ((ctx.data_end() - ctx.data()) as u32) >= wanted || ctx.pull_data(wanted).is_ok()
}

#[inline(always)]
fn tc_drop(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    hook: Hook,
    reason: DropReason,
    peer: Peer,
) -> i32 {
    // SAFETY: reading a field of the skb behind the context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    events::dropped(ctx.packet(), cfg, hook, reason, ifindex, peer);
    TC_ACT_SHOT
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
