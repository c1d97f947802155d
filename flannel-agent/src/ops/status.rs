//! `flanneld status [--json]`: our lease, the network, the datapath and where it is attached,
//! and the peers with their traffic, read from etcd and from the pinned maps.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::programs::TcAttachType;
use clap::Parser;
use flannel_common::{
    pins::Pins,
    program_names::{TC_ENCAP, TC_INGRESS, TC_MERGED},
    DatapathConfig, DropReason, Encap, PeerTraffic, Tunnel, THROUGH_NETFILTER,
};
use serde::Serialize;

use crate::{
    cli::{EtcdArgs, PinDirArg},
    control::{
        config::{self, Config},
        lease::Subnets,
        lease::{BackendAttrs, Mac},
        peers::{PeerTable, Rules},
        registry::{EtcdOptions, Registry, Snapshot},
        subnet_env,
    },
    datapath::{
        ebpf::{
            self,
            gro_device::{GroDevice, GRO_PEER},
            programs, ReceivePath, FILTER_MINOR, OVERLAY_DEV,
        },
        kernel_vxlan,
        tun_udp::TUN_DEV,
        Decap,
    },
    host::netlink,
};

/// Show this host's lease, datapath and peers.
#[derive(Parser, Debug)]
#[command(name = "flanneld status")]
pub struct StatusArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// the agent's subnet file
    #[arg(
        long,
        env = "FLANNELD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    pub subnet_file: PathBuf,
    #[command(flatten)]
    pub pins: PinDirArg,
    /// print JSON, for scripts
    #[arg(long)]
    pub json: bool,
}

/// What the pinned maps of the eBPF datapath say.
struct Pinned {
    config: DatapathConfig,
    traffic: HashMap<IpAddr, PeerTraffic>,
    drops: Vec<(DropReason, u64)>,
    routes: Vec<(ipnet::Ipv4Net, Tunnel)>,
}

/// The report, printed as a table or as JSON from this one value.
#[derive(Serialize)]
struct Report {
    etcd: EtcdState,
    lease: Option<LeaseReport>,
    network: Option<String>,
    backend: Option<String>,
    datapath: DatapathReport,
    drops: BTreeMap<&'static str, u64>,
    peers: Vec<PeerReport>,
    rejected: Vec<RejectedReport>,
}

#[derive(Serialize)]
struct EtcdState {
    reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct LeaseReport {
    /// None in an IPv6-only network.
    subnet: Option<String>,
    public_ip: String,
    /// IPv6: the IPv6 subnet and public IPv6.
    #[serde(skip_serializing_if = "Option::is_none")]
    ipv6_subnet: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_ipv6: Option<String>,
    backend: String,
    reservation: bool,
}

#[derive(Serialize)]
struct DatapathReport {
    kind: &'static str,
    attached: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decap: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gro: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fast_path: Option<bool>,
}

#[derive(Serialize)]
struct PeerReport {
    /// None in an IPv6-only network.
    subnet: Option<String>,
    public_ip: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ipv6_subnet: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_ipv6: Option<String>,
    vtep_mac: Option<String>,
    tx_packets: Option<u64>,
    tx_bytes: Option<u64>,
    rx_packets: Option<u64>,
    rx_bytes: Option<u64>,
}

impl PeerReport {
    fn new(
        subnets: Subnets,
        (public_ip, public_ipv6): (Ipv4Addr, Option<Ipv6Addr>),
        vtep_mac: Option<Mac>,
        traffic: Option<PeerTraffic>,
    ) -> Self {
        Self {
            subnet: subnets.ipv4.map(|s| s.to_string()),
            public_ip: public_ip.to_string(),
            ipv6_subnet: subnets.ipv6.map(|s| s.to_string()),
            public_ipv6: public_ipv6.map(|ip| ip.to_string()),
            vtep_mac: vtep_mac.map(|m| m.to_string()),
            tx_packets: traffic.map(|t| t.tx_packets),
            tx_bytes: traffic.map(|t| t.tx_bytes),
            rx_packets: traffic.map(|t| t.rx_packets),
            rx_bytes: traffic.map(|t| t.rx_bytes),
        }
    }
}

#[derive(Serialize)]
struct RejectedReport {
    key: String,
    reason: &'static str,
    detail: String,
}

/// Prints the report; false when etcd could not be read (the report then shows what this
/// host holds: its subnet.env, the pinned maps and what the kernel has attached).
pub async fn run(args: &StatusArgs) -> Result<bool> {
    let etcd = read_etcd(&args.etcd.options()).await;
    let own = subnet_env::previous_subnets(&args.subnet_file)
        .ok()
        .flatten();
    let pinned = read_pins(&args.pins.bpf_pin_dir).ok();
    let datapath = describe_datapath(pinned.as_ref(), own, &args.pins.bpf_pin_dir).await?;
    // A peer's traffic over the tunnels to its public addresses (one per family).
    let traffic = |ips: &[IpAddr]| {
        let pinned = pinned.as_ref()?;
        let counted = ips.iter().filter_map(|ip| pinned.traffic.get(ip));
        counted.copied().reduce(PeerTraffic::plus)
    };
    let mut report = Report {
        etcd: EtcdState {
            reachable: etcd.is_ok(),
            error: etcd.as_ref().err().map(|e| format!("{e:#}")),
        },
        lease: None,
        network: None,
        backend: None,
        datapath,
        drops: pinned
            .iter()
            .flat_map(|p| &p.drops)
            .map(|(reason, n)| (reason.name(), *n))
            .collect(),
        peers: Vec::new(),
        rejected: Vec::new(),
    };
    match &etcd {
        Ok((config, snapshot)) => {
            let own_lease = own.and_then(|s| snapshot.leases.iter().find(|l| l.subnets == s));
            // The agent's rules decide who is a peer, here as in the agent.
            let own = own_lease.map(|l| (&l.subnets, &l.attrs));
            let mut table = PeerTable::new(Rules::of(config, &args.etcd.etcd_prefix, own));
            table.resync(&snapshot.leases);
            report.peers = (table.desired().iter())
                .map(|(subnets, attrs)| {
                    let vtep_mac = match &attrs.backend {
                        BackendAttrs::Vxlan {
                            vtep_mac,
                            v6_vtep_mac,
                            ..
                        } => vtep_mac.or(*v6_vtep_mac),
                        _ => None,
                    };
                    let ips = (attrs.public_ip, attrs.public_ipv6);
                    let v4 = subnets.ipv4.map(|_| IpAddr::V4(attrs.public_ip));
                    let v6 = subnets.ipv6.and(attrs.public_ipv6).map(IpAddr::V6);
                    let traffic = traffic(&[v4, v6].into_iter().flatten().collect::<Vec<_>>());
                    PeerReport::new(*subnets, ips, vtep_mac, traffic)
                })
                .collect();
            report.rejected = (table.rejected().iter())
                .map(|(subnet, rejection)| RejectedReport {
                    key: table.key(subnet),
                    reason: rejection.reason,
                    detail: rejection.detail.clone(),
                })
                .collect();
            report.lease = own_lease.map(|l| LeaseReport {
                subnet: l.subnets.ipv4.map(|s| s.to_string()),
                public_ip: l.attrs.public_ip.to_string(),
                ipv6_subnet: l.subnets.ipv6.map(|s| s.to_string()),
                public_ipv6: l.attrs.public_ipv6.map(|ip| ip.to_string()),
                backend: l.attrs.backend.type_name().to_owned(),
                reservation: l.lease_id == 0,
            });
            let networks = [
                config.ipv4.as_ref().map(|v4| v4.network.to_string()),
                config.ipv6.as_ref().map(|v6| v6.network.to_string()),
            ];
            report.network = Some(networks.into_iter().flatten().collect::<Vec<_>>().join(" "));
            report.backend = Some(config.backend.type_name().to_owned());
        }
        Err(_) => {
            // What this host holds: subnet.env's network, the peers in the pinned maps.
            report.network = subnet_env::read_vars(&args.subnet_file)
                .ok()
                .and_then(|vars| {
                    let networks = ["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"];
                    let found: Vec<_> = networks.iter().filter_map(|k| vars.get(*k)).collect();
                    (!found.is_empty())
                        .then(|| found.into_iter().cloned().collect::<Vec<_>>().join(" "))
                });
            let vxlan = pinned
                .as_ref()
                .is_some_and(|p| p.config.encap == Encap::Vxlan as u16);
            report.peers = (pinned.iter().flat_map(|p| &p.routes))
                .map(|(subnet, tunnel)| {
                    let ip = Ipv4Addr::from(u32::from_be(tunnel.remote_ip_be));
                    let mac = vxlan.then_some(Mac(tunnel.header.inner.dst));
                    let traffic = traffic(&[ip.into()]);
                    PeerReport::new(Subnets::ipv4(*subnet), (ip, None), mac, traffic)
                })
                .collect();
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(etcd.is_ok())
}

/// The network config and every lease.
async fn read_etcd(options: &EtcdOptions) -> Result<(Config, Snapshot)> {
    let mut registry = Registry::connect(options).await?;
    let config_json = registry
        .config()
        .await?
        .with_context(|| format!("no network config at {}", registry.config_key()))?;
    let config = config::parse(&config_json)?;
    Ok((config, registry.snapshot().await?))
}

/// The datapath and where the kernel has its programs attached.
async fn describe_datapath(
    pinned: Option<&Pinned>,
    own: Option<Subnets>,
    pin_dir: &Path,
) -> Result<DatapathReport> {
    let exists = |name: &str| Path::new("/sys/class/net").join(name).exists();
    if let Some(pinned) = pinned {
        let netlink = netlink::connect()?;
        let nic_index = pinned.config.nic_ifindex;
        let nic = nix::net::if_::if_indextoname(nic_index)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|_| format!("ifindex {nic_index}"));
        let bridge = own.and_then(|own| ebpf::bridge_of(own.either()?));
        let mut points = vec![
            (nic.clone(), false, format!("tc ingress on {nic}")),
            (
                OVERLAY_DEV.into(),
                true,
                format!("tc egress on {OVERLAY_DEV}"),
            ),
            (
                GRO_PEER.into(),
                false,
                format!("tc ingress on {GRO_PEER} (GRO device)"),
            ),
        ];
        if let Some((bridge, _)) = bridge {
            points.push((
                bridge.clone(),
                false,
                format!("tc ingress on {bridge} (fast path)"),
            ));
        }
        let mut attached = Vec::new();
        for (name, egress, label) in points {
            let Ok(index) = nix::net::if_::if_nametoindex(name.as_str()) else {
                continue;
            };
            let kind = if egress {
                TcAttachType::Egress
            } else {
                TcAttachType::Ingress
            };
            let ours = [TC_INGRESS, TC_ENCAP, TC_MERGED];
            if ebpf::tcx_programs(&name, kind)
                .iter()
                .any(|program| ours.contains(&program.as_str()))
            {
                attached.push(format!("{label}, TCX link"));
            } else if !netlink::filter_priorities(&netlink, index, egress, FILTER_MINOR)
                .await?
                .is_empty()
            {
                attached.push(format!("{label}, filter"));
            }
        }
        let xdp = netlink::xdp_program(&netlink, nic_index).await?.is_some()
            && pin_dir.join("xdp_ingress_link").exists();
        let decap = if xdp {
            attached.push(format!("xdp on {nic}"));
            Decap::Xdp
        } else {
            Decap::Tc
        };
        let receive = ReceivePath::new(decap, GroDevice::present());
        return Ok(DatapathReport {
            kind: "eBPF",
            attached,
            decap: Some(receive.decap),
            gro: Some(receive.gro),
            fast_path: Some(pinned.config.flags & THROUGH_NETFILTER == 0),
        });
    }
    let kind = if exists(TUN_DEV) {
        "TUN udp loop (flannel0)"
    } else if !kernel_vxlan::devices().is_empty() {
        "kernel vxlan device"
    } else {
        "routes (host-gw), or not running"
    };
    Ok(DatapathReport {
        kind,
        attached: Vec::new(),
        decap: None,
        gro: None,
        fast_path: None,
    })
}

fn read_pins(dir: &Path) -> Result<Pinned> {
    let pins = Pins::new(dir);
    let config = pins.config()?.get(&0, 0)?;
    let mut traffic = HashMap::new();
    for entry in pins.traffic()?.iter() {
        let (key, per_cpu) = entry?;
        let sum = per_cpu
            .iter()
            .fold(PeerTraffic::default(), |sum, cpu| sum.plus(*cpu));
        traffic.insert(Ipv6Addr::from(key).to_canonical(), sum);
    }
    let drops_map = pins.drops()?;
    let drops = DropReason::ALL
        .iter()
        .map(|&r| Ok((r, drops_map.get(&(r as u32), 0)?.iter().sum())))
        .collect::<Result<_>>()?;
    Ok(Pinned {
        config,
        traffic,
        drops,
        routes: programs::routes::<Ipv4Addr, _>(&pins.routes()?)?,
    })
}

fn print_text(report: &Report) {
    if let Some(error) = &report.etcd.error {
        println!("etcd:      unreachable ({error}); what this host holds:");
    }
    match report.lease.as_ref().filter(|l| l.subnet.is_some()) {
        Some(lease) => println!(
            "lease:     {} (public IP {}, {}{})",
            lease.subnet.as_deref().unwrap_or("-"),
            lease.public_ip,
            lease.backend,
            if lease.reservation {
                ", reservation"
            } else {
                ""
            }
        ),
        None if report.lease.is_some() => {}
        None => println!("lease:     none found for this host's subnet file"),
    }
    if let Some(lease) = &report.lease {
        if let (Some(subnet), Some(ip)) = (&lease.ipv6_subnet, &lease.public_ipv6) {
            println!("ipv6:      {subnet} (public IPv6 {ip})");
        }
    }
    let unknown = || "unknown".to_owned();
    println!(
        "network:   {}, backend {}",
        report.network.clone().unwrap_or_else(unknown),
        report.backend.clone().unwrap_or_else(unknown)
    );
    let datapath = &report.datapath;
    println!(
        "datapath:  {} {}",
        datapath.kind,
        datapath.attached.join(", ")
    );
    if let (Some(decap), Some(gro)) = (datapath.decap, datapath.gro) {
        println!("decap:     {decap}; GRO merges {gro}");
    }
    match datapath.fast_path {
        Some(true) => println!("fast path: on (overlay traffic bypasses the FORWARD chain)"),
        Some(false) => println!("fast path: off (overlay traffic crosses the FORWARD chain)"),
        None => {}
    }
    if !report.drops.is_empty() {
        let drops: Vec<String> = (report.drops.iter())
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        println!("drops:     {}", drops.join(", "));
    }
    println!(
        "\n{:<18} {:<16} {:<18} {:>10} {:>12} {:>10} {:>12}",
        "SUBNET", "PUBLIC IP", "VTEP MAC", "TX PKTS", "TX BYTES", "RX PKTS", "RX BYTES"
    );
    let count = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    for peer in &report.peers {
        // IPv6 only: the IPv6 subnet and address.
        let (subnet, ip) = match &peer.subnet {
            Some(subnet) => (subnet.as_str(), peer.public_ip.as_str()),
            None => (
                peer.ipv6_subnet.as_deref().unwrap_or("-"),
                peer.public_ipv6.as_deref().unwrap_or("-"),
            ),
        };
        println!(
            "{:<18} {:<16} {:<18} {:>10} {:>12} {:>10} {:>12}",
            subnet,
            ip,
            peer.vtep_mac.as_deref().unwrap_or("-"),
            count(peer.tx_packets),
            count(peer.tx_bytes),
            count(peer.rx_packets),
            count(peer.rx_bytes)
        );
    }
    for (i, lease) in report.rejected.iter().enumerate() {
        if i == 0 {
            println!("\nrejected leases (not in the datapath):");
        }
        println!("{}: {} ({})", lease.key, lease.detail, lease.reason);
    }
}
