//! Hosts on one underlay: a bridge in its own namespace (which also runs etcd at
//! 192.168.64.1), each host a namespace with `eth0` on the bridge and a default route through
//! it (on the NIC-like underlay, two hosts whose `eth0`s are joined by a cable). Containers
//! sit behind a docker0-style bridge `cni0` on their host's subnet.

use std::{
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Mutex,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{
    agent::Agent,
    etcd::{wait_for, Etcd},
    netns::{link, link_with, Bpffs, Netns},
};

pub const PREFIX: &str = "/coreos.com/network";
pub const CONFIG_KEY: &str = "/coreos.com/network/config";
/// The underlay's IPv6 address (etcd serves on it too): IPv6-only hosts route through it.
pub const UNDERLAY_IPV6_GATEWAY: Ipv6Addr = Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 1);

/// The lease key of `subnet` ("10.1.83.0/24" → `<prefix>/subnets/10.1.83.0-24`).
pub fn lease_key(subnet: &str) -> String {
    format!("{PREFIX}/subnets/{}", subnet.replace('/', "-"))
}

/// How the hosts' links to the underlay behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Underlay {
    /// Plain veths: a sender's 64 KB GSO packet reaches the receiver whole, which no NIC
    /// does; what runs on it is an upper bound.
    Passthrough,
    /// As a NIC without tunnel offloads: the sender segments every GSO packet in software
    /// and puts MTU-sized frames on the wire, the receiver merges them again with GRO (veth
    /// NAPI), and each link has one queue per CPU, as RSS spreads flows on a multi-queue NIC.
    /// Two hosts on one cable, with no switch to forward their frames (see `cable`).
    NicLike,
}

impl Underlay {
    pub fn name(self) -> &'static str {
        match self {
            Underlay::Passthrough => "veth passthrough",
            Underlay::NicLike => "NIC-like",
        }
    }
}

pub struct Testbed {
    // Field order is drop order: hosts before the underlay that carries etcd.
    pub hosts: Vec<Netns>,
    pub etcd: Etcd,
    pub underlay: Netns,
    pub kind: Underlay,
    /// The hosts without IPv4 (`make_ipv6_only`).
    ipv6_only: Vec<usize>,
    /// The NAPI threads that `receive_on` placed.
    napi_threads: Mutex<Vec<u32>>,
    /// Where each host's agent pins (see `pin_dir`); unmounted after the hosts are gone.
    bpffs: Bpffs,
}

/// The families of a cluster's network (and of its hosts and containers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stack {
    Ipv4,
    Dual,
    /// IPv6 only: hosts without IPv4 on the underlay, containers without IPv4.
    Ipv6,
}

impl Testbed {
    pub fn new(hosts: usize) -> Result<Self> {
        Self::with_underlay(hosts, Underlay::Passthrough)
    }

    /// `hosts` hosts, with `config` in etcd (as root: it says so otherwise).
    pub fn configured(hosts: usize, config: &str) -> Result<Self> {
        crate::require_root();
        let bed = Self::new(hosts)?;
        bed.put_config(config)?;
        Ok(bed)
    }

    /// The lease keys in etcd (`<prefix>/subnets/...`).
    pub fn lease_keys(&self) -> Result<Vec<String>> {
        self.etcd.keys(&format!("{PREFIX}/subnets/"))
    }

    /// An agent on host `i` with `flags`, once it is ready.
    pub fn ready_agent(&self, i: usize, flags: &[&str]) -> Result<Agent> {
        let mut agent = self.agent(i, flags)?;
        agent.wait_ready(crate::configs::READY)?;
        Ok(agent)
    }

    pub fn with_underlay(hosts: usize, kind: Underlay) -> Result<Self> {
        let underlay = Netns::new("ul")?;
        // The underlay is the hosts' switch: it forwards frames and runs no firewall. With
        // bridge netfilter on (every namespace's default while `br_netfilter` is loaded), each
        // frame would cross iptables here, on the sending host's CPU, which a switch never costs.
        if std::path::Path::new("/proc/sys/net/bridge").exists() {
            for family in ["iptables", "ip6tables", "arptables"] {
                let setting = format!("net.bridge.bridge-nf-call-{family}=0");
                underlay.exec("sysctl", &["-qw", &setting])?;
            }
        }
        underlay.ip(&["link", "add", "br0", "type", "bridge"])?;
        underlay.ip(&["addr", "add", "192.168.64.1/24", "dev", "br0"])?;
        // The NIC-like underlay's management network (see `cable`).
        underlay.ip(&["addr", "add", "192.168.65.1/24", "dev", "br0"])?;
        underlay.ip(&["-6", "addr", "add", "fd64::1/64", "dev", "br0", "nodad"])?;
        underlay.ip(&["link", "set", "br0", "up"])?;
        let etcd = Etcd::start_in_dual(
            &underlay,
            Ipv4Addr::new(192, 168, 64, 1),
            UNDERLAY_IPV6_GATEWAY,
        )?;
        let mut bed = Self {
            hosts: Vec::new(),
            etcd,
            underlay,
            kind,
            ipv6_only: Vec::new(),
            napi_threads: Mutex::new(Vec::new()),
            bpffs: Bpffs::mount()?,
        };
        for _ in 0..hosts {
            bed.add_host()?;
        }
        Ok(bed)
    }

    /// Adds a host; its index is the returned value.
    pub fn add_host(&mut self) -> Result<usize> {
        let index = self.hosts.len();
        let host = Netns::new(&format!("h{index}"))?;
        let addr = format!("{}/24", Self::host_ip(index));
        match self.kind {
            Underlay::Passthrough => {
                self.switch_port(&host, index, "eth0", &addr)?;
                host.ip(&["route", "add", "default", "via", "192.168.64.1"])?;
            }
            Underlay::NicLike => self.cable(&host, index, &addr)?,
        }
        host.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        self.hosts.push(host);
        Ok(index)
    }

    /// `host`'s `ifname`, at `addr`, on the switch's port `p<index>`.
    fn switch_port(&self, host: &Netns, index: usize, ifname: &str, addr: &str) -> Result<()> {
        let port = format!("p{index}");
        link(host, ifname, addr, &self.underlay, &port, "0.0.0.0/32")?;
        self.underlay.ip(&["addr", "flush", "dev", &port])?;
        self.underlay.ip(&["link", "set", &port, "master", "br0"])?;
        Ok(())
    }

    /// The NIC-like underlay: the two hosts' `eth0`s are the ends of one cable, so that no
    /// host's CPU forwards the other's frames (a veth switch would, on the sender's CPU; a
    /// real switch costs hosts nothing). Each reaches etcd over a management link, `eth1`
    /// (192.168.65.0/24), on the switch.
    fn cable(&self, host: &Netns, index: usize, addr: &str) -> Result<()> {
        let management = format!("192.168.65.{}/24", 10 + index);
        self.switch_port(host, index, "eth1", &management)?;
        host.ip(&["route", "add", "192.168.64.1/32", "via", "192.168.65.1"])?;
        match index {
            // Its eth0 comes with the cable's other end.
            0 => Ok(()),
            1 => {
                let first = &self.hosts[0];
                let first_addr = format!("{}/24", Self::host_ip(0));
                nic_like_cable(first, &first_addr, host, addr)?;
                for end in [first, host] {
                    end.ip(&["route", "add", "default", "dev", "eth0"])?;
                }
                Ok(())
            }
            _ => anyhow::bail!("the NIC-like underlay is a cable between two hosts, not {index}"),
        }
    }

    /// Runs host `index`'s receive processing on `cpu`, as if each host had CPUs of its own:
    /// on the NIC-like underlay, its eth0's NAPI (GRO and all that follows) runs in threads
    /// pinned there, as a NIC interrupts its own host. The threads run at the highest nice
    /// priority: a NIC's interrupt runs receive processing at once, ahead of the programs;
    /// a thread of equal priority waits for them (this kernel does not preempt kernel code)
    /// while the link's 256-frame ring overflows. A passthrough veth has no NAPI: it hands
    /// packets over on the sender's CPU, and steering them (RPS) costs an interrupt between
    /// CPUs per packet, which in a VM dwarfs the rest; so nothing moves there.
    pub fn receive_on(&self, index: usize, cpu: usize) -> Result<()> {
        if self.kind == Underlay::Passthrough {
            return Ok(());
        }
        let host = &self.hosts[index];
        let before = napi_threads()?;
        host.exec("sh", &["-c", "echo 1 > /sys/class/net/eth0/threaded"])?;
        let new: Vec<u32> = napi_threads()?
            .into_iter()
            .filter(|pid| !before.contains(pid))
            .collect();
        if new.is_empty() {
            anyhow::bail!("no NAPI thread appeared for {}'s eth0", host.name);
        }
        for &pid in &new {
            crate::netns::run("taskset", &["-pc", &cpu.to_string(), &pid.to_string()])?;
            renice(pid, -20)?;
        }
        self.napi_threads.lock().unwrap().extend(new);
        Ok(())
    }

    /// Receive processing shares its CPU equally with the programs from now on, as the
    /// kernel's does under overload (past 2 ms of it, `ksoftirqd` takes over at the programs'
    /// priority): for a flood, which would otherwise starve its receiver.
    pub fn share_receive_cpus(&self) -> Result<()> {
        for &pid in self.napi_threads.lock().unwrap().iter() {
            renice(pid, 0)?;
        }
        Ok(())
    }

    pub fn host_ip(index: usize) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 64, 10 + index as u8)
    }

    /// Host `index`'s underlay IPv6 address, once `enable_ipv6` gave it one.
    pub fn host_ipv6(index: usize) -> Ipv6Addr {
        Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 0x10 + index as u16)
    }

    /// Moves host `index` (on the passthrough underlay) to another subnet behind the
    /// underlay's router: 192.168.66.<10 + index>/24 (and fd66::<10 + index>/64 where it had
    /// IPv6), whose hosts reach the others through a gateway, not on their link. Returns its
    /// new addresses.
    pub fn move_off_link(&self, index: usize) -> Result<(Ipv4Addr, Option<Ipv6Addr>)> {
        let host = &self.hosts[index];
        for (gateway, sysctl) in [
            ("192.168.66.1/24", "net.ipv4.ip_forward=1"),
            ("fd66::1/64", "net.ipv6.conf.all.forwarding=1"),
        ] {
            if !self
                .underlay
                .ip(&["addr", "show", "dev", "br0"])?
                .contains(gateway)
            {
                let family = if gateway.contains(':') { "-6" } else { "-4" };
                self.underlay
                    .ip(&[family, "addr", "add", gateway, "dev", "br0", "nodad"])?;
                self.underlay.exec("sysctl", &["-qw", sysctl])?;
            }
        }
        let ipv4 = Ipv4Addr::new(192, 168, 66, 10 + index as u8);
        // (Deleting the primary address first: the kernel would take secondaries with it.)
        host.ip(&["-4", "addr", "flush", "dev", "eth0"])?;
        host.ip(&["addr", "add", &format!("{ipv4}/24"), "dev", "eth0"])?;
        host.ip(&["route", "replace", "default", "via", "192.168.66.1"])?;
        let had_ipv6 = host
            .ip(&["-6", "addr", "show", "dev", "eth0", "scope", "global"])?
            .contains("inet6");
        let ipv6 = had_ipv6.then(|| Ipv6Addr::new(0xfd66, 0, 0, 0, 0, 0, 0, 0x10 + index as u16));
        if let Some(ipv6) = ipv6 {
            host.ip(&["-6", "addr", "flush", "dev", "eth0", "scope", "global"])?;
            host.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{ipv6}/64"),
                "dev",
                "eth0",
                "nodad",
            ])?;
            host.ip(&["-6", "route", "replace", "default", "via", "fd66::1"])?;
        }
        Ok((ipv4, ipv6))
    }

    /// Host `index` gets its IPv6 address on the underlay (and a default route through it,
    /// as IPv4 has), and forwards IPv6.
    pub fn enable_ipv6(&self, index: usize) -> Result<()> {
        let host = &self.hosts[index];
        let addr = format!("{}/64", Self::host_ipv6(index));
        host.ip(&["-6", "addr", "add", &addr, "dev", "eth0", "nodad"])?;
        let gateway = UNDERLAY_IPV6_GATEWAY.to_string();
        host.ip(&["-6", "route", "replace", "default", "via", &gateway])?;
        host.exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])?;
        host.settle_ipv6(&["eth0"])
    }

    /// Host `index` loses IPv4 on the underlay: IPv6 only, with a default route through the
    /// underlay (which serves etcd on IPv6 too), as an IPv6-only machine.
    pub fn make_ipv6_only(&mut self, index: usize) -> Result<()> {
        self.enable_ipv6(index)?;
        let host = &self.hosts[index];
        host.ip(&["-4", "addr", "flush", "dev", "eth0"])?;
        self.ipv6_only.push(index);
        Ok(())
    }

    /// `container` on host `index` (running `agent` in a network with IPv6) gets an IPv6
    /// address on the agent's `FLANNEL_IPV6_SUBNET` (`::n` for IPv4 `.n`, the bridge `::1`)
    /// and a default route through the bridge.
    pub fn add_ipv6(&self, index: usize, agent: &Agent, container: &mut Container) -> Result<()> {
        let n = container.ip.octets()[3];
        self.give_ipv6(index, agent, container, n)
    }

    /// `add_ipv6` as the container's `n`th address.
    fn give_ipv6(
        &self,
        index: usize,
        agent: &Agent,
        container: &mut Container,
        n: u8,
    ) -> Result<()> {
        let subnet: ipnet::Ipv6Net = agent.subnet_env("FLANNEL_IPV6_SUBNET")?.parse()?;
        let base = u128::from(subnet.network());
        let n = u128::from(n);
        let (gateway, ip) = (Ipv6Addr::from(base + 1), Ipv6Addr::from(base + n));
        let len = subnet.prefix_len();
        let gateway_addr = format!("{gateway}/{len}");
        let host = &self.hosts[index];
        if !host
            .ip(&["-6", "addr", "show", "dev", "cni0"])?
            .contains(&gateway.to_string())
        {
            host.ip(&["-6", "addr", "add", &gateway_addr, "dev", "cni0", "nodad"])?;
        }
        let addr = format!("{ip}/{len}");
        let ns = &container.ns;
        ns.ip(&["-6", "addr", "add", &addr, "dev", "eth0", "nodad"])?;
        ns.ip(&["-6", "route", "add", "default", "via", &gateway.to_string()])?;
        container.ipv6 = Some(ip);
        // As a runtime does before it hands the container over (link-local addresses too).
        host.settle_ipv6(&["cni0", &container.port])?;
        ns.settle_ipv6(&["eth0"])
    }

    /// Waits until host `index` routes `subnet` ("10.1.5.0/24", or an IPv6 one) to its peer:
    /// in its agent's pinned routes maps (eBPF) or in its routing table (the kernel's
    /// datapaths). A readiness signal that sends no packet.
    pub fn wait_routed(&self, index: usize, subnet: &str, timeout: Duration) -> Result<()> {
        let (host, pins) = (&self.hosts[index], self.pin_dir(index));
        let family = if subnet.contains(':') { "-6" } else { "-4" };
        let what = format!("{} to route {subnet}", host.name);
        wait_for(&what, timeout, || {
            crate::pins::has_route(&pins, subnet)
                || host
                    .ip(&[family, "route", "show", subnet])
                    .is_ok_and(|routes| !routes.trim().is_empty())
        })
    }

    pub fn put_config(&self, json: &str) -> Result<()> {
        self.etcd.put(CONFIG_KEY, json)
    }

    /// Host `index`'s pin directory, on a bpffs that outlives its agents as the host's
    /// /sys/fs/bpf does (under `ip netns exec` an agent's own would die with it).
    pub fn pin_dir(&self, index: usize) -> std::path::PathBuf {
        self.bpffs.pin_dir(&format!("h{index}")).0
    }

    /// Starts flanneld on host `index` with the testbed's etcd, `--iface=eth0` and the host's
    /// pin directory.
    pub fn agent(&self, index: usize, extra: &[&str]) -> Result<Agent> {
        self.agent_with_env(index, extra, &[])
    }

    /// `agent`, with extra environment variables.
    pub fn agent_with_env(
        &self,
        index: usize,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Agent> {
        self.agent_built(crate::agent::flanneld(), index, extra, env)
    }

    /// `agent_with_env`, running `binary` (another release's flanneld).
    pub fn agent_built(
        &self,
        binary: &std::path::Path,
        index: usize,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Agent> {
        let endpoint = match self.ipv6_only.contains(&index) {
            true => self.etcd.ipv6_endpoint().expect("etcd on IPv6"),
            false => self.etcd.endpoint(),
        };
        let endpoints = format!("--etcd-endpoints={endpoint}");
        let (_, pins) = self.bpffs.pin_dir(&format!("h{index}"));
        let mut args = vec![endpoints.as_str(), "--iface=eth0", pins.as_str()];
        args.extend_from_slice(extra);
        Agent::spawn_binary(binary, &self.hosts[index], &args, env)
    }

    /// A container namespace behind host `index`'s `cni0` bridge on `subnet` (e.g.
    /// "10.1.83.0/24"): the bridge gets .1, the container `.{n}`, with a default route to .1.
    pub fn add_container(&self, index: usize, subnet: &str, n: u8) -> Result<Container> {
        let host = &self.hosts[index];
        let net: ipnet::Ipv4Net = subnet.parse()?;
        let base = u32::from(net.network());
        let gateway = Ipv4Addr::from(base + 1);
        let ip = Ipv4Addr::from(base + u32::from(n));
        if host.ip(&["link", "show", "cni0"]).is_err() {
            host.ip(&["link", "add", "cni0", "type", "bridge"])?;
            host.ip(&[
                "addr",
                "add",
                &format!("{gateway}/{}", net.prefix_len()),
                "dev",
                "cni0",
            ])?;
            host.ip(&["link", "set", "cni0", "up"])?;
        }
        let ns = Netns::new(&format!("c{index}-{n}"))?;
        let veth = format!("veth{n}");
        link(
            &ns,
            "eth0",
            &format!("{ip}/{}", net.prefix_len()),
            host,
            &veth,
            "0.0.0.0/32",
        )?;
        host.ip(&["addr", "flush", "dev", &veth])?;
        host.ip(&["link", "set", &veth, "master", "cni0"])?;
        ns.ip(&["route", "add", "default", "via", &gateway.to_string()])?;
        Ok(Container {
            ns,
            port: veth,
            ip,
            ipv6: None,
        })
    }

    /// A container with IPv6 only behind host `index`'s `cni0` bridge (an IPv6-only network
    /// with `agent`): `::n` of its IPv6 subnet, at the agent's MTU.
    pub fn add_ipv6_only_container(&self, index: usize, agent: &Agent, n: u8) -> Result<Container> {
        let host = &self.hosts[index];
        if host.ip(&["link", "show", "cni0"]).is_err() {
            host.ip(&["link", "add", "cni0", "type", "bridge"])?;
            host.ip(&["link", "set", "cni0", "up"])?;
        }
        let ns = Netns::new(&format!("c{index}-{n}"))?;
        let veth = format!("veth{n}");
        let mtu = agent.mtu()?.to_string();
        host.ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ])?;
        host.ip(&["link", "set", &veth, "master", "cni0", "up"])?;
        ns.ip(&["link", "set", "eth0", "mtu", &mtu, "up"])?;
        let mut container = Container {
            ns,
            port: veth,
            ip: Ipv4Addr::UNSPECIFIED,
            ipv6: None,
        };
        self.give_ipv6(index, agent, &mut container, n)?;
        Ok(container)
    }
}

impl Testbed {
    /// One host per entry of `flags`, each running flanneld with those flags on `config`,
    /// ready, with a container behind each.
    pub fn cluster(
        config: &str,
        flags: &[&[&str]],
    ) -> Result<(Testbed, Vec<Agent>, Vec<Container>)> {
        Self::cluster_on(Underlay::Passthrough, config, flags)
    }

    /// `cluster`, on the given underlay.
    pub fn cluster_on(
        kind: Underlay,
        config: &str,
        flags: &[&[&str]],
    ) -> Result<(Testbed, Vec<Agent>, Vec<Container>)> {
        Self::build(kind, config, flags, Stack::Ipv4)
    }

    /// `cluster_on` for a dual-stack `config`: the hosts have IPv6 on the underlay, and the
    /// containers an IPv6 address each.
    pub fn dual_stack_cluster_on(
        kind: Underlay,
        config: &str,
        flags: &[&[&str]],
    ) -> Result<(Testbed, Vec<Agent>, Vec<Container>)> {
        Self::build(kind, config, flags, Stack::Dual)
    }

    /// `cluster_on` for an IPv6-only `config`: the hosts have no IPv4 on the underlay (etcd
    /// is reached over IPv6), the containers IPv6 only.
    pub fn ipv6_only_cluster_on(
        kind: Underlay,
        config: &str,
        flags: &[&[&str]],
    ) -> Result<(Testbed, Vec<Agent>, Vec<Container>)> {
        Self::build(kind, config, flags, Stack::Ipv6)
    }

    fn build(
        kind: Underlay,
        config: &str,
        flags: &[&[&str]],
        stack: Stack,
    ) -> Result<(Testbed, Vec<Agent>, Vec<Container>)> {
        let mut bed = Testbed::with_underlay(flags.len(), kind)?;
        bed.put_config(config)?;
        let mut agents = Vec::new();
        let mut containers = Vec::new();
        for (host, flags) in flags.iter().enumerate() {
            match stack {
                Stack::Ipv4 => {}
                Stack::Dual => bed.enable_ipv6(host)?,
                Stack::Ipv6 => bed.make_ipv6_only(host)?,
            }
            let mut agent = bed.agent(host, flags)?;
            agent.wait_ready(Duration::from_secs(30))?;
            let container = match stack {
                Stack::Ipv4 => bed.add_docker_container(host, &agent, 2)?,
                Stack::Dual => {
                    let mut container = bed.add_docker_container(host, &agent, 2)?;
                    bed.add_ipv6(host, &agent, &mut container)?;
                    container
                }
                Stack::Ipv6 => bed.add_ipv6_only_container(host, &agent, 2)?,
            };
            containers.push(container);
            agents.push(agent);
        }
        Ok((bed, agents, containers))
    }

    /// A container as Docker started with mk-docker-opts' `--bip` and `--mtu` would be, on a
    /// host running `agent`: on its `FLANNEL_SUBNET`, with its `FLANNEL_MTU`.
    pub fn add_docker_container(&self, index: usize, agent: &Agent, n: u8) -> Result<Container> {
        let container = self.add_container(index, &agent.subnet()?, n)?;
        container
            .ns
            .ip(&["link", "set", "eth0", "mtu", &agent.mtu()?.to_string()])?;
        Ok(container)
    }
}

/// A cable between `a`'s and `b`'s `eth0` (at `a_addr`, `b_addr`), NIC-like (see
/// [`Underlay::NicLike`]): each end segments what it sends (no TSO or GSO) and runs GRO on
/// what it receives.
fn nic_like_cable(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) -> Result<()> {
    let queues = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .to_string();
    let options = ["numtxqueues", &queues, "numrxqueues", &queues];
    link_with(a, "eth0", a_addr, b, "eth0", b_addr, &options)?;
    for end in [a, b] {
        let features = ["-K", "eth0", "tso", "off", "gso", "off", "gro", "on"];
        end.exec("ethtool", &features)?;
    }
    Ok(())
}

/// Sets thread `pid`'s nice value.
fn renice(pid: u32, nice: i32) -> Result<()> {
    // SAFETY: a plain system call on integers.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, pid, nice) } != 0 {
        let error = std::io::Error::last_os_error();
        anyhow::bail!("setting thread {pid}'s nice value to {nice}: {error}");
    }
    Ok(())
}

/// The kernel's threaded-NAPI workers (`napi/<dev>-<id>`) by PID.
fn napi_threads() -> Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.starts_with("napi/") {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// `hosts` hosts with agents on `config` and one container each.
pub fn overlay(config: &str, hosts: usize) -> (Testbed, Vec<Agent>, Vec<Container>) {
    crate::require_root();
    Testbed::cluster(config, &vec![&[][..]; hosts]).expect("the cluster")
}

/// The lease of `subnet` ("10.1.5.0/24") in the testbed's etcd, as JSON.
pub fn lease_json(bed: &Testbed, subnet: &str) -> Result<serde_json::Value> {
    let value = bed.etcd.get(&lease_key(subnet))?;
    Ok(serde_json::from_str(&value.context("no such lease")?)?)
}

/// Waits until every container reaches every other (each pair within `timeout`), over IPv6
/// too between containers that have it.
pub fn all_reach_all(containers: &[Container], timeout: Duration) -> Result<()> {
    for from in containers {
        for to in containers {
            let ipv4 = Some(to.ip).filter(|ip| !ip.is_unspecified() && !from.ip.is_unspecified());
            let ipv6 = from.ipv6.and(to.ipv6);
            for target in [ipv4.map(IpAddr::V4), ipv6.map(IpAddr::V6)]
                .into_iter()
                .flatten()
            {
                let what = format!("{} to reach {target}", from.name());
                wait_for(&what, timeout, || from.ping(target).is_ok())?;
            }
        }
    }
    Ok(())
}

pub struct Container {
    pub ns: Netns,
    /// Its host-side veth, on the bridge.
    pub port: String,
    /// Its IPv4 address; 0.0.0.0 in an IPv6-only network.
    pub ip: Ipv4Addr,
    /// Its IPv6 address, in a network with IPv6.
    pub ipv6: Option<Ipv6Addr>,
}

impl Container {
    /// Its address for messages: IPv4, or IPv6 when it has no IPv4.
    pub fn name(&self) -> String {
        match self.ipv6.filter(|_| self.ip.is_unspecified()) {
            Some(ipv6) => ipv6.to_string(),
            None => self.ip.to_string(),
        }
    }

    /// A UDP socket on `port` in the container; a receive gives up after 2 s, for tests that
    /// show a packet does not arrive.
    pub fn udp_listener(&self, port: u16) -> Result<Listener> {
        let socket = self
            .ns
            .enter(|| std::net::UdpSocket::bind((self.ip, port)))??;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        Ok(Listener(socket))
    }

    /// Pings `to` every 10 ms, `count` times, while `during` runs (it starts once traffic
    /// has flowed for half a second); returns how many of them got no reply.
    pub fn pings_lost_while(
        &self,
        to: impl Into<std::net::IpAddr>,
        count: u32,
        during: impl FnOnce(),
    ) -> Result<u32> {
        self.ns.pings_lost_while(to, count, during)
    }

    /// The source address a TCP connection from this container to `target` arrives with, as
    /// a listener there (in `listener_ns`) sees it: the container's own, or a masquerading
    /// host's.
    pub fn source_seen_by(&self, listener_ns: &Netns, target: IpAddr) -> Result<IpAddr> {
        let listener = listener_ns.enter(|| std::net::TcpListener::bind((target, 7778)))??;
        std::thread::scope(|scope| {
            let accept = scope.spawn(|| listener.accept().map(|(_, from)| from.ip()));
            self.ns
                .enter(|| std::net::TcpStream::connect((target, 7778)).map(drop))??;
            Ok(accept.join().expect("the accepting thread")?)
        })
    }

    /// One ping to `to`, waiting at most `timeout` for the reply; its round trip.
    pub fn ping_once(&self, to: impl Into<IpAddr>, timeout: Duration) -> Result<Duration> {
        let (to, wait) = (to.into().to_string(), timeout.as_secs_f64().to_string());
        let out = self.ns.exec("ping", &["-c", "1", "-W", &wait, &to])?;
        let ms: f64 = (out.split("time=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|ms| ms.parse().ok())
            .with_context(|| format!("no round-trip time in ping's output: {out}"))?;
        Ok(Duration::from_secs_f64(ms / 1000.0))
    }

    /// Whether one ping to `to` is answered within 2 s (an error where ping itself fails).
    pub fn reaches(&self, to: impl Into<IpAddr>) -> Result<bool> {
        self.ns
            .check("ping", &["-c", "1", "-W", "2", &to.into().to_string()])
    }

    pub fn ping(&self, to: impl Into<IpAddr>) -> Result<String> {
        self.ns
            .exec("ping", &["-c", "1", "-W", "2", &to.into().to_string()])
    }
}

/// A UDP socket in a container, for the datagrams sent to it.
pub struct Listener(std::net::UdpSocket);

impl Listener {
    /// The next datagram, or None when none comes within 2 s.
    pub fn next(&self) -> Result<Option<Vec<u8>>> {
        let mut buf = [0u8; 2048];
        match self.0.recv(&mut buf) {
            Ok(len) => Ok(Some(buf[..len].to_vec())),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
