//! Encapsulation: grow the packet in front of its IPv4 header and write the outer headers
//! (IPv4, UDP, and for vxlan the VXLAN header and inner Ethernet) from the peer's template,
//! the way the kernel's `test_tc_tunnel` grows it, so a GSO packet stays one packet and is
//! segmented late.

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L2_ETH,
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO,
    },
    helpers::bpf_get_hash_recalc,
    programs::TcContext,
};
use flannel_common::{DatapathConfig, DropReason, Encap, Tunnel};

use crate::{csum, parse::ETH_HLEN, ttl};

const GROW_FLAGS: u64 =
    (BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP) as u64;
/// The inner Ethernet header of VXLAN: its length goes in the top byte of the flags (the C
/// macro `BPF_F_ADJ_ROOM_ENCAP_L2(len)`).
const VXLAN_GROW_FLAGS: u64 =
    GROW_FLAGS | BPF_F_ADJ_ROOM_ENCAP_L2_ETH as u64 | ((ETH_HLEN as u64) << 56);

/// Outer IPv4 and UDP: what the udp format puts in front.
const OUTER_LEN: usize = 28;

/// Ephemeral source ports, as the kernel's vxlan picks them, so ECMP and RSS spread flows.
const SPORT_MIN: u32 = 32768;
const SPORT_RANGE: u32 = 61000 - 32768;

/// Grows the packet in front of its IPv4 header and writes the peer's prebuilt outer headers
/// there, with this packet's lengths, IPv4 checksum and UDP source port.
pub fn encapsulate(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    tunnel: &Tunnel,
) -> Result<(), DropReason> {
    let vxlan = cfg.encap == Encap::Vxlan as u16;
    if !vxlan {
        // flannel's udp backend decrements the TTL on send.
        ttl::decrement(ctx)?;
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
    ctx.adjust_room(overhead as i32, BPF_ADJ_ROOM_MAC, flags)
        .map_err(|_| DropReason::EncapFailed)?;

    let mut header = tunnel.header;
    header[2..4].copy_from_slice(&outer_len.to_be_bytes());
    let check = csum::fold(tunnel.ip_sum + u32::from(outer_len));
    header[10..12].copy_from_slice(&check.to_be_bytes());
    let sport = (SPORT_MIN + hash % SPORT_RANGE) as u16;
    header[20..22].copy_from_slice(&sport.to_be_bytes());
    header[24..26].copy_from_slice(&(outer_len - 20).to_be_bytes());
    let stored = if vxlan {
        ctx.store(ETH_HLEN, &header, 0)
    } else {
        let outer = header
            .first_chunk::<OUTER_LEN>()
            .ok_or(DropReason::EncapFailed)?;
        ctx.store(ETH_HLEN, outer, 0)
    };
    stored.map_err(|_| DropReason::EncapFailed)
}
