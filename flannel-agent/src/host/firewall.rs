//! Our rules kept in place, off the agent's loop (an `iptables` process per call costs tens
//! of milliseconds, which a lease change must never wait behind), through iptables or, with
//! `EnableNFTables`, nftables.

use anyhow::{bail, Result};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::host::{iptables, nftables, rules};

/// What the firewall should hold, and whether to name the FORWARD rules the eBPF fast path
/// bypasses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Wanted {
    /// flannel's rules, chain by chain.
    pub chains: Vec<rules::Chain>,
    /// Written as nftables tables (`EnableNFTables`), not iptables chains.
    pub nftables: bool,
    pub fast_path: bool,
}

/// The task that keeps `Wanted`: each `keep` wakes it (a burst of them, once).
pub struct Firewall {
    wanted: watch::Sender<Wanted>,
}

impl Firewall {
    /// Removes the other mode's rules (a switch between iptables and nftables), brings the
    /// firewall to `wanted` now, then hands the keeping to a task of its own.
    pub async fn start(wanted: Wanted) -> Self {
        let other = match wanted.nftables {
            true => iptables::remove_all().await,
            false => nftables::remove_all().await,
        };
        if let Err(e) = other {
            warn!("removing the other rule mode's rules: {e:#}");
        }
        let mut named = Vec::new();
        apply(&wanted, &mut named).await;
        let (sender, mut receiver) = watch::channel(wanted);
        tokio::spawn(async move {
            while receiver.changed().await.is_ok() {
                let wanted = receiver.borrow_and_update().clone();
                apply(&wanted, &mut named).await;
            }
        });
        Self { wanted: sender }
    }

    /// Checks the rules again (a resync), or writes new ones (a new subnet).
    pub fn keep(&self, wanted: Wanted) {
        self.wanted.send_replace(wanted);
    }
}

/// In iptables mode, rules for IPv4 need `iptables` and for IPv6 `ip6tables` (`families`:
/// the families with rules): refused at start, before anything is leased, when it does not
/// run here.
pub async fn check_tools(nftables: bool, families: (bool, bool)) -> Result<()> {
    if nftables {
        return Ok(());
    }
    for (ipv6, wanted) in [(false, families.0), (true, families.1)] {
        if wanted && !iptables::available(ipv6).await {
            let binary = if ipv6 { "ip6tables" } else { "iptables" };
            bail!(
                "the rules (--ip-masq, --iptables-forward-rules) need `{binary}`, which does not \
                 run here: install it, or set \"EnableNFTables\": true in the network config \
                 for nftables rules"
            );
        }
    }
    Ok(())
}

/// Writes what is missing, and names the bypassed FORWARD rules when they differ from those
/// `named` last time.
async fn apply(wanted: &Wanted, named: &mut Vec<String>) {
    let written = match wanted.nftables {
        true => nftables::ensure(&wanted.chains).await,
        false => {
            let rules: Vec<iptables::Rule> =
                wanted.chains.iter().flat_map(iptables::rules).collect();
            iptables::ensure(&rules).await
        }
    };
    match written {
        Ok(true) => info!(nftables = wanted.nftables, "firewall rules (re)written"),
        Ok(false) => {}
        Err(e) => error!("firewall: {e:#}"),
    }
    if !wanted.fast_path {
        return;
    }
    match iptables::forward_rules_bypassed().await {
        Ok(rules) => {
            if rules != *named && !rules.is_empty() {
                warn!(
                    "overlay traffic on the eBPF fast path never crosses these FORWARD rules; \
                     run with --bpf-fast-path=false for them to apply: {}",
                    rules.join("; ")
                );
            }
            *named = rules;
        }
        Err(e) => warn!("listing FORWARD rules: {e:#}"),
    }
}
