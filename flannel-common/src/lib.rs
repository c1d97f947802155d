//! Types shared by the eBPF programs (`flannel-ebpf`) and the agent (`flannel-agent`).
//!
//! Everything here is plain old data with a fixed `#[repr(C)]` layout: the kernel side reads
//! these structs out of BPF maps that the agent writes. Addresses and ports are stored in
//! network byte order, exactly as they appear in packet headers, so the programs compare them
//! without swapping.
#![no_std]

pub mod headers;

use headers::{EthHdr, Header, Ipv4Hdr, TunnelHeader, UdpHdr, VxlanHdr, ETH_P_IP, IPPROTO_UDP};

/// UDP port of flannel's vxlan backend (the kernel's default for `flannel.1`).
pub const VXLAN_PORT: u16 = 8472;
/// UDP port of flannel's udp backend.
pub const UDP_BACKEND_PORT: u16 = 8285;
/// The outer UDP source ports of our vxlan, both ends included: the kernel's default ephemeral
/// range. The agent gives the GRO device this range explicitly, so the ports the kernel picks
/// for the packets it encapsulates match ours whatever `net.ipv4.ip_local_port_range` says.
pub const VXLAN_SOURCE_PORTS: (u16, u16) = (32768, 60999);

/// Map names, versioned so that a layout change never reuses an old pinned map.
pub mod map_names {
    pub const CONFIG: &str = "FLANNEL_CONFIG_V3";
    pub const PEERS: &str = "FLANNEL_PEERS_V1";
    pub const DROPS: &str = "FLANNEL_DROPS_V2";
    pub const ROUTES: &str = "FLANNEL_ROUTES_V3";
    pub const TRAFFIC: &str = "FLANNEL_TRAFFIC_V2";
    pub const ENDPOINTS: &str = "FLANNEL_ENDPOINTS_V1";
    pub const EVENTS: &str = "FLANNEL_EVENTS_V2";
    pub const EVENT_RATE: &str = "FLANNEL_EVENT_RATE_V1";
    pub const CONFIG6: &str = "FLANNEL_CONFIG6_V3";
    pub const PEERS6: &str = "FLANNEL_PEERS6_V2";
    pub const ROUTES6: &str = "FLANNEL_ROUTES6_V3";
    pub const ENDPOINTS6: &str = "FLANNEL_ENDPOINTS6_V1";
}

/// Program names, as the agent looks them up in the object.
pub mod program_names {
    pub const XDP_INGRESS: &str = "xdp_ingress";
    pub const TC_INGRESS: &str = "tc_ingress";
    pub const TC_ENCAP: &str = "tc_encap";
    pub const TC_MERGED: &str = "tc_merged";
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
    /// through this host) are not ours to judge. Zero accepts any destination. (What we send
    /// takes its source from the peer's [`Tunnel`] header.)
    pub local_ip_be: u32,
    /// The host NIC that carries the tunnel.
    pub nic_ifindex: u32,
    /// Our VTEP MAC (vxlan): the only inner destination we accept, as a kernel vxlan
    /// device does.
    pub vtep_mac: [u8; 6],
    pub _pad: [u8; 2],
    /// The largest inner packet a tunnel carries (interface MTU - overhead): bigger
    /// non-GSO packets take the stack's path, which answers "fragmentation needed".
    pub inner_mtu: u32,
    /// The GRO device, zero when there is none. vxlan: the kernel vxlan device in metadata
    /// mode that encapsulates what `bpf_skb_adjust_room` refuses to; udp: the near end of the
    /// veth through which decapsulated frames reach GRO.
    pub gro_ifindex: u32,
    /// The flannel network and our subnet, network byte order, with their masks (zero: not
    /// set). `tc_encap` never tunnels a destination in our subnet or outside the network,
    /// whatever the routes map holds; decap judges inner sources against the network.
    pub network_be: u32,
    pub network_mask_be: u32,
    pub subnet_be: u32,
    pub subnet_mask_be: u32,
    /// [`CHECK_INNER_SOURCE`], [`THROUGH_NETFILTER`], [`IPV6_ONLY`].
    pub flags: u32,
}

/// [`DatapathConfig::flags`]: a peer's packet whose inner source lies in the network must
/// come from the peer's own subnet.
pub const CHECK_INNER_SOURCE: u32 = 1;

/// [`DatapathConfig::flags`]: decapsulated packets go up the host's stack (routing, netfilter's
/// FORWARD chain, the bridge) instead of straight into their container, and container traffic
/// is encapsulated only after routing: the firewall applies, as with flannel.
pub const THROUGH_NETFILTER: u32 = 2;

/// [`DatapathConfig::flags`]: the network carries no IPv4: IPv4 is neither encapsulated nor
/// judged as a tunnel packet (the IPv4 fields are zero); IPv6 goes by [`DatapathConfig6`].
pub const IPV6_ONLY: u32 = 4;

/// [`DatapathConfig::flags`]: vxlan's `DirectRouting`: some routes are [`DIRECT`], and a
/// plain packet from such a peer's subnet to a local container goes straight into it.
pub const DIRECT_ROUTING: u32 = 8;

/// [`Tunnel::flags`], [`Tunnel6::flags`]: the peer is on our interface's subnet
/// (`DirectRouting`): its traffic is sent to its public address as it is, unencapsulated.
pub const DIRECT: u16 = 1;

/// The network-byte-order mask of a prefix length.
pub const fn mask_be(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        len if len >= 32 => u32::MAX,
        len => (u32::MAX << (32 - len as u32)).to_be(),
    }
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

/// Value of the `ROUTES` LPM trie, keyed by a peer's subnet: where to tunnel its traffic,
/// with the outer headers prebuilt by the agent, so the program only fills in what changes
/// per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunnel {
    /// The peer's public IPv4, network byte order (also in `header`): its traffic counters.
    pub remote_ip_be: u32,
    /// The one's-complement sum of the outer IPv4 header's 16-bit words, total length and
    /// checksum left zero: a packet's checksum is then one addition and a fold away.
    pub ip_sum: u32,
    /// The outer headers, of which the wire format's overhead is used: IPv4, UDP, and for
    /// vxlan the VXLAN header and the inner Ethernet header. Per packet the program fills in
    /// the IPv4 total length and checksum, and the UDP source port and length.
    pub header: TunnelHeader,
    /// [`DIRECT`]: no header; `remote_ip_be` is the next hop.
    pub flags: u16,
}

/// Both ends of a tunnel, for [`Tunnel::new`]. Addresses and port in network byte order.
pub struct TunnelEnds {
    pub encap: Encap,
    pub local_ip_be: u32,
    pub remote_ip_be: u32,
    pub port_be: u16,
    /// vxlan: the VNI and both VTEP MACs (ours is the inner source, the peer's the inner
    /// destination).
    pub vni: u32,
    pub local_mac: [u8; 6],
    pub remote_mac: [u8; 6],
}

impl Tunnel {
    pub fn new(ends: &TunnelEnds) -> Self {
        let ip = |addr_be: u32| addr_be.to_ne_bytes();
        let mut header = TunnelHeader {
            ip: Ipv4Hdr::new(ip(ends.local_ip_be), ip(ends.remote_ip_be), IPPROTO_UDP, 0),
            udp: UdpHdr {
                dest: ends.port_be.to_ne_bytes(),
                // Checksum 0: legal over IPv4, as the kernel's vxlan device sends.
                ..UdpHdr::default()
            },
            ..TunnelHeader::default()
        };
        if let Encap::Vxlan = ends.encap {
            header.vxlan = VxlanHdr::new(ends.vni);
            header.inner = EthHdr::new(ends.remote_mac, ends.local_mac, ETH_P_IP);
        }
        Self {
            remote_ip_be: ends.remote_ip_be,
            ip_sum: headers::sum16(header.ip.as_bytes()),
            header,
            flags: 0,
        }
    }

    /// A route to a peer on our interface's subnet (`DirectRouting`): its public IPv4 is the
    /// next hop, nothing is encapsulated.
    pub fn direct(remote_ip_be: u32) -> Self {
        Self {
            remote_ip_be,
            ip_sum: 0,
            header: TunnelHeader::default(),
            flags: DIRECT,
        }
    }
}

/// Value of the `ENDPOINTS` map, keyed by a local container's IPv4 (network byte order):
/// where decapsulated packets for it go without crossing the stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// The host-side veth of the container, on the bridge.
    pub ifindex: u32,
    /// The container's MAC.
    pub mac: [u8; 6],
    /// The bridge's MAC: the source of the frames the container gets.
    pub bridge_mac: [u8; 6],
}

/// Per-peer traffic, one per CPU in the `TRAFFIC` map, keyed by the peer's public address
/// of the tunnel that carried it: an IPv6 address, or an IPv4 one mapped ([`traffic_key_v4`]).
/// A dual-stack peer has two entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerTraffic {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
}

impl PeerTraffic {
    /// Both counts added up (the per-CPU values of one peer, for instance).
    pub const fn plus(self, other: Self) -> Self {
        Self {
            tx_packets: self.tx_packets + other.tx_packets,
            tx_bytes: self.tx_bytes + other.tx_bytes,
            rx_packets: self.rx_packets + other.rx_packets,
            rx_bytes: self.rx_bytes + other.rx_bytes,
        }
    }
}

/// The `TRAFFIC` key of a public IPv4 (network byte order): `::ffff:a.b.c.d`.
pub const fn traffic_key_v4(addr_be: u32) -> [u8; 16] {
    let b = addr_be.to_ne_bytes();
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, b[0], b[1], b[2], b[3],
    ]
}

/// Bytes added in front of the inner IP packet: outer IPv4, UDP, VXLAN, inner Ethernet.
pub const VXLAN_OVERHEAD: u32 = core::mem::size_of::<TunnelHeader>() as u32;
/// Bytes added in front of the inner IP packet: outer IPv4 and UDP.
pub const UDP_OVERHEAD: u32 = (headers::IPV4_HLEN + headers::UDP_HLEN) as u32;
/// Bytes added in front of the inner IP packet by vxlan over IPv6: outer IPv6, UDP, VXLAN,
/// inner Ethernet.
pub const VXLAN6_OVERHEAD: u32 = core::mem::size_of::<headers::TunnelHeader6>() as u32;

impl Encap {
    pub const fn overhead(self) -> u32 {
        match self {
            Encap::Vxlan => VXLAN_OVERHEAD,
            Encap::Udp => UDP_OVERHEAD,
        }
    }
}

/// The IPv6 half of a dual-stack vxlan network (the `CONFIG6` array's one entry); all zero
/// while the network is IPv4 only. Addresses and masks are in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig6 {
    /// Our public IPv6: tunnel packets must be addressed to it, and ours leave from it.
    pub local_ip: [u8; 16],
    pub network: [u8; 16],
    pub network_mask: [u8; 16],
    pub subnet: [u8; 16],
    pub subnet_mask: [u8; 16],
    /// The overlay device: IPv6 encapsulated at its egress has been routed by the stack,
    /// which applied the tunnel's MTU (answering "packet too big").
    pub overlay_ifindex: u32,
    /// The IPv6 tunnel's MTU: the longest IPv6 packet (or GSO segment) taken at the bridge;
    /// 0 while the network is IPv4 only.
    pub inner_mtu: u32,
    /// Our IPv6 VTEP MAC: the only inner destination IPv6 frames may have. flannel gives its
    /// IPv6 device a MAC of its own; a host taking over from it keeps that one.
    pub vtep_mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Value of the `ROUTES6` LPM trie, keyed by a peer's IPv6 subnet: where to tunnel its IPv6,
/// by the program or by the kernel's vxlan device in metadata mode (the GRO device).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tunnel6 {
    /// The peer's public IPv6: the tunnel's remote end.
    pub remote_ip: [u8; 16],
    /// The peer's IPv6 VTEP MAC: the inner Ethernet destination.
    pub remote_mac: [u8; 6],
    /// [`DIRECT`]: sent to `remote_ip` unencapsulated.
    pub flags: u16,
}

/// Value of the `PEERS6` hash map, keyed by a peer's public IPv6: the IPv6 subnet it speaks
/// for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo6 {
    pub subnet: [u8; 16],
    pub subnet_mask: [u8; 16],
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
    /// A VXLAN frame whose inner destination MAC is not our VTEP MAC.
    WrongMac = 3,
    /// The kernel refused to grow the packet for the outer headers.
    EncapFailed = 4,
    /// The kernel refused to strip the outer headers.
    DecapFailed = 5,
    /// udp backend: the inner TTL ran out.
    TtlExpired = 6,
    /// A peer's packet whose inner source lies in the network but outside the peer's subnet.
    WrongInnerSource = 7,
}

impl DropReason {
    pub const ALL: [DropReason; 8] = [
        Self::UnknownPeer,
        Self::WrongVni,
        Self::Truncated,
        Self::WrongMac,
        Self::EncapFailed,
        Self::DecapFailed,
        Self::TtlExpired,
        Self::WrongInnerSource,
    ];
    /// Number of entries in the `DROPS` array.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    pub const fn name(self) -> &'static str {
        match self {
            Self::UnknownPeer => "unknown_peer",
            Self::WrongVni => "wrong_vni",
            Self::Truncated => "truncated",
            Self::WrongMac => "wrong_mac",
            Self::EncapFailed => "encap_failed",
            Self::DecapFailed => "decap_failed",
            Self::TtlExpired => "ttl_expired",
            Self::WrongInnerSource => "wrong_inner_source",
        }
    }
}

/// Where a program dropped a packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// XDP on the host NIC (`--bpf-decap=xdp`).
    Xdp = 0,
    /// TC ingress on the host NIC.
    TcIngress = 1,
    /// TC encap, on the overlay device or the container bridge.
    TcEncap = 2,
}

impl Hook {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            Self::TcIngress => "tc_ingress",
            Self::TcEncap => "tc_encap",
        }
    }

    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Xdp),
            1 => Some(Self::TcIngress),
            2 => Some(Self::TcEncap),
            _ => None,
        }
    }
}

/// One dropped packet, as the programs report it in the `EVENTS` ring buffer for `flanneld
/// monitor`: at most [`EVENTS_PER_SECOND`] per CPU, so a flood costs a counter increment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    /// A [`DropReason`].
    pub reason: u32,
    /// Events this CPU left out just before this one (over the rate, or the ring was full).
    pub suppressed: u32,
    /// The interface the program ran on.
    pub ifindex: u32,
    /// The family (4 or 6) of `peer`, and of `src` and `dst`; 0 when not known.
    pub peer_family: u8,
    pub family: u8,
    /// The inner packet's protocol and (TCP, UDP) ports, network byte order; 0 when not in
    /// the packet.
    pub protocol: u8,
    /// A [`Hook`].
    pub hook: u8,
    pub sport_be: u16,
    pub dport_be: u16,
    /// The tunnel's other end: the outer source of a received packet, the remote of a sent
    /// one. An IPv4 address takes the first four bytes.
    pub peer: [u8; 16],
    /// The inner packet's addresses, as `peer`.
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// An address for a [`DropEvent`]: IPv4 in the first four bytes.
pub const fn event_addr_v4(addr_be: u32) -> [u8; 16] {
    let b = addr_be.to_ne_bytes();
    [b[0], b[1], b[2], b[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// Drop events each CPU reports per second at most.
pub const EVENTS_PER_SECOND: u32 = 100;
/// The `EVENTS` ring buffer's size: thousands of events, for a reader that falls behind.
pub const EVENTS_BYTES: u32 = 256 * 1024;

impl DropReason {
    pub const fn from_u32(value: u32) -> Option<Self> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i] as u32 == value {
                return Some(Self::ALL[i]);
            }
            i += 1;
        }
        None
    }
}

// The layouts the programs and the agent share, checked on both sides at compile time: no
// hidden padding, and no size change without a new map name.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<DatapathConfig>() == 52);
    assert!(size_of::<Tunnel>() == 60);
    assert!(size_of::<Endpoint>() == 16);
    assert!(size_of::<PeerTraffic>() == 32);
    assert!(size_of::<PeerInfo>() == 12);
    assert!(size_of::<DropEvent>() == 68);
    assert!(size_of::<DatapathConfig6>() == 96);
    assert!(size_of::<Tunnel6>() == 24);
    assert!(size_of::<PeerInfo6>() == 32);
};

/// Maximum number of peers the maps hold.
pub const MAX_PEERS: u32 = 16_384;

#[cfg(feature = "user")]
pub mod pins;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], only integer fields and explicit padding: any bytes are a value.
    unsafe impl aya::Pod for super::DatapathConfig {}
    // SAFETY: #[repr(C)], only integer fields and explicit padding: any bytes are a value.
    unsafe impl aya::Pod for super::PeerInfo {}
    // SAFETY: #[repr(C)], only integer fields and explicit padding: any bytes are a value.
    unsafe impl aya::Pod for super::Tunnel {}
    // SAFETY: #[repr(C)], only integer fields and explicit padding: any bytes are a value.
    unsafe impl aya::Pod for super::PeerTraffic {}
    // SAFETY: #[repr(C)], only integer fields and explicit padding: any bytes are a value.
    unsafe impl aya::Pod for super::Endpoint {}
    // SAFETY: #[repr(C)], only integer fields and explicit padding: any bytes are a value.
    unsafe impl aya::Pod for super::DatapathConfig6 {}
    // SAFETY: #[repr(C)], only integer fields and explicit padding: any bytes are a value.
    unsafe impl aya::Pod for super::Tunnel6 {}
    // SAFETY: #[repr(C)], only integer fields and explicit padding: any bytes are a value.
    unsafe impl aya::Pod for super::PeerInfo6 {}
}
