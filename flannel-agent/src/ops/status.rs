//! `flanneld status [--json]`: our lease, the network, the datapath and where it is attached,
//! and the peers with their traffic, read from etcd and from the pinned maps.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use clap::Parser;
use flannel_common::{
    pins::Pins, DatapathConfig, DropReason, Encap, PeerTraffic, Tunnel, THROUGH_NETFILTER,
};
use serde_json::json;

use crate::{
    cli::EtcdArgs,
    control::{
        config::{self, Config},
        lease::{subnet_key, BackendAttrs, Mac},
        peers::{PeerTable, Rules},
        registry::{EtcdOptions, Registry, Snapshot},
        subnet_env,
    },
    datapath::{
        ebpf::{gro_device::GRO_DEV, programs, ReceivePath, FILTER_MINOR, OVERLAY_DEV},
        kernel_vxlan,
        tun_udp::TUN_DEV,
        Decap,
    },
    host::{iface, netlink},
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
    /// the agent's bpffs directory
    #[arg(
        long,
        env = "FLANNELD_BPF_PIN_DIR",
        default_value = "/sys/fs/bpf/flannel"
    )]
    pub bpf_pin_dir: PathBuf,
    /// print JSON, for scripts
    #[arg(long)]
    pub json: bool,
}

/// What the pinned maps of the eBPF datapath say.
struct Pinned {
    config: DatapathConfig,
    traffic: HashMap<Ipv4Addr, PeerTraffic>,
    drops: Vec<(DropReason, u64)>,
    routes: Vec<(ipnet::Ipv4Net, Tunnel)>,
}

/// Prints the report; false when etcd could not be read (the report then shows what this
/// host holds: its subnet.env, the pinned maps and what the kernel has attached).
pub async fn run(args: &StatusArgs) -> Result<bool> {
    let etcd = read_etcd(&args.etcd.options()).await;
    let own = subnet_env::previous_subnet(&args.subnet_file)
        .ok()
        .flatten();
    let pinned = read_pins(&args.bpf_pin_dir).ok();
    let datapath = describe_datapath(pinned.as_ref(), own, &args.bpf_pin_dir).await?;
    let traffic = |ip: &Ipv4Addr| pinned.as_ref().and_then(|p| p.traffic.get(ip)).copied();
    let mut rejected: Vec<serde_json::Value> = Vec::new();
    let (etcd_json, lease, network, backend, peers) = match &etcd {
        Ok((config, snapshot)) => {
            let own_lease = own.and_then(|s| snapshot.leases.iter().find(|l| l.subnet == s));
            // The agent's rules decide who is a peer, here as in the agent.
            let mut table = PeerTable::new(Rules {
                network: config.network,
                subnet_len: config.subnet_len,
                own_subnet: own,
                own_ip: own_lease.map(|l| l.attrs.public_ip),
                backend_type: config.backend.type_name().to_owned(),
                prefix: args.etcd.etcd_prefix.clone(),
            });
            table.resync(&snapshot.leases);
            let peers: Vec<serde_json::Value> = table
                .desired()
                .iter()
                .map(|(subnet, attrs)| {
                    let vtep_mac = match &attrs.backend {
                        BackendAttrs::Vxlan { vtep_mac, .. } => Some(*vtep_mac),
                        _ => None,
                    };
                    let ip = attrs.public_ip;
                    peer_json(*subnet, ip, vtep_mac, traffic(&ip))
                })
                .collect();
            rejected = table
                .rejected()
                .iter()
                .map(|(subnet, rejection)| {
                    json!({
                        "key": subnet_key(&args.etcd.etcd_prefix, subnet),
                        "reason": rejection.reason,
                        "detail": rejection.detail,
                    })
                })
                .collect();
            let lease = own_lease.map(|l| {
                json!({
                    "subnet": l.subnet.to_string(),
                    "public_ip": l.attrs.public_ip.to_string(),
                    "backend": l.attrs.backend.type_name(),
                    "reservation": l.lease_id == 0,
                })
            });
            (
                json!({"reachable": true}),
                lease,
                json!(config.network.to_string()),
                json!(config.backend.type_name()),
                peers,
            )
        }
        Err(e) => {
            // What this host holds: subnet.env's network, the peers in the pinned maps.
            let network = subnet_env::read_vars(&args.subnet_file)
                .ok()
                .and_then(|vars| vars.get("FLANNEL_NETWORK").cloned());
            let peers: Vec<serde_json::Value> = pinned
                .iter()
                .flat_map(|p| &p.routes)
                .map(|(subnet, tunnel)| {
                    let ip = Ipv4Addr::from(u32::from_be(tunnel.remote_ip_be));
                    let vxlan = pinned
                        .as_ref()
                        .is_some_and(|p| p.config.encap == Encap::Vxlan as u16);
                    let mac =
                        vxlan.then(|| Mac(tunnel.header[36..42].try_into().expect("six bytes")));
                    peer_json(*subnet, ip, mac, traffic(&ip))
                })
                .collect();
            (
                json!({"reachable": false, "error": format!("{e:#}")}),
                None,
                json!(network),
                serde_json::Value::Null,
                peers,
            )
        }
    };
    let drops: serde_json::Map<String, serde_json::Value> = pinned
        .as_ref()
        .map(|p| {
            p.drops
                .iter()
                .map(|(r, n)| (r.name().to_owned(), json!(n)))
                .collect()
        })
        .unwrap_or_default();
    let report = json!({
        "etcd": etcd_json,
        "lease": lease,
        "network": network,
        "backend": backend,
        "datapath": datapath,
        "drops": drops,
        "peers": peers,
        "rejected": rejected,
    });
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

fn peer_json(
    subnet: ipnet::Ipv4Net,
    public_ip: Ipv4Addr,
    vtep_mac: Option<Mac>,
    traffic: Option<PeerTraffic>,
) -> serde_json::Value {
    json!({
        "subnet": subnet.to_string(),
        "public_ip": public_ip.to_string(),
        "vtep_mac": vtep_mac.map(|m| m.to_string()),
        "tx_packets": traffic.map(|t| t.tx_packets),
        "tx_bytes": traffic.map(|t| t.tx_bytes),
        "rx_packets": traffic.map(|t| t.rx_packets),
        "rx_bytes": traffic.map(|t| t.rx_bytes),
    })
}

/// The datapath and where the kernel has its programs attached.
async fn describe_datapath(
    pinned: Option<&Pinned>,
    own: Option<ipnet::Ipv4Net>,
    pin_dir: &Path,
) -> Result<serde_json::Value> {
    let exists = |name: &str| Path::new("/sys/class/net").join(name).exists();
    if let Some(pinned) = pinned {
        let netlink = netlink::connect()?;
        let nic_index = pinned.config.nic_ifindex;
        let nic = nix::net::if_::if_indextoname(nic_index)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|_| format!("ifindex {nic_index}"));
        let bridge = own.and_then(|subnet| {
            iface::addresses()
                .ok()?
                .into_iter()
                .find(|(name, addr)| name != OVERLAY_DEV && subnet.contains(addr))
        });
        let mut points = vec![
            (nic.clone(), false, format!("tc ingress on {nic}")),
            (
                OVERLAY_DEV.into(),
                true,
                format!("tc egress on {OVERLAY_DEV}"),
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
            if !netlink::filter_priorities(&netlink, index, egress, FILTER_MINOR)
                .await?
                .is_empty()
            {
                attached.push(label);
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
        let receive = ReceivePath::new(decap, exists(GRO_DEV));
        return Ok(json!({
            "kind": "eBPF",
            "attached": attached,
            "decap": receive.decap,
            "gro": receive.gro,
            "fast_path": pinned.config.flags & THROUGH_NETFILTER == 0,
        }));
    }
    let kind = if exists(TUN_DEV) {
        "TUN udp loop (flannel0)"
    } else if !kernel_vxlan::devices().is_empty() {
        "kernel vxlan device"
    } else {
        "routes (host-gw), or not running"
    };
    Ok(json!({"kind": kind, "attached": []}))
}

fn read_pins(dir: &Path) -> Result<Pinned> {
    let pins = Pins::new(dir);
    let config = pins.config()?.get(&0, 0)?;
    let mut traffic = HashMap::new();
    for entry in pins.traffic()?.iter() {
        let (ip_be, per_cpu) = entry?;
        let sum = per_cpu
            .iter()
            .fold(PeerTraffic::default(), |sum, cpu| sum.plus(*cpu));
        traffic.insert(Ipv4Addr::from(u32::from_be(ip_be)), sum);
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
        routes: programs::routes(&pins.routes()?)?,
    })
}

fn print_text(report: &serde_json::Value) {
    let text = |v: &serde_json::Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    };
    if report["etcd"]["reachable"] == false {
        println!(
            "etcd:      unreachable ({}); what this host holds:",
            text(&report["etcd"]["error"])
        );
    }
    match report["lease"].as_object() {
        Some(lease) => println!(
            "lease:     {} (public IP {}, {}{})",
            text(&lease["subnet"]),
            text(&lease["public_ip"]),
            text(&lease["backend"]),
            if lease["reservation"] == true {
                ", reservation"
            } else {
                ""
            }
        ),
        None => println!("lease:     none found for this host's subnet file"),
    }
    println!(
        "network:   {}, backend {}",
        text(&report["network"]),
        text(&report["backend"])
    );
    let attached: Vec<String> = report["datapath"]["attached"]
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    println!(
        "datapath:  {} {}",
        text(&report["datapath"]["kind"]),
        attached.join(", ")
    );
    if let Some(decap) = report["datapath"]["decap"].as_str() {
        println!(
            "decap:     {decap}, GRO merges {} first",
            text(&report["datapath"]["gro"])
        );
    }
    match report["datapath"]["fast_path"].as_bool() {
        Some(true) => println!("fast path: on (overlay traffic bypasses the FORWARD chain)"),
        Some(false) => println!("fast path: off (overlay traffic crosses the FORWARD chain)"),
        None => {}
    }
    if let Some(drops) = report["drops"].as_object().filter(|d| !d.is_empty()) {
        let drops: Vec<String> = drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("drops:     {}", drops.join(", "));
    }
    println!(
        "\n{:<18} {:<16} {:<18} {:>10} {:>12} {:>10} {:>12}",
        "SUBNET", "PUBLIC IP", "VTEP MAC", "TX PKTS", "TX BYTES", "RX PKTS", "RX BYTES"
    );
    for peer in report["peers"].as_array().into_iter().flatten() {
        let count = |k: &str| {
            peer[k]
                .as_u64()
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{:<18} {:<16} {:<18} {:>10} {:>12} {:>10} {:>12}",
            text(&peer["subnet"]),
            text(&peer["public_ip"]),
            peer["vtep_mac"].as_str().unwrap_or("-"),
            count("tx_packets"),
            count("tx_bytes"),
            count("rx_packets"),
            count("rx_bytes")
        );
    }
    let rejected = report["rejected"].as_array().into_iter().flatten();
    for (i, lease) in rejected.enumerate() {
        if i == 0 {
            println!("\nrejected leases (not in the datapath):");
        }
        println!(
            "{}: {} ({})",
            text(&lease["key"]),
            text(&lease["detail"]),
            text(&lease["reason"])
        );
    }
}
