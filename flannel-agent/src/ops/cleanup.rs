//! `flanneld --cleanup`: removes what flanneld installed on this host: our TC filters, the
//! overlay devices (`flannel-bpf`, `flannel.<VNI>`, the GRO device `flannel-gro`), our routes
//! (host-gw, overlay, classic vxlan, blackhole), our iptables chains and nftables tables, and
//! the pinned maps.
//! The lease stays in etcd until its TTL runs out, as when flannel stops for good.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::Result;
use tracing::info;

use crate::{
    datapath::{ebpf, kernel_vxlan},
    host::{iptables, netlink, nftables},
};

pub async fn run(pin_dir: &Path) -> Result<()> {
    let netlink = netlink::connect()?;
    ebpf::cleanup(&netlink, pin_dir).await?;
    kernel_vxlan::cleanup(&netlink).await?;
    // Every datapath's routes carry our protocol tag (host-gw's, the overlay's, classic
    // vxlan's): whatever the devices took with them, the rest goes here.
    let ours = (netlink::our_routes::<Ipv4Addr>(&netlink).await?.into_iter())
        .map(|route| route.message)
        .chain(
            (netlink::our_routes::<Ipv6Addr>(&netlink).await?.into_iter())
                .map(|route| route.message),
        );
    let mut count = 0;
    for route in ours {
        netlink::delete_route(&netlink, route).await?;
        count += 1;
    }
    info!(routes = count, "removed our routes");
    iptables::remove_all().await?;
    nftables::remove_all().await?;
    info!("removed our iptables chains and nftables tables");
    Ok(())
}
