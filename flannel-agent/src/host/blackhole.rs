//! `--ip-blackhole-route`, as flannel v0.28: a blackhole route for each of this host's
//! subnets, so a packet for an address of ours that no container holds is dropped here rather
//! than sent out of the default route. Unlike flannel's, which shares the container bridge's
//! metric and so can't be added beside its route ("file exists"), ours has a higher metric: the
//! bridge's route wins while it exists, the blackhole catches the rest.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};
use ipnet::IpNet;
use rtnetlink::{packet_route::route::RouteType, Handle, RouteMessageBuilder};
use tracing::{info, warn};

use crate::{
    family::Family,
    host::netlink::{self, ROUTE_PROTOCOL},
};

/// Above the kernel's metric for a device's own subnet (0 for IPv4, 256 for IPv6).
pub const METRIC: u32 = 1024;

/// Makes our blackhole routes exactly `subnets` (none: `--ip-blackhole-route` off).
pub async fn ensure(netlink: &Handle, subnets: &[IpNet]) -> Result<()> {
    let mut missing: Vec<IpNet> = subnets.to_vec();
    let ours = blackholes::<Ipv4Addr>(netlink).await?;
    for (destination, message) in ours
        .into_iter()
        .chain(blackholes::<Ipv6Addr>(netlink).await?)
    {
        if let Some(at) = missing.iter().position(|s| *s == destination) {
            missing.remove(at);
        } else {
            warn!(%destination, "removing a blackhole route of ours");
            netlink::delete_route(netlink, message).await?;
        }
    }
    for subnet in missing {
        let route = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(subnet.network(), subnet.prefix_len())
            .context("a subnet's route")?
            .kind(RouteType::BlackHole)
            .priority(METRIC)
            .protocol(ROUTE_PROTOCOL)
            .build();
        netlink
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .with_context(|| format!("adding a blackhole route for {subnet}"))?;
        info!(%subnet, "blackhole route added");
    }
    Ok(())
}

/// Our blackhole routes of family `A`, by destination.
async fn blackholes<A: Family>(
    netlink: &Handle,
) -> Result<Vec<(IpNet, rtnetlink::packet_route::route::RouteMessage)>> {
    Ok(netlink::our_routes::<A>(netlink)
        .await?
        .into_iter()
        .filter(|route| route.message.header.kind == RouteType::BlackHole)
        .map(|route| (route.destination.into(), route.message))
        .collect())
}
