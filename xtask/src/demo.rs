//! `cargo xtask demo`: the overlay on this machine.

use anyhow::{bail, Result};

pub fn run() -> Result<()> {
    bail!("the demo needs the agent's control plane, which has not landed yet")
}
