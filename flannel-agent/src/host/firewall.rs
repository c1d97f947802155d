//! Our iptables rules kept in place, off the agent's loop: `iptables` is a process per call,
//! tens of milliseconds each, which a lease change must never wait behind.

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::host::iptables::{self, Rule};

/// What the firewall should hold, and whether to name the FORWARD rules the eBPF fast path
/// bypasses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Wanted {
    pub rules: Vec<Rule>,
    pub fast_path: bool,
}

/// The task that keeps `Wanted`: each `keep` wakes it (a burst of them, once).
pub struct Firewall {
    wanted: watch::Sender<Wanted>,
}

impl Firewall {
    /// Brings the firewall to `wanted` now, then hands the keeping to a task of its own.
    pub async fn start(wanted: Wanted) -> Self {
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

/// Writes what is missing, and names the bypassed FORWARD rules when they differ from those
/// `named` last time.
async fn apply(wanted: &Wanted, named: &mut Vec<String>) {
    if !wanted.rules.is_empty() {
        match iptables::ensure(&wanted.rules).await {
            Ok(true) => info!("iptables rules (re)written"),
            Ok(false) => {}
            Err(e) => error!("iptables: {e:#}"),
        }
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
