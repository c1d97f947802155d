//! The IPv6 half of a dual-stack vxlan network on the eBPF datapath, carried as flannel
//! carries it: between the hosts' public IPv6 addresses, to each peer's IPv6 VTEP MAC.
//!
//! - `tc_encap` takes IPv6 for a peer's IPv6 subnet at the container bridge's ingress (when
//!   it fits the tunnel's MTU; bigger packets take the stack's way, which answers "packet too
//!   big") and at the overlay device's egress. IPv6 UDP needs a checksum (flannel's IPv6
//!   vxlan device drops packets without one): for a single TCP, UDP or ICMPv6 packet the
//!   program makes it from the inner headers and sends the packet out of the NIC itself; a
//!   GSO packet, whose every segment needs its own, which `bpf_skb_adjust_room` can't give,
//!   goes to the GRO device, the kernel's vxlan in metadata mode, with the peer in its
//!   tunnel key.
//! - `tc_ingress` lets in IPv6 vxlan packets from current peers only, with our VNI, and
//!   decapsulates them for the stack.
//! - The maps: a peer's IPv6 subnet → its tunnel (`ROUTES6`), its public IPv6 → the subnet it
//!   speaks for (`PEERS6`), written as IPv4's are (`entries`); traffic counts under the
//!   public IPv6.

use std::net::Ipv6Addr;

use flannel_common::DatapathConfig6;
use ipnet::Ipv6Net;

use crate::control::lease::Mac;

/// Our IPv6 end: the network, our subnet and our public IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ours6 {
    pub network: Ipv6Net,
    pub subnet: Ipv6Net,
    pub public_ip: Ipv6Addr,
}

/// The programs' IPv6 configuration; `mtu`: the IPv6 tunnel's.
pub fn config(ours: &Ours6, overlay_ifindex: u32, mtu: u32, vtep_mac: Mac) -> DatapathConfig6 {
    DatapathConfig6 {
        local_ip: ours.public_ip.octets(),
        network: ours.network.network().octets(),
        network_mask: ours.network.netmask().octets(),
        subnet: ours.subnet.network().octets(),
        subnet_mask: ours.subnet.netmask().octets(),
        overlay_ifindex,
        inner_mtu: mtu,
        vtep_mac: vtep_mac.0,
        _pad: [0; 2],
    }
}
