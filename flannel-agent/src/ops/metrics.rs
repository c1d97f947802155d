//! `/metrics` in the Prometheus text format: per-peer traffic and drops by reason from the
//! BPF counters, lease and etcd gauges and counters, and the datapath in use.

use std::{fmt::Write as _, net::IpAddr};

use flannel_common::{DropReason, PeerTraffic};
use ipnet::IpNet;

use crate::datapath::ebpf::ReceivePath;

/// What the agent knows at one moment.
#[derive(Default)]
pub struct Snapshot {
    pub datapath: &'static str,
    /// eBPF: where tunnel packets are decapsulated, and what GRO merges.
    pub receive: Option<ReceivePath>,
    pub peers: usize,
    pub renewals: u64,
    pub watch_restarts: u64,
    pub etcd_outages: u64,
    /// Leases rejected so far, by reason.
    pub rejections: std::collections::BTreeMap<&'static str, u64>,
    pub etcd_errors: u64,
    /// etcd answers (the lease watch is open).
    pub etcd_up: bool,
    /// When our lease runs out unless renewed, in seconds since the epoch; None for a
    /// reservation, which never does.
    pub lease_expiry: Option<u64>,
    pub datapath_errors: u64,
    pub lease_overwrites: u64,
    /// Per peer (subnet, public IP; IPv6 ones for an IPv6-only peer), where the datapath
    /// counts (eBPF).
    pub traffic: Vec<(IpNet, IpAddr, PeerTraffic)>,
    pub drops: Vec<(DropReason, u64)>,
}

/// The `flannel_ready` gauge, alone: what /metrics says before the agent holds a lease.
pub fn starting() -> String {
    format!("{READY_HELP}flannel_ready 0\n")
}

const READY_HELP: &str = "# HELP flannel_ready 1 once the lease is held and subnet.env written.\n\
                          # TYPE flannel_ready gauge\n";

pub fn render(s: &Snapshot) -> String {
    let mut out = format!("{READY_HELP}flannel_ready 1\n");
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let per_peer = |get: fn(&PeerTraffic) -> u64| -> Vec<(String, u64)> {
        s.traffic
            .iter()
            .map(|(subnet, ip, t)| {
                (
                    format!("{{subnet=\"{subnet}\",public_ip=\"{ip}\"}}"),
                    get(t),
                )
            })
            .collect()
    };
    family(
        "flannel_peer_tx_packets_total",
        "counter",
        "Packets encapsulated to a peer.",
        &per_peer(|t| t.tx_packets),
    );
    family(
        "flannel_peer_tx_bytes_total",
        "counter",
        "Bytes encapsulated to a peer.",
        &per_peer(|t| t.tx_bytes),
    );
    family(
        "flannel_peer_rx_packets_total",
        "counter",
        "Packets decapsulated from a peer.",
        &per_peer(|t| t.rx_packets),
    );
    family(
        "flannel_peer_rx_bytes_total",
        "counter",
        "Bytes decapsulated from a peer.",
        &per_peer(|t| t.rx_bytes),
    );
    let drops: Vec<(String, u64)> = s
        .drops
        .iter()
        .map(|(reason, n)| (format!("{{reason=\"{}\"}}", reason.name()), *n))
        .collect();
    family(
        "flannel_drops_total",
        "counter",
        "Packets the datapath dropped, by reason.",
        &drops,
    );
    family(
        "flannel_peers",
        "gauge",
        "Peer leases known.",
        &[(String::new(), s.peers as u64)],
    );
    family(
        "flannel_lease_renewals_total",
        "counter",
        "Renewals of our lease.",
        &[(String::new(), s.renewals)],
    );
    family(
        "flannel_watch_restarts_total",
        "counter",
        "Restarts of the etcd lease watch.",
        &[(String::new(), s.watch_restarts)],
    );
    let rejected: Vec<(String, u64)> = s
        .rejections
        .iter()
        .map(|(reason, n)| (format!("{{reason=\"{reason}\"}}"), *n))
        .collect();
    family(
        "flannel_leases_rejected_total",
        "counter",
        "Leases skipped because they break a rule (the log names each key and rule).",
        &rejected,
    );
    family(
        "flannel_etcd_outages_total",
        "counter",
        "Times etcd became unreachable (the lease watch could not be reopened).",
        &[(String::new(), s.etcd_outages)],
    );
    family(
        "flannel_etcd_errors_total",
        "counter",
        "Failed etcd operations.",
        &[(String::new(), s.etcd_errors)],
    );
    family(
        "flannel_etcd_up",
        "gauge",
        "1 while etcd answers (the lease watch is open), 0 while it does not.",
        &[(String::new(), u64::from(s.etcd_up))],
    );
    if let Some(expiry) = s.lease_expiry {
        family(
            "flannel_lease_expiry_timestamp_seconds",
            "gauge",
            "When our lease runs out unless renewed (renewals come --subnet-lease-renew-margin \
             before).",
            &[(String::new(), expiry)],
        );
    }
    family(
        "flannel_datapath_errors_total",
        "counter",
        "Failed attempts to bring the kernel to the peer table (each is retried).",
        &[(String::new(), s.datapath_errors)],
    );
    family(
        "flannel_lease_overwrites_total",
        "counter",
        "Times another writer put its value in our lease key and we wrote ours back.",
        &[(String::new(), s.lease_overwrites)],
    );
    family(
        "flannel_datapath_info",
        "gauge",
        "The datapath in use.",
        &[(format!("{{datapath=\"{}\"}}", s.datapath), 1)],
    );
    if let Some(receive) = &s.receive {
        family(
            "flannel_bpf_decap_info",
            "gauge",
            "Where the eBPF datapath decapsulates, and what GRO merges.",
            &[(
                format!("{{decap=\"{}\",gro=\"{}\"}}", receive.decap, receive.gro),
                1,
            )],
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let snapshot = Snapshot {
            datapath: "eBPF",
            receive: Some(ReceivePath {
                decap: "tc",
                gro: "tunnel frames",
            }),
            peers: 1,
            renewals: 2,
            traffic: vec![(
                "10.1.74.0/24".parse().unwrap(),
                "192.168.64.3".parse().unwrap(),
                PeerTraffic {
                    tx_packets: 5,
                    tx_bytes: 500,
                    rx_packets: 4,
                    rx_bytes: 400,
                },
            )],
            drops: vec![(DropReason::UnknownPeer, 7)],
            ..Default::default()
        };
        let text = render(&snapshot);
        for line in [
            "# TYPE flannel_peer_tx_packets_total counter",
            r#"flannel_peer_tx_packets_total{subnet="10.1.74.0/24",public_ip="192.168.64.3"} 5"#,
            r#"flannel_peer_rx_bytes_total{subnet="10.1.74.0/24",public_ip="192.168.64.3"} 400"#,
            r#"flannel_drops_total{reason="unknown_peer"} 7"#,
            "flannel_peers 1",
            "flannel_lease_renewals_total 2",
            r#"flannel_datapath_info{datapath="eBPF"} 1"#,
            r#"flannel_bpf_decap_info{decap="tc",gro="tunnel frames"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
    }
}
