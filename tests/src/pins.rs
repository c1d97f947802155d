//! The eBPF datapath's pinned maps, opened from the tests: to read what the agent holds and to
//! change it behind the agent's back.

use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{lpm_trie::Key, HashMap, LpmTrie, Map, MapData};
use flannel_common::{map_names, PeerInfo, Tunnel};

fn open(pins: &Path, name: &str) -> Result<MapData> {
    let path = pins.join(name);
    MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))
}

/// The routes map (peer subnet → tunnel).
pub fn routes(pins: &Path) -> Result<LpmTrie<MapData, u32, Tunnel>> {
    Ok(LpmTrie::try_from(Map::LpmTrie(open(
        pins,
        map_names::ROUTES,
    )?))?)
}

/// The peers map (public IP, network byte order → peer).
pub fn peers(pins: &Path) -> Result<HashMap<MapData, u32, PeerInfo>> {
    Ok(HashMap::try_from(Map::HashMap(open(
        pins,
        map_names::PEERS,
    )?))?)
}

/// The routes map's key for `subnet` ("10.1.5.0/24").
pub fn route_key(subnet: &str) -> Key<u32> {
    let net: ipnet::Ipv4Net = subnet.parse().expect("a subnet");
    Key::new(
        u32::from(net.prefix_len()),
        u32::from(net.network()).to_be(),
    )
}

/// True when the routes map under `pins` holds `subnet`.
pub fn has_route(pins: &Path, subnet: &str) -> bool {
    routes(pins).is_ok_and(|map| map.get(&route_key(subnet), 0).is_ok())
}
