//! The agent's maps as pinned under its `--bpf-pin-dir`, typed: one reader for `flanneld
//! status`, the bench and the tests.

extern crate std;

use std::path::{Path, PathBuf};

use aya::maps::{
    lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, MapError, MapInfo, PerCpuArray,
    PerCpuHashMap, RingBuf,
};

use crate::{
    map_names, DatapathConfig, DatapathConfig6, Endpoint, PeerInfo, PeerInfo6, PeerTraffic, Tunnel,
    Tunnel6,
};

/// A pin directory.
pub struct Pins {
    dir: PathBuf,
}

impl Pins {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    fn open(&self, name: &str) -> Result<Map, MapError> {
        Map::from_map_data(MapData::from_pin(self.dir.join(name))?)
    }

    /// The pinned map `name`, as the map type `T` (for callers generic over its layout).
    pub fn map<T: TryFrom<Map, Error = MapError>>(&self, name: &str) -> Result<T, MapError> {
        self.open(name)?.try_into()
    }

    pub fn config(&self) -> Result<Array<MapData, DatapathConfig>, MapError> {
        self.open(map_names::CONFIG)?.try_into()
    }

    pub fn config6(&self) -> Result<Array<MapData, DatapathConfig6>, MapError> {
        self.open(map_names::CONFIG6)?.try_into()
    }

    /// Peer subnet (see [`route_key`]) → tunnel.
    pub fn routes(&self) -> Result<LpmTrie<MapData, u32, Tunnel>, MapError> {
        self.open(map_names::ROUTES)?.try_into()
    }

    /// Peer public IPv4, network byte order → peer.
    pub fn peers(&self) -> Result<HashMap<MapData, u32, PeerInfo>, MapError> {
        self.open(map_names::PEERS)?.try_into()
    }

    /// Peer IPv6 subnet → tunnel.
    pub fn routes6(&self) -> Result<LpmTrie<MapData, [u8; 16], Tunnel6>, MapError> {
        self.open(map_names::ROUTES6)?.try_into()
    }

    /// Peer public IPv6 → peer.
    pub fn peers6(&self) -> Result<HashMap<MapData, [u8; 16], PeerInfo6>, MapError> {
        self.open(map_names::PEERS6)?.try_into()
    }

    /// Local container IPv4 → where `tc_ingress` delivers its packets (the fast path).
    pub fn endpoints(&self) -> Result<HashMap<MapData, [u8; 4], Endpoint>, MapError> {
        self.open(map_names::ENDPOINTS)?.try_into()
    }

    /// Peer public address (see [`crate::traffic_key_v4`]) → traffic per CPU.
    pub fn traffic(&self) -> Result<PerCpuHashMap<MapData, [u8; 16], PeerTraffic>, MapError> {
        self.open(map_names::TRAFFIC)?.try_into()
    }

    /// The programs' drop events ([`crate::DropEvent`]); one reader at a time.
    pub fn events(&self) -> Result<RingBuf<MapData>, MapError> {
        self.open(map_names::EVENTS)?.try_into()
    }

    /// Where the events pin is: a restarted agent pins a new ring there.
    pub fn events_path(&self) -> PathBuf {
        self.dir.join(map_names::EVENTS)
    }

    /// The kernel's id of the pinned events ring.
    pub fn events_id(&self) -> Result<u32, MapError> {
        Ok(MapInfo::from_pin(self.events_path())?.id())
    }

    /// Drop reason → count per CPU.
    pub fn drops(&self) -> Result<PerCpuArray<MapData, u64>, MapError> {
        self.open(map_names::DROPS)?.try_into()
    }
}

/// The routes map's key for a subnet: its network address (host byte order, as
/// `u32::from(Ipv4Addr)` gives it) and prefix length.
pub fn route_key(network: u32, prefix_len: u8) -> Key<u32> {
    Key::new(u32::from(prefix_len), network.to_be())
}
