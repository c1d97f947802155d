//! flanneld: flannel's agent, with the packet path in eBPF.

pub mod bpf;
