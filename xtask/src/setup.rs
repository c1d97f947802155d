//! `cargo xtask setup`: install what a fresh Debian machine of this kind lacks, and nothing
//! that is already there.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{ebpf_build, run_checked};

/// Debian packages, each with what needs it.
const PACKAGES: &[(&str, &str)] = &[
    ("rustc-web", "rustc with core for bpfel-unknown-none"),
    ("cargo-web", "cargo for the eBPF build"),
    ("libstd-rust-web-dev-bpf", "core for bpfel-unknown-none"),
    ("llvm-22-dev", "bpf-linker"),
    ("libpolly-22-dev", "bpf-linker"),
    ("libzstd-dev", "bpf-linker"),
    ("zlib1g-dev", "bpf-linker"),
    ("protobuf-compiler", "etcd-client (protoc)"),
    (
        "libprotobuf-dev",
        "etcd-client (protobuf's well-known .proto files)",
    ),
    ("etcd-server", "tests and demo (etcd)"),
    ("etcd-client", "tests and demo (etcdctl)"),
    ("iproute2", "network namespaces"),
    ("iptables", "--ip-masq rules"),
    ("nftables", "tests (nft reads the EnableNFTables tables)"),
    ("iperf3", "demo and bench"),
    ("bpftool", "inspecting programs"),
    ("iputils-ping", "tests"),
    ("curl", "tests (/healthz)"),
    ("tcpdump", "debugging"),
    ("ethtool", "bench"),
    ("dpkg-dev", "cargo xtask package (dpkg-shlibdeps)"),
    ("lintian", "cargo xtask package checks the .deb"),
    ("prometheus", "tests (promtool checks the alerting rules)"),
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

pub fn run() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !installed(name))
        .collect();
    if !missing.is_empty() {
        require_root(&format!("install {}", missing.join(" ")))?;
        println!("setup: installing Debian packages: {}", missing.join(" "));
        step(
            "apt-get update",
            Command::new("apt-get").args(["update", "-q"]),
        )?;
        step(
            "apt-get install",
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    if !bpf_linker_ok() {
        println!("setup: installing bpf-linker {BPF_LINKER_VERSION} (llvm-22), about a minute");
        let path = format!("{LLVM_BIN}:{}", std::env::var("PATH").unwrap_or_default());
        step(
            "cargo install bpf-linker",
            Command::new("cargo")
                .args([
                    "install",
                    "bpf-linker",
                    "--version",
                    BPF_LINKER_VERSION,
                    "--force",
                ])
                .args(["--no-default-features", "--features", "llvm-22"])
                .env("PATH", path),
        )?;
    }
    if let Some(missing) = ebpf_build::missing_toolchain() {
        bail!("setup finished but {missing} is still missing");
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", package])
        .output()
        .is_ok_and(|out| out.stdout == b"installed")
}

fn bpf_linker_ok() -> bool {
    ebpf_build::bpf_linker().is_some_and(|linker| {
        Command::new(linker)
            .arg("--version")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION))
    })
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("setup needs root to {what}; run it as root (or install them yourself)");
    }
    Ok(())
}

/// Runs one setup step; a failure names the step and the command.
fn step(name: &str, cmd: &mut Command) -> Result<()> {
    run_checked(cmd).with_context(|| format!("setup step `{name}` failed"))
}
