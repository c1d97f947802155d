//! flannel's host-gw backend: a route per peer subnet via the peer's public IP on our
//! interface, through rtnetlink; for IPv6 (dual-stack or IPv6-only) one per peer IPv6 subnet
//! via its public IPv6.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context, Result};
use ipnet::IpNet;
use rtnetlink::{packet_route::route::RouteMessage, Handle, RouteMessageBuilder};
use tracing::{info, warn};

use crate::{
    control::{
        lease::{LeaseAttrs, Subnets},
        peers::Peer,
    },
    datapath::Installed,
    family::Family,
    host::{
        iface::{self, OnLink},
        netlink::{self, ROUTE_PROTOCOL},
    },
};

pub struct HostGw {
    handle: Handle,
    if_index: u32,
    if_name: String,
    /// The families the network carries, (IPv4, IPv6): a lease's half of another family is
    /// never routed (nothing judged it).
    families: (bool, bool),
    /// vxlan's `DirectRouting`: only peers whose public address is on these prefixes.
    only: Option<OnLink>,
}

impl HostGw {
    pub fn new(if_name: &str, families: (bool, bool)) -> Result<Self> {
        let if_index = iface::index(if_name)?;
        Ok(Self {
            handle: netlink::connect()?,
            if_index,
            if_name: if_name.to_owned(),
            families,
            only: None,
        })
    }

    /// The routes of vxlan's `DirectRouting`: those of the peers (of each family) whose
    /// public address is on our interface's subnet, as flannel routes them.
    pub fn direct(if_name: &str, families: (bool, bool)) -> Result<Self> {
        let on_link = OnLink::of(if_name)?;
        Ok(Self {
            only: Some(on_link),
            ..Self::new(if_name, families)?
        })
    }

    /// Whether a peer at `public_ip` is routed here (always, but for `direct`).
    pub fn carries(&self, public_ip: impl Into<IpAddr>) -> bool {
        self.only
            .as_ref()
            .is_none_or(|on_link| on_link.contains(public_ip))
    }

    /// `ip route replace <subnet> via <public ip> dev <iface>` for each family of the
    /// peer's lease (`-6`: its IPv6 subnet via its public IPv6).
    pub async fn put(&self, peer: &Peer) -> Result<()> {
        self.put_half::<Ipv4Addr>(peer).await?;
        self.put_half::<Ipv6Addr>(peer).await
    }

    async fn put_half<A: Family>(&self, peer: &Peer) -> Result<()> {
        if let Some((subnet, via)) = self.route_of::<A>(&peer.subnets, &peer.attrs) {
            self.handle
                .route()
                .add(self.route(subnet, via)?)
                .replace()
                .execute()
                .await
                .with_context(|| format!("route {subnet} via {via} dev {}", self.if_name))?;
            info!(%subnet, %via, "route added");
        }
        Ok(())
    }

    pub async fn remove(&self, peer: &Peer) -> Result<()> {
        self.remove_half::<Ipv4Addr>(peer).await?;
        self.remove_half::<Ipv6Addr>(peer).await?;
        info!(subnets = %peer.subnets, "routes removed");
        Ok(())
    }

    async fn remove_half<A: Family>(&self, peer: &Peer) -> Result<()> {
        if let Some((subnet, via)) = self.route_of::<A>(&peer.subnets, &peer.attrs) {
            netlink::delete_route(&self.handle, self.route(subnet, via)?)
                .await
                .with_context(|| format!("route to {subnet}"))?;
        }
        Ok(())
    }

    /// Reads our routes on the interface back: returns the installed peers whose route (of
    /// either family) is missing or different, and deletes the routes no installed peer
    /// explains.
    pub async fn audit(&self, installed: &Installed) -> Result<BTreeSet<Subnets>> {
        let mut missing = self.audit_family::<Ipv4Addr>(installed).await?;
        missing.extend(self.audit_family::<Ipv6Addr>(installed).await?);
        Ok(missing)
    }

    /// `audit` for one family: the peers whose route is missing or different.
    async fn audit_family<A: Family>(&self, installed: &Installed) -> Result<BTreeSet<Subnets>> {
        let mut wanted: BTreeMap<A::Net, (Subnets, A)> = installed
            .iter()
            .filter_map(|(subnets, attrs)| {
                let (subnet, via) = self.route_of::<A>(subnets, attrs)?;
                Some((subnet, (*subnets, via)))
            })
            .collect();
        for route in netlink::our_routes::<A>(&self.handle).await? {
            if route.oif != Some(self.if_index) {
                continue;
            }
            match wanted.get(&route.destination) {
                Some((_, via)) if route.gateway == Some(*via) => {
                    wanted.remove(&route.destination);
                }
                _ => {
                    let destination: IpNet = route.destination.into();
                    warn!(%destination, gateway = ?route.gateway.map(Into::<IpAddr>::into),
                          "removing a stale route");
                    netlink::delete_route(&self.handle, route.message).await?;
                }
            }
        }
        Ok(wanted.into_values().map(|(subnets, _)| subnets).collect())
    }

    /// A peer's route of family `A`: its subnet via its public address, if the network
    /// carries the family and the lease has that half.
    fn route_of<A: Family>(&self, subnets: &Subnets, attrs: &LeaseAttrs) -> Option<(A::Net, A)> {
        let (ipv4, ipv6) = self.families;
        let subnet = subnets.half::<A>().filter(|_| A::pick(ipv4, ipv6))?;
        let via = attrs.public::<A>()?;
        self.carries(via).then_some((subnet, via))
    }

    fn route<A: Family>(&self, subnet: A::Net, via: A) -> Result<RouteMessage> {
        let builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(A::network(&subnet).into(), A::prefix_len(&subnet))
            .and_then(|builder| builder.gateway(via.into()))
            .with_context(|| format!("a route to {subnet} via {via}"))?;
        Ok(builder
            .output_interface(self.if_index)
            .protocol(ROUTE_PROTOCOL)
            .build())
    }
}
