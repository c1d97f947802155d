//! flannel's udp backend on a TUN device (`--datapath=classic`): `flannel0` (`IFF_TUN |
//! IFF_NO_PI`) holding `<subnet>.0/32` with a route for the whole network, and a loop between
//! it and a UDP socket on `<iface ip>:8285`, as flannel's proxy does. The packet logic is in
//! `udp_packet`. The TUN device is opened with a plain `TUNSETIFF` ioctl.

use std::{
    collections::BTreeSet,
    fs::{File, OpenOptions},
    io::{Read, Write},
    net::{IpAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{Arc, RwLock},
    thread,
};

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use rtnetlink::Handle;
use tracing::{error, info};

use crate::{
    control::{lease::Subnets, peers::Peer},
    datapath::{
        overlay_device,
        udp_packet::{self, Outbound, Routes},
        Installed,
    },
    host::{
        iface::{self, ExtIface},
        netlink,
    },
};

pub const TUN_DEV: &str = "flannel0";

/// What both directions of the loop read; the agent writes it.
#[derive(Default)]
struct State {
    routes: Routes,
    network: Option<Ipv4Net>,
}

pub struct TunUdp {
    netlink: Handle,
    index: u32,
    subnet: Option<Ipv4Net>,
    state: Arc<RwLock<State>>,
}

impl TunUdp {
    pub async fn start(port: u16, nic: &ExtIface, mtu: u32) -> Result<Self> {
        let tun = Arc::new(open_tun(TUN_DEV)?);
        let netlink = netlink::connect()?;
        let index = iface::index(TUN_DEV)?;
        overlay_device::set_up(&netlink, index, TUN_DEV, mtu).await?;
        let socket = Arc::new(
            UdpSocket::bind((nic.addr, port))
                .with_context(|| format!("binding UDP {}:{port}", nic.addr))?,
        );
        let state = Arc::new(RwLock::new(State::default()));
        spawn("tun to udp", {
            let (tun, socket, state) = (tun.clone(), socket.clone(), state.clone());
            move || tun_to_udp(&tun, &socket, &state, port)
        })?;
        spawn("udp to tun", {
            let state = state.clone();
            move || udp_to_tun(&socket, &tun, &state)
        })?;
        info!(device = TUN_DEV, mtu, port, "TUN udp loop");
        Ok(Self {
            netlink,
            index,
            subnet: None,
            state,
        })
    }

    /// `flannel0` holds `<subnet>.0/32`; the whole network is routed to it.
    pub async fn activate(&mut self, network: Ipv4Net, subnet: Ipv4Net) -> Result<()> {
        let ours = (network, subnet);
        overlay_device::take_network(&self.netlink, self.index, TUN_DEV, ours, None).await?;
        self.subnet = Some(subnet);
        let mut state = self.state.write().expect("state lock");
        state.network = Some(network);
        Ok(())
    }

    /// The udp backend carries IPv4 only: a lease's IPv4 subnet to its public IP.
    pub fn put(&mut self, peer: &Peer) {
        let mut state = self.state.write().expect("state lock");
        if let Some(subnet) = peer.subnets.ipv4 {
            state.routes.insert(subnet, peer.attrs.public_ip);
        }
    }

    pub fn remove(&mut self, peer: &Peer) {
        let mut state = self.state.write().expect("state lock");
        if let Some(subnet) = peer.subnets.ipv4 {
            state.routes.remove(&subnet);
        }
    }

    /// The loop's table lives in this process, so only the device, its address and the
    /// network's route can be lost: they are restored; returns the installed peers the table
    /// lacks or holds otherwise.
    pub async fn audit(&mut self, installed: &Installed) -> Result<BTreeSet<Subnets>> {
        let network = self.state.read().expect("state lock").network;
        if let (Some(network), Some(subnet)) = (network, self.subnet) {
            self.activate(network, subnet).await?;
        }
        let state = self.state.read().expect("state lock");
        Ok(installed
            .iter()
            .filter(|(subnets, attrs)| {
                (subnets.ipv4).is_some_and(|s| state.routes.get(&s) != Some(attrs.public_ip))
            })
            .map(|(subnets, _)| *subnets)
            .collect())
    }
}

fn spawn(name: &str, work: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    let name = name.to_owned();
    thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            if let Err(e) = work() {
                error!("{name}: {e:#}");
            }
        })
        .with_context(|| "starting the TUN loop")?;
    Ok(())
}

fn tun_to_udp(tun: &File, socket: &UdpSocket, state: &RwLock<State>, port: u16) -> Result<()> {
    let mut buf = vec![0u8; 65536];
    loop {
        let len = (&*tun).read(&mut buf).context("reading the TUN device")?;
        let packet = &mut buf[..len];
        let action = {
            let state = state.read().expect("state lock");
            match &state.network {
                Some(network) => udp_packet::outbound(packet, &state.routes, network),
                None => Outbound::Drop,
            }
        };
        match action {
            Outbound::Send(peer) => {
                // A peer that is unreachable for a moment is not fatal to the loop.
                let _ = socket.send_to(packet, (peer, port));
            }
            Outbound::Reply(reply) => {
                let _ = (&*tun).write(&reply);
            }
            Outbound::Drop => {}
        }
    }
}

fn udp_to_tun(socket: &UdpSocket, tun: &File, state: &RwLock<State>) -> Result<()> {
    let mut buf = vec![0u8; 65536];
    loop {
        let (len, from) = socket
            .recv_from(&mut buf)
            .context("receiving on the UDP socket")?;
        let IpAddr::V4(from) = from.ip() else {
            continue;
        };
        // Only current peers may send us packets.
        if !state.read().expect("state lock").routes.is_peer(from) {
            continue;
        }
        let packet = &mut buf[..len];
        if udp_packet::inbound(packet) {
            let _ = (&*tun).write(packet);
        }
    }
}

/// Opens `/dev/net/tun` as the layer-3 device `name`, without packet information headers.
fn open_tun(name: &str) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun")?;
    // SAFETY: an all-zero ifreq is valid; the name fits (checked) and is NUL-terminated.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= request.ifr_name.len() {
        bail!("TUN device name {name:?} is too long");
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF takes a pointer to an ifreq, which outlives the call.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &request) } < 0 {
        return Err(std::io::Error::last_os_error()).context("creating the TUN device");
    }
    Ok(file)
}
