//! rtnetlink, as every part of the agent uses it: a connection, the protocol tag on our
//! routes, and dumps of routes and neighbours read back for reconciling.

use std::net::IpAddr;

use anyhow::{Context, Result};
use futures::TryStreamExt;
use rtnetlink::{
    packet_route::{
        link::{LinkAttribute, LinkXdp},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage},
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol},
        AddressFamily,
    },
    Handle, RouteMessageBuilder,
};

use crate::{control::lease::Mac, family::Family};

/// The routing protocol number our routes carry, so reconciling and `--cleanup` find them
/// and only them.
pub const ROUTE_PROTOCOL: RouteProtocol = RouteProtocol::Other(0xf1);

/// A handle on a new rtnetlink connection, served by a task of its own.
pub fn connect() -> Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(connection);
    Ok(handle)
}

/// The netlink family of `A`'s routes and neighbours.
pub fn address_family<A: Family>() -> AddressFamily {
    A::pick(AddressFamily::Inet, AddressFamily::Inet6)
}

fn route_address(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some((*ip).into()),
        RouteAddress::Inet6(ip) => Some((*ip).into()),
        _ => None,
    }
}

fn neighbour_address(address: &NeighbourAddress) -> Option<IpAddr> {
    match address {
        NeighbourAddress::Inet(ip) => Some((*ip).into()),
        NeighbourAddress::Inet6(ip) => Some((*ip).into()),
        // An fdb entry's remote (family `Bridge`) comes as bytes.
        NeighbourAddress::Other(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(&bytes[..]).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(&bytes[..]).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

/// One of our routes as the kernel holds it.
pub struct OurRoute<A: Family> {
    pub destination: A::Net,
    pub gateway: Option<A>,
    pub oif: Option<u32>,
    pub message: RouteMessage,
}

/// Our routes of family `A` (those with our protocol tag) in the main table.
pub async fn our_routes<A: Family>(netlink: &Handle) -> Result<Vec<OurRoute<A>>> {
    let mut dump = RouteMessageBuilder::<IpAddr>::new().build();
    let dump_family = address_family::<A>();
    dump.header.address_family = dump_family;
    let routes: Vec<RouteMessage> = netlink
        .route()
        .get(dump)
        .execute()
        .try_collect()
        .await
        .context("listing routes")?;
    Ok(routes
        .into_iter()
        .filter(|r| r.header.protocol == ROUTE_PROTOCOL && r.header.address_family == dump_family)
        .filter_map(|message| {
            let (mut destination, mut gateway, mut oif) = (None, None, None);
            for attribute in &message.attributes {
                match attribute {
                    RouteAttribute::Destination(address) => {
                        destination = route_address(address).and_then(A::of)
                    }
                    RouteAttribute::Gateway(address) => {
                        gateway = route_address(address).and_then(A::of)
                    }
                    RouteAttribute::Oif(index) => oif = Some(*index),
                    _ => {}
                }
            }
            let prefix_len = message.header.destination_prefix_length;
            Some(OurRoute {
                // No destination: the default route.
                destination: A::net(destination.unwrap_or(A::from_bits(0)), prefix_len)?,
                gateway,
                oif,
                message,
            })
        })
        .collect())
}

/// Deletes a route; one that is already gone is fine.
pub async fn delete_route(netlink: &Handle, route: RouteMessage) -> Result<()> {
    match netlink.route().del(route).execute().await {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
        result => result.context("deleting a route"),
    }
}

/// Every neighbour of `family`: IPv4 or IPv6 neighbours (`Inet`, `Inet6`) or forwarding
/// entries (`Bridge`).
pub async fn neighbours(netlink: &Handle, family: AddressFamily) -> Result<Vec<NeighbourMessage>> {
    netlink
        .neighbours()
        .get()
        .set_address_family(family)
        .execute()
        .try_collect()
        .await
        .with_context(|| format!("listing {family:?} neighbours"))
}

/// A neighbour's link-layer address.
pub fn link_layer(message: &NeighbourMessage) -> Option<Mac> {
    message.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(bytes) => {
            Some(Mac(bytes.as_slice().try_into().ok()?))
        }
        _ => None,
    })
}

/// A neighbour's address of family `A`: the neighbour's own, or an fdb entry's remote.
pub fn destination<A: Family>(message: &NeighbourMessage) -> Option<A> {
    message.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(address) => neighbour_address(address).and_then(A::of),
        _ => None,
    })
}

/// Deletes a neighbour or fdb entry; one that is already gone is fine.
pub async fn delete_neighbour(netlink: &Handle, message: NeighbourMessage) -> Result<()> {
    match netlink.neighbours().del(message).execute().await {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENOENT => Ok(()),
        result => result.context("deleting a neighbour"),
    }
}

/// The priorities of the TC filters with handle `0:<minor>` at an interface's clsact
/// ingress (or egress), as the kernel holds them.
pub async fn filter_priorities(
    netlink: &Handle,
    ifindex: u32,
    egress: bool,
    minor: u16,
) -> Result<Vec<u16>> {
    let index = i32::try_from(ifindex).context("an ifindex out of range")?;
    let request = netlink.traffic_filter(index).get();
    let request = if egress {
        request.egress()
    } else {
        request.ingress()
    };
    let filters: Vec<_> = request
        .execute()
        .try_collect()
        .await
        .with_context(|| format!("listing the TC filters of ifindex {ifindex}"))?;
    let mut priorities: Vec<u16> = filters
        .iter()
        .filter(|f| f.header.handle.major == 0 && f.header.handle.minor == minor)
        .map(|f| (f.header.info >> 16) as u16)
        .collect();
    priorities.dedup();
    Ok(priorities)
}

/// The attributes of interface `ifindex`, as the kernel reports them.
pub async fn link_attributes(netlink: &Handle, ifindex: u32) -> Result<Vec<LinkAttribute>> {
    let links: Vec<_> = netlink
        .link()
        .get()
        .match_index(ifindex)
        .execute()
        .try_collect()
        .await
        .with_context(|| format!("reading ifindex {ifindex}"))?;
    Ok(links.into_iter().flat_map(|link| link.attributes).collect())
}

/// The id of the XDP program attached to interface `ifindex`, if any.
pub async fn xdp_program(netlink: &Handle, ifindex: u32) -> Result<Option<u32>> {
    Ok(link_attributes(netlink, ifindex)
        .await?
        .iter()
        .filter_map(|attribute| match attribute {
            LinkAttribute::Xdp(xdp) => Some(xdp),
            _ => None,
        })
        .flatten()
        .find_map(|xdp| match xdp {
            LinkXdp::ProgId(id) if *id != 0 => Some(*id),
            _ => None,
        }))
}
