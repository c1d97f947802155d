//! Project tasks: `cargo xtask setup | build-ebpf | test | demo`.

mod bench;
mod chart;
mod demo;
mod ebpf_build;
mod install;
mod package;
mod rr;
mod scale;
mod setup;
mod stats;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "flannel's build, test and demo tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks (Debian packages, bpf-linker); idempotent.
    Setup,
    /// Build the eBPF programs and print the object's path: the object flanneld embeds, and
    /// one `flanneld --bpf-object` loads.
    BuildEbpf {
        /// Build with the release profile; the object is the same (the verifier takes only
        /// optimised code, so both profiles build it optimised).
        #[arg(long)]
        release: bool,
    },
    /// Set up, build the eBPF object, run the unit and integration tests.
    Test {
        /// Leave out the integration tests (they need root: netns, BPF).
        #[arg(long)]
        unprivileged: bool,
        /// Arguments passed on to `cargo test` (a test name filter, for instance).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Set up, then run etcd and three hosts in network namespaces with our agents.
    Demo,
    /// Build a release flanneld and install it with its unit files under a prefix.
    Install {
        #[command(flatten)]
        target: install::Target,
    },
    /// Build a Debian package (target/package/flanneld_<version>_<arch>.deb), checked by lintian.
    Package {
        #[command(flatten)]
        options: package::Options,
    },
    /// Remove what `install` put under the prefix (an edited configuration stays).
    Uninstall {
        #[command(flatten)]
        target: install::Target,
    },
    /// Set up, then measure every datapath side by side (target/bench/report.md).
    Bench {
        /// One short round of every row.
        #[arg(long)]
        quick: bool,
        /// Interleaved rounds to take medians over (3 by default; 1 with --quick): more
        /// settle noisy comparisons on a shared machine.
        #[arg(long, conflicts_with = "quick", value_parser = clap::value_parser!(u32).range(1..))]
        rounds: Option<u32>,
        /// Run only this part.
        #[arg(long, value_enum)]
        only: Option<bench::Part>,
        /// The containers' TCP congestion control (cubic, bbr, ...); the machine's by default.
        #[arg(long)]
        tcp_cc: Option<String>,
        /// Measure on this underlay only; a full run measures both (NIC-like first), --quick
        /// the NIC-like one.
        #[arg(long, value_enum)]
        underlay: Option<bench::UnderlayArg>,
        /// Measure only this datapath row (repeatable); all rows by default.
        #[arg(long = "row", value_enum)]
        rows: Vec<bench::Row>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::BuildEbpf { release } => {
            let object = build_ebpf(release)?;
            println!("{}", object.display());
            Ok(())
        }
        Task::Test {
            unprivileged,
            cargo_args,
        } => test(unprivileged, &cargo_args),
        Task::Demo => {
            setup::run()?;
            demo::run()
        }
        Task::Install { target } => install::install(&target),
        Task::Package { options } => {
            setup::run()?;
            package::run(&options)
        }
        Task::Uninstall { target } => install::uninstall(&target),
        Task::Bench {
            quick,
            rounds,
            only,
            tcp_cc,
            underlay,
            rows,
        } => {
            setup::run()?;
            bench::run(&bench::Options {
                quick,
                rounds,
                only,
                tcp_cc,
                underlay,
                rows,
            })
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn build_ebpf(release: bool) -> Result<PathBuf> {
    let root = workspace_root();
    ebpf_build::build(
        &root.join("flannel-ebpf"),
        &root.join("target/ebpf"),
        release,
    )
    .map_err(anyhow::Error::msg)
}

fn test(unprivileged: bool, cargo_args: &[String]) -> Result<()> {
    setup::run()?;
    build_ebpf(true)?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace"]);
    if unprivileged {
        println!("test: leaving out the integration tests (flannel-tests): they need root");
        cmd.args(["--exclude", "flannel-tests"]);
    }
    cmd.arg("--").args(cargo_args);
    run_checked(&mut cmd)
}

/// The cargo that runs this xtask (rustup's), for host builds.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

pub fn run_checked(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
