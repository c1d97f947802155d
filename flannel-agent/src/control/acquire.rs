//! Choosing and holding our subnet, in flannel's order: the lease that already carries our
//! public IP, then the subnet of the old subnet file if nobody holds it, then a random pick
//! among up to 100 free subnets.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ipnet::Ipv4Net;
use rand::seq::IndexedRandom;
use tracing::info;

use crate::control::{
    config::Config,
    lease::LeaseAttrs,
    registry::{Registry, Snapshot},
};

/// flannel's lease TTL.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Attempts when other hosts keep winning the race for the subnets we pick.
const MAX_ATTEMPTS: usize = 20;

/// The lease we hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnLease {
    pub subnet: Ipv4Net,
    pub attrs: LeaseAttrs,
    /// The etcd lease behind the key; 0 for a reservation (a key without TTL).
    pub lease_id: i64,
    /// When the TTL runs out; None for a reservation.
    pub expires: Option<Instant>,
    /// The TTL each renewal asks for.
    pub ttl: Duration,
}

impl OwnLease {
    fn new(subnet: Ipv4Net, attrs: &LeaseAttrs, lease_id: i64, ttl: Duration) -> Self {
        let expires = (lease_id != 0).then(|| Instant::now() + ttl);
        Self {
            subnet,
            attrs: attrs.clone(),
            lease_id,
            expires,
            ttl,
        }
    }
}

pub async fn acquire(
    registry: &mut Registry,
    config: &Config,
    attrs: &LeaseAttrs,
    previous: Option<Ipv4Net>,
    ttl: Duration,
) -> Result<OwnLease> {
    for _ in 0..MAX_ATTEMPTS {
        let snapshot = registry.snapshot().await?;
        if let Some(held) = snapshot
            .leases
            .iter()
            .find(|l| l.attrs.public_ip == attrs.public_ip && config.contains_subnet(&l.subnet))
        {
            // Ours already: refresh it with our current attributes (a reservation keeps no TTL).
            let held_ttl = (held.lease_id != 0).then_some(ttl);
            if let Some(lease_id) = registry
                .refresh(&held.subnet, attrs, held.lease_id, held_ttl)
                .await?
            {
                info!(subnet = %held.subnet, reservation = lease_id == 0, "reusing our lease");
                return Ok(OwnLease::new(held.subnet, attrs, lease_id, ttl));
            }
            continue; // it changed under us: look again
        }
        let candidate =
            match previous.filter(|s| config.contains_subnet(s) && is_free(&snapshot, s)) {
                Some(subnet) => subnet,
                None => pick_free(config, &snapshot)?,
            };
        if let Some(lease_id) = registry.create(&candidate, attrs, ttl).await? {
            info!(subnet = %candidate, "acquired a new lease");
            return Ok(OwnLease::new(candidate, attrs, lease_id, ttl));
        }
        info!(subnet = %candidate, "another host took the subnet first; trying another");
    }
    bail!("could not acquire a subnet: {MAX_ATTEMPTS} attempts lost the race to other hosts")
}

/// Renews our lease: a fresh TTL and our current attributes. None when the key is no longer
/// ours (expired, deleted, taken over): the caller acquires again.
pub async fn renew(registry: &mut Registry, lease: &OwnLease) -> Result<Option<OwnLease>> {
    let ttl = (lease.lease_id != 0).then_some(lease.ttl);
    Ok(registry
        .refresh(&lease.subnet, &lease.attrs, lease.lease_id, ttl)
        .await?
        .map(|lease_id| OwnLease::new(lease.subnet, &lease.attrs, lease_id, lease.ttl)))
}

fn is_free(snapshot: &Snapshot, subnet: &Ipv4Net) -> bool {
    !snapshot
        .leases
        .iter()
        .any(|l| l.subnet.contains(&subnet.network()) || subnet.contains(&l.subnet.network()))
}

fn pick_free(config: &Config, snapshot: &Snapshot) -> Result<Ipv4Net> {
    let free: Vec<Ipv4Net> = config
        .subnets()
        .filter(|s| is_free(snapshot, s))
        .take(100)
        .collect();
    match free.choose(&mut rand::rng()) {
        Some(subnet) => Ok(*subnet),
        None => Err(OutOfSubnets(format!(
            "out of subnets: every /{} between {} and {} of {} is leased",
            config.subnet_len, config.subnet_min, config.subnet_max, config.network
        ))
        .into()),
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
