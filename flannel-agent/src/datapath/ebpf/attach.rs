//! Where our programs hook in. TC programs are netlink TC filters at a fixed handle in one of
//! two priorities: a new agent attaches at the free one, then removes the old one, so a
//! restart drops nothing, and the filters (with the maps they hold) stay when the agent
//! exits. Container ports are the exception (see [`attach_port`]). The XDP program hangs on
//! a pinned bpf_link, which a restart updates in place.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{self, NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions, TcHandle},
    xdp::XdpLink,
    Link, LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
};
use rtnetlink::Handle;
use tracing::warn;

use crate::host::{iface, netlink};

/// Our TC filters' handle, and the two priorities a restart alternates between.
const FILTER_HANDLE: TcHandle = TcHandle::new(0, FILTER_MINOR);
pub const FILTER_MINOR: u16 = 0xf1a;
const PRIORITIES: [u16; 2] = [0xf1a0, 0xf1a1];

/// Attaches `program` at a free one of our two priorities, then removes the filter at the
/// other one (a previous agent's), so there is no moment without a filter. The filter stays
/// when we exit.
pub(super) fn attach_replacing(
    program: &mut SchedClassifier,
    iface: &str,
    kind: TcAttachType,
) -> Result<()> {
    // An existing clsact qdisc is fine.
    let _ = tc::qdisc_add_clsact(iface);
    let mut last_error = None;
    for (index, &priority) in PRIORITIES.iter().enumerate() {
        let options = NlOptions {
            priority,
            handle: FILTER_HANDLE,
            classid: None,
        };
        match program.attach_with_options(iface, kind, TcAttachOptions::Netlink(options)) {
            Ok(id) => {
                let link = program.take_link(id)?;
                std::mem::forget(link);
                // A previous agent's filter at the other priority goes (if there is one).
                detach_at(iface, kind, PRIORITIES[1 - index]);
                return Ok(());
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(anyhow!(last_error.expect("two attempts")))
        .with_context(|| format!("attaching {kind:?} filter on {iface}"))
}

/// How `tc_encap` hooks into a container's port.
pub(super) enum PortHook {
    /// A TCX link (Linux 6.6+) that the agent holds: unlike a first filter, it needs no
    /// `clsact` qdisc, whose creation drops what the port sends while the kernel swaps qdiscs,
    /// in the container's first moments (a lost DNS reply costs it seconds). It goes when the
    /// agent exits, and the bridge's filter catches the container's traffic until the next
    /// agent attaches again.
    Link(SchedClassifierLinkId),
    /// A filter, as on the other hooks, where the kernel has no TCX.
    Filter,
}

/// Hooks `program` into the ingress of the container port `port`; a filter of an older agent
/// there goes (a TCX program runs before any filter).
pub(super) fn attach_port(program: &mut SchedClassifier, port: &str) -> Result<PortHook> {
    let tcx = TcAttachOptions::TcxOrder(LinkOrder::default());
    match program.attach_with_options(port, TcAttachType::Ingress, tcx) {
        Ok(id) => {
            detach(port, TcAttachType::Ingress);
            Ok(PortHook::Link(id))
        }
        Err(tcx_error) => {
            attach_replacing(program, port, TcAttachType::Ingress)
                .with_context(|| format!("no TCX link ({tcx_error}), and no filter"))?;
            Ok(PortHook::Filter)
        }
    }
}

/// Unhooks a port that left the bridge: dropping our handle on its link detaches it (from a
/// deleted port, the kernel did already).
pub(super) fn release_port(program: &mut SchedClassifier, hook: PortHook) {
    if let PortHook::Link(id) = hook {
        let _ = program.detach(id);
    }
}

/// True when `program` is on the TCX ingress of `port` (false also when the port is gone).
pub(super) fn on_port(program: &SchedClassifier, port: &str) -> bool {
    let Ok(ours) = program.info().map(|info| info.id()) else {
        return false;
    };
    SchedClassifier::query_tcx(port, TcAttachType::Ingress)
        .is_ok_and(|(_, programs)| programs.iter().any(|program| program.id() == ours))
}

/// Attaches `program` again where our filter is gone from `iface` (removed by hand).
pub(super) async fn reattach(
    netlink: &Handle,
    program: &mut SchedClassifier,
    iface: &str,
    kind: TcAttachType,
) -> Result<()> {
    let index = iface::index(iface)?;
    let egress = kind == TcAttachType::Egress;
    if netlink::filter_priorities(netlink, index, egress, FILTER_MINOR)
        .await?
        .is_empty()
    {
        warn!(%iface, "our TC filter is gone; attaching it again");
        attach_replacing(program, iface, kind)?;
    }
    Ok(())
}

/// Removes our filters (at either priority) from `iface`'s `kind` hook; how many there were.
pub(super) fn detach(iface: &str, kind: TcAttachType) -> usize {
    PRIORITIES
        .into_iter()
        .filter(|&priority| detach_at(iface, kind, priority))
        .count()
}

/// Removes our filter at `priority` of `iface`'s `kind` hook; true if there was one.
fn detach_at(iface: &str, kind: TcAttachType, priority: u16) -> bool {
    SchedClassifierLink::attached(iface, kind, priority, FILTER_HANDLE, None)
        .is_ok_and(|link| link.detach().is_ok())
}

/// Where the XDP program's bpf_link is pinned: a restart replaces the program in it.
pub(super) const XDP_LINK_PIN: &str = "xdp_ingress_link";

/// Attaches XDP decap to `iface`, or, when a previous agent's link is pinned, atomically
/// replaces the program in it. The pinned link outlives us.
pub(super) fn attach_xdp(program: &mut Xdp, iface: &str, pin: &Path) -> Result<()> {
    if let Ok(pinned) = PinnedLink::from_pin(pin) {
        let link = XdpLink::try_from(FdLink::from(pinned))?;
        program
            .attach_to_link(link)
            .context("replacing the XDP program")?;
        return Ok(());
    }
    let id = program
        .attach(iface, XdpMode::Default)
        .with_context(|| format!("attaching XDP to {iface}"))?;
    let link = FdLink::try_from(program.take_link(id)?)?;
    link.pin(pin)
        .with_context(|| format!("pinning the XDP link at {}", pin.display()))?;
    Ok(())
}

/// `--bpf-decap=tc` after an XDP run: the pinned link goes, and the XDP program with it.
pub(super) fn detach_xdp(pin: &Path) -> Result<()> {
    if let Ok(pinned) = PinnedLink::from_pin(pin) {
        pinned.unpin().context("unpinning the XDP link")?;
    }
    Ok(())
}
