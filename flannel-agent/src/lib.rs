//! flanneld: flannel's agent, with the packet path in eBPF.

pub mod acquire;
pub mod atomic_write;
pub mod bpf;
pub mod cleanup;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod docker_opts;
pub mod ebpf_datapath;
pub mod endpoints;
pub mod gro_device;
pub mod health;
pub mod host_gw;
pub mod iface;
pub mod iptables;
pub mod kernel_vxlan;
pub mod lease;
pub mod metrics;
pub mod overlay_device;
pub mod peers;
pub mod registry;
pub mod status;
pub mod subnet_env;
pub mod tun_udp;
pub mod udp_packet;
