//! rtnetlink, as every part of the agent uses it: a connection, the protocol tag on our
//! routes, and dumps of routes and neighbours read back for reconciling.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};
use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rtnetlink::{
    packet_route::{
        link::{LinkAttribute, LinkXdp},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage},
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol},
        AddressFamily,
    },
    Handle, RouteMessageBuilder,
};

use crate::control::lease::Mac;

/// The routing protocol number our routes carry, so reconciling and `--cleanup` find them
/// and only them.
pub const ROUTE_PROTOCOL: RouteProtocol = RouteProtocol::Other(0xf1);

/// A handle on a new rtnetlink connection, served by a task of its own.
pub fn connect() -> Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(connection);
    Ok(handle)
}

/// A route's (or neighbour's) address family: IPv4 or IPv6.
pub trait RouteFamily: Copy + Sized + Eq + std::hash::Hash + Into<IpAddr> {
    type Net: Copy + Ord + std::hash::Hash + Into<IpNet>;
    /// The neighbour table of this family.
    const NEIGHBOURS: AddressFamily;
    /// Bits in an address: the prefix length of a host route.
    const BITS: u8;
    fn address(address: &RouteAddress) -> Option<Self>;
    fn neighbour_address(address: &NeighbourAddress) -> Option<Self>;
    /// The destination: the default route when it carries none.
    fn destination(address: Option<Self>, prefix_len: u8) -> Option<Self::Net>;
    /// A dump request for this family's routes.
    fn dump() -> RouteMessage;
}

impl RouteFamily for Ipv4Addr {
    type Net = Ipv4Net;
    const NEIGHBOURS: AddressFamily = AddressFamily::Inet;
    const BITS: u8 = 32;
    fn address(address: &RouteAddress) -> Option<Self> {
        match address {
            RouteAddress::Inet(ip) => Some(*ip),
            _ => None,
        }
    }
    fn neighbour_address(address: &NeighbourAddress) -> Option<Self> {
        match address {
            NeighbourAddress::Inet(ip) => Some(*ip),
            // An fdb entry's remote (family `Bridge`) comes as bytes.
            NeighbourAddress::Other(bytes) => <[u8; 4]>::try_from(&bytes[..]).ok().map(Self::from),
            _ => None,
        }
    }
    fn destination(address: Option<Self>, prefix_len: u8) -> Option<Ipv4Net> {
        Ipv4Net::new(address.unwrap_or(Ipv4Addr::UNSPECIFIED), prefix_len).ok()
    }
    fn dump() -> RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    }
}

impl RouteFamily for Ipv6Addr {
    type Net = Ipv6Net;
    const NEIGHBOURS: AddressFamily = AddressFamily::Inet6;
    const BITS: u8 = 128;
    fn address(address: &RouteAddress) -> Option<Self> {
        match address {
            RouteAddress::Inet6(ip) => Some(*ip),
            _ => None,
        }
    }
    fn neighbour_address(address: &NeighbourAddress) -> Option<Self> {
        match address {
            NeighbourAddress::Inet6(ip) => Some(*ip),
            NeighbourAddress::Other(bytes) => <[u8; 16]>::try_from(&bytes[..]).ok().map(Self::from),
            _ => None,
        }
    }
    fn destination(address: Option<Self>, prefix_len: u8) -> Option<Ipv6Net> {
        Ipv6Net::new(address.unwrap_or(Ipv6Addr::UNSPECIFIED), prefix_len).ok()
    }
    fn dump() -> RouteMessage {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    }
}

/// One of our routes as the kernel holds it.
pub struct OurRoute<A: RouteFamily> {
    pub destination: A::Net,
    pub gateway: Option<A>,
    pub oif: Option<u32>,
    pub message: RouteMessage,
}

/// Our routes of family `A` (those with our protocol tag) in the main table.
pub async fn our_routes<A: RouteFamily>(netlink: &Handle) -> Result<Vec<OurRoute<A>>> {
    let routes: Vec<RouteMessage> = netlink
        .route()
        .get(A::dump())
        .execute()
        .try_collect()
        .await
        .context("listing routes")?;
    Ok(routes
        .into_iter()
        .filter(|r| r.header.protocol == ROUTE_PROTOCOL)
        .filter_map(|message| {
            let (mut destination, mut gateway, mut oif) = (None, None, None);
            for attribute in &message.attributes {
                match attribute {
                    RouteAttribute::Destination(address) => destination = A::address(address),
                    RouteAttribute::Gateway(address) => gateway = A::address(address),
                    RouteAttribute::Oif(index) => oif = Some(*index),
                    _ => {}
                }
            }
            let prefix_len = message.header.destination_prefix_length;
            Some(OurRoute {
                destination: A::destination(destination, prefix_len)?,
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
pub fn destination<A: RouteFamily>(message: &NeighbourMessage) -> Option<A> {
    message.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(address) => A::neighbour_address(address),
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
