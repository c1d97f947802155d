//! flannel's vxlan backend on the kernel's vxlan device (`--datapath=classic`), as flanneld
//! sets it up: device `flannel.<VNI>` (local = our address, dev = the interface, learning off,
//! MTU = interface - 50) holding `<subnet>.0/32`, and per peer a permanent neighbour, an fdb
//! entry and an onlink route, all through rtnetlink.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result};
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::{
    packet_route::{
        link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage},
        neighbour::NeighbourFlags,
    },
    Handle, LinkVxlan, NeighbourAddRequest, RouteMessageBuilder,
};
use tracing::{info, warn};

use crate::{
    control::{
        lease::{BackendAttrs, Mac},
        peers::{Peer, PeerEvent},
    },
    datapath::{host_gw::ROUTE_PROTOCOL, overlay_device},
    host::iface::ExtIface,
};

pub struct KernelVxlan {
    netlink: Handle,
    name: String,
    index: u32,
    mac: Mac,
    vni: u32,
}

impl KernelVxlan {
    pub async fn start(vni: u32, port: u16, nic: &ExtIface, mtu: u32) -> Result<Self> {
        let (connection, netlink, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
        tokio::spawn(connection);
        // The eBPF datapath's GRO device, in metadata mode, would keep ours off the port.
        crate::datapath::ebpf::gro_device::remove(&netlink).await?;
        let name = format!("flannel.{vni}");
        let nic_index = nix::net::if_::if_nametoindex(nic.name.as_str())
            .with_context(|| format!("looking up {}", nic.name))?;
        let wanted = [
            InfoVxlan::Id(vni),
            InfoVxlan::Link(nic_index),
            InfoVxlan::Local(nic.addr),
            InfoVxlan::Port(port),
            InfoVxlan::Learning(false),
        ];
        let link = LinkVxlan::new(&name, vni)
            .dev(nic_index)
            .local(nic.addr)
            .port(port)
            .learning(false)
            .build();
        let index = ensure_device(&netlink, &name, &wanted, link).await?;
        overlay_device::set_up(&netlink, index, &name, mtu).await?;
        let path = format!("/sys/class/net/{name}/address");
        let mac = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {path}"))?
            .trim()
            .parse()?;
        info!(device = %name, vtep_mac = %mac, mtu, "kernel vxlan device");
        Ok(Self {
            netlink,
            name,
            index,
            mac,
            vni,
        })
    }

    pub fn lease_backend(&self) -> BackendAttrs {
        BackendAttrs::Vxlan {
            vni: self.vni,
            vtep_mac: self.mac,
        }
    }

    /// The device holds `<subnet>.0/32`, as flannel's.
    pub async fn activate(&mut self, subnet: Ipv4Net) -> Result<()> {
        overlay_device::hold_subnet_address(&self.netlink, self.index, &self.name, subnet).await
    }

    pub async fn apply(&mut self, event: &PeerEvent) -> Result<()> {
        match event {
            PeerEvent::Added(peer) => self.install(peer).await,
            PeerEvent::Removed(peer) => self.uninstall(peer).await,
        }
    }

    /// `ip neigh replace <subnet>.0 lladdr <mac> nud permanent`, `bridge fdb replace <mac> dst
    /// <public ip> self permanent`, `ip route replace <subnet> via <subnet>.0 onlink`.
    pub async fn install(&self, peer: &Peer) -> Result<()> {
        let Some(mac) = vtep_mac(peer) else {
            return Ok(());
        };
        let gateway = peer.subnet.network();
        self.neighbour(gateway, mac)
            .replace()
            .execute()
            .await
            .with_context(|| format!("neighbour {gateway} on {}", self.name))?;
        self.fdb(mac, peer.attrs.public_ip)
            .replace()
            .execute()
            .await
            .with_context(|| format!("fdb entry {mac} on {}", self.name))?;
        self.netlink
            .route()
            .add(self.route(peer))
            .replace()
            .execute()
            .await
            .with_context(|| format!("route to {} on {}", peer.subnet, self.name))?;
        info!(subnet = %peer.subnet, public_ip = %peer.attrs.public_ip, "peer on the kernel vxlan device");
        Ok(())
    }

    async fn uninstall(&self, peer: &Peer) -> Result<()> {
        let Some(mac) = vtep_mac(peer) else {
            return Ok(());
        };
        // Whatever is already gone is fine: we only want it gone.
        let _ = self.netlink.route().del(self.route(peer)).execute().await;
        for mut entry in [
            self.neighbour(peer.subnet.network(), mac),
            self.fdb(mac, peer.attrs.public_ip),
        ] {
            let _ = self
                .netlink
                .neighbours()
                .del(entry.message_mut().clone())
                .execute()
                .await;
        }
        info!(subnet = %peer.subnet, "peer left the kernel vxlan device");
        Ok(())
    }

    fn neighbour(&self, gateway: Ipv4Addr, mac: Mac) -> NeighbourAddRequest {
        self.netlink
            .neighbours()
            .add(self.index, IpAddr::V4(gateway))
            .link_layer_address(&mac.0)
    }

    fn fdb(&self, mac: Mac, public_ip: Ipv4Addr) -> NeighbourAddRequest {
        self.netlink
            .neighbours()
            .add_bridge(self.index, &mac.0)
            .destination(IpAddr::V4(public_ip))
            .flags(NeighbourFlags::Own)
    }

    fn route(&self, peer: &Peer) -> rtnetlink::packet_route::route::RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(peer.subnet.network(), peer.subnet.prefix_len())
            .gateway(peer.subnet.network())
            .output_interface(self.index)
            .onlink()
            .protocol(ROUTE_PROTOCOL)
            .build()
    }
}

/// The eBPF datapath takes over from the classic one on this host: a `flannel.<VNI>` left by
/// it would hold the vxlan port (the GRO device could not come up) and its peer routes would
/// shadow the overlay's. It goes, with its neighbours, fdb entries and routes.
pub async fn remove_classic_device(netlink: &Handle, vni: u32) -> Result<()> {
    let name = format!("flannel.{vni}");
    if overlay_device::delete_link(netlink, &name).await? {
        info!(device = %name, "removed the classic datapath's vxlan device");
    }
    Ok(())
}

fn vtep_mac(peer: &Peer) -> Option<Mac> {
    match &peer.attrs.backend {
        BackendAttrs::Vxlan { vtep_mac, .. } => Some(*vtep_mac),
        _ => None,
    }
}

/// The vxlan device `name` with the attributes `wanted`: an existing one that has them is
/// kept (a restart keeps its MAC), another is replaced by `link`. Returns its ifindex.
pub async fn ensure_device(
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
    nix::net::if_::if_nametoindex(name).with_context(|| format!("finding {name}"))
}

/// An existing device's ifindex and vxlan attributes, if there is one called `name`.
async fn vxlan_info(netlink: &Handle, name: &str) -> Result<Option<(u32, Vec<InfoVxlan>)>> {
    let Ok(index) = nix::net::if_::if_nametoindex(name) else {
        return Ok(None);
    };
    let links: Vec<_> = netlink
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_collect()
        .await?;
    let info = links
        .iter()
        .flat_map(|link| &link.attributes)
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
