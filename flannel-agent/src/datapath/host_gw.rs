//! flannel's host-gw backend: a route per peer subnet via the peer's public IP on our
//! interface, through rtnetlink.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use rtnetlink::{packet_route::route::RouteProtocol, Handle, RouteMessageBuilder};
use tracing::info;

use crate::control::peers::{Peer, PeerEvent};

/// The routing protocol number our routes carry, so `--cleanup` finds them and only them.
pub const ROUTE_PROTOCOL: RouteProtocol = RouteProtocol::Other(0xf1);

pub struct HostGw {
    handle: Handle,
    if_index: u32,
    if_name: String,
}

impl HostGw {
    pub fn new(if_name: &str) -> Result<Self> {
        let if_index = nix::net::if_::if_nametoindex(if_name)
            .with_context(|| format!("looking up interface {if_name}"))?;
        let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
        tokio::spawn(connection);
        Ok(Self {
            handle,
            if_index,
            if_name: if_name.to_owned(),
        })
    }

    pub async fn apply(&self, event: &PeerEvent) -> Result<()> {
        match event {
            PeerEvent::Added(peer) => {
                self.replace(peer).await?;
                info!(subnet = %peer.subnet, via = %peer.attrs.public_ip, "route added");
            }
            PeerEvent::Removed(peer) => {
                let route = self.route(peer);
                match self.handle.route().del(route).execute().await {
                    // Already gone (someone deleted it): the outcome we want.
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => {}
                    result => {
                        result.with_context(|| format!("deleting the route to {}", peer.subnet))?
                    }
                }
                info!(subnet = %peer.subnet, "route removed");
            }
        }
        Ok(())
    }

    /// `ip route replace <subnet> via <public ip> dev <iface>`: also restores a route that
    /// someone deleted or changed.
    pub async fn replace(&self, peer: &Peer) -> Result<()> {
        self.handle
            .route()
            .add(self.route(peer))
            .replace()
            .execute()
            .await
            .with_context(|| {
                format!(
                    "route {} via {} dev {}",
                    peer.subnet, peer.attrs.public_ip, self.if_name
                )
            })
    }

    fn route(&self, peer: &Peer) -> rtnetlink::packet_route::route::RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(peer.subnet.network(), peer.subnet.prefix_len())
            .gateway(peer.attrs.public_ip)
            .output_interface(self.if_index)
            .protocol(ROUTE_PROTOCOL)
            .build()
    }
}
