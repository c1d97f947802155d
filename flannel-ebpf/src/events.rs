//! Drops: every one counted, and reported for `flanneld monitor` (what was dropped, why, from
//! or to which peer) in a ring buffer. Each CPU reports at most `EVENTS_PER_SECOND`; past that
//! a drop costs one counter increment, and the next event says how many were left out.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use flannel_common::{
    event_addr_v4, DatapathConfig, DropEvent, DropReason, Encap, Hook, EVENTS_BYTES,
    EVENTS_PER_SECOND,
};

use crate::{
    guard, maps,
    parse::{
        Ipv4Hdr, Ipv6Hdr, Packet, UdpHdr, ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP, IPV6_HLEN, UDP_HLEN,
        VXLAN_HLEN,
    },
};

/// The tunnel's other end, when the caller knows it.
#[derive(Clone, Copy)]
pub enum Peer {
    Unknown,
    /// Network byte order.
    V4(u32),
    V6([u8; 16]),
}

#[map(name = "FLANNEL_EVENTS_V2")]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// This CPU's current one-second window.
#[repr(C)]
pub struct Window {
    start_ns: u64,
    reported: u32,
    suppressed: u32,
}

#[map(name = "FLANNEL_EVENT_RATE_V1")]
static RATE: PerCpuArray<Window> = PerCpuArray::with_max_entries(1, 0);

const SECOND_NS: u64 = 1_000_000_000;

/// Counts a drop of `pkt` (the per-CPU counters behind `/metrics` count them all) and reports
/// it, as the packet is now, by `hook` on `ifindex`; `peer` is the tunnel's other end if
/// the caller knows it (a received tunnel packet names its own).
#[inline(always)]
pub fn dropped(
    pkt: Packet,
    cfg: &DatapathConfig,
    hook: Hook,
    reason: DropReason,
    ifindex: u32,
    peer: Peer,
) {
    maps::count_drop(reason);
    let Some(window) = RATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; nothing else runs on this CPU while the program does.
    let window = unsafe { &mut *window };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(window.start_ns) >= SECOND_NS {
        window.start_ns = now;
        window.reported = 0;
    }
    if window.reported >= EVENTS_PER_SECOND {
        window.suppressed += 1;
        return;
    }
    let (peer_family, peer) = match peer {
        Peer::Unknown => (0, [0; 16]),
        Peer::V4(addr_be) => (4, event_addr_v4(addr_be)),
        Peer::V6(addr) => (6, addr),
    };
    let mut event = DropEvent {
        reason: reason as u32,
        suppressed: window.suppressed,
        ifindex,
        peer_family,
        peer,
        hook: hook as u8,
        ..DropEvent::default()
    };
    describe(pkt, cfg, &mut event);
    if EVENTS.output::<DropEvent>(&event, 0).is_ok() {
        window.reported += 1;
        window.suppressed = 0;
    } else {
        window.suppressed += 1;
    }
}

/// Fills in the peer and the inner packet's addresses and ports: behind the outer headers
/// of a tunnel packet for us (of either family), else the packet itself.
#[inline(always)]
fn describe(pkt: Packet, cfg: &DatapathConfig, event: &mut DropEvent) {
    let vxlan = if cfg.encap == Encap::Vxlan as u16 {
        VXLAN_HLEN + ETH_HLEN
    } else {
        0
    };
    let cfg6 = maps::config6();
    let inner = if let Some(outer) = guard::claimed_tunnel(pkt, cfg) {
        (event.peer_family, event.peer) = (4, event_addr_v4(outer.saddr_be()));
        ETH_HLEN + outer.header_len() + UDP_HLEN + vxlan
    } else if let Some(outer) = cfg6.and_then(|cfg6| guard::claimed_tunnel6(pkt, cfg, cfg6)) {
        (event.peer_family, event.peer) = (6, outer.saddr);
        ETH_HLEN + IPV6_HLEN + UDP_HLEN + vxlan
    } else {
        ETH_HLEN
    };
    // Any IP packet holds an IPv4 header's worth: its first nibble says which it is.
    let Some(ip) = pkt.header::<Ipv4Hdr>(inner) else {
        return;
    };
    let ports_at = match ip.version() {
        4 => {
            event.family = 4;
            event.src = event_addr_v4(ip.saddr_be());
            event.dst = event_addr_v4(ip.daddr_be());
            event.protocol = ip.protocol;
            if ip.is_later_fragment() {
                return;
            }
            inner + ip.header_len()
        }
        6 => {
            let Some(ip) = pkt.header::<Ipv6Hdr>(inner) else {
                return;
            };
            event.family = 6;
            (event.src, event.dst) = (ip.saddr, ip.daddr);
            event.protocol = ip.next_header;
            inner + IPV6_HLEN
        }
        _ => return,
    };
    if !matches!(event.protocol, IPPROTO_TCP | IPPROTO_UDP) {
        return;
    }
    // TCP's ports lie where UDP's do.
    if let Some(udp) = pkt.header::<UdpHdr>(ports_at) {
        event.sport_be = u16::from_ne_bytes(udp.source);
        event.dport_be = u16::from_ne_bytes(udp.dest);
    }
}
