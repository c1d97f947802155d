//! The eBPF datapath: our TC programs carry flannel's vxlan and udp wire formats.
//!
//! - `tc_ingress` on the NIC decapsulates tunnel packets from current peers (and drops
//!   forged ones) before the stack routes the inner packet to its container.
//! - `tc_encap` on the egress of the overlay device `flannel-bpf` encapsulates whatever the
//!   host routes to the overlay network and sends it straight out of the NIC; on the ingress
//!   of the container bridge (the interface that holds an address of our subnet, docker0 or
//!   cni0) it does the same for container traffic before routing: the fast path.

mod attach;
mod fast_path;
pub mod gro_device;
pub mod ipv6;
pub mod programs;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{bail, Context, Result};
use aya::{programs::TcAttachType, util::KernelVersion};
use flannel_common::{
    mask_be, pins::Pins, DatapathConfig, DatapathConfig6, Encap, PeerInfo, PeerInfo6, Tunnel,
    Tunnel6, TunnelEnds, CHECK_INNER_SOURCE, DIRECT_ROUTING, IPV6_ONLY, THROUGH_NETFILTER,
};
use ipnet::{Ipv4Net, Ipv6Net};
use rtnetlink::{Handle, LinkUnspec, LinkVeth};
use tracing::{info, warn};

use crate::{
    control::{
        config::Backend,
        lease::{BackendAttrs, LeaseAttrs, Mac, Subnets},
        peers::Peer,
    },
    datapath::{kernel_vxlan, overlay_device, Decap, Installed, Options, Ours},
    host::{
        iface::{self, ExtIface, OnLink},
        netlink, vtep_mac,
    },
};
use attach::{attach_xdp, detach_xdp, Hooks, Lasting, XDP_LINK_PIN};
pub use attach::{tcx_programs, FILTER_MINOR};
pub use fast_path::bridge_of;
use gro_device::{GroDevice, GRO_PEER};
use programs::Programs;

/// The overlay device, a veth whose peer never sees a packet: `tc_encap` redirects them all.
pub const OVERLAY_DEV: &str = "flannel-bpf";
const OVERLAY_PEER: &str = "flannel-bpf-p";
/// The overlay device's and the GRO veth's hooks.
const OVERLAY_HOOK: Lasting = Lasting {
    iface: OVERLAY_DEV,
    kind: TcAttachType::Egress,
    pin: "tc_overlay_link",
};
const GRO_HOOK: Lasting = Lasting {
    iface: GRO_PEER,
    kind: TcAttachType::Ingress,
    pin: "tc_gro_link",
};
/// `BPF_F_ADJ_ROOM_ENCAP_L2_ETH`, needed for VXLAN GSO, came with Linux 5.13.
const MIN_KERNEL: (u8, u8) = (5, 13);

/// This kernel can't run the eBPF datapath: the agent falls back to the classic one.
#[derive(Debug)]
pub struct Unsupported(String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsupported {}

/// The maps as read back from their pins.
pub struct Maps {
    routes: Vec<(Ipv4Net, Tunnel)>,
    peers: HashMap<Ipv4Addr, PeerInfo>,
    tracked: HashSet<Ipv4Addr>,
    routes6: BTreeMap<Ipv6Net, Tunnel6>,
    peers6: HashMap<Ipv6Addr, PeerInfo6>,
}

/// Where tunnel packets are decapsulated, and what GRO merges: XDP strips the tunnel before
/// GRO, which then merges the inner packets; TC decapsulates after GRO, which merges our
/// frames only with the GRO device's socket on the port (vxlan), or merges what TC
/// decapsulated in the GRO veth (udp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceivePath {
    pub decap: &'static str,
    pub gro: &'static str,
}

impl ReceivePath {
    pub fn new(decap: Decap, gro_device: Option<GroDevice>) -> Self {
        let (decap, gro) = match (decap, gro_device) {
            (Decap::Xdp, _) => ("xdp", "inner packets"),
            (Decap::Tc, Some(GroDevice::Socket)) => ("tc", "tunnel frames"),
            (Decap::Tc, Some(GroDevice::Veth)) => ("tc", "decapsulated frames"),
            (Decap::Tc, None) => ("tc", "nothing"),
        };
        Self { decap, gro }
    }
}

pub struct EbpfDatapath {
    programs: Programs,
    encap: Encap,
    vni: u32,
    port: u16,
    nic: ExtIface,
    netlink: Handle,
    overlay_index: u32,
    vtep_mac: Mac,
    /// The network carries IPv4 (all but IPv6-only ones).
    ipv4: bool,
    /// The network carries IPv6, between public IPv6 addresses.
    ipv6: bool,
    /// The networks, our subnets and the overlay MTU, once activated.
    active: Option<(Ours, u32)>,
    /// The bridge the fast path is attached to, with its ifindex.
    bridge: Option<(String, u32)>,
    /// The bridge's ports (containers' host-side veths) with `tc_encap` at their ingress.
    ports: HashMap<u32, attach::PortHook>,
    /// How the hooks that outlive us are made.
    hooks: Hooks,
    pin_dir: std::path::PathBuf,
    decap: Decap,
    check_inner_source: bool,
    fast_path: bool,
    /// vxlan's `DirectRouting`: the prefixes whose peers are routed to, unencapsulated
    /// (empty without it).
    on_link: OnLink,
}

impl EbpfDatapath {
    pub async fn start(
        options: &Options,
        backend: &Backend,
        nic: &ExtIface,
        (ipv4, ipv6): (bool, bool),
    ) -> Result<Self> {
        let kernel = KernelVersion::current().context("reading the kernel version")?;
        if kernel < KernelVersion::new(MIN_KERNEL.0, MIN_KERNEL.1, 0) {
            return Err(Unsupported(format!(
                "it needs Linux {}.{} or later (bpf_skb_adjust_room with \
                 BPF_F_ADJ_ROOM_ENCAP_L2_ETH); this is {kernel:?}",
                MIN_KERNEL.0, MIN_KERNEL.1
            ))
            .into());
        }
        let (encap, vni, port, direct_routing) = match backend {
            Backend::Vxlan {
                vni,
                port,
                direct_routing,
                ..
            } => (Encap::Vxlan, *vni, *port, *direct_routing),
            Backend::Udp { port } => (Encap::Udp, 0, *port, false),
            Backend::HostGw => bail!("host-gw has nothing to encapsulate"),
        };
        let on_link = match direct_routing {
            true => OnLink::of(&nic.name)?,
            false => OnLink::default(),
        };
        let programs = match (
            Programs::load(options.bpf_object.as_deref()),
            &options.bpf_object,
        ) {
            (Ok(programs), _) => programs,
            // The object the user asked for must load: falling back would hide the mistake.
            (Err(e), Some(path)) => {
                return Err(e.context(format!("--bpf-object {}", path.display())))
            }
            (Err(e), None) => {
                return Err(Unsupported(format!("the kernel refused our programs: {e:#}")).into())
            }
        };
        let pins_outlive_us = programs::ensure_bpffs(&options.pin_dir)?;
        let hooks = Hooks::choose(pins_outlive_us, &options.pin_dir)?;
        let netlink = netlink::connect()?;
        if encap == Encap::Vxlan {
            kernel_vxlan::remove_classic_device(&netlink, vni).await?;
        }
        let mtu = nic.overlay_mtu(backend);
        // A new overlay device (after a reboot, say) gets this host's VTEP MAC; one that is
        // there keeps the MAC its peers know.
        let public_ip = match ipv4 {
            true => IpAddr::V4(nic.public_ip),
            false => nic
                .public_ipv6
                .map_or(IpAddr::V4(nic.public_ip), IpAddr::V6),
        };
        let mac = match nix::net::if_::if_nametoindex(OVERLAY_DEV) {
            Ok(_) => None,
            Err(_) => vtep_mac::for_device(OVERLAY_DEV, public_ip),
        };
        let (overlay_index, vtep_mac) = ensure_overlay_device(&netlink, mtu, mac).await?;
        info!(device = OVERLAY_DEV, mtu, vtep_mac = %vtep_mac, "overlay device");
        Ok(Self {
            programs,
            encap,
            vni,
            port,
            nic: nic.clone(),
            netlink,
            overlay_index,
            vtep_mac,
            ipv4,
            ipv6,
            active: None,
            bridge: None,
            ports: HashMap::new(),
            hooks,
            pin_dir: options.pin_dir.clone(),
            check_inner_source: options.check_inner_source,
            fast_path: options.fast_path,
            decap: options.decap,
            on_link,
        })
    }

    pub fn lease_backend(&self) -> BackendAttrs {
        match self.encap {
            // One VTEP MAC for both families: the overlay device's.
            Encap::Vxlan => BackendAttrs::Vxlan {
                vni: self.vni,
                vtep_mac: self.ipv4.then_some(self.vtep_mac),
                v6_vtep_mac: self.ipv6.then_some(self.vtep_mac),
            },
            Encap::Udp => BackendAttrs::Udp,
        }
    }

    /// Our subnets are known: the overlay device takes `<subnet>.0/32` (the source of host
    /// traffic, as flannel's devices) and `<subnet>::/128` for IPv6, the networks are routed
    /// to it, the maps configured.
    pub async fn activate(&mut self, ours: Ours, mtu: u32) -> Result<()> {
        let (netlink, index) = (&self.netlink, self.overlay_index);
        if let Some(networks) = ours.ipv4 {
            overlay_device::take_network(netlink, index, OVERLAY_DEV, networks, None).await?;
        }
        let ours6 = self.ours6(&ours)?;
        let mtu6 = self.nic.ipv6_tunnel_mtu(mtu);
        if let Some(ours6) = &ours6 {
            let networks = (ours6.network, ours6.subnet);
            overlay_device::take_network(netlink, index, OVERLAY_DEV, networks, Some(mtu6)).await?;
        }
        let nic_ifindex = iface::index(&self.nic.name)?;
        let gro_ifindex = match self.gro_device() {
            Some(kind) => gro_device::ensure(&self.netlink, kind, self.port, self.nic.mtu).await?,
            None => {
                gro_device::remove(&self.netlink).await?;
                0
            }
        };
        let (network, subnet) = ours.ipv4.unwrap_or_default();
        let flags = match (self.check_inner_source, self.fast_path) {
            (true, true) => CHECK_INNER_SOURCE,
            (true, false) => CHECK_INNER_SOURCE | THROUGH_NETFILTER,
            (false, true) => 0,
            (false, false) => THROUGH_NETFILTER,
        };
        self.programs.set_config(DatapathConfig {
            vni: self.vni,
            port_be: self.port.to_be(),
            encap: self.encap as u16,
            local_ip_be: match ours.ipv4 {
                Some(_) => u32::from(self.nic.addr).to_be(),
                None => 0,
            },
            nic_ifindex,
            vtep_mac: self.vtep_mac.0,
            inner_mtu: mtu,
            gro_ifindex,
            network_be: u32::from(network.network()).to_be(),
            network_mask_be: mask_be(network.prefix_len()),
            subnet_be: u32::from(subnet.network()).to_be(),
            subnet_mask_be: mask_be(subnet.prefix_len()),
            flags: flags
                | if ours.ipv4.is_none() { IPV6_ONLY } else { 0 }
                | if self.on_link == OnLink::default() {
                    0
                } else {
                    DIRECT_ROUTING
                },
            ..Default::default()
        })?;
        self.programs.set_config6(match &ours6 {
            Some(ours6) => ipv6::config(ours6, self.overlay_index, mtu6),
            None => DatapathConfig6::default(),
        })?;
        self.active = Some((ours, mtu));
        Ok(())
    }

    /// Our IPv6 end, in a dual-stack or IPv6-only network.
    fn ours6(&self, ours: &Ours) -> Result<Option<ipv6::Ours6>> {
        let Some((network, subnet)) = ours.ipv6.filter(|_| self.ipv6) else {
            return Ok(None);
        };
        let public_ip = (self.nic.public_ipv6)
            .with_context(|| format!("{} has no IPv6 address for the tunnel", self.nic.name))?;
        Ok(Some(ipv6::Ours6 {
            network,
            subnet,
            public_ip,
        }))
    }

    /// Attaches the programs, taking over from a previous agent's; call once the maps hold
    /// the peers, so no packet meets an empty map.
    pub fn attach(&mut self) -> Result<()> {
        let nic = self.nic.name.clone();
        let hooks = &self.hooks;
        // Before `tc_ingress` sends frames into the GRO veth.
        if self.gro_device() == Some(GroDevice::Veth) {
            hooks.attach(self.programs.tc_merged(), GRO_HOOK)?;
        }
        hooks.attach(self.programs.tc_ingress(), nic_hook(&nic))?;
        hooks.attach(self.programs.tc_encap(), OVERLAY_HOOK)?;
        self.programs.pin_maps(&self.pin_dir)?;
        let xdp_pin = self.pin_dir.join(XDP_LINK_PIN);
        match self.decap {
            Decap::Xdp => attach_xdp(self.programs.xdp_ingress(), &nic, &xdp_pin)?,
            Decap::Tc => detach_xdp(&xdp_pin)?,
        }
        info!(nic = %nic, overlay = OVERLAY_DEV, decap = ?self.decap, "eBPF programs attached");
        if self.fast_path {
            self.attach_bridge();
        } else {
            self.detach_fast_path();
        }
        Ok(())
    }

    /// GRO merges vxlan frames before TC decap only with a tunnel socket on the port, and
    /// what TC decapsulated of the udp format only in a veth with GRO, on the fast path's way
    /// to containers; XDP decap runs before GRO. IPv6 is always encapsulated by the vxlan GRO
    /// device.
    fn gro_device(&self) -> Option<GroDevice> {
        match (self.encap, self.decap) {
            (Encap::Vxlan, Decap::Tc) => Some(GroDevice::Socket),
            (Encap::Vxlan, Decap::Xdp) => self.ipv6.then_some(GroDevice::Socket),
            (Encap::Udp, Decap::Tc) => self.fast_path.then_some(GroDevice::Veth),
            (Encap::Udp, Decap::Xdp) => None,
        }
    }

    pub fn receive_path(&self) -> ReceivePath {
        ReceivePath::new(self.decap, self.gro_device())
    }

    pub fn fast_path(&self) -> bool {
        self.fast_path
    }

    /// Routes `peer`'s subnets through its tunnels and lets its public addresses send to
    /// us; an IP `old` had and no other peer uses stops being a peer.
    pub fn put(&mut self, old: Option<&Peer>, peer: &Peer, installed: &Installed) -> Result<()> {
        let ip = peer.attrs.public_ip;
        if let Some(subnet) = peer.subnets.ipv4 {
            let (owner, attrs) = owner_of(installed, Some(peer), None, uses_ip(ip))
                .unwrap_or((peer.subnets, &peer.attrs));
            let owner = owner.ipv4.expect("an IPv4 peer");
            self.programs
                .insert_peer(ip, peer_info((owner, vtep_mac(attrs))))?;
            self.programs.track_traffic(ip)?;
            self.programs
                .insert_route(subnet, self.tunnel(&peer.attrs))?;
        }
        if self.ipv6 {
            self.put6(old, peer, installed)?;
        }
        if let Some(old) = old.filter(|old| old.subnets.ipv4.is_some() && old.attrs.public_ip != ip)
        {
            self.release(old, installed)?;
        }
        info!(subnets = %peer.subnets, public_ip = %ip, public_ipv6 = ?peer.attrs.public_ipv6,
              "peer in the datapath");
        Ok(())
    }

    /// The IPv6 half of `put`: `peer`'s IPv6 subnet through its tunnel, its public IPv6 let
    /// in; what `old` had and `peer` has not goes.
    fn put6(&mut self, old: Option<&Peer>, peer: &Peer, installed: &Installed) -> Result<()> {
        let new = ipv6::entries(&peer.subnets, &peer.attrs).map(|e| e.routed(&self.on_link));
        if let Some(new) = &new {
            let owner = owner_of(installed, Some(peer), None, uses_ipv6(new.public_ip))
                .and_then(|(s, a)| ipv6::entries(&s, a));
            let owner = owner.map_or(new.peer, |owner| owner.peer);
            self.programs.insert_peer6(new.public_ip, owner)?;
            self.programs.insert_route6(new.subnet, new.tunnel)?;
            if peer.subnets.ipv4.is_none() {
                self.programs.track_traffic(new.traffic_key())?;
            }
        }
        let Some(old) = old.and_then(|old| ipv6::entries(&old.subnets, &old.attrs)) else {
            return Ok(());
        };
        if new.map(|n| n.subnet) != Some(old.subnet) {
            self.programs.remove_route6(old.subnet)?;
        }
        if new.map(|n| n.public_ip) != Some(old.public_ip) {
            self.release6(old.public_ip, peer.subnets, installed)?;
        }
        Ok(())
    }

    pub fn remove(&mut self, peer: &Peer, installed: &Installed) -> Result<()> {
        if let Some(subnet) = peer.subnets.ipv4 {
            self.programs.remove_route(subnet)?;
            self.release(peer, installed)?;
        }
        if let Some(old) = ipv6::entries(&peer.subnets, &peer.attrs).filter(|_| self.ipv6) {
            self.programs.remove_route6(old.subnet)?;
            self.release6(old.public_ip, peer.subnets, installed)?;
            if peer.subnets.ipv4.is_none() {
                self.programs.untrack_traffic(old.traffic_key())?;
            }
        }
        info!(subnets = %peer.subnets, "peer left the datapath");
        Ok(())
    }

    /// `peer`'s subnet no longer goes to its public IP: the IP stays a peer (named by its
    /// smallest remaining subnet) while another subnet uses it, else it goes.
    fn release(&mut self, peer: &Peer, installed: &Installed) -> Result<()> {
        let ip = peer.attrs.public_ip;
        match owner_of(installed, None, Some(peer.subnets), uses_ip(ip)) {
            Some((subnets, attrs)) => {
                let owner = subnets.ipv4.expect("an IPv4 peer");
                self.programs
                    .insert_peer(ip, peer_info((owner, vtep_mac(attrs))))
            }
            None => {
                self.programs.remove_peer(ip)?;
                self.programs.untrack_traffic(ip)
            }
        }
    }

    /// `release` for a public IPv6 that the peer at `leaving` no longer uses.
    fn release6(&mut self, ip: Ipv6Addr, leaving: Subnets, installed: &Installed) -> Result<()> {
        let owner = owner_of(installed, None, Some(leaving), uses_ipv6(ip));
        match owner.and_then(|(s, a)| ipv6::entries(&s, a)) {
            Some(owner) => self.programs.insert_peer6(ip, owner.peer),
            None => self.programs.remove_peer6(ip),
        }
    }

    fn tunnel(&self, attrs: &LeaseAttrs) -> Tunnel {
        if self.on_link.contains(attrs.public_ip) {
            return Tunnel::direct(u32::from(attrs.public_ip).to_be());
        }
        Tunnel::new(&TunnelEnds {
            encap: self.encap,
            local_ip_be: u32::from(self.nic.public_ip).to_be(),
            remote_ip_be: u32::from(attrs.public_ip).to_be(),
            port_be: self.port.to_be(),
            vni: self.vni,
            local_mac: self.vtep_mac.0,
            remote_mac: vtep_mac(attrs).0,
        })
    }

    /// Reads the maps back off the loop's thread (at 5,000 peers that is tens of thousands
    /// of syscalls): a reader of the pinned maps, to run on a blocking thread.
    pub fn map_reader(&self) -> impl FnOnce() -> Result<Maps> + Send + 'static {
        let pins = Pins::new(&self.pin_dir);
        move || {
            let (peers, traffic) = (pins.peers()?, pins.traffic()?);
            let peers = peers.iter().map(|entry| {
                let (ip_be, peer) = entry?;
                Ok((Ipv4Addr::from(u32::from_be(ip_be)), peer))
            });
            let tracked = traffic
                .keys()
                .map(|key| Ok(Ipv4Addr::from(u32::from_be(key?))));
            let peers6 = pins.peers6()?;
            let peers6 = peers6.iter().map(|entry| {
                let (ip, peer) = entry?;
                Ok((Ipv6Addr::from(ip), peer))
            });
            Ok(Maps {
                peers: peers.collect::<Result<_>>()?,
                tracked: tracked.collect::<Result<_>>()?,
                routes: programs::routes(&pins.routes()?)?,
                routes6: programs::routes6(&pins.routes6()?)?.into_iter().collect(),
                peers6: peers6.collect::<Result<_>>()?,
            })
        }
    }

    /// Restores what went missing on the host (the overlay device, a filter, the network
    /// route, the GRO device) and, given the maps as read back, deletes the entries no
    /// installed peer explains. Returns the installed peers whose entries are missing or
    /// wrong. The maps may have been read a moment ago: what changed since is rewritten or
    /// deleted again, which is harmless.
    pub async fn audit(
        &mut self,
        installed: &Installed,
        maps: Option<Maps>,
    ) -> Result<BTreeSet<Subnets>> {
        self.follow_containers().await?;
        self.restore_host().await?;
        let Some(maps) = maps else {
            return Ok(BTreeSet::new());
        };
        // The IPv4 halves: each route by its subnet.
        let installed4: BTreeMap<Ipv4Net, (&Subnets, &LeaseAttrs)> = installed
            .iter()
            .filter_map(|(subnets, attrs)| Some((subnets.ipv4?, (subnets, attrs))))
            .collect();
        let mut drifted: BTreeSet<Subnets> = installed4.values().map(|(s, _)| **s).collect();
        for (subnet, tunnel) in maps.routes {
            match installed4.get(&subnet) {
                Some((subnets, attrs)) if self.tunnel(attrs) == tunnel => {
                    drifted.remove(subnets);
                }
                Some(_) => {}
                None => {
                    warn!(%subnet, "removing a stale entry from the routes map");
                    self.programs.remove_route(subnet)?;
                }
            }
        }
        // Each public IP's peers-map entry, as `put` and `release` write it: named by the
        // smallest installed subnet using it (the map iterates in subnet order).
        let mut wanted: HashMap<Ipv4Addr, PeerInfo> = HashMap::new();
        for (subnet, (_, attrs)) in &installed4 {
            let owner = (*subnet, vtep_mac(attrs));
            wanted
                .entry(attrs.public_ip)
                .or_insert_with(|| peer_info(owner));
        }
        for (subnets, attrs) in installed4.values() {
            let ip = attrs.public_ip;
            if maps.peers.get(&ip) != wanted.get(&ip) || !maps.tracked.contains(&ip) {
                drifted.insert(**subnets);
            }
        }
        for ip in maps.peers.keys().filter(|ip| !wanted.contains_key(ip)) {
            warn!(public_ip = %ip, "removing a stale entry from the peers map");
            self.programs.remove_peer(*ip)?;
        }
        // Only the IPv6 network's peers have IPv6 entries.
        let ipv4_only = Installed::new();
        let installed = if self.ipv6 { installed } else { &ipv4_only };
        let wanted6 = ipv6::Wanted::of(installed, &self.on_link);
        // IPv6-only peers count their traffic under keys of their own.
        for (key, subnets) in &wanted6.traffic {
            if !maps.tracked.contains(key) {
                drifted.insert(*subnets);
            }
        }
        let stale = |ip: &&Ipv4Addr| !wanted.contains_key(ip) && !wanted6.traffic.contains_key(ip);
        for ip in maps.tracked.iter().filter(stale) {
            self.programs.untrack_traffic(*ip)?;
        }
        for subnet in maps.routes6.keys() {
            if !wanted6.routes.contains_key(subnet) {
                warn!(%subnet, "removing a stale entry from the IPv6 routes map");
                self.programs.remove_route6(*subnet)?;
            }
        }
        for ip in maps.peers6.keys() {
            if !wanted6.peers.contains_key(ip) {
                warn!(public_ip = %ip, "removing a stale entry from the IPv6 peers map");
                self.programs.remove_peer6(*ip)?;
            }
        }
        drifted.extend(wanted6.drifted(&maps.routes6, &maps.peers6));
        Ok(drifted)
    }

    /// The overlay device (with our VTEP MAC), its address and route, the config and the
    /// filters on the NIC, the overlay device and the GRO veth, and the fast path's hooks, as
    /// `start`, `activate`, `attach` and the fast path left them, whatever was removed since.
    async fn restore_host(&mut self) -> Result<()> {
        let Some((ours, mtu)) = self.active else {
            return Ok(());
        };
        if nix::net::if_::if_nametoindex(OVERLAY_DEV).ok() != Some(self.overlay_index) {
            warn!(
                device = OVERLAY_DEV,
                "the overlay device is gone; recreating it"
            );
            (self.overlay_index, _) =
                ensure_overlay_device(&self.netlink, mtu, Some(self.vtep_mac)).await?;
        }
        self.activate(ours, mtu).await?;
        let gro_veth = self.gro_device() == Some(GroDevice::Veth);
        let (netlink, programs, hooks) = (&self.netlink, &mut self.programs, &self.hooks);
        let nic = nic_hook(&self.nic.name);
        hooks.restore(netlink, programs.tc_ingress(), nic).await?;
        hooks
            .restore(netlink, programs.tc_encap(), OVERLAY_HOOK)
            .await?;
        if gro_veth {
            hooks
                .restore(netlink, programs.tc_merged(), GRO_HOOK)
                .await?;
        }
        if self.fast_path {
            self.restore_fast_path().await?;
        }
        Ok(())
    }

    /// Traffic with each installed peer (by its public IP, or an IPv6-only peer's public
    /// IPv6), and drops by reason, summed over CPUs.
    pub fn counters(&mut self, installed: &Installed) -> Result<crate::datapath::Counters> {
        let traffic = installed
            .iter()
            .filter_map(|(subnets, attrs)| match subnets.ipv4 {
                Some(subnet) => Some((subnet.into(), attrs.public_ip.into(), attrs.public_ip)),
                None => {
                    let entries = ipv6::entries(subnets, attrs)?;
                    let ip = entries.public_ip.into();
                    Some((entries.subnet.into(), ip, entries.traffic_key()))
                }
            })
            .map(|(subnet, ip, key)| Ok((subnet, ip, self.programs.traffic(key)?)))
            .collect::<Result<_>>()?;
        Ok((traffic, self.programs.drops()?))
    }
}

/// The NIC's hook, where `tc_ingress` decapsulates.
fn nic_hook(nic: &str) -> Lasting<'_> {
    Lasting {
        iface: nic,
        kind: TcAttachType::Ingress,
        pin: "tc_nic_link",
    }
}

/// The overlay veth pair, created if missing (a restart reuses it and keeps its MAC); up,
/// without ARP, at `mtu`. Returns its ifindex and MAC.
async fn ensure_overlay_device(netlink: &Handle, mtu: u32, mac: Option<Mac>) -> Result<(u32, Mac)> {
    if nix::net::if_::if_nametoindex(OVERLAY_DEV).is_err() {
        netlink
            .link()
            .add(LinkVeth::new(OVERLAY_DEV, OVERLAY_PEER).build())
            .execute()
            .await
            .with_context(|| format!("creating the overlay device {OVERLAY_DEV}"))?;
    }
    for name in [OVERLAY_DEV, OVERLAY_PEER] {
        let index = iface::index(name)?;
        let mut settings = LinkUnspec::new_with_index(index).up().arp(false).mtu(mtu);
        // Recreated, it keeps the VTEP MAC our lease advertises.
        if let (OVERLAY_DEV, Some(mac)) = (name, mac) {
            settings = settings.address(mac.0.to_vec());
        }
        netlink
            .link()
            .set(settings.build())
            .execute()
            .await
            .with_context(|| format!("setting {name} up"))?;
    }
    let index = iface::index(OVERLAY_DEV)?;
    let path = format!("/sys/class/net/{OVERLAY_DEV}/address");
    let mac = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .parse()?;
    Ok((index, mac))
}

/// `--cleanup`: our TC filters on every interface, the overlay and GRO devices, and the pin
/// directory (maps, and the TCX and XDP links, which go with their pins).
pub async fn cleanup(netlink: &Handle, pin_dir: &std::path::Path) -> Result<()> {
    let mut filters = 0;
    for entry in std::fs::read_dir("/sys/class/net").context("listing interfaces")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        for kind in [TcAttachType::Ingress, TcAttachType::Egress] {
            filters += attach::detach(&name, kind);
        }
    }
    info!(filters, "removed our TC filters");
    for name in [OVERLAY_DEV, gro_device::GRO_DEV] {
        if overlay_device::delete_link(netlink, name).await? {
            info!(device = %name, "removed the device");
        }
    }
    if pin_dir.exists() {
        std::fs::remove_dir_all(pin_dir)
            .with_context(|| format!("removing {}", pin_dir.display()))?;
        info!(dir = %pin_dir.display(), "removed the pinned maps");
    }
    Ok(())
}

/// The peer that names a public address in a peers map: the smallest installed lease that
/// `uses` it, `adding` counted in (over what its key held) and `leaving` left out.
fn owner_of<'a>(
    installed: &'a Installed,
    adding: Option<&'a Peer>,
    leaving: Option<Subnets>,
    uses: impl Fn(&Subnets, &LeaseAttrs) -> bool,
) -> Option<(Subnets, &'a LeaseAttrs)> {
    let replaced = adding.map(|peer| peer.subnets).or(leaving);
    let adding = adding.filter(|peer| uses(&peer.subnets, &peer.attrs));
    installed
        .iter()
        .filter(|(subnets, attrs)| uses(subnets, attrs) && Some(**subnets) != replaced)
        .map(|(subnets, attrs)| (*subnets, attrs))
        .chain(adding.map(|peer| (peer.subnets, &peer.attrs)))
        .min_by_key(|(subnets, _)| *subnets)
}

/// Whether a lease's IPv4 half goes to `ip`.
fn uses_ip(ip: Ipv4Addr) -> impl Fn(&Subnets, &LeaseAttrs) -> bool {
    move |subnets, attrs| subnets.ipv4.is_some() && attrs.public_ip == ip
}

/// Whether a lease's IPv6 half goes to `ip`.
fn uses_ipv6(ip: Ipv6Addr) -> impl Fn(&Subnets, &LeaseAttrs) -> bool {
    move |subnets, attrs| ipv6::entries(subnets, attrs).is_some_and(|e| e.public_ip == ip)
}

fn peer_info((subnet, vtep_mac): (Ipv4Net, Mac)) -> PeerInfo {
    PeerInfo {
        subnet_be: u32::from(subnet.network()).to_be(),
        prefix_len: subnet.prefix_len(),
        vtep_mac: vtep_mac.0,
        ..Default::default()
    }
}

/// A vxlan peer's (IPv4) VTEP MAC; zero for udp.
fn vtep_mac(attrs: &LeaseAttrs) -> Mac {
    match &attrs.backend {
        BackendAttrs::Vxlan { vtep_mac, .. } => vtep_mac.unwrap_or_default(),
        _ => Mac::default(),
    }
}
