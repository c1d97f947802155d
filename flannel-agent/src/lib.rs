//! flanneld: flannel's agent, with the packet path in eBPF.

pub mod atomic_write;
pub mod bpf;
pub mod config;
pub mod docker_opts;
pub mod iptables;
pub mod lease;
pub mod subnet_env;
