//! Local containers on the bridge, for the fast path: the bridge's ports (where encap
//! starts), and for decap each container's IPv4 and IPv6 with its MAC (the bridge's neighbour
//! tables) and its host-side veth (the bridge's forwarding database). A container the host has not
//! yet talked to is missing from the latter until it has; its packets take the stack's path
//! meanwhile. Once found, it stays while its port does, though the tables forget it.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{Context, Result};
use futures::{channel::mpsc::UnboundedReceiver, StreamExt, TryStreamExt};
use rtnetlink::{
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{
        link::{LinkAttribute, LinkMessage},
        neighbour::{NeighbourAttribute, NeighbourState},
        AddressFamily, RouteNetlinkMessage,
    },
    sys::SocketAddr,
    Handle, MulticastGroup,
};

use tokio::time::Instant;

use crate::{
    control::lease::Mac,
    host::netlink::{destination, link_layer, neighbours},
};

/// A container behind the bridge: its IP → (host-side veth ifindex, MAC).
pub type Containers = HashMap<IpAddr, (u32, Mac)>;

/// The containers behind `bridge`, whose ports (ifindex, name) are `ports`; IPv6 link-local
/// addresses left out (tunnels carry none).
/// The host's tables forget a container whose traffic takes the fast path: the bridge's
/// entry ages out, as the container's frames skip the bridge, and the host's neighbour entry,
/// unused, may be collected. So one of `known` (what the fast path holds) stays while its
/// port is on the bridge, unless the tables now say otherwise: its IP at another MAC, or a
/// neighbour entry that failed (the host asked and no one answered).
pub async fn discover(
    netlink: &Handle,
    bridge: u32,
    ports: &[(u32, String)],
    known: &Containers,
) -> Result<Containers> {
    let fdb = neighbours(netlink, AddressFamily::Bridge).await?;
    let mut entries = neighbours(netlink, AddressFamily::Inet).await?;
    entries.extend(neighbours(netlink, AddressFamily::Inet6).await?);
    let port_of: HashMap<Mac, u32> = fdb
        .iter()
        .filter(|entry| {
            entry
                .attributes
                .contains(&NeighbourAttribute::Controller(bridge))
                && entry.header.state != NeighbourState::Permanent
        })
        .filter_map(|entry| Some((link_layer(entry)?, entry.header.ifindex)))
        .collect();
    let mut found: Containers = known
        .iter()
        .filter(|(_, (port, _))| ports.iter().any(|(index, _)| index == port))
        .map(|(ip, endpoint)| (*ip, *endpoint))
        .collect();
    for n in entries.iter().filter(|n| n.header.ifindex == bridge) {
        let Some(ip) = (destination::<Ipv4Addr>(n).map(IpAddr::V4))
            .or_else(|| destination::<Ipv6Addr>(n).map(IpAddr::V6))
            .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()))
        else {
            continue;
        };
        let mac = link_layer(n).filter(|_| n.header.state != NeighbourState::Incomplete);
        match (n.header.state, mac) {
            (NeighbourState::Failed, _) => {
                found.remove(&ip);
            }
            (_, Some(mac)) => match port_of.get(&mac) {
                Some(port) => {
                    found.insert(ip, (*port, mac));
                }
                None if found.get(&ip).is_some_and(|(_, old)| *old != mac) => {
                    found.remove(&ip);
                }
                None => {}
            },
            (_, None) => {}
        }
    }
    Ok(found)
}

/// The ports of `bridge` (ifindex, name): the containers' host-side veths.
pub async fn bridge_ports(netlink: &Handle, bridge: u32) -> Result<Vec<(u32, String)>> {
    let links: Vec<LinkMessage> = netlink
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .context("listing links")?;
    Ok(links
        .iter()
        .filter(|link| link.attributes.contains(&LinkAttribute::Controller(bridge)))
        .filter_map(|link| {
            let name = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(name) => Some(name.clone()),
                _ => None,
            })?;
            Some((link.header.index, name))
        })
        .collect())
}

/// How long a burst of events (a container's creation is several) may take to settle.
const SETTLE: Duration = Duration::from_millis(20);

/// The host's link and neighbour changes, but for the NIC's neighbours: a container's veth
/// coming or going, the bridge learning a container. The fast path follows them at once
/// instead of at the next resync, so a container recreated with the same IP is never sent
/// to its old veth.
pub struct ContainerEvents {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    nic: u32,
    /// When the burst of a change already taken from `messages` has settled. Kept here, not
    /// in `changed`'s future, so a change outlives a race that future loses.
    settled_at: Option<Instant>,
}

impl ContainerEvents {
    pub fn subscribe(nic: u32) -> Result<Self> {
        let (connection, _, messages) =
            rtnetlink::new_multicast_connection(&[MulticastGroup::Link, MulticastGroup::Neigh])
                .context("subscribing to link and neighbour events")?;
        tokio::spawn(connection);
        Ok(Self::new(messages, nic))
    }

    fn new(
        messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
        nic: u32,
    ) -> Self {
        Self {
            messages,
            nic,
            settled_at: None,
        }
    }

    /// Waits for a change that may concern a container, and for its burst to settle.
    /// Cancel-safe: each await either takes nothing or leaves what it took in `self`.
    pub async fn changed(&mut self) {
        while self.settled_at.is_none() {
            match self.messages.next().await {
                Some((message, _)) if self.concerns_containers(&message) => {
                    self.settled_at = Some(Instant::now() + SETTLE);
                }
                Some(_) => {}
                // The subscription died: the periodic resync still runs.
                None => std::future::pending().await,
            }
        }
        if let Some(at) = self.settled_at {
            tokio::time::sleep_until(at).await;
        }
        while self.messages.try_recv().is_ok() {}
        self.settled_at = None;
    }

    fn concerns_containers(&self, message: &NetlinkMessage<RouteNetlinkMessage>) -> bool {
        match &message.payload {
            NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_),
            ) => true,
            NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n),
            ) => n.header.ifindex != self.nic,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::channel::mpsc::unbounded;
    use tokio::time::{sleep, timeout};

    use super::*;

    /// The agent's loop races `changed` against its other inputs: a change taken from the
    /// subscription must still be reported when another input wins during its settling.
    #[tokio::test]
    async fn a_change_survives_losing_a_race_while_it_settles() {
        let (sender, messages) = unbounded();
        let mut events = ContainerEvents::new(messages, 2);
        let new_veth = NetlinkMessage::from(RouteNetlinkMessage::NewLink(LinkMessage::default()));
        sender
            .unbounded_send((new_veth, SocketAddr::new(0, 0)))
            .unwrap();
        tokio::select! {
            () = events.changed() => panic!("reported before its burst settled"),
            () = sleep(SETTLE / 4) => {}
        }
        timeout(SETTLE * 10, events.changed())
            .await
            .expect("the change taken before the lost race is reported");
        assert!(
            timeout(SETTLE * 10, events.changed()).await.is_err(),
            "reported once"
        );
    }
}
