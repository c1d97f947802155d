//! Our programs' hooks on a test host (TCX links, TC filters), read and removed as an operator
//! would by hand. bpftool here predates TCX: it lists a TCX link without its device, so the
//! device is read from the link's fdinfo.

use std::{fs::File, os::fd::FromRawFd};

use anyhow::{bail, Context, Result};
use aya::programs::TcAttachType;

use crate::netns::{run, Netns};

/// The names of the programs at `dev`'s `kind` hook: on TCX links, then in TC filters.
pub fn hooked(host: &Netns, dev: &str, kind: TcAttachType) -> Result<Vec<String>> {
    let mut names: Vec<String> = (host.tcx_programs(dev, kind)?.into_iter())
        .map(|(name, _)| name)
        .collect();
    // Without a clsact qdisc on the device (the only hooks are TCX links), no filters.
    let qdiscs = host.exec("tc", &["qdisc", "show", "dev", dev])?;
    let filters = match qdiscs.contains("clsact") {
        true => host.exec("tc", &["filter", "show", "dev", dev, direction(kind)])?,
        false => String::new(),
    };
    for name in ["tc_ingress", "tc_encap", "tc_merged"] {
        if filters.contains(name) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// Removes every program at `dev`'s `kind` hook, as by hand: its TCX links (`bpftool link
/// detach`) and its TC filters (`tc filter del`). Fails where there was none.
pub fn unhook(host: &Netns, dev: &str, kind: TcAttachType) -> Result<()> {
    let programs: Vec<u32> = (host.tcx_programs(dev, kind)?.into_iter())
        .map(|(_, id)| id)
        .collect();
    let ifindex: u32 = (host.exec("cat", &[&format!("/sys/class/net/{dev}/ifindex")])?)
        .trim()
        .parse()?;
    let links: Vec<serde_json::Value> =
        serde_json::from_str(&run("bpftool", &["-j", "link", "show"])?)?;
    let mut removed = 0;
    for link in links {
        let on_dev = |id: u32| {
            // A program may hook several devices (tc_encap does), in several namespaces.
            link_target(id).is_ok_and(|(index, ingress)| {
                index == ifindex && ingress == (kind == TcAttachType::Ingress)
            })
        };
        let (Some(id), Some(program)) = (link["id"].as_u64(), link["prog_id"].as_u64()) else {
            continue;
        };
        if programs.contains(&(program as u32)) && on_dev(id as u32) {
            run("bpftool", &["link", "detach", "id", &id.to_string()])?;
            removed += 1;
        }
    }
    let filters = host.exec("tc", &["filter", "show", "dev", dev, direction(kind)]);
    if filters.is_ok_and(|out| !out.trim().is_empty()) {
        host.exec("tc", &["filter", "del", "dev", dev, direction(kind)])?;
        removed += 1;
    }
    if removed == 0 {
        bail!("nothing hooks {}'s {dev} {}", host.name, direction(kind));
    }
    Ok(())
}

fn direction(kind: TcAttachType) -> &'static str {
    match kind {
        TcAttachType::Egress => "egress",
        _ => "ingress",
    }
}

/// The device (ifindex, in its own namespace) and direction (true: ingress) of the TCX link
/// `id`, from its fdinfo.
fn link_target(id: u32) -> Result<(u32, bool)> {
    const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
    // bpf_attr for *_GET_FD_BY_ID: the id, next_id, open_flags.
    let attr: [u32; 3] = [id, 0, 0];
    // SAFETY: the bpf system call reads `attr`, which lives across the call, and returns a
    // new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_GET_FD_BY_ID,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        bail!("link {id}: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor, and nothing else owns it.
    let link = unsafe { File::from_raw_fd(fd as i32) };
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    drop(link);
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
            .with_context(|| format!("no {name} in link {id}'s fdinfo"))
    };
    let ifindex = field("ifindex:")?.parse()?;
    Ok((ifindex, field("attach_type:")?.contains("ingress")))
}
