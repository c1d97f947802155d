//! What flannel's overlay devices get, whatever carries their packets (`flannel-bpf`,
//! `flannel0`, `flannel.<VNI>`): up at the overlay MTU, `<subnet>.0/32` as the source of host
//! traffic, and for the devices that take the whole network, its route.

use std::net::IpAddr;

use anyhow::{Context, Result};
use ipnet::IpNet;
use rtnetlink::{
    packet_route::{
        address::AddressHeaderFlags,
        route::{RouteAttribute, RouteMetric},
    },
    Handle, LinkUnspec, RouteMessageBuilder,
};

use crate::host::netlink::ROUTE_PROTOCOL;

/// Deletes the device `name` if there is one (what goes with it, addresses, routes, neighbours
/// and fdb entries, goes too); says whether there was.
pub async fn delete_link(netlink: &Handle, name: &str) -> Result<bool> {
    let Ok(index) = nix::net::if_::if_nametoindex(name) else {
        return Ok(false);
    };
    netlink
        .link()
        .del(index)
        .execute()
        .await
        .with_context(|| format!("deleting {name}"))?;
    Ok(true)
}

pub async fn set_up(netlink: &Handle, index: u32, name: &str, mtu: u32) -> Result<()> {
    netlink
        .link()
        .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
        .execute()
        .await
        .with_context(|| format!("setting {name} up"))
}

/// `ip addr replace <subnet>.0/32 dev <name>` (`<subnet>::/128 nodad` for IPv6), as flannel
/// gives its devices.
pub async fn hold_subnet_address(
    netlink: &Handle,
    index: u32,
    name: &str,
    subnet: impl Into<IpNet>,
) -> Result<()> {
    let address = subnet.into().network();
    let len = if address.is_ipv4() { 32 } else { 128 };
    let mut request = netlink.address().add(index, address, len).replace();
    // No duplicate address detection: the address is ours by lease, usable at once.
    request.message_mut().header.flags |= AddressHeaderFlags::Nodad;
    request
        .execute()
        .await
        .with_context(|| format!("adding {address}/{len} to {name}"))
}

/// The device holds `<subnet>.0/32` (or `<subnet>::/128`) and the whole network is routed to
/// it, from that source; an IPv6 network's route carries the tunnel's `mtu`, below the
/// device's, so the stack answers bigger packets with "packet too big".
pub async fn take_network(
    netlink: &Handle,
    index: u32,
    name: &str,
    (network, subnet): (impl Into<IpNet>, impl Into<IpNet>),
    mtu: Option<u32>,
) -> Result<()> {
    let (network, subnet) = (network.into(), subnet.into());
    hold_subnet_address(netlink, index, name, subnet).await?;
    let mut route = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(network.network(), network.prefix_len())?
        .pref_source(subnet.network())?
        .output_interface(index)
        .protocol(ROUTE_PROTOCOL);
    if let Some(mtu) = mtu {
        let metrics = RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]);
        route.get_mut().attributes.push(metrics);
    }
    netlink
        .route()
        .add(route.build())
        .replace()
        .execute()
        .await
        .with_context(|| format!("routing {network} to {name}"))
}
