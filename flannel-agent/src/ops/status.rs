//! `flanneld status [--json]`: our lease, the network, the datapath and where it is attached,
//! and the peers with their traffic, read from etcd and from the pinned maps.

use std::{collections::HashMap, net::Ipv4Addr, path::Path};

use anyhow::{Context, Result};
use aya::maps::{Array, Map, MapData, PerCpuArray, PerCpuHashMap};
use clap::Parser;
use flannel_common::{map_names, DatapathConfig, DropReason, PeerTraffic};
use serde_json::json;

use crate::{
    cli::Args,
    control::{config, lease::BackendAttrs, registry::Registry, subnet_env},
    datapath::{
        ebpf::gro_device::GRO_DEV,
        ebpf::{ReceivePath, OVERLAY_DEV},
        tun_udp::TUN_DEV,
        Decap,
    },
    host::iface,
};

/// Show this host's lease, datapath and peers.
#[derive(Parser, Debug)]
#[command(name = "flanneld status")]
pub struct StatusArgs {
    #[command(flatten)]
    pub common: Args,
    /// print JSON, for scripts
    #[arg(long)]
    pub json: bool,
}

/// What the pinned maps of the eBPF datapath say.
struct Pinned {
    config: DatapathConfig,
    traffic: HashMap<Ipv4Addr, PeerTraffic>,
    drops: Vec<(DropReason, u64)>,
}

pub async fn run(args: &StatusArgs) -> Result<()> {
    let common = &args.common;
    let mut registry = Registry::connect(&common.etcd_options()).await?;
    let config_json = registry
        .config()
        .await?
        .with_context(|| format!("no network config at {}", registry.config_key()))?;
    let config = config::parse(&config_json)?;
    let snapshot = registry.snapshot().await?;
    let own = subnet_env::previous_subnet(&common.subnet_file)?;
    let own_lease = own.and_then(|subnet| snapshot.leases.iter().find(|l| l.subnet == subnet));
    let pinned = read_pins(&common.bpf_pin_dir).ok();

    let datapath = describe_datapath(pinned.as_ref(), own, &common.bpf_pin_dir);
    let peers: Vec<serde_json::Value> = snapshot
        .leases
        .iter()
        .filter(|l| {
            Some(l.subnet) != own && l.attrs.backend.type_name() == config.backend.type_name()
        })
        .map(|l| {
            let vtep_mac = match &l.attrs.backend {
                BackendAttrs::Vxlan { vtep_mac, .. } => Some(vtep_mac.to_string()),
                _ => None,
            };
            let traffic = pinned
                .as_ref()
                .and_then(|p| p.traffic.get(&l.attrs.public_ip));
            json!({
                "subnet": l.subnet.to_string(),
                "public_ip": l.attrs.public_ip.to_string(),
                "vtep_mac": vtep_mac,
                "tx_packets": traffic.map(|t| t.tx_packets),
                "tx_bytes": traffic.map(|t| t.tx_bytes),
                "rx_packets": traffic.map(|t| t.rx_packets),
                "rx_bytes": traffic.map(|t| t.rx_bytes),
            })
        })
        .collect();
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
        "lease": own_lease.map(|l| json!({
            "subnet": l.subnet.to_string(),
            "public_ip": l.attrs.public_ip.to_string(),
            "backend": l.attrs.backend.type_name(),
            "reservation": l.lease_id == 0,
        })),
        "network": config.network.to_string(),
        "backend": config.backend.type_name(),
        "datapath": datapath,
        "drops": drops,
        "peers": peers,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

fn describe_datapath(
    pinned: Option<&Pinned>,
    own: Option<ipnet::Ipv4Net>,
    pin_dir: &Path,
) -> serde_json::Value {
    let exists = |name: &str| Path::new("/sys/class/net").join(name).exists();
    if let Some(pinned) = pinned {
        let nic = nix::net::if_::if_indextoname(pinned.config.nic_ifindex)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|_| format!("ifindex {}", pinned.config.nic_ifindex));
        let mut attached = vec![
            format!("tc ingress on {nic}"),
            format!("tc egress on {OVERLAY_DEV}"),
        ];
        let decap = if pin_dir.join("xdp_ingress_link").exists() {
            attached.push(format!("xdp on {nic}"));
            Decap::Xdp
        } else {
            Decap::Tc
        };
        let receive = ReceivePath::new(decap, exists(GRO_DEV));
        let bridge = own.and_then(|subnet| {
            iface::addresses()
                .ok()?
                .into_iter()
                .find(|(name, addr)| name != OVERLAY_DEV && subnet.contains(addr))
        });
        if let Some((bridge, _)) = bridge {
            attached.push(format!("tc ingress on {bridge} (fast path)"));
        }
        return json!({
            "kind": "eBPF",
            "attached": attached,
            "decap": receive.decap,
            "gro": receive.gro,
        });
    }
    let kind = if exists(TUN_DEV) {
        "TUN udp loop (flannel0)"
    } else if std::fs::read_dir("/sys/class/net")
        .map(|dir| {
            dir.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("flannel."))
        })
        .unwrap_or(false)
    {
        "kernel vxlan device"
    } else {
        "routes (host-gw), or not running"
    };
    json!({"kind": kind, "attached": []})
}

fn read_pins(dir: &Path) -> Result<Pinned> {
    let open = |name: &str| -> Result<Map> {
        let path = dir.join(name);
        let data =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Map::from_map_data(data)?)
    };
    let config: Array<MapData, DatapathConfig> = open(map_names::CONFIG)?.try_into()?;
    let config = config.get(&0, 0)?;
    let traffic_map: PerCpuHashMap<MapData, u32, PeerTraffic> =
        open(map_names::TRAFFIC)?.try_into()?;
    let mut traffic = HashMap::new();
    for entry in traffic_map.iter() {
        let (ip_be, per_cpu) = entry?;
        let sum = per_cpu
            .iter()
            .fold(PeerTraffic::default(), |sum, cpu| sum.plus(*cpu));
        traffic.insert(Ipv4Addr::from(u32::from_be(ip_be)), sum);
    }
    let drops_map: PerCpuArray<MapData, u64> = open(map_names::DROPS)?.try_into()?;
    let drops = DropReason::ALL
        .iter()
        .map(|&r| Ok((r, drops_map.get(&(r as u32), 0)?.iter().sum())))
        .collect::<Result<_>>()?;
    Ok(Pinned {
        config,
        traffic,
        drops,
    })
}

fn print_text(report: &serde_json::Value) {
    let text = |v: &serde_json::Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    };
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
}
