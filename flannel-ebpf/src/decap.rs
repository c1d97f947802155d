//! Decapsulation: strip the outer headers of a tunnel packet the guard accepted, leaving the
//! outer Ethernet header (addressed to this host) in front of the inner IPv4 packet.

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_CSUM_LEVEL_DEC, BPF_F_ADJ_ROOM_FIXED_GSO,
        BPF_F_ADJ_ROOM_NO_CSUM_RESET,
    },
    helpers::bpf_csum_level,
    programs::TcContext,
};
use flannel_common::{DatapathConfig, DropReason, Encap};

use crate::{
    parse::{EthHdr, Packet, ETH_HLEN, ETH_P_IP},
    ttl,
};

const SHRINK_FLAGS: u64 = (BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_NO_CSUM_RESET) as u64;

pub fn decapsulate(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    outer_ip_len: usize,
) -> Result<(), DropReason> {
    let vxlan = cfg.encap == Encap::Vxlan as u16;
    let mut strip = outer_ip_len + 8;
    if vxlan {
        // A kernel vxlan device drops frames not addressed to its own MAC; so do we.
        let pkt = Packet {
            start: ctx.data(),
            end: ctx.data_end(),
        };
        let inner = pkt
            .header::<EthHdr>(ETH_HLEN + strip + 8)
            .ok_or(DropReason::Truncated)?;
        if inner.dst != cfg.vtep_mac {
            return Err(DropReason::WrongMac);
        }
        if inner.ether_type_be != ETH_P_IP.to_be() {
            return Err(DropReason::DecapFailed);
        }
        strip += 8 + ETH_HLEN;
    }
    ctx.adjust_room(-(strip as i32), BPF_ADJ_ROOM_MAC, SHRINK_FLAGS)
        .map_err(|_| DropReason::DecapFailed)?;
    // The outer UDP checksum, if the NIC checked it, no longer covers anything.
    // SAFETY: the helper only adjusts the skb behind the context.
    unsafe { bpf_csum_level(ctx.skb.skb, BPF_CSUM_LEVEL_DEC as u64) };
    if !vxlan {
        // flannel's udp backend decrements the TTL on receive too.
        ttl::decrement(ctx)?;
    }
    Ok(())
}
