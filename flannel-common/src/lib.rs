//! Types shared by the eBPF programs (`flannel-ebpf`) and the agent (`flannel-agent`).
//!
//! Everything here is plain old data with a fixed `#[repr(C)]` layout: the kernel side reads
//! these structs out of BPF maps that the agent writes. Addresses and ports are stored in
//! network byte order, exactly as they appear in packet headers, so the programs compare them
//! without swapping.
#![no_std]

/// UDP port of flannel's vxlan backend (the kernel's default for `flannel.1`).
pub const VXLAN_PORT: u16 = 8472;
/// UDP port of flannel's udp backend.
pub const UDP_BACKEND_PORT: u16 = 8285;

/// Map names, versioned so that a layout change never reuses an old pinned map.
pub mod map_names {
    pub const CONFIG: &str = "FLANNEL_CONFIG_V1";
    pub const PEERS: &str = "FLANNEL_PEERS_V1";
    pub const DROPS: &str = "FLANNEL_DROPS_V1";
}

/// Program names, as the agent looks them up in the object.
pub mod program_names {
    pub const XDP_INGRESS: &str = "xdp_ingress";
    pub const TC_INGRESS: &str = "tc_ingress";
}

/// The datapath's settings: the single entry of the `CONFIG` array map.
///
/// A zero `port` means "not configured": the programs then pass every packet untouched, so a
/// program attached before the agent has filled its maps never drops traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// VXLAN network identifier, host byte order (24 bits used).
    pub vni: u32,
    /// Tunnel UDP destination port, network byte order.
    pub port_be: u16,
    /// Wire format of the tunnel, one of [`Encap`] as u16.
    pub encap: u16,
    /// Our public IPv4, network byte order: tunnel packets to other addresses (forwarded
    /// through this host) are not ours to judge. Zero accepts any destination.
    pub local_ip_be: u32,
}

/// Tunnel wire formats (flannel's backend types).
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encap {
    /// Ethernet in VXLAN in UDP (flannel `vxlan`).
    Vxlan = 1,
    /// Raw IPv4 in UDP (flannel `udp`).
    Udp = 2,
}

/// Value of the `PEERS` hash map, keyed by a peer's public IPv4 (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's overlay subnet, network byte order.
    pub subnet_be: u32,
    /// The peer's subnet prefix length.
    pub prefix_len: u8,
    pub _pad: [u8; 1],
    /// The peer's VTEP MAC (vxlan), zero for udp peers.
    pub vtep_mac: [u8; 6],
}

/// Why a program dropped a packet: the index into the per-CPU `DROPS` counter array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A tunnel packet for our port from an address that holds no lease.
    UnknownPeer = 0,
    /// A VXLAN packet whose VNI is not ours, or whose flags lack the I bit.
    WrongVni = 1,
    /// A packet to our tunnel port too short to hold the tunnel header.
    Truncated = 2,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [Self::UnknownPeer, Self::WrongVni, Self::Truncated];
    /// Number of entries in the `DROPS` array.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    pub const fn name(self) -> &'static str {
        match self {
            Self::UnknownPeer => "unknown_peer",
            Self::WrongVni => "wrong_vni",
            Self::Truncated => "truncated",
        }
    }
}

/// Maximum number of peers the maps hold.
pub const MAX_PEERS: u32 = 16_384;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all three are #[repr(C)] with only integer fields and explicit padding.
    unsafe impl aya::Pod for super::DatapathConfig {}
    unsafe impl aya::Pod for super::PeerInfo {}
}
