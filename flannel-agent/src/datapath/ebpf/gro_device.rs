//! GRO for our tunnels. A NIC's GRO merges UDP-tunnel frames only on a port that a kernel
//! tunnel socket owns; without one, `tc_ingress` decapsulates every MTU-sized frame and the
//! containers' stacks would take them one by one. So with TC decap the agent keeps a GRO
//! device, `flannel-gro`, of one of two kinds:
//!
//! - vxlan: an idle kernel vxlan device on the tunnel port: its socket lets GRO merge our
//!   frames into one packet per burst before `tc_ingress` sees them.
//! - udp: no kernel socket understands flannel's raw-IP-in-UDP (this needs FOU, which kernels
//!   may lack), so GRO merges after decap instead: `flannel-gro` is a veth whose far end,
//!   `flannel-gro-p`, has GRO (and with it NAPI, one queue per CPU as the NIC's). `tc_ingress`
//!   sends a decapsulated frame for a local container into it, GRO merges the frames of
//!   each connection, and `tc_merged` on the far end delivers the result to the container.
//!
//! The vxlan device is in metadata mode (`external`) for the packets our programs can't
//! encapsulate themselves: a merged aggregate that we decapsulated and a container forwards
//! to another host still carries tunnel GSO state, which `bpf_skb_adjust_room` refuses; and
//! IPv6 needs an outer UDP checksum on every segment (see `ipv6`). `tc_encap` hands those to
//! this device with the peer in its tunnel key, and the kernel encapsulates them.
//!
//! It picks the outer source ports of what it encapsulates from `VXLAN_SOURCE_PORTS`, as
//! `tc_encap` does, so a connection whose packets take both ways stays one outer flow (one
//! receive queue, one GRO flow) even where the ephemeral port range was changed.
//!
//! The vxlan device never takes a packet in: `tc_ingress` decapsulates or drops every packet
//! for our port before the socket could; should that filter be removed by hand, what the
//! device would decapsulate is not forwarded (IPv4 forwarding is off on it, IPv6 disabled),
//! it learns nothing and has no address. The veth has no address either, and the same
//! settings: a frame `tc_merged` can't deliver (its container just left) is dropped there.
//! Both stay when the agent exits, so a restart keeps GRO without a gap; `--cleanup` removes
//! them.

use std::path::Path;

use anyhow::{Context, Result};
use flannel_common::VXLAN_SOURCE_PORTS;
use rtnetlink::{
    packet_route::link::{InfoData, InfoVeth, InfoVxlan, LinkAttribute},
    Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan,
};

use crate::{
    datapath::{overlay_device, vxlan_device},
    host::{ethtool, iface},
};

pub const GRO_DEV: &str = "flannel-gro";
/// The far end of the udp GRO device, where GRO runs.
pub const GRO_PEER: &str = "flannel-gro-p";

/// The kind of GRO device a datapath keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroDevice {
    /// vxlan: a kernel tunnel socket on the port; GRO merges the tunnel's frames.
    Socket,
    /// udp: a veth whose far end's GRO merges decapsulated frames.
    Veth,
}

impl GroDevice {
    /// The GRO device on this host, if there is one.
    pub fn present() -> Option<Self> {
        let exists = |name| Path::new("/sys/class/net").join(name).exists();
        match (exists(GRO_DEV), exists(GRO_PEER)) {
            (true, true) => Some(Self::Veth),
            (true, false) => Some(Self::Socket),
            (false, _) => None,
        }
    }
}

/// Creates the GRO device of `kind` (or keeps a compatible one) for the tunnel `port` on a
/// NIC of `mtu`, brings it up, and returns the ifindex our programs send to.
pub async fn ensure(netlink: &Handle, kind: GroDevice, port: u16, mtu: u32) -> Result<u32> {
    let index = match kind {
        GroDevice::Socket => ensure_socket(netlink, port).await?,
        GroDevice::Veth => ensure_veth(netlink, mtu).await?,
    };
    let names: &[&str] = match kind {
        GroDevice::Socket => &[GRO_DEV],
        GroDevice::Veth => &[GRO_DEV, GRO_PEER],
    };
    for name in names {
        isolate(name)?;
        let index = iface::index(name)?;
        netlink
            .link()
            .set(LinkUnspec::new_with_index(index).arp(false).up().build())
            .execute()
            .await
            .with_context(|| format!("setting {name} up"))?;
    }
    Ok(index)
}

async fn ensure_socket(netlink: &Handle, port: u16) -> Result<u32> {
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
    vxlan_device::ensure(netlink, GRO_DEV, &wanted, link).await
}

/// The veth pair, one queue per CPU: a frame keeps the NIC queue it came in on (folded into
/// ours), so each CPU merges what its own NIC queue received.
async fn ensure_veth(netlink: &Handle, mtu: u32) -> Result<u32> {
    let exists = |name| nix::net::if_::if_nametoindex(name).is_ok();
    if !(exists(GRO_DEV) && exists(GRO_PEER)) {
        // A vxlan GRO device, or half a pair.
        for name in [GRO_DEV, GRO_PEER] {
            overlay_device::delete_link(netlink, name).await?;
        }
        let queues = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let peer = LinkMessageBuilder::<LinkUnspec>::new().name(GRO_PEER);
        let peer = with_queues(peer, queues).build();
        let link = with_queues(LinkVeth::new(GRO_DEV, GRO_PEER), queues)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        netlink
            .link()
            .add(link)
            .execute()
            .await
            .with_context(|| format!("creating {GRO_DEV}"))?;
    }
    for name in [GRO_DEV, GRO_PEER] {
        let index = iface::index(name)?;
        overlay_device::set_up(netlink, index, name, mtu).await?;
    }
    // veth hands a frame to its peer's GRO only if it could not have been a TSO packet.
    ethtool::disable_tso(GRO_DEV)?;
    ethtool::enable_gro(GRO_PEER)?;
    iface::index(GRO_DEV)
}

fn with_queues<T>(link: LinkMessageBuilder<T>, queues: u32) -> LinkMessageBuilder<T> {
    link.append_extra_attribute(LinkAttribute::NumTxQueues(queues))
        .append_extra_attribute(LinkAttribute::NumRxQueues(queues))
}

/// Nothing the device takes in is forwarded, and it has no IPv6.
fn isolate(name: &str) -> Result<()> {
    let settings = [
        (format!("/proc/sys/net/ipv4/conf/{name}/forwarding"), "0"),
        (format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1"),
    ];
    for (path, value) in settings {
        std::fs::write(&path, value).with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}

/// Removes the GRO device, if there is one: XDP decap has no use for it, and the classic
/// datapath's `flannel.<VNI>` can't share the port with a metadata device.
pub async fn remove(netlink: &Handle) -> Result<()> {
    overlay_device::delete_link(netlink, GRO_DEV).await?;
    Ok(())
}
