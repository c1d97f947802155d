//! The packet path behind `--datapath` and the config's backend: what our lease advertises,
//! and what happens when peers come and go.

pub mod ebpf;
pub mod host_gw;
pub mod kernel_vxlan;
pub mod overlay_device;
pub mod tun_udp;
pub mod udp_packet;
pub mod vxlan_device;

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, Context, Result};
use tracing::warn;

pub use crate::control::lease::Ours;

use crate::{
    control::{
        config::{Backend, Config},
        lease::{BackendAttrs, LeaseAttrs, Subnets},
        peers::Peer,
    },
    datapath::{
        ebpf::{EbpfDatapath, Maps, ReceivePath, Unsupported},
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
    /// `--bpf-decap`.
    pub decap: Decap,
    /// `--bpf-check-inner-source`.
    pub check_inner_source: bool,
    /// `--bpf-fast-path`.
    pub fast_path: bool,
}

impl Options {
    /// Refuses a `--bpf-object` that is not a readable eBPF ELF object, before anything is
    /// leased or created.
    pub fn check(&self) -> Result<()> {
        match (&self.bpf_object, self.choice) {
            (Some(path), Choice::Ebpf) => ebpf::programs::check_object(path),
            _ => Ok(()),
        }
    }
}

/// Traffic per peer (its IPv4 subnet and public IP; an IPv6-only peer's IPv6 ones) and drops
/// by reason.
pub type Counters = (
    Vec<(ipnet::IpNet, std::net::IpAddr, flannel_common::PeerTraffic)>,
    Vec<(flannel_common::DropReason, u64)>,
);

/// The peers the kernel holds, as far as we know: an entry is added only once its writes
/// succeeded, and `audit` takes out those the kernel no longer has.
pub type Installed = BTreeMap<Subnets, LeaseAttrs>;

/// A packet path, reconciled: `sync` brings the kernel from what it holds to the peer table
/// for the subnets marked as changed, `audit` reads the kernel back so that what was removed
/// or changed behind our back is fixed by the next `sync`. Both are idempotent; a failed
/// write stays out of `installed`, stays marked, and is retried by the next `sync`.
pub struct Datapath {
    kind: Kind,
    installed: Installed,
    /// Leases that changed, or whose write failed, since the last `sync`.
    pending: BTreeSet<Subnets>,
}

enum Kind {
    HostGw(HostGw),
    Ebpf(Box<EbpfDatapath>),
    KernelVxlan(Box<KernelVxlan>),
    TunUdp(TunUdp),
}

impl Datapath {
    /// Sets up the datapath for the network's families, or says clearly why this combination
    /// can't run.
    pub async fn start(options: &Options, config: &Config, iface: &ExtIface) -> Result<Self> {
        let (backend, families) = (&config.backend, config.families());
        let kind = match (backend, options.choice) {
            // host-gw is plain routing: nothing to encapsulate, the same on both datapaths.
            (Backend::HostGw, _) => {
                iface.check_public_ips_are_local(families)?;
                Kind::HostGw(HostGw::new(&iface.name, families)?)
            }
            (Backend::Vxlan { .. } | Backend::Udp { .. }, Choice::Ebpf) => {
                match EbpfDatapath::start(options, backend, iface, families).await {
                    Ok(datapath) => Kind::Ebpf(Box::new(datapath)),
                    Err(e) if e.is::<Unsupported>() => {
                        warn!("eBPF datapath unavailable ({e:#}); falling back to the classic datapath");
                        Kind::classic(backend, iface, families).await?
                    }
                    Err(e) => return Err(e),
                }
            }
            (Backend::Vxlan { .. } | Backend::Udp { .. }, Choice::Classic) => {
                Kind::classic(backend, iface, families).await?
            }
        };
        Ok(Self {
            kind,
            installed: Installed::new(),
            pending: BTreeSet::new(),
        })
    }

    /// The eBPF datapath's counters (the others keep none).
    pub fn counters(&mut self) -> Result<Counters> {
        match &mut self.kind {
            Kind::Ebpf(ebpf) => ebpf.counters(&self.installed),
            _ => Ok(Counters::default()),
        }
    }

    /// For status lines.
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::HostGw(_) => "host-gw routes",
            Kind::Ebpf(_) => "eBPF",
            Kind::KernelVxlan(_) => "kernel vxlan device",
            Kind::TunUdp(_) => "TUN udp loop",
        }
    }

    /// eBPF: where tunnel packets are decapsulated, and what GRO merges.
    pub fn receive_path(&self) -> Option<ReceivePath> {
        match &self.kind {
            Kind::Ebpf(ebpf) => Some(ebpf.receive_path()),
            _ => None,
        }
    }

    /// What our lease says about our end of the backend.
    pub fn lease_backend(&self) -> BackendAttrs {
        match &self.kind {
            Kind::HostGw(_) => BackendAttrs::HostGw,
            Kind::Ebpf(ebpf) => ebpf.lease_backend(),
            Kind::KernelVxlan(vxlan) => vxlan.lease_backend(),
            Kind::TunUdp(_) => BackendAttrs::Udp,
        }
    }

    /// Our subnets are known (at start, or after they changed).
    pub async fn activate(&mut self, ours: Ours, mtu: u32) -> Result<()> {
        match &mut self.kind {
            Kind::HostGw(_) => Ok(()),
            Kind::Ebpf(ebpf) => ebpf.activate(ours, mtu).await,
            Kind::KernelVxlan(vxlan) => vxlan.activate(ours.subnets()).await,
            Kind::TunUdp(tun) => {
                let (network, subnet) = (ours.ipv4).context("the udp backend carries IPv4 only")?;
                tun.activate(network, subnet).await
            }
        }
    }

    /// The peers are in place: start carrying traffic.
    pub async fn attach(&mut self) -> Result<()> {
        match &mut self.kind {
            Kind::HostGw(_) | Kind::KernelVxlan(_) | Kind::TunUdp(_) => Ok(()),
            Kind::Ebpf(ebpf) => ebpf.attach().await,
        }
    }

    /// These leases changed: the next `sync` looks at them.
    pub fn mark(&mut self, subnets: impl IntoIterator<Item = Subnets>) {
        self.pending.extend(subnets);
    }

    /// Brings the kernel to `desired` for the marked subnets: a peer that left is removed, a
    /// new or changed one written. What fails stays marked for the next call; the error says
    /// how many failed and why the first did. Only marked subnets are looked at, so a lease
    /// change costs the same with 10 peers or 10,000.
    pub async fn sync(&mut self, desired: &Installed) -> Result<()> {
        let mut failures = Vec::new();
        for subnets in std::mem::take(&mut self.pending) {
            let old = self.installed.get(&subnets).map(|attrs| Peer {
                subnets,
                attrs: attrs.clone(),
            });
            let result = match (old, desired.get(&subnets)) {
                (old, Some(attrs)) if old.as_ref().map(|p| &p.attrs) != Some(attrs) => {
                    let new = Peer {
                        subnets,
                        attrs: attrs.clone(),
                    };
                    let done = self.kind.put(old.as_ref(), &new, &self.installed).await;
                    done.map(|()| {
                        self.installed.insert(subnets, new.attrs);
                    })
                }
                (Some(old), None) => {
                    let done = self.kind.remove(&old, &self.installed).await;
                    done.map(|()| {
                        self.installed.remove(&subnets);
                    })
                }
                _ => Ok(()),
            };
            if let Err(e) = result {
                failures.push(e);
                self.pending.insert(subnets);
            }
        }
        match failures.len() {
            0 => Ok(()),
            1 => Err(failures.remove(0)),
            n => Err(anyhow!(
                "{n} peer changes failed; the first: {:#}",
                failures[0]
            )),
        }
    }

    /// The eBPF datapath's maps are read back on a blocking thread: this reader, to run there
    /// and hand its result to `audit`. None for the other datapaths.
    pub fn map_reader(&self) -> Option<impl FnOnce() -> Result<Maps> + Send + 'static> {
        match &self.kind {
            Kind::Ebpf(ebpf) => Some(ebpf.map_reader()),
            _ => None,
        }
    }

    /// Reads the kernel back: what it lacks or holds wrong is taken out of `installed` (the
    /// next `sync` writes it again), what it holds and no peer explains is deleted, devices
    /// and filters removed by hand come back, and the eBPF fast path picks up containers.
    /// The eBPF maps are compared only when `maps` (from `map_reader`) is given.
    pub async fn audit(&mut self, maps: Option<Maps>) -> Result<()> {
        let drifted = match &mut self.kind {
            Kind::HostGw(routes) => routes.audit(&self.installed).await?,
            Kind::Ebpf(ebpf) => ebpf.audit(&self.installed, maps).await?,
            Kind::KernelVxlan(vxlan) => vxlan.audit(&self.installed).await?,
            Kind::TunUdp(tun) => tun.audit(&self.installed).await?,
        };
        for subnets in drifted {
            warn!(%subnets, "the kernel lost this peer's entries; rewriting them");
            self.installed.remove(&subnets);
            self.pending.insert(subnets);
        }
        Ok(())
    }

    /// Container changes to follow between resyncs: the eBPF fast path's; None for the others.
    pub fn container_events(&self) -> Option<Result<ContainerEvents>> {
        match &self.kind {
            Kind::Ebpf(ebpf) if ebpf.fast_path() => Some(ebpf.container_events()),
            _ => None,
        }
    }

    /// True when overlay traffic bypasses the host's FORWARD chain (the eBPF fast path).
    pub fn bypasses_forward(&self) -> bool {
        matches!(&self.kind, Kind::Ebpf(ebpf) if ebpf.fast_path())
    }

    /// The eBPF fast path follows a container change.
    pub async fn follow_containers(&mut self) -> Result<()> {
        match &mut self.kind {
            Kind::Ebpf(ebpf) => ebpf.follow_containers().await,
            _ => Ok(()),
        }
    }
}

impl Kind {
    /// What Go flanneld does: the kernel's vxlan device, or the TUN loop for udp.
    async fn classic(backend: &Backend, iface: &ExtIface, families: (bool, bool)) -> Result<Self> {
        let mtu = iface.overlay_mtu(backend);
        // The eBPF datapath's GRO device would keep the vxlan device off the port, or leave a
        // veth behind.
        ebpf::gro_device::remove(&crate::host::netlink::connect()?).await?;
        match backend {
            Backend::Vxlan {
                vni,
                port,
                direct_routing,
                ..
            } => Ok(Self::KernelVxlan(Box::new(
                KernelVxlan::start(*vni, *port, iface, mtu, families, *direct_routing).await?,
            ))),
            Backend::Udp { port } => Ok(Self::TunUdp(TunUdp::start(*port, iface, mtu).await?)),
            Backend::HostGw => bail!("host-gw has no classic variant"),
        }
    }

    /// Writes `peer`, which replaces `old` (the same subnet's previous lease) if any.
    async fn put(&mut self, old: Option<&Peer>, peer: &Peer, installed: &Installed) -> Result<()> {
        match self {
            Self::HostGw(routes) => routes.put(peer).await,
            Self::Ebpf(ebpf) => ebpf.put(old, peer, installed),
            Self::KernelVxlan(vxlan) => vxlan.put(old, peer).await,
            Self::TunUdp(tun) => {
                tun.put(peer);
                Ok(())
            }
        }
    }

    async fn remove(&mut self, peer: &Peer, installed: &Installed) -> Result<()> {
        match self {
            Self::HostGw(routes) => routes.remove(peer).await,
            Self::Ebpf(ebpf) => ebpf.remove(peer, installed),
            Self::KernelVxlan(vxlan) => vxlan.remove(peer).await,
            Self::TunUdp(tun) => {
                tun.remove(peer);
                Ok(())
            }
        }
    }
}
