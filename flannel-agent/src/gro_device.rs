//! GRO for the vxlan tunnel. A NIC's GRO merges UDP-tunnel frames only on a port that a
//! kernel tunnel socket owns; without one, `tc_ingress` decapsulates every MTU-sized frame and
//! the containers' stacks take them one by one. So with TC decap the agent keeps an idle
//! kernel vxlan device, `flannel-gro`, on the tunnel port: its socket lets GRO merge our
//! frames into one packet per burst before `tc_ingress` sees them.
//!
//! The device is in metadata mode (`external`) for the one packet kind our programs can't
//! encapsulate: a merged aggregate that we decapsulated and a container forwards to another
//! host still carries tunnel GSO state, which `bpf_skb_adjust_room` refuses; `tc_encap` hands
//! it to this device with the peer in its tunnel key, and the kernel encapsulates it.
//!
//! It never takes a packet in: `tc_ingress` decapsulates or drops every packet for our port
//! before the socket could; should that filter be removed by hand, what the device would
//! decapsulate is not forwarded (forwarding is off on it), it learns nothing and has no
//! address. It stays when the agent exits, so a restart keeps GRO without a gap; `--cleanup`
//! removes it.

use anyhow::{Context, Result};
use rtnetlink::{packet_route::link::InfoVxlan, Handle, LinkUnspec, LinkVxlan};
use tracing::{info, warn};

use crate::kernel_vxlan::vxlan_info;

pub const GRO_DEV: &str = "flannel-gro";

/// Creates the GRO device for `port` (or keeps a compatible one), brings it up, and returns
/// its ifindex.
pub async fn ensure(netlink: &Handle, port: u16) -> Result<u32> {
    let wanted = [
        InfoVxlan::CollectMetadata(true),
        InfoVxlan::Port(port),
        InfoVxlan::Learning(false),
    ];
    let index = match vxlan_info(netlink, GRO_DEV).await? {
        Some((index, info)) if wanted.iter().all(|w| info.contains(w)) => index,
        existing => {
            if let Some((index, _)) = existing {
                warn!(
                    device = GRO_DEV,
                    "exists with other parameters; recreating it"
                );
                remove_index(netlink, index).await?;
            }
            let link = LinkVxlan::new(GRO_DEV, 0)
                .collect_metadata(true)
                .port(port)
                .learning(false)
                .build();
            netlink
                .link()
                .add(link)
                .execute()
                .await
                .with_context(|| format!("creating {GRO_DEV}"))?;
            info!(device = GRO_DEV, port, "GRO socket for the tunnel port");
            nix::net::if_::if_nametoindex(GRO_DEV).with_context(|| format!("finding {GRO_DEV}"))?
        }
    };
    let forwarding = format!("/proc/sys/net/ipv4/conf/{GRO_DEV}/forwarding");
    std::fs::write(&forwarding, "0").with_context(|| format!("writing {forwarding}"))?;
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
    match nix::net::if_::if_nametoindex(GRO_DEV) {
        Ok(index) => remove_index(netlink, index).await,
        Err(_) => Ok(()),
    }
}

async fn remove_index(netlink: &Handle, index: u32) -> Result<()> {
    netlink
        .link()
        .del(index)
        .execute()
        .await
        .with_context(|| format!("deleting {GRO_DEV}"))
}
