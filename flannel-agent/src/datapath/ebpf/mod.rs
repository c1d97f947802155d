//! The eBPF datapath: our TC programs carry flannel's vxlan and udp wire formats.
//!
//! - `tc_ingress` on the NIC decapsulates tunnel packets from current peers (and drops
//!   forged ones) before the stack routes the inner packet to its container.
//! - `tc_encap` on the egress of the overlay device `flannel-bpf` encapsulates whatever the
//!   host routes to the overlay network and sends it straight out of the NIC; on the ingress
//!   of the container bridge (the interface that holds an address of our subnet, docker0 or
//!   cni0) it does the same for container traffic before routing: the fast path.

mod attach;
mod entries;
mod fast_path;
pub mod gro_device;
pub mod ipv6;
pub mod programs;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{bail, Context, Result};
use aya::maps::MapData;
use aya::{programs::TcAttachType, util::KernelVersion};
use flannel_common::{
    map_names, mask_be, pins::Pins, DatapathConfig, DatapathConfig6, Encap, PeerTraffic,
    CHECK_INNER_SOURCE, DIRECT_ROUTING, IPV6_ONLY, THROUGH_NETFILTER,
};
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
use entries::{Entries, MapFamily, Wanted, Wire};
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
    v4: entries::Maps<Ipv4Addr>,
    v6: entries::Maps<Ipv6Addr>,
    /// The public addresses whose traffic is counted.
    tracked: HashSet<IpAddr>,
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
    /// Our VTEP MAC: the overlay device's.
    vtep_mac: Mac,
    /// Our IPv6 VTEP MAC: in a dual-stack network, that of flannel's `flannel-v6.<VNI>` we
    /// took over from (flannel gives each family a device and a MAC), else `vtep_mac`.
    vtep_mac6: Mac,
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
        let mtu = nic.overlay_mtu(backend);
        // A new overlay device gets the MAC of the classic device it takes over from (flannel's
        // or ours: the peers know it, so they rewrite nothing), or else this host's VTEP MAC
        // (after a reboot, say); one that is there keeps the MAC its peers know.
        let public_ip = match ipv4 {
            true => IpAddr::V4(nic.public_ip),
            false => nic
                .public_ipv6
                .map_or(IpAddr::V4(nic.public_ip), IpAddr::V6),
        };
        let classic_mac = match (encap, ipv4) {
            (Encap::Udp, _) => None,
            (Encap::Vxlan, true) => kernel_vxlan::classic_mac::<Ipv4Addr>(vni),
            (Encap::Vxlan, false) => kernel_vxlan::classic_mac::<Ipv6Addr>(vni),
        };
        let mac = match nix::net::if_::if_nametoindex(OVERLAY_DEV) {
            Ok(_) => None,
            Err(_) => classic_mac.or_else(|| vtep_mac::for_device(OVERLAY_DEV, public_ip)),
        };
        let (overlay_index, vtep_mac) = ensure_overlay_device(&netlink, mtu, mac).await?;
        info!(device = OVERLAY_DEV, mtu, vtep_mac = %vtep_mac, "overlay device");
        // The classic IPv6 device's MAC while taking over from it; on a restart the one the
        // last agent wrote in its (pinned) IPv6 config.
        let vtep_mac6 = match (encap, ipv4) {
            (Encap::Vxlan, true) => kernel_vxlan::classic_mac::<Ipv6Addr>(vni)
                .or_else(|| pinned_vtep_mac6(&options.pin_dir))
                .unwrap_or(vtep_mac),
            _ => vtep_mac,
        };
        Ok(Self {
            programs,
            encap,
            vni,
            port,
            nic: nic.clone(),
            netlink,
            overlay_index,
            vtep_mac,
            vtep_mac6,
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
            Encap::Vxlan => BackendAttrs::Vxlan {
                vni: self.vni,
                vtep_mac: self.ipv4.then_some(self.vtep_mac),
                v6_vtep_mac: self.ipv6.then_some(self.vtep_mac6),
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
            // A classic device holds the port until `attach` has taken over from it (its
            // socket lets GRO merge meanwhile); then the GRO device comes.
            Some(GroDevice::Socket) if kernel_vxlan::classic_device_present(self.vni) => 0,
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
        self.programs.set_config(
            map_names::CONFIG,
            DatapathConfig {
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
            },
        )?;
        let config6 = match &ours6 {
            Some(ours6) => ipv6::config(ours6, self.overlay_index, mtu6, self.vtep_mac6),
            None => DatapathConfig6::default(),
        };
        self.programs.set_config(map_names::CONFIG6, config6)?;
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

    /// Attaches the programs, taking over from a previous agent's or from a classic vxlan
    /// device (flannel's); call once the maps hold the peers, so no packet meets an empty map.
    pub async fn attach(&mut self) -> Result<()> {
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
        // Our programs carry the traffic now: the classic device can go, and the GRO device
        // take its port.
        if self.encap == Encap::Vxlan
            && kernel_vxlan::remove_classic_device(&self.netlink, self.vni).await?
        {
            if let Some((ours, mtu)) = self.active {
                self.activate(ours, mtu).await?;
            }
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
    /// us; an address `old` had and no other peer uses stops being a peer.
    pub fn put(&mut self, old: Option<&Peer>, peer: &Peer, installed: &Installed) -> Result<()> {
        self.put_half::<Ipv4Addr>(old, peer, installed)?;
        self.put_half::<Ipv6Addr>(old, peer, installed)?;
        info!(subnets = %peer.subnets, public_ip = %peer.attrs.public_ip,
              public_ipv6 = ?peer.attrs.public_ipv6, "peer in the datapath");
        Ok(())
    }

    /// One family's half of `put`: `peer`'s subnet through its tunnel, its public address
    /// let in (named by the smallest lease using it) and counted; what `old` had and `peer`
    /// has not goes.
    fn put_half<A: MapFamily>(
        &mut self,
        old: Option<&Peer>,
        peer: &Peer,
        installed: &Installed,
    ) -> Result<()> {
        let new = self.entries::<A>(&peer.subnets, &peer.attrs);
        if let Some(new) = &new {
            let uses = self.uses(new.public);
            let owner = owner_of(installed, Some(peer), None, uses)
                .and_then(|(subnets, attrs)| self.entries::<A>(&subnets, attrs));
            let owner = owner.map_or(new.peer, |owner| owner.peer);
            self.programs.insert_peer(new.public, owner)?;
            self.programs.track_traffic(new.public.into())?;
            self.programs.insert_route::<A>(new.subnet, new.tunnel)?;
        }
        let Some(old) = old.and_then(|old| self.entries::<A>(&old.subnets, &old.attrs)) else {
            return Ok(());
        };
        if new.map(|n| n.subnet) != Some(old.subnet) {
            self.programs.remove_route::<A>(old.subnet)?;
        }
        if new.map(|n| n.public) != Some(old.public) {
            self.release(old.public, peer.subnets, installed)?;
        }
        Ok(())
    }

    pub fn remove(&mut self, peer: &Peer, installed: &Installed) -> Result<()> {
        self.remove_half::<Ipv4Addr>(peer, installed)?;
        self.remove_half::<Ipv6Addr>(peer, installed)?;
        info!(subnets = %peer.subnets, "peer left the datapath");
        Ok(())
    }

    fn remove_half<A: MapFamily>(&mut self, peer: &Peer, installed: &Installed) -> Result<()> {
        if let Some(old) = self.entries::<A>(&peer.subnets, &peer.attrs) {
            self.programs.remove_route::<A>(old.subnet)?;
            self.release(old.public, peer.subnets, installed)?;
        }
        Ok(())
    }

    /// The lease at `leaving` no longer goes to `public_ip`: the address stays a peer (named
    /// by its smallest remaining lease) while another lease uses it, else it goes.
    fn release<A: MapFamily>(
        &mut self,
        public_ip: A,
        leaving: Subnets,
        installed: &Installed,
    ) -> Result<()> {
        let owner = owner_of(installed, None, Some(leaving), self.uses(public_ip));
        match owner.and_then(|(subnets, attrs)| self.entries::<A>(&subnets, attrs)) {
            Some(owner) => self.programs.insert_peer(public_ip, owner.peer),
            None => {
                self.programs.remove_peer(public_ip)?;
                self.programs.untrack_traffic(public_ip.into())
            }
        }
    }

    /// A lease's entries of family `A`, if the network carries that family and the lease
    /// has that half.
    fn entries<A: MapFamily>(&self, subnets: &Subnets, attrs: &LeaseAttrs) -> Option<Entries<A>> {
        let wire = Wire {
            encap: self.encap,
            port: self.port,
            vni: self.vni,
            local_mac: self.vtep_mac,
            local_ipv4: self.nic.public_ip,
        };
        Entries::of(subnets, attrs, &wire, &self.on_link).filter(|_| A::pick(self.ipv4, self.ipv6))
    }

    /// Whether a lease's half of family `A` goes to `public_ip`.
    fn uses<A: MapFamily>(&self, public_ip: A) -> impl Fn(&Subnets, &LeaseAttrs) -> bool + '_ {
        move |subnets, attrs| {
            self.entries::<A>(subnets, attrs)
                .is_some_and(|e| e.public == public_ip)
        }
    }

    /// Reads the maps back off the loop's thread (at 5,000 peers that is tens of thousands
    /// of syscalls): a reader of the pinned maps, to run on a blocking thread.
    pub fn map_reader(&self) -> impl FnOnce() -> Result<Maps> + Send + 'static {
        let pins = Pins::new(&self.pin_dir);
        move || {
            let traffic = pins.traffic()?;
            let tracked = traffic
                .keys()
                .map(|key| Ok(Ipv6Addr::from(key?).to_canonical()));
            Ok(Maps {
                v4: read_maps(&pins)?,
                v6: read_maps(&pins)?,
                tracked: tracked.collect::<Result<_>>()?,
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
        let mut counted = HashSet::new();
        let mut drifted = self.audit_half(installed, &maps.v4, &maps.tracked, &mut counted)?;
        drifted.extend(self.audit_half(installed, &maps.v6, &maps.tracked, &mut counted)?);
        for ip in maps.tracked.difference(&counted) {
            self.programs.untrack_traffic(*ip)?;
        }
        Ok(drifted)
    }

    /// `audit` for one family's maps: deletes their stale entries, adds the public addresses
    /// whose traffic is counted to `counted`, returns the installed peers that drifted.
    fn audit_half<A: MapFamily>(
        &mut self,
        installed: &Installed,
        maps: &entries::Maps<A>,
        tracked: &HashSet<IpAddr>,
        counted: &mut HashSet<IpAddr>,
    ) -> Result<BTreeSet<Subnets>> {
        let wanted = Wanted::of(installed, |subnets, attrs| {
            self.entries::<A>(subnets, attrs)
        });
        for subnet in maps.routes.keys() {
            if !wanted.routes.contains_key(subnet) {
                warn!(%subnet, "removing a stale entry from the {} routes map", A::NAME);
                self.programs.remove_route::<A>(*subnet)?;
            }
        }
        for ip in maps.peers.keys() {
            if !wanted.peers.contains_key(ip) {
                warn!(public_ip = %ip, "removing a stale entry from the {} peers map", A::NAME);
                self.programs.remove_peer(*ip)?;
            }
        }
        counted.extend(wanted.peers.keys().map(|ip| (*ip).into()));
        Ok(wanted.drifted(maps, |ip| tracked.contains(&ip.into())))
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

    /// Traffic with each installed peer over both families' tunnels (listed by its first
    /// subnet and public address), and drops by reason, summed over CPUs.
    pub fn counters(&mut self, installed: &Installed) -> Result<crate::datapath::Counters> {
        let mut traffic = Vec::new();
        for (subnets, attrs) in installed {
            let v4 = self
                .entries::<Ipv4Addr>(subnets, attrs)
                .map(|e| e.public.into());
            let v6 = self
                .entries::<Ipv6Addr>(subnets, attrs)
                .map(|e| e.public.into());
            let (Some(subnet), Some(ip)) = (subnets.either(), v4.or(v6)) else {
                continue;
            };
            let mut sum = PeerTraffic::default();
            for ip in v4.into_iter().chain(v6) {
                sum = sum.plus(self.programs.traffic(ip)?);
            }
            traffic.push((subnet, ip, sum));
        }
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
    Ok((index, iface::mac(OVERLAY_DEV)?))
}

/// The IPv6 VTEP MAC in the last agent's pinned IPv6 config, if it wrote one.
fn pinned_vtep_mac6(pin_dir: &std::path::Path) -> Option<Mac> {
    let config6 = Pins::new(pin_dir).config6().ok()?.get(&0, 0).ok()?;
    Some(Mac(config6.vtep_mac)).filter(|mac| mac.0 != [0; 6])
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

/// One family's routes and peers maps, read from their pins.
fn read_maps<A: MapFamily>(pins: &Pins) -> Result<entries::Maps<A>> {
    let routes = pins.map(A::ROUTES)?;
    let peers: aya::maps::HashMap<MapData, A::Key, A::Peer> = pins.map(A::PEERS)?;
    let peers = peers.iter().map(|entry| {
        let (key, peer) = entry?;
        Ok((A::from_key(key), peer))
    });
    Ok(entries::Maps {
        routes: programs::routes::<A, _>(&routes)?.into_iter().collect(),
        peers: peers.collect::<Result<_>>()?,
    })
}
