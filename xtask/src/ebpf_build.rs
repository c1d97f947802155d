//! Builds `flannel-ebpf` with Debian's rustc, which ships `core` precompiled for
//! `bpfel-unknown-none` (the rustup toolchains here have no rust-src, so `-Z build-std` and
//! aya-build's rustup-based driver can't be used).
//!
//! Shared by `cargo xtask build-ebpf` and flannel-agent's build script, which includes this
//! file by path: std only.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
pub const DEBIAN_CARGO: &str = "/usr/bin/cargo";
pub const TARGET: &str = "bpfel-unknown-none";
/// The `[[bin]]` name of flannel-ebpf: the ELF object the agent loads.
pub const OBJECT_NAME: &str = "flannel";
const CORE_FOR_BPF: &str = "/usr/lib/rustlib/bpfel-unknown-none";

/// bpf-linker on PATH or where `cargo install` puts it.
pub fn bpf_linker() -> Option<PathBuf> {
    let on_path = env::var_os("PATH")
        .map(|paths| env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")));
    on_path
        .into_iter()
        .chain(cargo_home.map(|home| home.join("bin")))
        .map(|dir| dir.join("bpf-linker"))
        .find(|candidate| candidate.is_file())
}

/// The first missing piece of the eBPF toolchain, named for the user.
pub fn missing_toolchain() -> Option<&'static str> {
    if !Path::new(DEBIAN_RUSTC).is_file() || !Path::new(DEBIAN_CARGO).is_file() {
        return Some("Debian's rustc-web and cargo-web (/usr/bin/rustc, /usr/bin/cargo)");
    }
    if !Path::new(CORE_FOR_BPF).is_dir() {
        return Some("Debian's libstd-rust-web-dev-bpf (core for bpfel-unknown-none)");
    }
    if bpf_linker().is_none() {
        return Some("bpf-linker");
    }
    None
}

/// Builds the programs into `target_dir` and returns the path of the ELF object.
pub fn build(ebpf_dir: &Path, target_dir: &Path, release: bool) -> Result<PathBuf, String> {
    if let Some(missing) = missing_toolchain() {
        return Err(format!(
            "cannot build the eBPF programs: {missing} is missing; run `cargo xtask setup`"
        ));
    }
    let linker = bpf_linker().expect("checked by missing_toolchain");
    let mut cmd = Command::new(DEBIAN_CARGO);
    cmd.current_dir(ebpf_dir)
        .args(["build", "--target", TARGET, "--target-dir"])
        .arg(target_dir);
    if release {
        cmd.arg("--release");
    }
    // An outer cargo (a build script, `cargo run`) exports settings of the host build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        let host_only = (key.starts_with("CARGO") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTDOC")
            || key == "RUSTFLAGS";
        if host_only {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &linker);
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {DEBIAN_CARGO}: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building the eBPF programs failed ({status}): RUSTC_BOOTSTRAP=1 RUSTC={DEBIAN_RUSTC} \
             {DEBIAN_CARGO} build --target {TARGET} in {}",
            ebpf_dir.display()
        ));
    }
    let profile = if release { "release" } else { "debug" };
    Ok(target_dir.join(TARGET).join(profile).join(OBJECT_NAME))
}
