//! The cluster's state: the network config and leases in etcd, our own lease, the peer
//! table, and the files other programs read (subnet.env, Docker's options).

pub mod acquire;
pub mod atomic_write;
pub mod config;
pub mod docker_opts;
pub mod lease;
pub mod lease_state;
pub mod peers;
pub mod registry;
pub mod subnet_env;
