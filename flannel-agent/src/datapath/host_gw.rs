//! flannel's host-gw backend: a route per peer subnet via the peer's public IP on our
//! interface, through rtnetlink; in a dual-stack network also one per peer IPv6 subnet via
//! its public IPv6.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context, Result};
use ipnet::{Ipv4Net, Ipv6Net};
use rtnetlink::{packet_route::route::RouteMessage, Handle, RouteMessageBuilder};
use tracing::{info, warn};

use crate::{
    control::peers::Peer,
    datapath::Installed,
    host::netlink::{self, ROUTE_PROTOCOL},
};

pub struct HostGw {
    handle: Handle,
    if_index: u32,
    if_name: String,
}

impl HostGw {
    pub fn new(if_name: &str) -> Result<Self> {
        let if_index = nix::net::if_::if_nametoindex(if_name)
            .with_context(|| format!("looking up interface {if_name}"))?;
        Ok(Self {
            handle: netlink::connect()?,
            if_index,
            if_name: if_name.to_owned(),
        })
    }

    /// `ip route replace <subnet> via <public ip> dev <iface>`, and the same with `-6` for
    /// a dual-stack peer.
    pub async fn put(&self, peer: &Peer) -> Result<()> {
        let (subnet, via) = (peer.subnet, peer.attrs.public_ip);
        self.replace(self.route(&subnet, via))
            .await
            .with_context(|| format!("route {subnet} via {via} dev {}", self.if_name))?;
        info!(%subnet, %via, "route added");
        if let Some((subnet, via)) = ipv6_route(peer) {
            self.replace(self.route6(&subnet, via))
                .await
                .with_context(|| format!("route {subnet} via {via} dev {}", self.if_name))?;
            info!(%subnet, %via, "route added");
        }
        Ok(())
    }

    pub async fn remove(&self, peer: &Peer) -> Result<()> {
        let route = self.route(&peer.subnet, peer.attrs.public_ip);
        netlink::delete_route(&self.handle, route)
            .await
            .with_context(|| format!("route to {}", peer.subnet))?;
        if let Some((subnet, via)) = ipv6_route(peer) {
            netlink::delete_route(&self.handle, self.route6(&subnet, via))
                .await
                .with_context(|| format!("route to {subnet}"))?;
        }
        info!(subnet = %peer.subnet, "route removed");
        Ok(())
    }

    /// Reads our routes on the interface back: returns the installed peers whose route (of
    /// either family) is missing or different, and deletes the routes no installed peer
    /// explains.
    pub async fn audit(&self, installed: &Installed) -> Result<BTreeSet<Ipv4Net>> {
        let mut held = BTreeSet::new();
        for route in netlink::our_routes::<Ipv4Addr>(&self.handle).await? {
            if route.oif != Some(self.if_index) {
                continue;
            }
            let wanted = installed.get(&route.destination).map(|a| a.public_ip);
            if wanted.is_some() && wanted == route.gateway {
                held.insert(route.destination);
                continue;
            }
            warn!(destination = %route.destination, gateway = ?route.gateway, "removing a stale route");
            netlink::delete_route(&self.handle, route.message).await?;
        }
        // The IPv6 routes the installed peers need, by destination.
        let wanted6: std::collections::BTreeMap<Ipv6Net, (Ipv4Net, Ipv6Addr)> = installed
            .iter()
            .filter_map(|(subnet, attrs)| Some((attrs.ipv6_subnet?, (*subnet, attrs.public_ipv6?))))
            .collect();
        let mut held6 = BTreeSet::new();
        for route in netlink::our_routes::<Ipv6Addr>(&self.handle).await? {
            if route.oif != Some(self.if_index) {
                continue;
            }
            match wanted6.get(&route.destination) {
                Some((subnet, via)) if route.gateway == Some(*via) => {
                    held6.insert(*subnet);
                }
                _ => {
                    warn!(destination = %route.destination, gateway = ?route.gateway, "removing a stale route");
                    netlink::delete_route(&self.handle, route.message).await?;
                }
            }
        }
        let complete = |subnet: &Ipv4Net| {
            held.contains(subnet)
                && (!wanted6.values().any(|(s, _)| s == subnet) || held6.contains(subnet))
        };
        Ok(installed.keys().filter(|s| !complete(s)).copied().collect())
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

/// A dual-stack peer's IPv6 route: its IPv6 subnet via its public IPv6.
fn ipv6_route(peer: &Peer) -> Option<(Ipv6Net, Ipv6Addr)> {
    Some((peer.attrs.ipv6_subnet?, peer.attrs.public_ipv6?))
}
