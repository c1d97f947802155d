//! The tunnel guard: only current peers may send us tunnel packets, and only with our VNI.
//!
//! Anything that is not a tunnel packet for us passes untouched; a packet that claims our
//! tunnel port but fails a check is dropped with a reason; a genuine one is handed to decap.

use flannel_common::{DatapathConfig, DropReason, Encap, PeerInfo};

use crate::{
    maps,
    parse::{EthHdr, Ipv4Hdr, Packet, UdpHdr, VxlanHdr, ETH_HLEN, IPPROTO_UDP, VXLAN_FLAGS_I},
};

pub enum Verdict {
    Pass,
    Drop(DropReason),
    /// A tunnel packet from a current peer: `outer_ip_len` bytes of outer IPv4 header.
    Tunnel {
        peer_be: u32,
        peer: PeerInfo,
        outer_ip_len: usize,
    },
}

/// Bytes the guard and decap read: Ethernet, the largest IPv4 header, UDP, VXLAN and the
/// inner Ethernet header.
pub const HEADER_LEN: u32 = (ETH_HLEN + 60 + 8 + 8 + ETH_HLEN) as u32;

/// The outer IPv4 header of a packet that claims to be one of our tunnel packets: UDP to our
/// tunnel port on our address. Anything else is not ours to judge.
#[inline(always)]
pub fn claimed_tunnel<'a>(pkt: Packet, cfg: &DatapathConfig) -> Option<&'a Ipv4Hdr> {
    if cfg.port_be == 0 || !pkt.header::<EthHdr>(0)?.is_ipv4() {
        return None;
    }
    let ip = pkt.header::<Ipv4Hdr>(ETH_HLEN)?;
    let ip_len = ip.header_len();
    if ip.protocol != IPPROTO_UDP || ip_len < 20 || ip.is_later_fragment() {
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
    if cfg.encap == Encap::Vxlan as u16 {
        let Some(vxlan) = pkt.header::<VxlanHdr>(ETH_HLEN + ip_len + 8) else {
            return Verdict::Drop(DropReason::Truncated);
        };
        if vxlan.flags != VXLAN_FLAGS_I.to_be_bytes() || vxlan.vni != (cfg.vni << 8).to_be_bytes() {
            return Verdict::Drop(DropReason::WrongVni);
        }
    }
    Verdict::Tunnel {
        peer_be: ip.saddr_be(),
        peer,
        outer_ip_len: ip_len,
    }
}
