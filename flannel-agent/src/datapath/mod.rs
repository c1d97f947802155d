//! The packet path behind `--datapath` and the config's backend: what our lease advertises,
//! and what happens when peers come and go.

pub mod ebpf;
pub mod host_gw;
pub mod kernel_vxlan;
pub mod overlay_device;
pub mod tun_udp;
pub mod udp_packet;

use anyhow::{bail, Result};
use ipnet::Ipv4Net;
use tracing::warn;

use crate::{
    control::{
        config::Backend,
        lease::BackendAttrs,
        peers::{Peer, PeerEvent},
    },
    datapath::{
        ebpf::{EbpfDatapath, ReceivePath, Unsupported},
        host_gw::HostGw,
        kernel_vxlan::KernelVxlan,
        tun_udp::TunUdp,
    },
    host::{endpoints::ContainerEvents, iface::ExtIface},
};

/// `--datapath`: which packet path carries the backend's packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Choice {
    /// Our TC/XDP programs.
    Ebpf,
    /// What Go flanneld does: TUN loop, kernel vxlan device, routes.
    Classic,
}

/// `--bpf-decap`: where the eBPF datapath decapsulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Decap {
    /// TC ingress on the NIC, after GRO: aggregates stay whole, delivered straight into
    /// containers.
    Tc,
    /// XDP on the NIC: before the stack allocates an skb, and before GRO, which then merges
    /// the inner packets.
    Xdp,
}

/// The command line's say in the datapath.
#[derive(Clone, Debug)]
pub struct Options {
    pub choice: Choice,
    /// `--bpf-object`: programs to load instead of the embedded ones.
    pub bpf_object: Option<std::path::PathBuf>,
    /// `--bpf-pin-dir`.
    pub pin_dir: std::path::PathBuf,
    /// `--bpf-decap`; None: the backend's default.
    pub decap: Option<Decap>,
}

/// Traffic per peer (subnet, public IP) and drops by reason.
pub type Counters = (
    Vec<(Ipv4Net, std::net::Ipv4Addr, flannel_common::PeerTraffic)>,
    Vec<(flannel_common::DropReason, u64)>,
);

pub enum Datapath {
    HostGw(HostGw),
    Ebpf(Box<EbpfDatapath>),
    KernelVxlan(KernelVxlan),
    TunUdp(TunUdp),
}

impl Datapath {
    /// Sets up the datapath, or says clearly why this combination can't run.
    pub async fn start(options: &Options, backend: &Backend, iface: &ExtIface) -> Result<Self> {
        match (backend, options.choice) {
            // host-gw is plain routing: nothing to encapsulate, the same on both datapaths.
            (Backend::HostGw, _) => {
                iface.check_public_ip_is_local()?;
                Ok(Self::HostGw(HostGw::new(&iface.name)?))
            }
            (Backend::Vxlan { .. } | Backend::Udp { .. }, Choice::Ebpf) => {
                match EbpfDatapath::start(options, backend, iface).await {
                    Ok(datapath) => Ok(Self::Ebpf(Box::new(datapath))),
                    Err(e) if e.is::<Unsupported>() => {
                        warn!("eBPF datapath unavailable ({e:#}); falling back to the classic datapath");
                        Self::classic(backend, iface).await
                    }
                    Err(e) => Err(e),
                }
            }
            (Backend::Vxlan { .. } | Backend::Udp { .. }, Choice::Classic) => {
                Self::classic(backend, iface).await
            }
        }
    }

    /// What Go flanneld does: the kernel's vxlan device, or the TUN loop for udp.
    async fn classic(backend: &Backend, iface: &ExtIface) -> Result<Self> {
        let mtu = iface.overlay_mtu(backend);
        match backend {
            Backend::Vxlan { vni, port, .. } => Ok(Self::KernelVxlan(
                KernelVxlan::start(*vni, *port, iface, mtu).await?,
            )),
            Backend::Udp { port } => Ok(Self::TunUdp(TunUdp::start(*port, iface, mtu).await?)),
            Backend::HostGw => bail!("host-gw has no classic variant"),
        }
    }

    /// The eBPF datapath's counters (the others keep none).
    pub fn counters(&mut self) -> Result<Counters> {
        match self {
            Self::Ebpf(ebpf) => ebpf.counters(),
            _ => Ok(Counters::default()),
        }
    }

    /// For status lines.
    pub fn name(&self) -> &'static str {
        match self {
            Self::HostGw(_) => "host-gw routes",
            Self::Ebpf(_) => "eBPF",
            Self::KernelVxlan(_) => "kernel vxlan device",
            Self::TunUdp(_) => "TUN udp loop",
        }
    }

    /// eBPF: where tunnel packets are decapsulated, and what GRO merges before that.
    pub fn receive_path(&self) -> Option<ReceivePath> {
        match self {
            Self::Ebpf(ebpf) => Some(ebpf.receive_path()),
            _ => None,
        }
    }

    /// What our lease says about our end of the backend.
    pub fn lease_backend(&self) -> BackendAttrs {
        match self {
            Self::HostGw(_) => BackendAttrs::HostGw,
            Self::Ebpf(ebpf) => ebpf.lease_backend(),
            Self::KernelVxlan(vxlan) => vxlan.lease_backend(),
            Self::TunUdp(_) => BackendAttrs::Udp,
        }
    }

    /// Our subnet is known (at start, or after it changed).
    pub async fn activate(&mut self, network: Ipv4Net, subnet: Ipv4Net, mtu: u32) -> Result<()> {
        match self {
            Self::HostGw(_) => Ok(()),
            Self::Ebpf(ebpf) => ebpf.activate(network, subnet, mtu).await,
            Self::KernelVxlan(vxlan) => vxlan.activate(subnet).await,
            Self::TunUdp(tun) => tun.activate(network, subnet).await,
        }
    }

    /// The peers are in place: start carrying traffic.
    pub fn attach(&mut self) -> Result<()> {
        match self {
            Self::HostGw(_) | Self::KernelVxlan(_) | Self::TunUdp(_) => Ok(()),
            Self::Ebpf(ebpf) => ebpf.attach(),
        }
    }

    pub async fn apply(&mut self, event: &PeerEvent) -> Result<()> {
        match self {
            Self::HostGw(routes) => routes.apply(event).await,
            Self::Ebpf(ebpf) => ebpf.apply(event).await,
            Self::KernelVxlan(vxlan) => vxlan.apply(event).await,
            Self::TunUdp(tun) => {
                tun.apply(event);
                Ok(())
            }
        }
    }

    /// Container changes to follow between resyncs: the eBPF fast path's; None for the others.
    pub fn container_events(&self) -> Option<Result<ContainerEvents>> {
        match self {
            Self::Ebpf(ebpf) => Some(ebpf.container_events()),
            _ => None,
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
            Self::TunUdp(_) => Ok(()),
            Self::KernelVxlan(vxlan) => {
                for peer in peers {
                    vxlan.install(&peer).await?;
                }
                Ok(())
            }
        }
    }
}
