//! Local containers on the bridge, for the fast path: the bridge's ports (where encap
//! starts), and for decap each container's IPv4 with its MAC (the bridge's neighbour table)
//! and its host-side veth (the bridge's forwarding database). A container the host has not
//! yet talked to is missing from the latter until it has; its packets take the stack's path
//! meanwhile.

use std::{collections::HashMap, net::Ipv4Addr};

use anyhow::{Context, Result};
use futures::TryStreamExt;
use rtnetlink::{
    packet_route::{
        link::{LinkAttribute, LinkMessage},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
        AddressFamily,
    },
    Handle,
};

use crate::lease::Mac;

/// IPv4 → (host-side veth ifindex, container MAC) for the containers behind `bridge`.
pub async fn discover(netlink: &Handle, bridge: u32) -> Result<HashMap<Ipv4Addr, (u32, Mac)>> {
    let neighbours = dump(netlink, AddressFamily::Inet)
        .await
        .context("listing neighbours")?;
    let fdb = dump(netlink, AddressFamily::Bridge)
        .await
        .context("listing the bridge's FDB")?;
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
    Ok(neighbours
        .iter()
        .filter(|n| n.header.ifindex == bridge)
        .filter(|n| {
            !matches!(
                n.header.state,
                NeighbourState::Failed | NeighbourState::Incomplete
            )
        })
        .filter_map(|n| {
            let ip = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                _ => None,
            })?;
            let mac = link_layer(n)?;
            Some((ip, (*port_of.get(&mac)?, mac)))
        })
        .collect())
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

async fn dump(netlink: &Handle, family: AddressFamily) -> Result<Vec<NeighbourMessage>> {
    Ok(netlink
        .neighbours()
        .get()
        .set_address_family(family)
        .execute()
        .try_collect()
        .await?)
}

fn link_layer(message: &NeighbourMessage) -> Option<Mac> {
    message.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(bytes) => {
            Some(Mac(bytes.as_slice().try_into().ok()?))
        }
        _ => None,
    })
}
