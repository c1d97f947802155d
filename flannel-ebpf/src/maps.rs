//! The maps the agent fills and reads; names and value types come from `flannel-common`.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray, PerCpuHashMap},
};
use flannel_common::{
    DatapathConfig, DatapathConfig6, DropReason, Endpoint, PeerInfo, PeerInfo6, PeerTraffic,
    Tunnel, Tunnel6, MAX_PEERS,
};

#[map(name = "FLANNEL_CONFIG_V3")]
pub static CONFIG: Array<DatapathConfig> = Array::with_max_entries(1, 0);

/// Current leases, keyed by the peer's public IPv4 (network byte order).
#[map(name = "FLANNEL_PEERS_V1")]
pub static PEERS: HashMap<u32, PeerInfo> = HashMap::with_max_entries(MAX_PEERS, 0);

/// Peer subnets (network byte order, longest prefix) to their tunnel.
#[map(name = "FLANNEL_ROUTES_V3")]
pub static ROUTES: LpmTrie<u32, Tunnel> = LpmTrie::with_max_entries(MAX_PEERS, 0);

/// The IPv6 half of a dual-stack network; all zero while IPv4 only.
#[map(name = "FLANNEL_CONFIG6_V3")]
pub static CONFIG6: Array<DatapathConfig6> = Array::with_max_entries(1, 0);

/// Current dual-stack leases, keyed by the peer's public IPv6.
#[map(name = "FLANNEL_PEERS6_V2")]
pub static PEERS6: HashMap<[u8; 16], PeerInfo6> = HashMap::with_max_entries(MAX_PEERS, 0);

/// Peer IPv6 subnets (longest prefix) to their tunnel.
#[map(name = "FLANNEL_ROUTES6_V3")]
pub static ROUTES6: LpmTrie<[u8; 16], Tunnel6> = LpmTrie::with_max_entries(MAX_PEERS, 0);

/// Traffic per peer public address (IPv6, or IPv4 mapped); the agent creates the entries.
#[map(name = "FLANNEL_TRAFFIC_V2")]
pub static TRAFFIC: PerCpuHashMap<[u8; 16], PeerTraffic> =
    PerCpuHashMap::with_max_entries(2 * MAX_PEERS, 0);

/// Local containers, keyed by IPv4 (network byte order); the agent keeps it current.
#[map(name = "FLANNEL_ENDPOINTS_V1")]
pub static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// Local containers, keyed by IPv6; the agent keeps it current.
#[map(name = "FLANNEL_ENDPOINTS6_V1")]
pub static ENDPOINTS6: HashMap<[u8; 16], Endpoint> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// Containers one host holds at most in the fast path (more take the stack's path).
const MAX_ENDPOINTS: u32 = 4096;

/// Dropped packets, indexed by `DropReason`.
#[map(name = "FLANNEL_DROPS_V2")]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DropReason::COUNT, 0);

#[inline(always)]
pub fn config() -> Option<&'static DatapathConfig> {
    CONFIG.get(0)
}

#[inline(always)]
pub fn config6() -> Option<&'static DatapathConfig6> {
    CONFIG6.get(0)
}

#[inline(always)]
pub fn peer6(public_ip: &[u8; 16]) -> Option<PeerInfo6> {
    // SAFETY: copied out at once; the agent replaces entries whole.
    unsafe { PEERS6.get(public_ip).copied() }
}

#[inline(always)]
pub fn tunnel6_to(dst: [u8; 16]) -> Option<&'static Tunnel6> {
    ROUTES6.get(Key::new(128, dst))
}

#[inline(always)]
pub fn peer(public_ip_be: u32) -> Option<PeerInfo> {
    // SAFETY: copied out at once; the agent replaces entries whole.
    unsafe { PEERS.get(public_ip_be).copied() }
}

#[inline(always)]
pub fn tunnel_to(dst_be: u32) -> Option<&'static Tunnel> {
    ROUTES.get(Key::new(32, dst_be))
}

#[inline(always)]
pub fn endpoint(ip_be: u32) -> Option<Endpoint> {
    // SAFETY: copied out at once; the agent replaces entries whole.
    unsafe { ENDPOINTS.get(ip_be).copied() }
}

#[inline(always)]
pub fn endpoint6(ip: &[u8; 16]) -> Option<Endpoint> {
    // SAFETY: copied out at once; the agent replaces entries whole.
    unsafe { ENDPOINTS6.get(ip).copied() }
}

#[inline(always)]
pub fn count_drop(reason: DropReason) {
    if let Some(counter) = DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
pub fn count_tx(peer: &[u8; 16], bytes: u32) {
    if let Some(traffic) = TRAFFIC.get_ptr_mut(peer) {
        // SAFETY: per-CPU value.
        unsafe {
            (*traffic).tx_packets += 1;
            (*traffic).tx_bytes += u64::from(bytes);
        }
    }
}

#[inline(always)]
pub fn count_rx(peer: &[u8; 16], bytes: u32) {
    if let Some(traffic) = TRAFFIC.get_ptr_mut(peer) {
        // SAFETY: per-CPU value.
        unsafe {
            (*traffic).rx_packets += 1;
            (*traffic).rx_bytes += u64::from(bytes);
        }
    }
}
