//! This host: the interface we tunnel over, the firewall, the local containers.

pub mod blackhole;
pub mod endpoints;
pub mod ethtool;
pub mod firewall;
pub mod iface;
pub mod iptables;
pub mod netlink;
pub mod nftables;
pub mod rules;
pub mod vtep_mac;
