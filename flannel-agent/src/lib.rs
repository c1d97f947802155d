//! flanneld: flannel's agent, with the packet path in eBPF.
//!
//! Grouped by concern, each depending only on those listed before it:
//! - `family`: IPv4 and IPv6 as one trait, which every concern's per-family code is generic over.
//! - `control`: the cluster's state in etcd: config, leases, the peer table, the files we write.
//! - `host`: this host's interfaces, firewall and containers.
//! - `datapath`: what carries packets (eBPF, kernel vxlan, TUN udp, host-gw routes).
//! - `ops`: what operators see and run: health, metrics, status, cleanup.

pub mod cli;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod family;
pub mod host;
pub mod ops;
