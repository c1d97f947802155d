//! flannel's vxlan backend on the kernel's vxlan device (`--datapath=classic`), as flanneld
//! sets it up: device `flannel.<VNI>` (local = our address, dev = the interface, learning off,
//! MTU = interface - 50) holding `<subnet>.0/32`, and per peer a permanent neighbour, an fdb
//! entry and an onlink route, all through rtnetlink. IPv6 (dual-stack or IPv6-only) gets the
//! same on `flannel-v6.<VNI>` (local = our public IPv6; the MTU 20 bytes lower, as the kernel
//! makes flannel's) for IPv6 subnets.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use rtnetlink::{
    packet_route::{
        link::InfoVxlan,
        neighbour::{NeighbourFlags, NeighbourState},
        route::RouteMessage,
        AddressFamily,
    },
    Handle, LinkUnspec, LinkVxlan, NeighbourAddRequest, RouteMessageBuilder,
};
use tracing::{info, warn};

use crate::{
    control::{
        lease::{BackendAttrs, LeaseAttrs, Mac, Subnets},
        peers::Peer,
    },
    datapath::host_gw::HostGw,
    datapath::{overlay_device, vxlan_device, Installed},
    family::Family,
    host::{
        iface::{self, ExtIface},
        netlink::{self, ROUTE_PROTOCOL},
        vtep_mac,
    },
};

pub struct KernelVxlan {
    vni: u32,
    /// `flannel.<VNI>`, unless the network is IPv6-only.
    v4: Option<Device<Ipv4Addr>>,
    /// `flannel-v6.<VNI>`, in a dual-stack or IPv6-only network.
    v6: Option<Device<Ipv6Addr>>,
    /// `DirectRouting`: routes via the peers on our interface's subnet, which the devices
    /// then leave alone.
    direct: Option<HostGw>,
}

impl KernelVxlan {
    /// `flannel.<VNI>` for IPv4 and `flannel-v6.<VNI>` for IPv6 (local: the public IPv6), as
    /// the network's families ask.
    pub async fn start(
        vni: u32,
        port: u16,
        nic: &ExtIface,
        mtu: u32,
        (ipv4, ipv6): (bool, bool),
        direct_routing: bool,
    ) -> Result<Self> {
        let netlink = netlink::connect()?;
        let link = Link {
            netlink,
            vni,
            port,
            nic: nic.name.clone(),
        };
        let v6_mtu = nic.ipv6_tunnel_mtu(mtu);
        let v6 = match (ipv6, nic.public_ipv6) {
            (false, _) => None,
            (true, Some(local)) => Some(Device::start(link.clone(), local, v6_mtu).await?),
            (true, None) => bail!(
                "the IPv6 vxlan device needs an IPv6 address on {}",
                nic.name
            ),
        };
        let v4 = match ipv4 {
            true => Some(Device::start(link, nic.addr, mtu).await?),
            false => None,
        };
        let direct = direct_routing
            .then(|| HostGw::direct(&nic.name, (ipv4, ipv6)))
            .transpose()?;
        Ok(Self {
            vni,
            v4,
            v6,
            direct,
        })
    }

    /// A peer's tunnel of family `A` on its device: none where it is routed directly.
    fn tunnel<A: Family>(&self, subnets: &Subnets, attrs: &LeaseAttrs) -> Option<Tunnel<A>> {
        let direct = |t: &Tunnel<A>| self.direct.as_ref().is_some_and(|d| d.carries(t.public));
        Tunnel::of(subnets, attrs).filter(|t| !direct(t))
    }

    fn tunnel_of<A: Family>(&self, peer: &Peer) -> Option<Tunnel<A>> {
        self.tunnel(&peer.subnets, &peer.attrs)
    }

    pub fn lease_backend(&self) -> BackendAttrs {
        BackendAttrs::Vxlan {
            vni: self.vni,
            vtep_mac: self.v4.as_ref().map(|v4| v4.mac),
            v6_vtep_mac: self.v6.as_ref().map(|v6| v6.mac),
        }
    }

    /// The devices hold our subnets' first addresses, as flannel's.
    pub async fn activate(&mut self, ours: Subnets) -> Result<()> {
        if let (Some(v4), Some(subnet)) = (&mut self.v4, ours.ipv4) {
            v4.activate(subnet).await?;
        }
        if let (Some(v6), Some(subnet)) = (&mut self.v6, ours.ipv6) {
            v6.activate(subnet).await?;
        }
        Ok(())
    }

    /// Writes `peer` on each family's device, or routes it directly; what `old` had and
    /// `peer` no longer has goes. A direct route replaces the device's route to the same
    /// subnet, and the other way round, so a peer moving on or off our subnet never lacks one.
    pub async fn put(&self, old: Option<&Peer>, peer: &Peer) -> Result<()> {
        if let Some(direct) = &self.direct {
            direct.put(peer).await?;
        }
        if let Some(v4) = &self.v4 {
            v4.put(old.and_then(|o| self.tunnel_of(o)), self.tunnel_of(peer))
                .await?;
        }
        if let Some(v6) = &self.v6 {
            v6.put(old.and_then(|o| self.tunnel_of(o)), self.tunnel_of(peer))
                .await?;
        }
        Ok(())
    }

    pub async fn remove(&self, peer: &Peer) -> Result<()> {
        if let Some(v4) = &self.v4 {
            v4.put(self.tunnel_of(peer), None).await?;
        }
        if let Some(v6) = &self.v6 {
            v6.put(self.tunnel_of(peer), None).await?;
        }
        if let Some(direct) = &self.direct {
            direct.remove(peer).await?;
        }
        Ok(())
    }

    /// Reads both devices back (see `Device::audit`): returns the installed peers whose
    /// entries are missing or wrong on either.
    pub async fn audit(&mut self, installed: &Installed) -> Result<BTreeSet<Subnets>> {
        let mut drifted = BTreeSet::new();
        let v4 = self.wanted::<Ipv4Addr>(installed);
        if let Some(device) = &mut self.v4 {
            drifted.extend(device.audit(v4).await?);
        }
        let v6 = self.wanted::<Ipv6Addr>(installed);
        if let Some(device) = &mut self.v6 {
            drifted.extend(device.audit(v6).await?);
        }
        if let Some(direct) = &self.direct {
            drifted.extend(direct.audit(installed).await?);
        }
        Ok(drifted)
    }

    /// The tunnels of family `A` the installed peers want on its device.
    fn wanted<A: Family>(&self, installed: &Installed) -> Vec<(Subnets, Tunnel<A>)> {
        installed
            .iter()
            .filter_map(|(subnets, attrs)| Some((*subnets, self.tunnel(subnets, attrs)?)))
            .collect()
    }
}

/// What both devices share: the VNI, the port and the interface.
#[derive(Clone)]
struct Link {
    netlink: Handle,
    vni: u32,
    port: u16,
    nic: String,
}

/// One family's vxlan device, `flannel.<VNI>` or `flannel-v6.<VNI>`.
struct Device<A: Family> {
    link: Link,
    name: String,
    index: u32,
    mac: Mac,
    /// The tunnel's source: our address of this family.
    local: A,
    mtu: u32,
    subnet: Option<A::Net>,
}

/// What a device needs for one peer: its subnet, routed via the subnet's first address (the
/// gateway), a permanent neighbour giving the gateway the peer's MAC, and the fdb entry
/// sending that MAC to the peer's public address.
#[derive(Clone, Copy, PartialEq)]
struct Tunnel<A: Family> {
    subnet: A::Net,
    gateway: A,
    mac: Mac,
    public: A,
}

impl<A: Family> Tunnel<A> {
    /// A lease's vxlan peer of family `A`, if the lease has that half.
    fn of(subnets: &Subnets, attrs: &LeaseAttrs) -> Option<Self> {
        let subnet = subnets.half::<A>()?;
        Some(Self {
            subnet,
            gateway: A::network(&subnet),
            mac: attrs.vtep_mac::<A>()?,
            public: attrs.public::<A>()?,
        })
    }
}

/// flannel's name for family `A`'s device, but for the VNI.
fn device_prefix<A: Family>() -> &'static str {
    A::pick("flannel.", "flannel-v6.")
}

/// flannel's name for family `A`'s device of `vni`: `flannel.<VNI>`, `flannel-v6.<VNI>`.
fn device_name<A: Family>(vni: u32) -> String {
    format!("{}{vni}", device_prefix::<A>())
}

/// Both families' device names for `vni`.
fn device_names(vni: u32) -> [String; 2] {
    [device_name::<Ipv4Addr>(vni), device_name::<Ipv6Addr>(vni)]
}

/// The device's `local` attribute.
fn local_info(local: IpAddr) -> InfoVxlan {
    match local {
        IpAddr::V4(ip) => InfoVxlan::Local(ip),
        IpAddr::V6(ip) => InfoVxlan::Local6(ip),
    }
}

impl<A: Family> Device<A> {
    async fn start(link: Link, local: A, mtu: u32) -> Result<Self> {
        let name = device_name::<A>(link.vni);
        // A new device (after a reboot, say) gets this host's VTEP MAC; one that is there
        // keeps the MAC its peers know.
        let mac = match nix::net::if_::if_nametoindex(name.as_str()) {
            Ok(_) => None,
            Err(_) => vtep_mac::for_device(&name, local.into()),
        };
        let mut device = Self {
            name,
            link,
            index: 0,
            mac: mac.unwrap_or_default(),
            local,
            mtu,
            subnet: None,
        };
        device.ensure().await?;
        device.mac = iface::mac(&device.name)?;
        info!(device = %device.name, vtep_mac = %device.mac, mtu = device.mtu, "kernel vxlan device");
        Ok(device)
    }

    /// The device with flannel's parameters, up, with our MAC (the one our lease advertises,
    /// also when it was recreated after it went missing).
    async fn ensure(&mut self) -> Result<()> {
        let Link {
            netlink,
            vni,
            port,
            nic,
        } = &self.link;
        let nic_index = iface::index(nic)?;
        let wanted = [
            InfoVxlan::Id(*vni),
            InfoVxlan::Link(nic_index),
            local_info(self.local.into()),
            InfoVxlan::Port(*port),
            InfoVxlan::Learning(false),
        ];
        let link = LinkVxlan::new(&self.name, *vni)
            .dev(nic_index)
            .append_info_data(local_info(self.local.into()))
            .port(*port)
            .learning(false)
            .build();
        self.index = vxlan_device::ensure(netlink, &self.name, &wanted, link).await?;
        if A::BITS == 128 {
            // As flannel: the device takes no router advertisements.
            let path = format!("/proc/sys/net/ipv6/conf/{}/accept_ra", self.name);
            std::fs::write(&path, "0").with_context(|| format!("writing {path}"))?;
        }
        let mut settings = LinkUnspec::new_with_index(self.index);
        if self.mac != Mac::default() {
            settings = settings.address(self.mac.0.to_vec());
        }
        netlink
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

    async fn activate(&mut self, subnet: A::Net) -> Result<()> {
        let netlink = &self.link.netlink;
        overlay_device::hold_subnet_address(netlink, self.index, &self.name, subnet).await?;
        self.subnet = Some(subnet);
        Ok(())
    }

    /// Brings the device from `old` to `new` for one peer: `ip neigh replace <gateway>
    /// lladdr <mac> nud permanent`, `bridge fdb replace <mac> dst <public> self permanent`,
    /// `ip route replace <subnet> via <gateway> onlink`; what `old` had and `new` has not goes.
    async fn put(&self, old: Option<Tunnel<A>>, new: Option<Tunnel<A>>) -> Result<()> {
        if let Some(old) = old.filter(|old| new.map(|n| n.subnet) != Some(old.subnet)) {
            let subnet = old.subnet.into();
            netlink::delete_route(&self.link.netlink, self.route(&old)?)
                .await
                .with_context(|| format!("route to {subnet}"))?;
            let mut neighbour = self.neighbour(&old);
            netlink::delete_neighbour(&self.link.netlink, neighbour.message_mut().clone())
                .await
                .with_context(|| format!("neighbour {}", old.gateway))?;
            info!(%subnet, device = %self.name, "peer left the kernel vxlan device");
        }
        if let Some(old) =
            old.filter(|old| new.map(|n| (n.mac, n.public)) != Some((old.mac, old.public)))
        {
            let mut entry = self.fdb(&old);
            netlink::delete_neighbour(&self.link.netlink, entry.message_mut().clone())
                .await
                .with_context(|| format!("fdb entry {} dst {}", old.mac, old.public))?;
        }
        let Some(new) = new else {
            return Ok(());
        };
        self.neighbour(&new)
            .replace()
            .execute()
            .await
            .with_context(|| format!("neighbour {} on {}", new.gateway, self.name))?;
        self.fdb(&new)
            .replace()
            .execute()
            .await
            .with_context(|| format!("fdb entry {} on {}", new.mac, self.name))?;
        let subnet: IpNet = new.subnet.into();
        self.link
            .netlink
            .route()
            .add(self.route(&new)?)
            .replace()
            .execute()
            .await
            .with_context(|| format!("route to {subnet} on {}", self.name))?;
        info!(%subnet, public_ip = %new.public, device = %self.name, "peer on the kernel vxlan device");
        Ok(())
    }

    /// Reads the device, its routes, neighbours and fdb entries back: a device that went
    /// missing is recreated (every peer must then be rewritten), entries no installed peer
    /// explains are deleted. Returns the installed peers whose entries are missing or wrong.
    async fn audit(&mut self, wanted: Vec<(Subnets, Tunnel<A>)>) -> Result<BTreeSet<Subnets>> {
        if nix::net::if_::if_nametoindex(self.name.as_str()).ok() != Some(self.index) {
            warn!(device = %self.name, "the vxlan device is gone; recreating it");
            self.ensure().await?;
            return Ok(wanted.iter().map(|(key, _)| *key).collect());
        }
        if let Some(subnet) = self.subnet {
            self.activate(subnet).await?;
        }
        let netlink = &self.link.netlink;
        // What each route, neighbour and fdb entry should be, by its key.
        let by_subnet: HashMap<A::Net, (Subnets, A)> = wanted
            .iter()
            .map(|(key, t)| (t.subnet, (*key, t.gateway)))
            .collect();
        let by_gateway: HashMap<A, (Subnets, Mac)> = wanted
            .iter()
            .map(|(key, t)| (t.gateway, (*key, t.mac)))
            .collect();
        let mut by_fdb: HashMap<(Mac, A), Vec<Subnets>> = HashMap::new();
        for (key, t) in &wanted {
            by_fdb.entry((t.mac, t.public)).or_default().push(*key);
        }
        let mut routes = BTreeSet::new();
        for route in netlink::our_routes::<A>(netlink).await? {
            if route.oif != Some(self.index) {
                continue;
            }
            match by_subnet.get(&route.destination) {
                Some((key, gateway)) if route.gateway == Some(*gateway) => {
                    routes.insert(*key);
                }
                _ => {
                    let destination: IpNet = route.destination.into();
                    warn!(%destination, device = %self.name, "removing a stale route");
                    netlink::delete_route(netlink, route.message).await?;
                }
            }
        }
        let mut neighbours = BTreeSet::new();
        for entry in netlink::neighbours(netlink, netlink::address_family::<A>()).await? {
            if entry.header.ifindex != self.index || entry.header.state != NeighbourState::Permanent
            {
                continue;
            }
            let found = (
                netlink::destination::<A>(&entry),
                netlink::link_layer(&entry),
            );
            match found.0.and_then(|ip| by_gateway.get(&ip)) {
                Some(&(key, mac)) if found.1 == Some(mac) => {
                    neighbours.insert(key);
                }
                _ => {
                    warn!(neighbour = ?found.0, device = %self.name, "removing a stale neighbour");
                    netlink::delete_neighbour(netlink, entry).await?;
                }
            }
        }
        let mut fdb: BTreeSet<Subnets> = BTreeSet::new();
        for entry in netlink::neighbours(netlink, AddressFamily::Bridge).await? {
            if entry.header.ifindex != self.index {
                continue;
            }
            let found = (
                netlink::link_layer(&entry),
                netlink::destination::<A>(&entry),
            );
            match found.0.zip(found.1).and_then(|key| by_fdb.get(&key)) {
                Some(keys) => fdb.extend(keys),
                None => {
                    warn!(mac = ?found.0, dst = ?found.1, device = %self.name, "removing a stale fdb entry");
                    netlink::delete_neighbour(netlink, entry).await?;
                }
            }
        }
        Ok(wanted
            .iter()
            .map(|(key, _)| *key)
            .filter(|k| !(routes.contains(k) && neighbours.contains(k) && fdb.contains(k)))
            .collect())
    }

    fn neighbour(&self, tunnel: &Tunnel<A>) -> NeighbourAddRequest {
        self.link
            .netlink
            .neighbours()
            .add(self.index, tunnel.gateway.into())
            .link_layer_address(&tunnel.mac.0)
    }

    fn fdb(&self, tunnel: &Tunnel<A>) -> NeighbourAddRequest {
        self.link
            .netlink
            .neighbours()
            .add_bridge(self.index, &tunnel.mac.0)
            .destination(tunnel.public.into())
            .flags(NeighbourFlags::Own)
    }

    fn route(&self, tunnel: &Tunnel<A>) -> Result<RouteMessage> {
        let subnet: IpNet = tunnel.subnet.into();
        Ok(RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(subnet.network(), subnet.prefix_len())?
            .gateway(tunnel.gateway.into())?
            .output_interface(self.index)
            .onlink()
            .protocol(ROUTE_PROTOCOL)
            .build())
    }
}

/// Whether a classic vxlan device for `vni` (flannel's or ours) is on this host: it holds the
/// vxlan port.
pub fn classic_device_present(vni: u32) -> bool {
    device_names(vni)
        .iter()
        .any(|name| iface::index(name).is_ok())
}

/// The eBPF datapath takes over from the classic one on this host: a `flannel.<VNI>` left by
/// it would hold the vxlan port (the GRO device could not come up) and its peer routes would
/// shadow the overlay's. It goes, with its neighbours, fdb entries and routes; true when one
/// went.
pub async fn remove_classic_device(netlink: &Handle, vni: u32) -> Result<bool> {
    let mut removed = false;
    for name in device_names(vni) {
        if overlay_device::delete_link(netlink, &name).await? {
            info!(device = %name, "removed the classic datapath's vxlan device");
            removed = true;
        }
    }
    Ok(removed)
}

/// The MAC of the classic vxlan device of family `A` left on this host (by flannel or by our
/// classic datapath), which the peers know as our VTEP MAC.
pub fn classic_mac<A: Family>(vni: u32) -> Option<Mac> {
    iface::mac(&device_name::<A>(vni)).ok()
}

/// The classic vxlan devices (`flannel.<VNI>`, `flannel-v6.<VNI>`) on this host.
pub fn devices() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| {
            name.starts_with(device_prefix::<Ipv4Addr>())
                || name.starts_with(device_prefix::<Ipv6Addr>())
        })
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
