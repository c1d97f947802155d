//! Drops: every one counted, and reported for `flanneld monitor` (what was dropped, why, from
//! or to which peer) in a ring buffer. Each CPU reports at most `EVENTS_PER_SECOND`; past that
//! a drop costs one counter increment, and the next event says how many were left out.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use flannel_common::{
    DatapathConfig, DropEvent, DropReason, Encap, Hook, EVENTS_BYTES, EVENTS_PER_SECOND,
};

use crate::{
    guard, maps,
    parse::{Ipv4Hdr, Packet, ETH_HLEN},
};

#[map(name = "FLANNEL_EVENTS_V1")]
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
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// Counts a drop of `pkt` (the per-CPU counters behind `/metrics` count them all) and reports
/// it, as the packet is now, by `hook` on `ifindex`; `peer_be` is the tunnel's other end if
/// the caller knows it (a received tunnel packet names its own).
#[inline(always)]
pub fn dropped(
    pkt: Packet,
    cfg: &DatapathConfig,
    hook: Hook,
    reason: DropReason,
    ifindex: u32,
    peer_be: u32,
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
    let mut event = DropEvent {
        reason: reason as u32,
        suppressed: window.suppressed,
        ifindex,
        peer_be,
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
/// of a tunnel packet for us, else the packet itself.
#[inline(always)]
fn describe(pkt: Packet, cfg: &DatapathConfig, event: &mut DropEvent) {
    let inner = match guard::claimed_tunnel(pkt, cfg) {
        Some(outer) => {
            event.peer_be = outer.saddr_be();
            let vxlan = if cfg.encap == Encap::Vxlan as u16 {
                8 + ETH_HLEN
            } else {
                0
            };
            ETH_HLEN + outer.header_len() + 8 + vxlan
        }
        None => ETH_HLEN,
    };
    let Some(ip) = pkt.header::<Ipv4Hdr>(inner) else {
        return;
    };
    if ip.version_ihl >> 4 != 4 {
        return;
    }
    event.src_be = ip.saddr_be();
    event.dst_be = ip.daddr_be();
    event.protocol = ip.protocol;
    if !matches!(ip.protocol, IPPROTO_TCP | IPPROTO_UDP) || ip.is_later_fragment() {
        return;
    }
    if let Some(ports) = pkt.header::<[[u8; 2]; 2]>(inner + ip.header_len()) {
        event.sport_be = u16::from_ne_bytes(ports[0]);
        event.dport_be = u16::from_ne_bytes(ports[1]);
    }
}
