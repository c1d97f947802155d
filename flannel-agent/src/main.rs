use anyhow::Result;
use clap::Parser;

/// flanneld: flannel's agent with an eBPF datapath.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Load the eBPF programs from this object instead of the embedded one.
    #[arg(long)]
    bpf_object: Option<std::path::PathBuf>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    flannel_agent::bpf::Programs::load(cli.bpf_object.as_deref())?;
    Ok(())
}
