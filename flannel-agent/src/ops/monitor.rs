//! `flanneld monitor [--json]`: packets the eBPF programs drop, live, with their reason, peer
//! and addresses, read from the ring buffer the agent pins. The programs report at most
//! `EVENTS_PER_SECOND` per CPU and say how many they left out; the per-CPU counters behind
//! `/metrics` count every drop.

use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsFd,
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use clap::Parser;
use flannel_common::{pins::Pins, DropEvent, DropReason, Hook};

use crate::cli::PinDirArg;
use serde::Serialize;

/// Show the packets the datapath drops, as they are dropped.
#[derive(Parser, Debug)]
#[command(name = "flanneld monitor")]
pub struct MonitorArgs {
    #[command(flatten)]
    pub pins: PinDirArg,
    /// print one JSON object per drop, for scripts
    #[arg(long)]
    pub json: bool,
    /// exit after this many drops
    #[arg(long)]
    pub count: Option<u64>,
}

/// One drop, printed as a line of text or as JSON from this one value.
#[derive(Serialize, Debug, PartialEq)]
struct Dropped {
    reason: String,
    hook: String,
    interface: Option<String>,
    peer: Option<IpAddr>,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    protocol: Option<String>,
    sport: Option<u16>,
    dport: Option<u16>,
    /// Drops this CPU did not report just before this one.
    suppressed: u32,
}

impl Dropped {
    fn new(event: &DropEvent) -> Self {
        let port = |be: u16| (be != 0).then(|| u16::from_be(be));
        Self {
            reason: DropReason::from_u32(event.reason)
                .map_or_else(|| format!("reason_{}", event.reason), |r| r.name().into()),
            hook: Hook::from_u8(event.hook)
                .map_or_else(|| format!("hook_{}", event.hook), |h| h.name().into()),
            interface: nix::net::if_::if_indextoname(event.ifindex)
                .ok()
                .map(|name| name.to_string_lossy().into_owned())
                .filter(|name| !name.is_empty()),
            peer: address(event.peer_family, event.peer),
            src: address(event.family, event.src),
            dst: address(event.family, event.dst),
            protocol: (event.family != 0).then(|| match event.protocol {
                58 => "icmpv6".to_owned(),
                1 => "icmp".to_owned(),
                6 => "tcp".to_owned(),
                17 => "udp".to_owned(),
                other => other.to_string(),
            }),
            sport: port(event.sport_be),
            dport: port(event.dport_be),
            suppressed: event.suppressed,
        }
    }
}

/// An event's address of `family` (4: in the first four bytes); None when not known.
fn address(family: u8, bytes: [u8; 16]) -> Option<IpAddr> {
    match family {
        4 => Some(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into()),
        6 => Some(Ipv6Addr::from(bytes).into()),
        _ => None,
    }
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "drop ({}) {}", self.reason, self.hook)?;
        if let Some(interface) = &self.interface {
            write!(f, " on {interface}")?;
        }
        if let Some(peer) = self.peer {
            write!(f, ", peer {peer}")?;
        }
        let end = |addr: Option<IpAddr>, port: Option<u16>| match (addr, port) {
            (Some(addr), Some(port)) => std::net::SocketAddr::new(addr, port).to_string(),
            (Some(addr), None) => addr.to_string(),
            (None, _) => "?".to_owned(),
        };
        if self.src.is_some() || self.dst.is_some() {
            write!(
                f,
                ": {} -> {}",
                end(self.src, self.sport),
                end(self.dst, self.dport)
            )?;
        }
        if let Some(protocol) = &self.protocol {
            write!(f, " {protocol}")?;
        }
        if self.suppressed > 0 {
            write!(f, " (after {} unreported)", self.suppressed)?;
        }
        Ok(())
    }
}

/// The pinned ring and the kernel's id for it.
struct Ring {
    events: RingBuf<MapData>,
    id: u32,
}

fn open(pins: &Pins) -> Result<Ring> {
    let path = pins.events_path();
    let id = pins.events_id().with_context(|| {
        format!(
            "no drop events pinned at {}: is flanneld running with the eBPF datapath and \
                 this --bpf-pin-dir?",
            path.display()
        )
    })?;
    let events = pins
        .events()
        .with_context(|| format!("opening {}", path.display()))?;
    Ok(Ring { events, id })
}

/// Prints drops until `--count` of them, or until stdout closes.
pub fn run(args: &MonitorArgs) -> Result<()> {
    let pins = Pins::new(&args.pins.bpf_pin_dir);
    let mut ring = open(&pins)?;
    eprintln!(
        "listening for drops at {} (Ctrl-C to stop)",
        pins.events_path().display()
    );
    let mut out = std::io::stdout().lock();
    let mut printed = 0;
    loop {
        while let Some(item) = ring.events.next() {
            if item.len() < size_of::<DropEvent>() {
                continue;
            }
            // SAFETY: the programs write whole `DropEvent`s (checked length); any bytes are a
            // valid value; the read tolerates the ring's 8-byte alignment or less.
            let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DropEvent>()) };
            let dropped = Dropped::new(&event);
            let line = if args.json {
                serde_json::to_string(&dropped)?
            } else {
                dropped.to_string()
            };
            // A closed pipe (`| head`) ends the monitor quietly.
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                return Ok(());
            }
            printed += 1;
            if args.count == Some(printed) {
                return Ok(());
            }
        }
        wait_readable(&ring.events)?;
        // A restarted agent pins a new ring: follow it.
        if pins.events_id().is_ok_and(|id| id != ring.id) {
            if let Ok(new) = open(&pins) {
                ring = new;
            }
        }
    }
}

/// Waits until the ring has events, or a second has passed.
fn wait_readable(events: &RingBuf<MapData>) -> Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(events.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(1000u16)) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Err(e) => Err(e).context("waiting for drop events"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(addr: [u8; 4]) -> [u8; 16] {
        flannel_common::event_addr_v4(u32::from_ne_bytes(addr))
    }

    fn event() -> DropEvent {
        DropEvent {
            reason: DropReason::UnknownPeer as u32,
            hook: Hook::TcIngress as u8,
            ifindex: 0,
            peer_family: 4,
            peer: v4([192, 168, 64, 99]),
            family: 4,
            src: v4([10, 1, 9, 2]),
            dst: v4([10, 1, 83, 2]),
            protocol: 17,
            sport_be: 40000u16.to_be(),
            dport_be: 8080u16.to_be(),
            ..DropEvent::default()
        }
    }

    #[test]
    fn a_drop_reads_like_the_packet() {
        let line = Dropped::new(&event()).to_string();
        assert_eq!(
            line,
            "drop (unknown_peer) tc_ingress, peer 192.168.64.99: 10.1.9.2:40000 -> 10.1.83.2:8080 udp"
        );
        let flood = DropEvent {
            suppressed: 250,
            family: 0,
            ..event()
        };
        assert_eq!(
            Dropped::new(&flood).to_string(),
            "drop (unknown_peer) tc_ingress, peer 192.168.64.99 (after 250 unreported)"
        );
        let ipv6 = DropEvent {
            peer_family: 6,
            peer: "fd64::99".parse::<Ipv6Addr>().unwrap().octets(),
            family: 6,
            src: "fd00:10:0:9::2".parse::<Ipv6Addr>().unwrap().octets(),
            dst: "fd00:10:0:53::2".parse::<Ipv6Addr>().unwrap().octets(),
            protocol: 6,
            ..event()
        };
        assert_eq!(
            Dropped::new(&ipv6).to_string(),
            "drop (unknown_peer) tc_ingress, peer fd64::99: [fd00:10:0:9::2]:40000 -> \
             [fd00:10:0:53::2]:8080 tcp"
        );
    }

    #[test]
    fn json_names_every_field() {
        let json = serde_json::to_value(Dropped::new(&event())).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "reason": "unknown_peer", "hook": "tc_ingress", "interface": null,
                "peer": "192.168.64.99", "src": "10.1.9.2", "dst": "10.1.83.2",
                "protocol": "udp", "sport": 40000, "dport": 8080, "suppressed": 0
            })
        );
    }
}
