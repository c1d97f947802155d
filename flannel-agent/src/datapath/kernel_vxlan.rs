//! flannel's vxlan backend on the kernel's vxlan device (`--datapath=classic`), as flanneld
//! sets it up: device `flannel.<VNI>` (local = our address, dev = the interface, learning off,
//! MTU = interface - 50) holding `<subnet>.0/32`, and per peer a permanent neighbour, an fdb
//! entry and an onlink route, all through rtnetlink.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr},
};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use rtnetlink::{
    packet_route::{
        link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage},
        neighbour::{NeighbourFlags, NeighbourState},
        AddressFamily,
    },
    Handle, LinkUnspec, LinkVxlan, NeighbourAddRequest, RouteMessageBuilder,
};
use tracing::{info, warn};

use crate::{
    control::{
        lease::{BackendAttrs, Mac},
        peers::Peer,
    },
    datapath::{overlay_device, Installed},
    host::{
        iface::ExtIface,
        netlink::{self, ROUTE_PROTOCOL},
    },
};

pub struct KernelVxlan {
    netlink: Handle,
    name: String,
    index: u32,
    mac: Mac,
    vni: u32,
    port: u16,
    nic: ExtIface,
    mtu: u32,
    subnet: Option<Ipv4Net>,
}

impl KernelVxlan {
    pub async fn start(vni: u32, port: u16, nic: &ExtIface, mtu: u32) -> Result<Self> {
        let netlink = netlink::connect()?;
        // The eBPF datapath's GRO device, in metadata mode, would keep ours off the port.
        crate::datapath::ebpf::gro_device::remove(&netlink).await?;
        let mut vxlan = Self {
            netlink,
            name: format!("flannel.{vni}"),
            index: 0,
            mac: Mac::default(),
            vni,
            port,
            nic: nic.clone(),
            mtu,
            subnet: None,
        };
        vxlan.ensure_device().await?;
        let path = format!("/sys/class/net/{}/address", vxlan.name);
        vxlan.mac = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {path}"))?
            .trim()
            .parse()?;
        info!(device = %vxlan.name, vtep_mac = %vxlan.mac, mtu, "kernel vxlan device");
        Ok(vxlan)
    }

    /// `flannel.<VNI>` with flannel's parameters, up; a device recreated after it went
    /// missing gets back the MAC our lease advertises.
    async fn ensure_device(&mut self) -> Result<()> {
        let nic_index = nix::net::if_::if_nametoindex(self.nic.name.as_str())
            .with_context(|| format!("looking up {}", self.nic.name))?;
        let wanted = [
            InfoVxlan::Id(self.vni),
            InfoVxlan::Link(nic_index),
            InfoVxlan::Local(self.nic.addr),
            InfoVxlan::Port(self.port),
            InfoVxlan::Learning(false),
        ];
        let link = LinkVxlan::new(&self.name, self.vni)
            .dev(nic_index)
            .local(self.nic.addr)
            .port(self.port)
            .learning(false)
            .build();
        self.index = ensure_device(&self.netlink, &self.name, &wanted, link).await?;
        let mut settings = LinkUnspec::new_with_index(self.index);
        if self.mac != Mac::default() {
            settings = settings.address(self.mac.0.to_vec());
        }
        self.netlink
            .link()
            .set(settings.mtu(self.mtu).up().build())
            .execute()
            .await
            .with_context(|| format!("setting {} up", self.name))?;
        if let Some(subnet) = self.subnet {
            self.activate(subnet).await?;
        }
        Ok(())
    }

    pub fn lease_backend(&self) -> BackendAttrs {
        BackendAttrs::Vxlan {
            vni: self.vni,
            vtep_mac: self.mac,
        }
    }

    /// The device holds `<subnet>.0/32`, as flannel's.
    pub async fn activate(&mut self, subnet: Ipv4Net) -> Result<()> {
        overlay_device::hold_subnet_address(&self.netlink, self.index, &self.name, subnet).await?;
        self.subnet = Some(subnet);
        Ok(())
    }

    /// `ip neigh replace <subnet>.0 lladdr <mac> nud permanent`, `bridge fdb replace <mac> dst
    /// <public ip> self permanent`, `ip route replace <subnet> via <subnet>.0 onlink`; what
    /// `old` had and `peer` no longer has goes.
    pub async fn put(&self, old: Option<&Peer>, peer: &Peer) -> Result<()> {
        let Some(mac) = vtep_mac(peer) else {
            return Ok(());
        };
        if let Some(old) = old {
            let old_fdb = vtep_mac(old).map(|m| (m, old.attrs.public_ip));
            if old_fdb.is_some() && old_fdb != Some((mac, peer.attrs.public_ip)) {
                self.remove_fdb(old).await?;
            }
        }
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

    pub async fn remove(&self, peer: &Peer) -> Result<()> {
        let Some(mac) = vtep_mac(peer) else {
            return Ok(());
        };
        netlink::delete_route(&self.netlink, self.route(peer))
            .await
            .with_context(|| format!("route to {}", peer.subnet))?;
        let mut neighbour = self.neighbour(peer.subnet.network(), mac);
        netlink::delete_neighbour(&self.netlink, neighbour.message_mut().clone())
            .await
            .with_context(|| format!("neighbour {}", peer.subnet.network()))?;
        self.remove_fdb(peer).await?;
        info!(subnet = %peer.subnet, "peer left the kernel vxlan device");
        Ok(())
    }

    async fn remove_fdb(&self, peer: &Peer) -> Result<()> {
        let Some(mac) = vtep_mac(peer) else {
            return Ok(());
        };
        let mut entry = self.fdb(mac, peer.attrs.public_ip);
        netlink::delete_neighbour(&self.netlink, entry.message_mut().clone())
            .await
            .with_context(|| format!("fdb entry {mac} dst {}", peer.attrs.public_ip))
    }

    /// Reads the device, its routes, neighbours and fdb entries back: a device that went
    /// missing is recreated (every peer must then be rewritten), entries no installed peer
    /// explains are deleted. Returns the installed peers whose entries are missing or wrong.
    pub async fn audit(&mut self, installed: &Installed) -> Result<BTreeSet<Ipv4Net>> {
        if nix::net::if_::if_nametoindex(self.name.as_str()).ok() != Some(self.index) {
            warn!(device = %self.name, "the vxlan device is gone; recreating it");
            self.ensure_device().await?;
            return Ok(installed.keys().copied().collect());
        }
        if let Some(subnet) = self.subnet {
            self.activate(subnet).await?;
        }
        let wanted: Vec<Peer> = installed
            .iter()
            .filter(|(_, attrs)| matches!(attrs.backend, BackendAttrs::Vxlan { .. }))
            .map(|(subnet, attrs)| Peer {
                subnet: *subnet,
                attrs: attrs.clone(),
            })
            .collect();
        let mut routes = BTreeSet::new();
        for route in netlink::our_routes::<Ipv4Addr>(&self.netlink).await? {
            if route.oif != Some(self.index) {
                continue;
            }
            let subnet = route.destination;
            if installed.contains_key(&subnet) && route.gateway == Some(subnet.network()) {
                routes.insert(subnet);
            } else {
                warn!(destination = %subnet, device = %self.name, "removing a stale route");
                netlink::delete_route(&self.netlink, route.message).await?;
            }
        }
        // What each neighbour and fdb entry should be, by its key.
        let mut by_gateway: HashMap<Ipv4Addr, (Ipv4Net, Mac)> = HashMap::new();
        let mut by_fdb: HashMap<(Mac, Ipv4Addr), Vec<Ipv4Net>> = HashMap::new();
        for peer in &wanted {
            let mac = vtep_mac(peer).expect("vxlan peers only");
            by_gateway.insert(peer.subnet.network(), (peer.subnet, mac));
            let key = (mac, peer.attrs.public_ip);
            by_fdb.entry(key).or_default().push(peer.subnet);
        }
        let mut neighbours = BTreeSet::new();
        for entry in netlink::neighbours(&self.netlink, AddressFamily::Inet).await? {
            if entry.header.ifindex != self.index || entry.header.state != NeighbourState::Permanent
            {
                continue;
            }
            let found = (netlink::ipv4(&entry), netlink::link_layer(&entry));
            match found.0.and_then(|ip| by_gateway.get(&ip)) {
                Some(&(subnet, mac)) if found.1 == Some(mac) => {
                    neighbours.insert(subnet);
                }
                _ => {
                    warn!(neighbour = ?found.0, device = %self.name, "removing a stale neighbour");
                    netlink::delete_neighbour(&self.netlink, entry).await?;
                }
            }
        }
        let mut fdb: BTreeSet<Ipv4Net> = BTreeSet::new();
        for entry in netlink::neighbours(&self.netlink, AddressFamily::Bridge).await? {
            if entry.header.ifindex != self.index {
                continue;
            }
            let found = (netlink::link_layer(&entry), netlink::ipv4(&entry));
            match found.0.zip(found.1).and_then(|key| by_fdb.get(&key)) {
                Some(subnets) => fdb.extend(subnets),
                None => {
                    warn!(mac = ?found.0, dst = ?found.1, device = %self.name, "removing a stale fdb entry");
                    netlink::delete_neighbour(&self.netlink, entry).await?;
                }
            }
        }
        Ok(wanted
            .iter()
            .map(|p| p.subnet)
            .filter(|s| !(routes.contains(s) && neighbours.contains(s) && fdb.contains(s)))
            .collect())
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

/// The classic vxlan devices (`flannel.<VNI>`) on this host.
pub fn devices() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("flannel."))
        .collect()
}

/// `--cleanup`: the classic vxlan devices, with their neighbours, fdb entries and routes.
pub async fn cleanup(netlink: &Handle) -> Result<()> {
    for name in devices() {
        if overlay_device::delete_link(netlink, &name).await? {
            info!(device = %name, "removed the device");
        }
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
