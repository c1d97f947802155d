//! GRO for the vxlan tunnel. A NIC's GRO merges UDP-tunnel frames only on a port that a
//! kernel tunnel socket owns; without one, `tc_ingress` decapsulates every MTU-sized frame and
//! the containers' stacks take them one by one. So with TC decap the agent keeps an idle
//! kernel vxlan device, `flannel-gro`, on the tunnel port: its socket lets GRO merge our
//! frames into one packet per burst before `tc_ingress` sees them.
//!
//! The device is in metadata mode (`external`) for the packets our programs can't
//! encapsulate themselves: a merged aggregate that we decapsulated and a container forwards
//! to another host still carries tunnel GSO state, which `bpf_skb_adjust_room` refuses; and
//! IPv6 needs an outer UDP checksum on every segment (see `ipv6`). `tc_encap` hands those to
//! this device with the peer in its tunnel key, and the kernel encapsulates them.
//!
//! It picks the outer source ports of what it encapsulates from `VXLAN_SOURCE_PORTS`, as
//! `tc_encap` does, so a connection whose packets take both ways stays one outer flow (one
//! receive queue, one GRO flow) even where the ephemeral port range was changed.
//!
//! It never takes a packet in: `tc_ingress` decapsulates or drops every packet for our port
//! before the socket could; should that filter be removed by hand, what the device would
//! decapsulate is not forwarded (IPv4 forwarding is off on it, IPv6 disabled), it learns
//! nothing and has no address. It stays when the agent exits, so a restart keeps GRO without
//! a gap; `--cleanup` removes it.

use anyhow::{Context, Result};
use flannel_common::VXLAN_SOURCE_PORTS;
use rtnetlink::{packet_route::link::InfoVxlan, Handle, LinkUnspec, LinkVxlan};

use crate::datapath::{kernel_vxlan, overlay_device};

pub const GRO_DEV: &str = "flannel-gro";

/// Creates the GRO device for `port` (or keeps a compatible one), brings it up, and returns
/// its ifindex.
pub async fn ensure(netlink: &Handle, port: u16) -> Result<u32> {
    let wanted = [
        InfoVxlan::CollectMetadata(true),
        InfoVxlan::Port(port),
        InfoVxlan::Learning(false),
        InfoVxlan::PortRange(VXLAN_SOURCE_PORTS),
    ];
    let link = LinkVxlan::new(GRO_DEV, 0)
        .collect_metadata(true)
        .port(port)
        .learning(false)
        .port_range(VXLAN_SOURCE_PORTS.0, VXLAN_SOURCE_PORTS.1)
        .build();
    let index = kernel_vxlan::ensure_device(netlink, GRO_DEV, &wanted, link).await?;
    let settings = [
        (format!("/proc/sys/net/ipv4/conf/{GRO_DEV}/forwarding"), "0"),
        (
            format!("/proc/sys/net/ipv6/conf/{GRO_DEV}/disable_ipv6"),
            "1",
        ),
    ];
    for (path, value) in settings {
        std::fs::write(&path, value).with_context(|| format!("writing {path}"))?;
    }
    netlink
        .link()
        .set(LinkUnspec::new_with_index(index).arp(false).up().build())
        .execute()
        .await
        .with_context(|| format!("setting {GRO_DEV} up"))?;
    Ok(index)
}

/// Removes the GRO device, if there is one: XDP decap and the udp format have no use for it,
/// and the classic datapath's `flannel.<VNI>` can't share the port with a metadata device.
pub async fn remove(netlink: &Handle) -> Result<()> {
    overlay_device::delete_link(netlink, GRO_DEV).await?;
    Ok(())
}
