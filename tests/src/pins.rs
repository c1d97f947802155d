//! The eBPF datapath's pinned maps, through the shared reader: to read what the agent holds
//! and to change it behind the agent's back.

use std::{net::Ipv4Addr, path::Path};

use anyhow::Result;
use aya::maps::{lpm_trie::Key, HashMap, LpmTrie, MapData};
use flannel_common::{pins::Pins, PeerInfo, Tunnel};

/// The routes map (peer subnet → tunnel).
pub fn routes(pins: &Path) -> Result<LpmTrie<MapData, u32, Tunnel>> {
    Ok(Pins::new(pins).routes()?)
}

/// The peers map (public IP, network byte order → peer).
pub fn peers(pins: &Path) -> Result<HashMap<MapData, u32, PeerInfo>> {
    Ok(Pins::new(pins).peers()?)
}

/// The routes map's key for `subnet` ("10.1.5.0/24").
pub fn route_key(subnet: &str) -> Key<u32> {
    let net: ipnet::Ipv4Net = subnet.parse().expect("a subnet");
    flannel_common::pins::route_key(u32::from(net.network()), net.prefix_len())
}

/// The subnets in the routes maps under `pins` (both families), exactly as keyed
/// ("10.1.5.0/24", "fd00:10:0:5::/64"); empty if they can't be read.
pub fn route_subnets(pins: &Path) -> Vec<String> {
    let pins = Pins::new(pins);
    let ipv4 = pins.routes().into_iter().flat_map(|map| {
        let keys: Vec<_> = map.keys().filter_map(Result::ok).collect();
        keys.into_iter().map(|key| {
            let network = std::net::Ipv4Addr::from(u32::from_be(key.data()));
            format!("{network}/{}", key.prefix_len())
        })
    });
    let ipv6 = pins.routes6().into_iter().flat_map(|map| {
        let keys: Vec<_> = map.keys().filter_map(Result::ok).collect();
        keys.into_iter().map(|key| {
            let network = std::net::Ipv6Addr::from(key.data());
            format!("{network}/{}", key.prefix_len())
        })
    });
    ipv4.chain(ipv6).collect()
}

/// True when the routes map under `pins` holds exactly `subnet` (a lookup would match a
/// wider entry too).
pub fn has_route(pins: &Path, subnet: &str) -> bool {
    route_subnets(pins).iter().any(|s| s == subnet)
}

/// True when the fast path under `pins` delivers decapsulated packets for `container`
/// straight to it.
pub fn has_endpoint(pins: &Path, container: Ipv4Addr) -> bool {
    Pins::new(pins)
        .endpoints()
        .is_ok_and(|map| map.get(&container.octets(), 0).is_ok())
}
