//! Choosing and holding our subnet (and in a dual-stack network our IPv6 subnet with it), in
//! flannel's order: the lease that already carries our public IP, then the subnets of the old
//! subnet file if nobody holds them, then a random pick among up to 100 free subnets of each
//! family.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ipnet::IpNet;
use rand::seq::IndexedRandom;
use tracing::info;

use crate::{
    control::{
        config::{Config, FamilyConfig},
        lease::{overlap, LeaseAttrs, Subnets},
        registry::{Registry, Snapshot, StoredLease},
    },
    family::Family,
};

/// flannel's lease TTL.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Attempts when other hosts keep winning the race for the subnets we pick.
const MAX_ATTEMPTS: usize = 20;

/// The lease we hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnLease {
    pub subnets: Subnets,
    pub attrs: LeaseAttrs,
    /// The etcd lease behind the key; 0 for a reservation (a key without TTL).
    pub lease_id: i64,
    /// When the TTL runs out; None for a reservation.
    pub expires: Option<Instant>,
    /// The TTL each renewal asks for.
    pub ttl: Duration,
}

impl OwnLease {
    fn new(subnets: Subnets, attrs: &LeaseAttrs, lease_id: i64, ttl: Duration) -> Self {
        let expires = (lease_id != 0).then(|| Instant::now() + ttl);
        Self {
            subnets,
            attrs: attrs.clone(),
            lease_id,
            expires,
            ttl,
        }
    }
}

/// Acquires a lease saying `attrs` (its IPv6 subnet is chosen here).
pub async fn acquire(
    registry: &mut Registry,
    config: &Config,
    attrs: &LeaseAttrs,
    previous: Option<Subnets>,
    ttl: Duration,
) -> Result<OwnLease> {
    let fits = |subnets: &Subnets| {
        fits_family(&config.ipv4, &subnets.ipv4) && fits_family(&config.ipv6, &subnets.ipv6)
    };
    for _ in 0..MAX_ATTEMPTS {
        let snapshot = registry.snapshot().await?;
        // Ours: it carries our public IP, or in an IPv6-only network (where every lease says
        // 0.0.0.0) our public IPv6.
        let ours = |l: &&StoredLease| match config.ipv4 {
            Some(_) => l.attrs.public_ip == attrs.public_ip,
            None => attrs.public_ipv6.is_some() && l.attrs.public_ipv6 == attrs.public_ipv6,
        };
        // A lease of ours that the config no longer fits (IPv6 turned on or off, another
        // network) goes, as flannel deletes it: left in place, it would hold our public IP
        // against the new one.
        for stale in (snapshot.leases.iter().filter(ours)).filter(|l| !fits(&l.subnets)) {
            info!(subnets = %stale.subnets, "deleting our lease that the network config no longer fits");
            registry.withdraw(&stale.subnets, stale.lease_id).await?;
        }
        if let Some(held) = snapshot
            .leases
            .iter()
            .filter(ours)
            .find(|l| fits(&l.subnets))
        {
            // Ours already: refresh it with our current attributes (a reservation keeps no TTL).
            let held_ttl = (held.lease_id != 0).then_some(ttl);
            if let Some(lease_id) = registry
                .refresh(&held.subnets, attrs, held.lease_id, held_ttl)
                .await?
            {
                info!(subnets = %held.subnets, reservation = lease_id == 0, "reusing our lease");
                return Ok(OwnLease::new(held.subnets, attrs, lease_id, ttl));
            }
            continue; // it changed under us: look again
        }
        let candidate = match previous.filter(|p| fits(p) && is_free(&snapshot, p)) {
            Some(subnets) => subnets,
            None => pick_free(config, &snapshot)?,
        };
        if let Some(lease_id) = registry.create(&candidate, attrs, ttl).await? {
            let dual = candidate.ipv4.is_some() && candidate.ipv6.is_some();
            if dual && lost_to_an_older_lease(registry, &candidate).await? {
                registry.withdraw(&candidate, lease_id).await?;
                info!(subnets = %candidate, "another host took one of the subnets first; trying others");
                continue;
            }
            info!(subnets = %candidate, "acquired a new lease");
            return Ok(OwnLease::new(candidate, attrs, lease_id, ttl));
        }
        info!(subnets = %candidate, "another host took the subnet first; trying another");
    }
    bail!("could not acquire a subnet: {MAX_ATTEMPTS} attempts lost the race to other hosts")
}

/// Renews our lease: a fresh TTL and our current attributes. None when the key is no longer
/// ours (expired, deleted, taken over): the caller acquires again.
pub async fn renew(registry: &mut Registry, lease: &OwnLease) -> Result<Option<OwnLease>> {
    let ttl = (lease.lease_id != 0).then_some(lease.ttl);
    Ok(registry
        .refresh(&lease.subnets, &lease.attrs, lease.lease_id, ttl)
        .await?
        .map(|lease_id| OwnLease::new(lease.subnets, &lease.attrs, lease_id, lease.ttl)))
}

/// In a dual-stack network a key names both subnets, so etcd lets two hosts create keys that
/// share one of them (a key naming one subnet is created by one host only). Whoever created
/// theirs first (etcd's create revision, as the peer table judges collisions) keeps it; the
/// other withdraws.
async fn lost_to_an_older_lease(registry: &mut Registry, subnets: &Subnets) -> Result<bool> {
    let snapshot = registry.snapshot().await?;
    let Some(ours) = snapshot.leases.iter().find(|l| l.subnets == *subnets) else {
        return Ok(true); // gone already: try again
    };
    Ok(snapshot
        .leases
        .iter()
        .any(|l| l.subnets != *subnets && shares(&l.subnets, subnets) && l.created < ours.created))
}

/// True when a lease's half fits the config's half of its family: both absent, or a subnet
/// the config can hand out.
fn fits_family<A: Family>(config: &Option<FamilyConfig<A>>, subnet: &Option<A::Net>) -> bool {
    match (config, subnet) {
        (None, None) => true,
        (Some(config), Some(subnet)) => config.contains_subnet(subnet),
        _ => false,
    }
}

/// True when two leases' subnets of either family overlap.
fn shares(a: &Subnets, b: &Subnets) -> bool {
    let both = |x: Option<IpNet>, y: Option<IpNet>| x.zip(y).is_some_and(|(x, y)| overlap(x, y));
    both(a.ipv4.map(Into::into), b.ipv4.map(Into::into))
        || both(a.ipv6.map(Into::into), b.ipv6.map(Into::into))
}

fn is_free(snapshot: &Snapshot, subnets: &Subnets) -> bool {
    snapshot.leases.iter().all(|l| !shares(&l.subnets, subnets))
}

/// A random free subnet of each family in use, among the first 100 free ones.
fn pick_free(config: &Config, snapshot: &Snapshot) -> Result<Subnets> {
    let leased = snapshot.leases.iter();
    let ipv4 = config.ipv4.as_ref().map(|v4| {
        pick(
            v4.subnets(),
            leased.clone().filter_map(|l| l.subnets.ipv4),
            || {
                format!(
                    "out of subnets: every /{} between {} and {} of {} is leased",
                    v4.subnet_len, v4.subnet_min, v4.subnet_max, v4.network
                )
            },
        )
    });
    let ipv6 = config.ipv6.as_ref().map(|v6| {
        pick(v6.subnets(), leased.filter_map(|l| l.subnets.ipv6), || {
            format!(
                "out of IPv6 subnets: every /{} between {} and {} of {} is leased",
                v6.subnet_len, v6.subnet_min, v6.subnet_max, v6.network
            )
        })
    });
    Ok(Subnets {
        ipv4: ipv4.transpose()?,
        ipv6: ipv6.transpose()?,
    })
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
