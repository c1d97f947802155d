//! Support for the integration tests: hosts in network namespaces, a real etcd, flanneld
//! processes and crafted packets.
//!
//! Everything in this crate's tests needs root; `cargo xtask test --unprivileged` leaves them out.

pub mod agent;
pub mod bpf_run;
pub mod bulk;
pub mod configs;
pub mod etcd;
pub mod hooks;
pub mod metrics;
pub mod netns;
pub mod packet;
pub mod pins;
pub mod systemd;
pub mod testbed;

/// Fails the calling test with a clear message when not root: these tests never pass silently.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN for network namespaces and \
         BPF); run it as root, or leave the integration tests out with \
         `cargo xtask test --unprivileged`"
    );
}
