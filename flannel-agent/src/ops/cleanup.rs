//! `flanneld --cleanup`: removes what flanneld installed on this host: our TC filters, the
//! overlay devices (`flannel-bpf`, `flannel.<VNI>`, the GRO device `flannel-gro`), our routes
//! (host-gw, overlay, classic vxlan), our iptables chains and the pinned maps.
//! The lease stays in etcd until its TTL runs out, as when flannel stops for good.

use std::{fs, path::Path};

use anyhow::{Context, Result};
use aya::programs::{links::Link, tc::SchedClassifierLink, TcAttachType};
use tracing::info;

use crate::{
    datapath::{
        ebpf::{gro_device::GRO_DEV, FILTER_HANDLE, OVERLAY_DEV, PRIORITIES},
        overlay_device,
    },
    host::{iptables, netlink},
};

pub async fn run(pin_dir: &Path) -> Result<()> {
    let mut filters = 0;
    for entry in fs::read_dir("/sys/class/net").context("listing interfaces")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        for kind in [TcAttachType::Ingress, TcAttachType::Egress] {
            for priority in PRIORITIES {
                let Ok(link) =
                    SchedClassifierLink::attached(&name, kind, priority, FILTER_HANDLE, None)
                else {
                    continue;
                };
                if link.detach().is_ok() {
                    filters += 1;
                }
            }
        }
    }
    info!(filters, "removed our TC filters");

    let netlink = netlink::connect()?;
    // The eBPF overlay device, and the classic datapath's `flannel.<VNI>` (its neighbours and
    // fdb entries go with it).
    for entry in fs::read_dir("/sys/class/net").context("listing interfaces")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let ours = name == OVERLAY_DEV || name == GRO_DEV || name.starts_with("flannel.");
        if ours && overlay_device::delete_link(&netlink, &name).await? {
            info!(device = %name, "removed the device");
        }
    }
    let ours = netlink::our_routes(&netlink).await?;
    let count = ours.len();
    for route in ours {
        netlink::delete_route(&netlink, route.message).await?;
    }
    info!(routes = count, "removed our routes");

    iptables::remove_all().await?;
    info!("removed our iptables chains");
    if pin_dir.exists() {
        fs::remove_dir_all(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))?;
        info!(dir = %pin_dir.display(), "removed the pinned maps");
    }
    Ok(())
}
