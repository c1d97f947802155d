//! flannel's host-gw backend: a route per peer subnet via the peer's public IP on our
//! interface, through rtnetlink; for IPv6 (dual-stack or IPv6-only) one per peer IPv6 subnet
//! via its public IPv6.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rtnetlink::{packet_route::route::RouteMessage, Handle, RouteMessageBuilder};
use tracing::{info, warn};

use crate::{
    control::{
        lease::{LeaseAttrs, Subnets},
        peers::Peer,
    },
    datapath::Installed,
    host::{
        iface::{self, OnLink},
        netlink::{self, RouteFamily, ROUTE_PROTOCOL},
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
        let (v4, v6) = self.routes(&peer.subnets, &peer.attrs);
        if let Some((subnet, via)) = v4 {
            self.replace(self.route(&subnet, via))
                .await
                .with_context(|| format!("route {subnet} via {via} dev {}", self.if_name))?;
            info!(%subnet, %via, "route added");
        }
        if let Some((subnet, via)) = v6 {
            self.replace(self.route6(&subnet, via))
                .await
                .with_context(|| format!("route {subnet} via {via} dev {}", self.if_name))?;
            info!(%subnet, %via, "route added");
        }
        Ok(())
    }

    pub async fn remove(&self, peer: &Peer) -> Result<()> {
        let (v4, v6) = self.routes(&peer.subnets, &peer.attrs);
        if let Some((subnet, via)) = v4 {
            netlink::delete_route(&self.handle, self.route(&subnet, via))
                .await
                .with_context(|| format!("route to {subnet}"))?;
        }
        if let Some((subnet, via)) = v6 {
            netlink::delete_route(&self.handle, self.route6(&subnet, via))
                .await
                .with_context(|| format!("route to {subnet}"))?;
        }
        info!(subnets = %peer.subnets, "routes removed");
        Ok(())
    }

    /// Reads our routes on the interface back: returns the installed peers whose route (of
    /// either family) is missing or different, and deletes the routes no installed peer
    /// explains.
    pub async fn audit(&self, installed: &Installed) -> Result<BTreeSet<Subnets>> {
        let peers = installed
            .iter()
            .map(|(subnets, attrs)| (subnets, self.routes(subnets, attrs)));
        let wanted4 = peers
            .clone()
            .filter_map(|(s, (v4, _))| Some((v4?.0, (*s, v4?.1))));
        let wanted6 = peers.filter_map(|(s, (_, v6))| Some((v6?.0, (*s, v6?.1))));
        let mut missing = self.audit_family::<Ipv4Addr>(wanted4.collect()).await?;
        missing.extend(self.audit_family::<Ipv6Addr>(wanted6.collect()).await?);
        Ok(missing)
    }

    /// `audit` for one family, given the routes wanted by destination: the peers whose route
    /// is missing or different.
    async fn audit_family<A: RouteFamily>(
        &self,
        mut wanted: BTreeMap<A::Net, (Subnets, A)>,
    ) -> Result<BTreeSet<Subnets>> {
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

    /// A peer's routes: each subnet of its lease, of a family the network carries, via its
    /// public address of that family.
    fn routes(&self, subnets: &Subnets, attrs: &LeaseAttrs) -> Routes {
        let (ipv4, ipv6) = self.families;
        let v4 = subnets
            .ipv4
            .filter(|_| ipv4)
            .map(|subnet| (subnet, attrs.public_ip));
        let v6 = subnets.ipv6.filter(|_| ipv6).zip(attrs.public_ipv6);
        (
            v4.filter(|(_, via)| self.carries(*via)),
            v6.filter(|(_, via)| self.carries(*via)),
        )
    }

    async fn replace(&self, route: RouteMessage) -> Result<(), rtnetlink::Error> {
        self.handle.route().add(route).replace().execute().await
    }

    fn route(&self, subnet: &Ipv4Net, via: Ipv4Addr) -> RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(subnet.network(), subnet.prefix_len())
            .gateway(via)
            .output_interface(self.if_index)
            .protocol(ROUTE_PROTOCOL)
            .build()
    }

    fn route6(&self, subnet: &Ipv6Net, via: Ipv6Addr) -> RouteMessage {
        RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(subnet.network(), subnet.prefix_len())
            .gateway(via)
            .output_interface(self.if_index)
            .protocol(ROUTE_PROTOCOL)
            .build()
    }
}

/// A peer's IPv4 and IPv6 routes: destination and gateway.
type Routes = (Option<(Ipv4Net, Ipv4Addr)>, Option<(Ipv6Net, Ipv6Addr)>);
