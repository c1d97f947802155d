//! Hosts on one underlay: a bridge in its own namespace (which also runs etcd at
//! 192.168.64.1), each host a namespace with `eth0` on the bridge and a default route through
//! it. Containers sit behind a docker0-style bridge `cni0` on their host's subnet.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::Result;

use crate::{
    agent::Agent,
    etcd::{wait_for, Etcd},
    netns::{link, Netns},
};

pub const PREFIX: &str = "/coreos.com/network";
pub const CONFIG_KEY: &str = "/coreos.com/network/config";

/// The lease key of `subnet` ("10.1.83.0/24" → `<prefix>/subnets/10.1.83.0-24`).
pub fn lease_key(subnet: &str) -> String {
    format!("{PREFIX}/subnets/{}", subnet.replace('/', "-"))
}

pub struct Testbed {
    // Field order is drop order: hosts before the underlay that carries etcd.
    pub hosts: Vec<Netns>,
    pub etcd: Etcd,
    pub underlay: Netns,
}

impl Testbed {
    pub fn new(hosts: usize) -> Result<Self> {
        let underlay = Netns::new("ul")?;
        underlay.ip(&["link", "add", "br0", "type", "bridge"])?;
        underlay.ip(&["addr", "add", "192.168.64.1/24", "dev", "br0"])?;
        underlay.ip(&["link", "set", "br0", "up"])?;
        let etcd = Etcd::start_in(&underlay, Ipv4Addr::new(192, 168, 64, 1))?;
        let mut bed = Self {
            hosts: Vec::new(),
            etcd,
            underlay,
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
        let port = format!("p{index}");
        let addr = format!("{}/24", Self::host_ip(index));
        link(&host, "eth0", &addr, &self.underlay, &port, "0.0.0.0/32")?;
        self.underlay.ip(&["addr", "flush", "dev", &port])?;
        self.underlay.ip(&["link", "set", &port, "master", "br0"])?;
        host.ip(&["route", "add", "default", "via", "192.168.64.1"])?;
        host.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        self.hosts.push(host);
        Ok(index)
    }

    pub fn host_ip(index: usize) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 64, 10 + index as u8)
    }

    pub fn put_config(&self, json: &str) -> Result<()> {
        self.etcd.put(CONFIG_KEY, json)
    }

    /// Starts flanneld on host `index` with the testbed's etcd and `--iface=eth0`.
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
        let endpoints = format!("--etcd-endpoints={}", self.etcd.endpoint());
        let mut args = vec![endpoints.as_str(), "--iface=eth0"];
        args.extend_from_slice(extra);
        Agent::spawn_with_env(&self.hosts[index], &args, env)
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
        Ok(Container { ns, ip })
    }
}

impl Testbed {
    /// One host per entry of `flags`, each running flanneld with those flags on `config`,
    /// ready, with a container behind each.
    pub fn cluster(
        config: &str,
        flags: &[&[&str]],
    ) -> Result<(Testbed, Vec<Agent>, Vec<Container>)> {
        let bed = Testbed::new(flags.len())?;
        bed.put_config(config)?;
        let mut agents = Vec::new();
        let mut containers = Vec::new();
        for (host, flags) in flags.iter().enumerate() {
            let mut agent = bed.agent(host, flags)?;
            agent.wait_ready(Duration::from_secs(30))?;
            containers.push(bed.add_docker_container(host, &agent, 2)?);
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

/// Waits until every container reaches every other (each pair within `timeout`).
pub fn all_reach_all(containers: &[Container], timeout: Duration) -> Result<()> {
    for from in containers {
        for to in containers {
            let what = format!("{} to reach {}", from.ip, to.ip);
            wait_for(&what, timeout, || from.ping(to.ip).is_ok())?;
        }
    }
    Ok(())
}

pub struct Container {
    pub ns: Netns,
    pub ip: Ipv4Addr,
}

impl Container {
    pub fn ping(&self, to: Ipv4Addr) -> Result<String> {
        self.ns
            .exec("ping", &["-c", "1", "-W", "2", &to.to_string()])
    }
}
