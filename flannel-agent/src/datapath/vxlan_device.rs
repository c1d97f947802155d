//! A kernel vxlan device, as both vxlan users make theirs: the classic datapath's
//! `flannel.<VNI>` and the eBPF datapath's GRO device, `flannel-gro`.

use anyhow::{Context, Result};
use rtnetlink::{
    packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage},
    Handle,
};
use tracing::{info, warn};

use crate::{
    datapath::overlay_device,
    host::{iface, netlink},
};

/// The vxlan device `name` with the attributes `wanted`: an existing one that has them is
/// kept (a restart keeps its MAC), another is replaced by `link`. Returns its ifindex.
pub async fn ensure(
    netlink: &Handle,
    name: &str,
    wanted: &[InfoVxlan],
    link: LinkMessage,
) -> Result<u32> {
    match vxlan_info(netlink, name).await? {
        Some((index, info)) if wanted.iter().all(|w| info.contains(w)) => return Ok(index),
        Some(_) => {
            warn!(device = %name, "exists with other parameters; recreating it");
            overlay_device::delete_link(netlink, name).await?;
        }
        None => {}
    }
    netlink
        .link()
        .add(link)
        .execute()
        .await
        .with_context(|| format!("creating {name}"))?;
    info!(device = %name, "created");
    iface::index(name)
}

/// An existing device's ifindex and vxlan attributes, if there is one called `name`.
async fn vxlan_info(netlink: &Handle, name: &str) -> Result<Option<(u32, Vec<InfoVxlan>)>> {
    let Ok(index) = nix::net::if_::if_nametoindex(name) else {
        return Ok(None);
    };
    let info = netlink::link_attributes(netlink, index)
        .await?
        .iter()
        .filter_map(|attr| match attr {
            LinkAttribute::LinkInfo(infos) => Some(infos),
            _ => None,
        })
        .flatten()
        .find_map(|info| match info {
            LinkInfo::Data(InfoData::Vxlan(vxlan)) => Some(vxlan.clone()),
            _ => None,
        })
        .unwrap_or_default();
    Ok(Some((index, info)))
}
