//! The packet path behind `--datapath` and the config's backend: what our lease advertises,
//! and what happens when peers come and go.

use anyhow::{bail, Result};

use crate::{
    cli::Datapath as DatapathKind,
    config::Backend,
    host_gw::HostGw,
    iface::ExtIface,
    lease::BackendAttrs,
    peers::{Peer, PeerEvent},
};

pub enum Datapath {
    HostGw(HostGw),
}

impl Datapath {
    /// Sets up the datapath, or says clearly why this combination can't run.
    pub fn start(kind: DatapathKind, backend: &Backend, iface: &ExtIface) -> Result<Self> {
        match backend {
            // host-gw is plain routing: nothing to encapsulate, the same on both datapaths.
            Backend::HostGw => {
                iface.check_public_ip_is_local()?;
                Ok(Self::HostGw(HostGw::new(&iface.name)?))
            }
            Backend::Vxlan { .. } | Backend::Udp { .. } => bail!(
                "Backend.Type {:?} on --datapath={}: not available yet in this flanneld (the \
                 {} encapsulation is under construction); use Backend host-gw meanwhile",
                backend.type_name(),
                match kind {
                    DatapathKind::Ebpf => "ebpf",
                    DatapathKind::Classic => "classic",
                },
                backend.type_name()
            ),
        }
    }

    /// What our lease says about our end of the backend.
    pub fn lease_backend(&self) -> BackendAttrs {
        match self {
            Self::HostGw(_) => BackendAttrs::HostGw,
        }
    }

    pub async fn apply(&self, event: &PeerEvent) -> Result<()> {
        match self {
            Self::HostGw(routes) => routes.apply(event).await,
        }
    }

    /// Restores state that someone removed behind our back (routes deleted by hand).
    pub async fn reconcile(&self, peers: impl Iterator<Item = Peer>) -> Result<()> {
        match self {
            Self::HostGw(routes) => {
                for peer in peers {
                    routes.replace(&peer).await?;
                }
                Ok(())
            }
        }
    }
}
