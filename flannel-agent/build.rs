//! Builds the eBPF programs and leaves the object in OUT_DIR for `include_bytes!`.

#[path = "../xtask/src/ebpf_build.rs"]
mod ebpf_build;

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap();
    for watched in [
        "flannel-ebpf/src",
        "flannel-ebpf/Cargo.toml",
        "flannel-ebpf/Cargo.lock",
        "flannel-ebpf/.cargo/config.toml",
        "flannel-common/src",
        "flannel-common/Cargo.toml",
        "xtask/src/ebpf_build.rs",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let object = ebpf_build::build(
        &root.join("flannel-ebpf"),
        &out_dir.join("ebpf-target"),
        true,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    fs::copy(&object, out_dir.join("flannel.bpf.o"))
        .unwrap_or_else(|e| panic!("copy {}: {e}", object.display()));
}
