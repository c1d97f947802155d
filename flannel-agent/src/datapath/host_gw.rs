//! flannel's host-gw backend: a route per peer subnet via the peer's public IP on our
//! interface, through rtnetlink.

use std::{collections::BTreeSet, net::Ipv4Addr};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use rtnetlink::{Handle, RouteMessageBuilder};
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

    /// `ip route replace <subnet> via <public ip> dev <iface>`.
    pub async fn put(&self, peer: &Peer) -> Result<()> {
        self.handle
            .route()
            .add(self.route(&peer.subnet, peer.attrs.public_ip))
            .replace()
            .execute()
            .await
            .with_context(|| {
                format!(
                    "route {} via {} dev {}",
                    peer.subnet, peer.attrs.public_ip, self.if_name
                )
            })?;
        info!(subnet = %peer.subnet, via = %peer.attrs.public_ip, "route added");
        Ok(())
    }

    pub async fn remove(&self, peer: &Peer) -> Result<()> {
        let route = self.route(&peer.subnet, peer.attrs.public_ip);
        netlink::delete_route(&self.handle, route)
            .await
            .with_context(|| format!("route to {}", peer.subnet))?;
        info!(subnet = %peer.subnet, "route removed");
        Ok(())
    }

    /// Reads our routes on the interface back: returns the installed peers whose route is
    /// missing or different, and deletes the routes no installed peer explains.
    pub async fn audit(&self, installed: &Installed) -> Result<BTreeSet<Ipv4Net>> {
        let routes = netlink::our_routes(&self.handle).await?;
        let mut held = BTreeSet::new();
        for route in routes.into_iter().filter(|r| r.oif == Some(self.if_index)) {
            let wanted = installed.get(&route.destination).map(|a| a.public_ip);
            if wanted.is_some() && wanted == route.gateway {
                held.insert(route.destination);
                continue;
            }
            warn!(destination = %route.destination, gateway = ?route.gateway, "removing a stale route");
            netlink::delete_route(&self.handle, route.message).await?;
        }
        Ok(installed
            .keys()
            .filter(|s| !held.contains(s))
            .copied()
            .collect())
    }

    fn route(
        &self,
        subnet: &Ipv4Net,
        via: Ipv4Addr,
    ) -> rtnetlink::packet_route::route::RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(subnet.network(), subnet.prefix_len())
            .gateway(via)
            .output_interface(self.if_index)
            .protocol(ROUTE_PROTOCOL)
            .build()
    }
}
