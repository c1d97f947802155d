//! Where our programs hook in. The hooks on the NIC, the overlay device, the GRO veth and the
//! container bridge outlive the agent, so the datapath forwards while it restarts: TCX links
//! pinned in the pin directory (Linux 6.6+), whose program a restart swaps atomically, or,
//! where the kernel has no TCX or the pins would die with the agent, netlink TC filters at a
//! fixed handle in one of two priorities (a new agent attaches at the free one, then removes
//! the old one). Container ports have links the agent holds (see [`attach_port`]). The XDP
//! program hangs on a pinned bpf_link, which a restart updates in place.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context, Result};
use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::{
            self, NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions, TcHandle,
        },
        xdp::XdpLink,
        Link, LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    util::KernelVersion,
};
use rtnetlink::Handle;
use tracing::warn;

use crate::host::{iface, netlink};

/// A hook that outlives the agent: a device's ingress or egress, and the name of its TCX
/// link's pin.
#[derive(Clone, Copy, Debug)]
pub(super) struct Lasting<'a> {
    pub iface: &'a str,
    pub kind: TcAttachType,
    pub pin: &'static str,
}

/// How the lasting hooks are made on this host.
#[derive(Clone, Debug)]
pub(super) enum Hooks {
    /// TCX links pinned in this directory. Unlike a device's first filter, a link needs no
    /// `clsact` qdisc, whose graft drops what the device sends while the kernel swaps
    /// qdiscs (the NIC's traffic when the agent first starts, a bridge's when Docker makes
    /// it).
    Links(PathBuf),
    /// Filters: the kernel has no TCX, or the pins die with the agent.
    Filters,
}

impl Hooks {
    /// Links, where the kernel has TCX and the pin directory outlives the agent.
    pub fn choose(pins_outlive_us: bool, pin_dir: &Path) -> Result<Self> {
        let kernel = KernelVersion::current().context("reading the kernel version")?;
        if kernel < KernelVersion::new(6, 6, 0) {
            return Ok(Self::Filters);
        }
        if !pins_outlive_us {
            warn!(
                dir = %pin_dir.display(),
                "the pin directory's bpffs dies with the agent (mounted in its own mount \
                 namespace): TC filters hook our programs, and a device's first one drops \
                 what it sends for a moment; mount bpffs on the host to avoid it"
            );
            return Ok(Self::Filters);
        }
        Ok(Self::Links(pin_dir.to_path_buf()))
    }

    /// Hooks `program` in at `hook`, taking over from a previous agent's link or filter
    /// with no moment between them.
    pub fn attach(&self, program: &mut SchedClassifier, hook: Lasting) -> Result<()> {
        match self {
            Self::Links(dir) => {
                attach_pinned(program, hook, &dir.join(hook.pin))
                    .with_context(|| format!("attaching a TCX link on {}", hook.iface))?;
                // An older agent's filter goes: the link runs before it anyway.
                detach(hook.iface, hook.kind);
                Ok(())
            }
            Self::Filters => attach_replacing(program, hook.iface, hook.kind),
        }
    }

    /// Attaches `program` again where its hook is gone (removed by hand).
    pub async fn restore(
        &self,
        netlink: &Handle,
        program: &mut SchedClassifier,
        hook: Lasting<'_>,
    ) -> Result<()> {
        let present = match self {
            Self::Links(dir) => {
                dir.join(hook.pin).exists() && on_hook(program, hook.iface, hook.kind)
            }
            Self::Filters => {
                let index = iface::index(hook.iface)?;
                let egress = hook.kind == TcAttachType::Egress;
                !netlink::filter_priorities(netlink, index, egress, FILTER_MINOR)
                    .await?
                    .is_empty()
            }
        };
        if !present {
            warn!(iface = %hook.iface, "our TC hook is gone; attaching it again");
            self.attach(program, hook)?;
        }
        Ok(())
    }

    /// Unhooks `hook` (its link and any filter of ours).
    pub fn detach(&self, hook: Lasting) {
        if let Self::Links(dir) = self {
            // The link goes with its pin, its last reference.
            let _ = fs::remove_file(dir.join(hook.pin));
        }
        detach(hook.iface, hook.kind);
    }
}

/// Hooks `program` in at `hook` on a TCX link pinned at `pin`: a previous agent's link there
/// takes our program atomically; one that can't (its device went, or it was detached) or
/// that hooks another device goes, and a new link takes its pin.
fn attach_pinned(program: &mut SchedClassifier, hook: Lasting, pin: &Path) -> Result<()> {
    if let Ok(pinned) = PinnedLink::from_pin(pin) {
        let updated = SchedClassifierLink::try_from(FdLink::from(pinned))
            .ok()
            .and_then(|link| program.attach_to_link(link).ok());
        if let Some(id) = updated {
            // The pin keeps the link: no descriptor of ours needs to.
            drop(program.take_link(id)?);
            if on_hook(program, hook.iface, hook.kind) {
                return Ok(());
            }
        }
        fs::remove_file(pin).with_context(|| format!("removing {}", pin.display()))?;
    }
    let tcx = TcAttachOptions::TcxOrder(LinkOrder::default());
    let id = program.attach_with_options(hook.iface, hook.kind, tcx)?;
    let link = FdLink::try_from(program.take_link(id)?)?;
    link.pin(pin)
        .with_context(|| format!("pinning the link at {}", pin.display()))?;
    Ok(())
}

/// True when `program` is on `iface`'s TCX `kind` hook (false also when `iface` is gone).
pub(super) fn on_hook(program: &SchedClassifier, iface: &str, kind: TcAttachType) -> bool {
    let Ok(ours) = program.info().map(|info| info.id()) else {
        return false;
    };
    iface::index(iface)
        .and_then(|index| Ok(tcx_program_ids(index, kind)?))
        .is_ok_and(|ids| ids.contains(&ours))
}

/// The ids of the programs on the TCX `kind` hook of the device `ifindex`, by BPF_PROG_QUERY,
/// which takes CAP_NET_ADMIN. Written by hand: aya's `query_tcx` also opens every program it
/// finds, which takes CAP_SYS_ADMIN, and the unit's agent has no such capability.
fn tcx_program_ids(ifindex: u32, kind: TcAttachType) -> std::io::Result<Vec<u32>> {
    /// `bpf_attr`'s `query` member, up to `prog_cnt`.
    #[repr(C)]
    struct Query {
        target_ifindex: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _reserved: [u32; 9],
    }
    const BPF_PROG_QUERY: libc::c_long = 16;
    const BPF_TCX_INGRESS: u32 = 46;
    const BPF_TCX_EGRESS: u32 = 47;
    let mut ids = [0u32; 64];
    let mut query = Query {
        target_ifindex: ifindex,
        attach_type: match kind {
            TcAttachType::Egress => BPF_TCX_EGRESS,
            _ => BPF_TCX_INGRESS,
        },
        query_flags: 0,
        attach_flags: 0,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        _reserved: [0; 9],
    };
    // SAFETY: the kernel reads `query` and writes at most `prog_cnt` ids into `ids`, both of
    // which outlive the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut query as *mut Query,
            std::mem::size_of::<Query>(),
        )
    };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let count = (query.prog_cnt as usize).min(ids.len());
    Ok(ids[..count].to_vec())
}

/// The names of the programs on `iface`'s TCX `kind` hook (none where the kernel has no TCX).
pub fn tcx_programs(iface: &str, kind: TcAttachType) -> Vec<String> {
    SchedClassifier::query_tcx(iface, kind)
        .map(|(_, programs)| {
            let names = programs
                .iter()
                .filter_map(|p| p.name_as_str().map(String::from));
            names.collect()
        })
        .unwrap_or_default()
}

/// Our TC filters' handle, and the two priorities a restart alternates between.
const FILTER_HANDLE: TcHandle = TcHandle::new(0, FILTER_MINOR);
pub const FILTER_MINOR: u16 = 0xf1a;
const PRIORITIES: [u16; 2] = [0xf1a0, 0xf1a1];

/// Attaches `program` at a free one of our two priorities, then removes the filter at the
/// other one (a previous agent's), so there is no moment without a filter. The filter stays
/// when we exit.
fn attach_replacing(program: &mut SchedClassifier, iface: &str, kind: TcAttachType) -> Result<()> {
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
