//! The packet path behind `--datapath` and the config's backend: what our lease advertises,
//! and what happens when peers come and go.

use anyhow::{bail, Result};
use ipnet::Ipv4Net;
use tracing::warn;

use crate::{
    cli::{Args, Datapath as DatapathKind},
    config::Backend,
    ebpf_datapath::{EbpfDatapath, Unsupported},
    host_gw::HostGw,
    iface::ExtIface,
    kernel_vxlan::KernelVxlan,
    lease::BackendAttrs,
    peers::{Peer, PeerEvent},
};

pub enum Datapath {
    HostGw(HostGw),
    Ebpf(Box<EbpfDatapath>),
    KernelVxlan(KernelVxlan),
}

impl Datapath {
    /// Sets up the datapath, or says clearly why this combination can't run.
    pub async fn start(args: &Args, backend: &Backend, iface: &ExtIface) -> Result<Self> {
        match (backend, args.datapath) {
            // host-gw is plain routing: nothing to encapsulate, the same on both datapaths.
            (Backend::HostGw, _) => {
                iface.check_public_ip_is_local()?;
                Ok(Self::HostGw(HostGw::new(&iface.name)?))
            }
            (Backend::Vxlan { .. } | Backend::Udp { .. }, DatapathKind::Ebpf) => {
                match EbpfDatapath::start(args, backend, iface).await {
                    Ok(datapath) => Ok(Self::Ebpf(Box::new(datapath))),
                    Err(e) if e.is::<Unsupported>() && matches!(backend, Backend::Vxlan { .. }) => {
                        warn!("eBPF datapath unavailable ({e:#}); falling back to the kernel vxlan device");
                        Self::kernel_vxlan(backend, iface).await
                    }
                    Err(e) => Err(e),
                }
            }
            (Backend::Vxlan { .. }, DatapathKind::Classic) => Self::kernel_vxlan(backend, iface).await,
            (Backend::Udp { .. }, DatapathKind::Classic) => bail!(
                "Backend.Type \"udp\" on --datapath=classic (flannel's TUN loop): not available yet \
                 in this flanneld; use --datapath=ebpf"
            ),
        }
    }

    async fn kernel_vxlan(backend: &Backend, iface: &ExtIface) -> Result<Self> {
        let Backend::Vxlan { vni, port, .. } = backend else {
            bail!("the kernel vxlan device carries only the vxlan backend");
        };
        let mtu = iface.overlay_mtu(backend);
        Ok(Self::KernelVxlan(
            KernelVxlan::start(*vni, *port, iface, mtu).await?,
        ))
    }

    /// What our lease says about our end of the backend.
    pub fn lease_backend(&self) -> BackendAttrs {
        match self {
            Self::HostGw(_) => BackendAttrs::HostGw,
            Self::Ebpf(ebpf) => ebpf.lease_backend(),
            Self::KernelVxlan(vxlan) => vxlan.lease_backend(),
        }
    }

    /// Our subnet is known (at start, or after it changed).
    pub async fn activate(&mut self, network: Ipv4Net, subnet: Ipv4Net, mtu: u32) -> Result<()> {
        match self {
            Self::HostGw(_) => Ok(()),
            Self::Ebpf(ebpf) => ebpf.activate(network, subnet, mtu).await,
            Self::KernelVxlan(vxlan) => vxlan.activate(subnet).await,
        }
    }

    /// The peers are in place: start carrying traffic.
    pub fn attach(&mut self) -> Result<()> {
        match self {
            Self::HostGw(_) | Self::KernelVxlan(_) => Ok(()),
            Self::Ebpf(ebpf) => ebpf.attach(),
        }
    }

    pub async fn apply(&mut self, event: &PeerEvent) -> Result<()> {
        match self {
            Self::HostGw(routes) => routes.apply(event).await,
            Self::Ebpf(ebpf) => ebpf.apply(event).await,
            Self::KernelVxlan(vxlan) => vxlan.apply(event).await,
        }
    }

    /// Restores state that someone removed behind our back (routes deleted by hand), and
    /// picks up devices that appeared (a container bridge).
    pub async fn reconcile(&mut self, peers: impl Iterator<Item = Peer>) -> Result<()> {
        match self {
            Self::HostGw(routes) => {
                for peer in peers {
                    routes.replace(&peer).await?;
                }
                Ok(())
            }
            Self::Ebpf(ebpf) => ebpf.reconcile().await,
            Self::KernelVxlan(vxlan) => {
                for peer in peers {
                    vxlan.install(&peer).await?;
                }
                Ok(())
            }
        }
    }
}
