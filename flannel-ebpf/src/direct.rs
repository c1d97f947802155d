//! vxlan's `DirectRouting`: a peer on our interface's subnet gets its packets as they are,
//! sent to its public address on the NIC as a router would (the TTL aside: the fast path
//! leaves it alone, as it does inside a tunnel), with no outer headers to add or strip.

use aya_ebpf::{
    bindings::{bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1},
    helpers::bpf_redirect_neigh,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// Sends the packet out of `nic_ifindex` to the next hop `next_hop_be` (IPv4, network byte
/// order); the neighbour subsystem fills in the Ethernet header.
#[inline(always)]
pub fn send(nic_ifindex: u32, next_hop_be: u32) -> i32 {
    let next_hop = bpf_redir_neigh__bindgen_ty_1 {
        ipv4_nh: next_hop_be,
    };
    redirect(nic_ifindex, AF_INET, next_hop)
}

/// `send` to an IPv6 next hop.
#[inline(always)]
pub fn send6(nic_ifindex: u32, next_hop: &[u8; 16]) -> i32 {
    let mut words = [0u32; 4];
    for (word, bytes) in words.iter_mut().zip(next_hop.chunks_exact(4)) {
        *word = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    }
    redirect(
        nic_ifindex,
        AF_INET6,
        bpf_redir_neigh__bindgen_ty_1 { ipv6_nh: words },
    )
}

#[inline(always)]
fn redirect(nic_ifindex: u32, family: u32, next_hop: bpf_redir_neigh__bindgen_ty_1) -> i32 {
    let mut params = bpf_redir_neigh {
        nh_family: family,
        __bindgen_anon_1: next_hop,
    };
    let len = core::mem::size_of::<bpf_redir_neigh>() as i32;
    // SAFETY: `params` lives across the call, which only reads `len` bytes of it.
    unsafe { bpf_redirect_neigh(nic_ifindex, &mut params, len, 0) as i32 }
}
