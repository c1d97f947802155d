//! Encapsulation: grow the packet in front of its IPv4 header and write the outer headers
//! (IPv4, UDP, and for vxlan the VXLAN header and inner Ethernet), the way the kernel's
//! `test_tc_tunnel` does, so a GSO packet stays one packet and is segmented late.

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

/// Outer IPv4 and UDP.
const OUTER_LEN: usize = 28;
/// VXLAN header and inner Ethernet.
const VXLAN_LEN: usize = 8 + ETH_HLEN;

/// Ephemeral source ports, as the kernel's vxlan picks them, so ECMP and RSS spread flows.
const SPORT_MIN: u32 = 32768;
const SPORT_RANGE: u32 = 61000 - 32768;

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
    let outer_len = (ctx.len() - ETH_HLEN as u32 + overhead).min(0xffff) as u16;
    // SAFETY: the helper only reads the skb behind the context.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    let flags = if vxlan { VXLAN_GROW_FLAGS } else { GROW_FLAGS };
    ctx.adjust_room(overhead as i32, BPF_ADJ_ROOM_MAC, flags)
        .map_err(|_| DropReason::EncapFailed)?;

    let mut outer = [0u8; OUTER_LEN];
    outer[0] = 0x45;
    outer[2..4].copy_from_slice(&outer_len.to_be_bytes());
    outer[6] = 0x40; // DF
    outer[8] = 64;
    outer[9] = 17;
    outer[12..16].copy_from_slice(&cfg.local_ip_be.to_ne_bytes());
    outer[16..20].copy_from_slice(&tunnel.remote_ip_be.to_ne_bytes());
    let mut ip = [0u8; 20];
    ip.copy_from_slice(&outer[..20]);
    outer[10..12].copy_from_slice(&csum::ipv4_header(&ip).to_be_bytes());
    let sport = (SPORT_MIN + hash % SPORT_RANGE) as u16;
    outer[20..22].copy_from_slice(&sport.to_be_bytes());
    outer[22..24].copy_from_slice(&cfg.port_be.to_ne_bytes());
    outer[24..26].copy_from_slice(&(outer_len - 20).to_be_bytes());
    // outer[26..28]: UDP checksum 0, legal over IPv4.
    ctx.store(ETH_HLEN, &outer, 0)
        .map_err(|_| DropReason::EncapFailed)?;

    if vxlan {
        let mut header = [0u8; VXLAN_LEN];
        header[0] = 0x08;
        header[4..8].copy_from_slice(&(cfg.vni << 8).to_be_bytes());
        header[8..14].copy_from_slice(&tunnel.vtep_mac);
        header[14..20].copy_from_slice(&cfg.vtep_mac);
        header[20..22].copy_from_slice(&0x0800u16.to_be_bytes());
        ctx.store(ETH_HLEN + OUTER_LEN, &header, 0)
            .map_err(|_| DropReason::EncapFailed)?;
    }
    Ok(())
}
