//! The fast path: `tc_encap` at the container bridge's ingress and at each container's
//! host-side veth encapsulates container traffic before routing, and the endpoints map lets
//! `tc_ingress` deliver decapsulated packets straight into their container. It follows
//! Docker: the bridge may appear after us or be recreated, containers come and go.

use anyhow::Result;
use aya::programs::TcAttachType;
use flannel_common::Endpoint;
use ipnet::IpNet;
use tracing::{info, warn};

use super::{
    attach::{self, Lasting, PortHook},
    EbpfDatapath,
};
use crate::{
    control::lease::Mac,
    host::{
        endpoints::{self, ContainerEvents},
        iface,
    },
};

impl EbpfDatapath {
    /// The container bridge: the interface holding an address of our subnet, and its ifindex.
    pub(super) fn find_bridge(&self) -> Option<(String, u32)> {
        let (ours, _) = self.active?;
        bridge_of(ours.subnets().either()?)
    }

    /// The fast path: attach `tc_encap` to the container bridge once it exists (Docker may
    /// start after us, and may recreate it).
    pub(super) fn attach_bridge(&mut self) {
        let Some((name, index)) = self.find_bridge() else {
            return;
        };
        if self.bridge.as_ref() == Some(&(name.clone(), index)) {
            return;
        }
        match self
            .hooks
            .attach(self.programs.tc_encap(), bridge_hook(&name))
        {
            Ok(()) => {
                info!(bridge = %name, "fast path attached to the container bridge");
                self.bridge = Some((name, index));
            }
            Err(e) => warn!(bridge = %name, "fast path not attached: {e:#}"),
        }
    }

    /// `--bpf-fast-path=false` after a run with it: our filters leave the bridge and its
    /// ports, so container traffic is routed (through FORWARD) before it is encapsulated.
    pub(super) fn detach_fast_path(&self) {
        let Some((bridge, _)) = self.find_bridge() else {
            return;
        };
        let ports = std::fs::read_dir(format!("/sys/class/net/{bridge}/brif"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned());
        self.hooks.detach(bridge_hook(&bridge));
        for name in ports {
            attach::detach(&name, TcAttachType::Ingress);
        }
        info!(bridge = %bridge, "fast path off: container traffic crosses FORWARD");
    }

    /// What moves the fast path between resyncs: containers coming and going.
    pub fn container_events(&self) -> Result<ContainerEvents> {
        let nic = iface::index(&self.nic.name)?;
        ContainerEvents::subscribe(nic)
    }

    /// The fast path follows the containers: the bridge, its ports, the endpoints map.
    pub async fn follow_containers(&mut self) -> Result<()> {
        if !self.fast_path {
            return Ok(());
        }
        self.attach_bridge();
        let Some((bridge, index)) = self.bridge.clone() else {
            return Ok(());
        };
        let ports = endpoints::bridge_ports(&self.netlink, index).await?;
        self.attach_ports(&bridge, &ports);
        self.sync_endpoints(&ports).await
    }

    /// The fast path's first hop: `tc_encap` at the ingress of each container's host-side
    /// veth catches its packets before the bridge (and br_netfilter's conntrack) see them.
    /// Until its port is attached, a new container's traffic is caught at the bridge.
    fn attach_ports(&mut self, bridge: &str, ports: &[(u32, String)]) {
        let gone: Vec<u32> = (self.ports.keys())
            .filter(|index| !ports.iter().any(|(i, _)| i == *index))
            .copied()
            .collect();
        for index in gone {
            self.forget_port(index);
        }
        let mut attached = 0;
        for (index, name) in ports {
            if self.ports.contains_key(index) {
                continue;
            }
            match attach::attach_port(self.programs.tc_encap(), name) {
                Ok(hook) => {
                    self.ports.insert(*index, hook);
                    attached += 1;
                }
                // It may have just gone with its container; the bridge still catches it.
                Err(e) => warn!(port = %name, "fast path not attached: {e:#}"),
            }
        }
        if attached > 0 {
            info!(bridge = %bridge, attached, ports = self.ports.len(), "fast path attached to container ports");
        }
    }

    /// Forgets the port `index`, releasing its hook.
    fn forget_port(&mut self, index: u32) {
        if let Some(hook) = self.ports.remove(&index) {
            attach::release_port(self.programs.tc_encap(), hook);
        }
    }

    /// The fast path's hooks that were removed by hand come back: the bridge's filter, a
    /// port's link.
    pub(super) async fn restore_fast_path(&mut self) -> Result<()> {
        let Some((bridge, index)) = self.bridge.clone() else {
            return Ok(());
        };
        let (encap, hook) = (self.programs.tc_encap(), bridge_hook(&bridge));
        self.hooks.restore(&self.netlink, encap, hook).await?;
        let ports = endpoints::bridge_ports(&self.netlink, index).await?;
        for (index, name) in &ports {
            let linked = matches!(self.ports.get(index), Some(PortHook::Link(_)));
            let ingress = TcAttachType::Ingress;
            if linked && !attach::on_hook(self.programs.tc_encap(), name, ingress) {
                warn!(port = %name, "our TCX link on the port is gone; attaching it again");
                self.forget_port(*index);
            }
        }
        self.attach_ports(&bridge, &ports);
        Ok(())
    }

    /// Brings the fast path's container map in line with the containers on the bridge's
    /// `ports`.
    async fn sync_endpoints(&mut self, ports: &[(u32, String)]) -> Result<()> {
        let Some((bridge, bridge_index)) = self.bridge.clone() else {
            return Ok(());
        };
        let bridge_mac = iface::mac(&bridge)?;
        let current = self.programs.endpoints()?;
        let known = current
            .iter()
            .map(|(ip, endpoint)| (*ip, (endpoint.ifindex, Mac(endpoint.mac))))
            .collect();
        let wanted = endpoints::discover(&self.netlink, bridge_index, ports, &known).await?;
        let mut changed = false;
        for (ip, _) in &current {
            if !wanted.contains_key(ip) {
                self.programs.remove_endpoint(*ip)?;
                changed = true;
            }
        }
        let count = wanted.len();
        for (ip, (ifindex, mac)) in wanted {
            let endpoint = Endpoint {
                ifindex,
                mac: mac.0,
                bridge_mac: bridge_mac.0,
            };
            if !current.contains(&(ip, endpoint)) {
                self.programs.insert_endpoint(ip, endpoint)?;
                changed = true;
            }
        }
        if changed {
            info!(bridge = %bridge, containers = count, "fast path endpoints updated");
        }
        Ok(())
    }
}

/// The container bridge's hook, where `tc_encap` catches what a port has not yet.
fn bridge_hook(bridge: &str) -> Lasting<'_> {
    Lasting {
        iface: bridge,
        kind: TcAttachType::Ingress,
        pin: "tc_bridge_link",
    }
}

/// The container bridge of `subnet`: the bridge holding an address in it, with its ifindex.
/// (A classic vxlan device being taken over holds `<subnet>.0` too, as our overlay device
/// does: neither is the bridge.)
pub fn bridge_of(subnet: IpNet) -> Option<(String, u32)> {
    let is_bridge =
        |name: &str| std::path::Path::new(&format!("/sys/class/net/{name}/bridge")).exists();
    let name = iface::addresses()
        .ok()?
        .into_iter()
        .find(|(name, addr)| subnet.contains(addr) && is_bridge(name))
        .map(|(name, _)| name)?;
    let index = nix::net::if_::if_nametoindex(name.as_str()).ok()?;
    Some((name, index))
}
