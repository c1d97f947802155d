//! The maps the agent fills and reads; names and value types come from `flannel-common`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use flannel_common::{DatapathConfig, DropReason, PeerInfo, MAX_PEERS};

#[map(name = "FLANNEL_CONFIG_V1")]
pub static CONFIG: Array<DatapathConfig> = Array::with_max_entries(1, 0);

/// Current leases, keyed by the peer's public IPv4 (network byte order).
#[map(name = "FLANNEL_PEERS_V1")]
pub static PEERS: HashMap<u32, PeerInfo> = HashMap::with_max_entries(MAX_PEERS, 0);

/// Dropped packets, indexed by `DropReason`.
#[map(name = "FLANNEL_DROPS_V1")]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DropReason::COUNT, 0);

#[inline(always)]
pub fn config() -> Option<&'static DatapathConfig> {
    CONFIG.get(0)
}

#[inline(always)]
pub fn is_peer(public_ip_be: u32) -> bool {
    PEERS.get_ptr(public_ip_be).is_some()
}

#[inline(always)]
pub fn count_drop(reason: DropReason) {
    if let Some(counter) = DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
        unsafe { *counter += 1 };
    }
}
