//! The integration tests, one binary: hosts in network namespaces with a real etcd, flanneld
//! on each, containers, real packets; and the programs run by the kernel on crafted packets.
//! One binary links the agent once and runs every test from one queue.

mod classic;
mod cleanup;
mod direct_routing;
mod dual_stack;
mod ebpf_ipv6;
mod ebpf_overlay;
mod ebpf_programs;
mod etcd_faults;
mod fast_path;
mod firewall;
mod guards;
mod host_gw;
mod hostile_leases;
mod lease_lifecycle;
mod leases;
mod nic_underlay;
mod observability;
mod operator_interface;
mod own_lease;
mod reconcile;
mod systemd;
mod transitions;
