//! Choosing and holding our subnet (and in a dual-stack network our IPv6 subnet with it), in
//! flannel's order: the lease that already carries our public IP, then the subnets of the old
//! subnet file if nobody holds them, then a random pick among up to 100 free subnets of each
//! family.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rand::seq::IndexedRandom;
use tracing::info;

use crate::control::{
    config::Config,
    lease::{overlap, LeaseAttrs},
    registry::{Registry, Snapshot, StoredLease},
};

/// flannel's lease TTL.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Attempts when other hosts keep winning the race for the subnets we pick.
const MAX_ATTEMPTS: usize = 20;

/// The lease we hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnLease {
    pub subnet: Ipv4Net,
    /// What it says, our IPv6 subnet included.
    pub attrs: LeaseAttrs,
    /// The etcd lease behind the key; 0 for a reservation (a key without TTL).
    pub lease_id: i64,
    /// When the TTL runs out; None for a reservation.
    pub expires: Option<Instant>,
    /// The TTL each renewal asks for.
    pub ttl: Duration,
}

impl OwnLease {
    fn new(
        (subnet, ipv6_subnet): Subnets,
        attrs: &LeaseAttrs,
        lease_id: i64,
        ttl: Duration,
    ) -> Self {
        let expires = (lease_id != 0).then(|| Instant::now() + ttl);
        Self {
            subnet,
            attrs: LeaseAttrs {
                ipv6_subnet,
                ..attrs.clone()
            },
            lease_id,
            expires,
            ttl,
        }
    }
}

/// A lease's subnets: IPv4, and IPv6 in a dual-stack network.
pub type Subnets = (Ipv4Net, Option<Ipv6Net>);

/// Acquires a lease saying `attrs` (its IPv6 subnet is chosen here).
pub async fn acquire(
    registry: &mut Registry,
    config: &Config,
    attrs: &LeaseAttrs,
    previous: Option<Subnets>,
    ttl: Duration,
) -> Result<OwnLease> {
    let fits = |(subnet, ipv6): &Subnets| {
        config.contains_subnet(subnet)
            && match (&config.ipv6, ipv6) {
                (None, None) => true,
                (Some(v6), Some(ipv6)) => v6.contains_subnet(ipv6),
                _ => false,
            }
    };
    for _ in 0..MAX_ATTEMPTS {
        let snapshot = registry.snapshot().await?;
        let ours = |l: &&StoredLease| l.attrs.public_ip == attrs.public_ip;
        let subnets_of = |l: &StoredLease| (l.subnet, l.attrs.ipv6_subnet);
        // A lease of ours that the config no longer fits (IPv6 turned on or off, another
        // network) goes, as flannel deletes it: left in place, it would hold our public IP
        // against the new one.
        for stale in (snapshot.leases.iter().filter(ours)).filter(|l| !fits(&subnets_of(l))) {
            info!(subnet = %stale.subnet, ipv6_subnet = ?stale.attrs.ipv6_subnet,
                  "deleting our lease that the network config no longer fits");
            registry
                .withdraw(&stale.subnet, &stale.attrs, stale.lease_id)
                .await?;
        }
        if let Some(held) = snapshot
            .leases
            .iter()
            .filter(ours)
            .find(|l| fits(&subnets_of(l)))
        {
            // Ours already: refresh it with our current attributes (a reservation keeps no TTL).
            let held_ttl = (held.lease_id != 0).then_some(ttl);
            let lease = OwnLease::new(subnets_of(held), attrs, 0, ttl);
            if let Some(lease_id) = registry
                .refresh(&held.subnet, &lease.attrs, held.lease_id, held_ttl)
                .await?
            {
                info!(subnet = %held.subnet, ipv6_subnet = ?held.attrs.ipv6_subnet,
                      reservation = lease_id == 0, "reusing our lease");
                return Ok(OwnLease::new(subnets_of(held), attrs, lease_id, ttl));
            }
            continue; // it changed under us: look again
        }
        let candidate = match previous.filter(|p| fits(p) && is_free(&snapshot, p)) {
            Some(subnets) => subnets,
            None => pick_free(config, &snapshot)?,
        };
        let lease = OwnLease::new(candidate, attrs, 0, ttl);
        if let Some(lease_id) = registry.create(&lease.subnet, &lease.attrs, ttl).await? {
            if config.ipv6.is_some() && lost_to_an_older_lease(registry, &lease).await? {
                registry
                    .withdraw(&lease.subnet, &lease.attrs, lease_id)
                    .await?;
                info!(subnet = %lease.subnet, ipv6_subnet = ?candidate.1,
                      "another host took one of the subnets first; trying others");
                continue;
            }
            info!(subnet = %lease.subnet, ipv6_subnet = ?candidate.1, "acquired a new lease");
            return Ok(OwnLease::new(candidate, attrs, lease_id, ttl));
        }
        info!(subnet = %lease.subnet, "another host took the subnet first; trying another");
    }
    bail!("could not acquire a subnet: {MAX_ATTEMPTS} attempts lost the race to other hosts")
}

/// Renews our lease: a fresh TTL and our current attributes. None when the key is no longer
/// ours (expired, deleted, taken over): the caller acquires again.
pub async fn renew(registry: &mut Registry, lease: &OwnLease) -> Result<Option<OwnLease>> {
    let ttl = (lease.lease_id != 0).then_some(lease.ttl);
    let subnets = (lease.subnet, lease.attrs.ipv6_subnet);
    Ok(registry
        .refresh(&lease.subnet, &lease.attrs, lease.lease_id, ttl)
        .await?
        .map(|lease_id| OwnLease::new(subnets, &lease.attrs, lease_id, lease.ttl)))
}

/// In a dual-stack network a key names both subnets, so etcd lets two hosts create keys that
/// share one of them. Whoever created theirs first (etcd's create revision, as the peer table
/// judges collisions) keeps it; the other withdraws.
async fn lost_to_an_older_lease(registry: &mut Registry, lease: &OwnLease) -> Result<bool> {
    let snapshot = registry.snapshot().await?;
    let is_ours = |l: &&StoredLease| {
        l.subnet == lease.subnet && l.attrs.ipv6_subnet == lease.attrs.ipv6_subnet
    };
    let Some(ours) = snapshot.leases.iter().find(is_ours) else {
        return Ok(true); // gone already: try again
    };
    let shares = |l: &StoredLease| {
        overlap(l.subnet, lease.subnet)
            || matches!((l.attrs.ipv6_subnet, lease.attrs.ipv6_subnet), (Some(a), Some(b)) if overlap(a, b))
    };
    Ok(snapshot
        .leases
        .iter()
        .any(|l| !is_ours(&l) && shares(l) && l.created < ours.created))
}

fn is_free(snapshot: &Snapshot, (subnet, ipv6): &Subnets) -> bool {
    snapshot.leases.iter().all(|l| {
        !overlap(l.subnet, *subnet)
            && match (&l.attrs.ipv6_subnet, ipv6) {
                (Some(theirs), Some(ours)) => !overlap(*theirs, *ours),
                _ => true,
            }
    })
}

/// A random free subnet of each family in use, among the first 100 free ones.
fn pick_free(config: &Config, snapshot: &Snapshot) -> Result<Subnets> {
    let leased = snapshot.leases.iter();
    let subnet = pick(config.subnets(), leased.clone().map(|l| l.subnet), || {
        format!(
            "out of subnets: every /{} between {} and {} of {} is leased",
            config.subnet_len, config.subnet_min, config.subnet_max, config.network
        )
    })?;
    let Some(v6) = &config.ipv6 else {
        return Ok((subnet, None));
    };
    let ipv6 = pick(
        v6.subnets(),
        leased.filter_map(|l| l.attrs.ipv6_subnet),
        || {
            format!(
                "out of IPv6 subnets: every /{} between {} and {} of {} is leased",
                v6.subnet_len, v6.subnet_min, v6.subnet_max, v6.network
            )
        },
    )?;
    Ok((subnet, Some(ipv6)))
}

/// A random one of the first 100 `candidates` that overlap none of the `leased`.
fn pick<N: Copy + Into<IpNet>>(
    candidates: impl Iterator<Item = N>,
    leased: impl Iterator<Item = N> + Clone,
    out_of_subnets: impl FnOnce() -> String,
) -> Result<N> {
    let free: Vec<N> = candidates
        .filter(|s| leased.clone().all(|l| !overlap(l, *s)))
        .take(100)
        .collect();
    match free.choose(&mut rand::rng()) {
        Some(subnet) => Ok(*subnet),
        None => Err(OutOfSubnets(out_of_subnets()).into()),
    }
}

/// No free subnet is left: retrying can't help until an operator frees one.
#[derive(Debug)]
pub struct OutOfSubnets(String);

impl std::fmt::Display for OutOfSubnets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OutOfSubnets {}
