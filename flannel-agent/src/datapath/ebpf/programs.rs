//! Loading the eBPF programs and owning their maps.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuHashMap},
    programs::{SchedClassifier, Xdp},
    Ebpf,
};
use flannel_common::{
    map_names, program_names, DatapathConfig, DatapathConfig6, DropReason, Endpoint, PeerInfo,
    PeerInfo6, PeerTraffic, Tunnel, Tunnel6,
};
use ipnet::{Ipv4Net, Ipv6Net};

/// The object built from `flannel-ebpf` when this binary was compiled (the one `cargo xtask
/// build-ebpf` prints).
pub static EMBEDDED_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flannel.bpf.o"));

/// The loaded programs and their maps.
pub struct Programs {
    ebpf: Ebpf,
}

impl Programs {
    /// Loads the embedded object, or the one at `object` (`--bpf-object`), and verifies its
    /// programs in the kernel.
    pub fn load(object: Option<&Path>) -> Result<Self> {
        let mut ebpf = match object {
            Some(path) => Ebpf::load_file(path)
                .with_context(|| format!("loading eBPF object {}", path.display()))?,
            None => Ebpf::load(EMBEDDED_OBJECT).context("loading the embedded eBPF object")?,
        };
        let xdp: &mut Xdp = program(&mut ebpf, program_names::XDP_INGRESS)?;
        xdp.load().context("verifying xdp_ingress")?;
        for name in [
            program_names::TC_INGRESS,
            program_names::TC_ENCAP,
            program_names::TC_MERGED,
        ] {
            let tc: &mut SchedClassifier = program(&mut ebpf, name)?;
            tc.load().with_context(|| format!("verifying {name}"))?;
        }
        // Loading parsed the kernel's BTF (megabytes, freed now): give that memory back.
        // SAFETY: malloc_trim only releases free heap memory.
        unsafe { libc::malloc_trim(0) };
        Ok(Self { ebpf })
    }

    /// Pins every map under `dir`, replacing an older agent's pins, for bpftool and
    /// inspection. A restarted agent does not adopt pinned maps: it fills fresh ones from etcd
    /// before it takes over, so no old layout is ever trusted.
    pub fn pin_maps(&self, dir: &Path) -> Result<()> {
        ensure_bpffs(dir)?;
        // An older version's maps (another layout, another name) would linger.
        for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.starts_with("FLANNEL_") && self.ebpf.map(&name).is_none() {
                let _ = fs::remove_file(dir.join(&name));
            }
        }
        for (name, map) in self.ebpf.maps() {
            // Pinned aside, then renamed over an older agent's pin: the name never points
            // at nothing, and agents sharing the directory never race on it.
            let path = dir.join(name);
            // (bpffs refuses dots in names.)
            let aside = dir.join(format!("pinning_{name}_{}", std::process::id()));
            let _ = fs::remove_file(&aside);
            map.pin(&aside)
                .with_context(|| format!("pinning map {name} at {}", aside.display()))?;
            fs::rename(&aside, &path)
                .with_context(|| format!("moving the pin of {name} to {}", path.display()))?;
        }
        Ok(())
    }

    pub fn xdp_ingress(&mut self) -> &mut Xdp {
        program(&mut self.ebpf, program_names::XDP_INGRESS).expect("checked at load")
    }

    pub fn tc_ingress(&mut self) -> &mut SchedClassifier {
        program(&mut self.ebpf, program_names::TC_INGRESS).expect("checked at load")
    }

    pub fn tc_encap(&mut self) -> &mut SchedClassifier {
        program(&mut self.ebpf, program_names::TC_ENCAP).expect("checked at load")
    }

    pub fn tc_merged(&mut self) -> &mut SchedClassifier {
        program(&mut self.ebpf, program_names::TC_MERGED).expect("checked at load")
    }

    pub fn set_config(&mut self, config: DatapathConfig) -> Result<()> {
        let mut map: Array<&mut MapData, DatapathConfig> = self.map(map_names::CONFIG)?;
        map.set(0, config, 0).context("writing the datapath config")
    }

    pub fn insert_peer(&mut self, public_ip: Ipv4Addr, peer: PeerInfo) -> Result<()> {
        let mut map: HashMap<&mut MapData, u32, PeerInfo> = self.map(map_names::PEERS)?;
        map.insert(u32::from(public_ip).to_be(), peer, 0)
            .with_context(|| format!("adding peer {public_ip} to the peer map"))
    }

    pub fn remove_peer(&mut self, public_ip: Ipv4Addr) -> Result<()> {
        let mut map: HashMap<&mut MapData, u32, PeerInfo> = self.map(map_names::PEERS)?;
        absent_ok(map.remove(&u32::from(public_ip).to_be()))
            .with_context(|| format!("removing peer {public_ip} from the peer map"))
    }

    /// Routes `subnet` through `tunnel`.
    pub fn insert_route(&mut self, subnet: Ipv4Net, tunnel: Tunnel) -> Result<()> {
        let mut map: LpmTrie<&mut MapData, u32, Tunnel> = self.map(map_names::ROUTES)?;
        map.insert(&route_key(subnet), tunnel, 0)
            .with_context(|| format!("adding the route to {subnet}"))
    }

    pub fn remove_route(&mut self, subnet: Ipv4Net) -> Result<()> {
        let mut map: LpmTrie<&mut MapData, u32, Tunnel> = self.map(map_names::ROUTES)?;
        absent_ok(map.remove(&route_key(subnet)))
            .with_context(|| format!("removing the route to {subnet}"))
    }

    pub fn set_config6(&mut self, config: DatapathConfig6) -> Result<()> {
        let mut map: Array<&mut MapData, DatapathConfig6> = self.map(map_names::CONFIG6)?;
        map.set(0, config, 0)
            .context("writing the IPv6 datapath config")
    }

    pub fn insert_peer6(&mut self, public_ip: Ipv6Addr, peer: PeerInfo6) -> Result<()> {
        let mut map: HashMap<&mut MapData, [u8; 16], PeerInfo6> = self.map(map_names::PEERS6)?;
        map.insert(public_ip.octets(), peer, 0)
            .with_context(|| format!("adding peer {public_ip} to the IPv6 peer map"))
    }

    pub fn remove_peer6(&mut self, public_ip: Ipv6Addr) -> Result<()> {
        let mut map: HashMap<&mut MapData, [u8; 16], PeerInfo6> = self.map(map_names::PEERS6)?;
        absent_ok(map.remove(&public_ip.octets()))
            .with_context(|| format!("removing peer {public_ip} from the IPv6 peer map"))
    }

    /// Routes the IPv6 `subnet` through `tunnel`.
    pub fn insert_route6(&mut self, subnet: Ipv6Net, tunnel: Tunnel6) -> Result<()> {
        let mut map: LpmTrie<&mut MapData, [u8; 16], Tunnel6> = self.map(map_names::ROUTES6)?;
        map.insert(&route6_key(subnet), tunnel, 0)
            .with_context(|| format!("adding the route to {subnet}"))
    }

    pub fn remove_route6(&mut self, subnet: Ipv6Net) -> Result<()> {
        let mut map: LpmTrie<&mut MapData, [u8; 16], Tunnel6> = self.map(map_names::ROUTES6)?;
        absent_ok(map.remove(&route6_key(subnet)))
            .with_context(|| format!("removing the route to {subnet}"))
    }

    /// The local containers the fast path delivers to, by IPv4 and IPv6.
    pub fn endpoints(&mut self) -> Result<Vec<(IpAddr, Endpoint)>> {
        let mut all = Vec::new();
        let v4 = self.endpoint_map::<[u8; 4]>(map_names::ENDPOINTS)?;
        for entry in v4.iter() {
            let (ip, endpoint) = entry.context("reading the endpoint map")?;
            all.push((IpAddr::from(ip), endpoint));
        }
        let v6 = self.endpoint_map::<[u8; 16]>(map_names::ENDPOINTS6)?;
        for entry in v6.iter() {
            let (ip, endpoint) = entry.context("reading the IPv6 endpoint map")?;
            all.push((IpAddr::from(ip), endpoint));
        }
        Ok(all)
    }

    pub fn insert_endpoint(&mut self, ip: IpAddr, endpoint: Endpoint) -> Result<()> {
        let inserted = match ip {
            IpAddr::V4(v4) => (self.endpoint_map::<[u8; 4]>(map_names::ENDPOINTS)?).insert(
                v4.octets(),
                endpoint,
                0,
            ),
            IpAddr::V6(v6) => (self.endpoint_map::<[u8; 16]>(map_names::ENDPOINTS6)?).insert(
                v6.octets(),
                endpoint,
                0,
            ),
        };
        inserted.with_context(|| format!("adding endpoint {ip}"))
    }

    pub fn remove_endpoint(&mut self, ip: IpAddr) -> Result<()> {
        let removed = match ip {
            IpAddr::V4(v4) => {
                (self.endpoint_map::<[u8; 4]>(map_names::ENDPOINTS)?).remove(&v4.octets())
            }
            IpAddr::V6(v6) => {
                (self.endpoint_map::<[u8; 16]>(map_names::ENDPOINTS6)?).remove(&v6.octets())
            }
        };
        absent_ok(removed).with_context(|| format!("removing endpoint {ip}"))
    }

    /// An endpoint map, keyed by the addresses' bytes (network order).
    fn endpoint_map<K: aya::Pod>(
        &mut self,
        name: &str,
    ) -> Result<HashMap<&mut MapData, K, Endpoint>> {
        self.map(name)
    }

    /// Starts counting traffic with `public_ip` (kept if already counting).
    pub fn track_traffic(&mut self, public_ip: Ipv4Addr) -> Result<()> {
        let key = u32::from(public_ip).to_be();
        let mut map: PerCpuHashMap<&mut MapData, u32, PeerTraffic> =
            self.map(map_names::TRAFFIC)?;
        if map.get(&key, 0).is_ok() {
            return Ok(());
        }
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| e)
            .context("counting CPUs")?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![PeerTraffic::default(); cpus])?;
        map.insert(key, zeros, 0)
            .with_context(|| format!("adding traffic counters for {public_ip}"))
    }

    pub fn untrack_traffic(&mut self, public_ip: Ipv4Addr) -> Result<()> {
        let mut map: PerCpuHashMap<&mut MapData, u32, PeerTraffic> =
            self.map(map_names::TRAFFIC)?;
        absent_ok(map.remove(&u32::from(public_ip).to_be()))
            .with_context(|| format!("removing traffic counters for {public_ip}"))
    }

    /// Traffic with `public_ip`, summed over CPUs.
    pub fn traffic(&mut self, public_ip: Ipv4Addr) -> Result<PeerTraffic> {
        let map: PerCpuHashMap<&mut MapData, u32, PeerTraffic> = self.map(map_names::TRAFFIC)?;
        let per_cpu = map
            .get(&u32::from(public_ip).to_be(), 0)
            .with_context(|| format!("reading traffic counters for {public_ip}"))?;
        Ok(per_cpu
            .iter()
            .fold(PeerTraffic::default(), |sum, cpu| sum.plus(*cpu)))
    }

    /// Dropped packets by reason, summed over CPUs.
    pub fn drops(&mut self) -> Result<Vec<(DropReason, u64)>> {
        let map: PerCpuArray<&mut MapData, u64> = self.map(map_names::DROPS)?;
        DropReason::ALL
            .iter()
            .map(|&reason| {
                let per_cpu = map
                    .get(&(reason as u32), 0)
                    .with_context(|| format!("reading drop counter {}", reason.name()))?;
                Ok((reason, per_cpu.iter().sum()))
            })
            .collect()
    }

    fn map<'a, T>(&'a mut self, name: &str) -> Result<T>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))?;
        T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
    }
}

/// Checks that `path` is an ELF object for BPF (`e_machine` EM_BPF, 247), as `--bpf-object`
/// must be; the kernel's verifier judges the rest when it loads.
pub fn check_object(path: &Path) -> Result<()> {
    const EM_BPF: u16 = 247;
    let bytes = fs::read(path).with_context(|| format!("--bpf-object {}", path.display()))?;
    let machine = bytes.get(18..20).map(|m| u16::from_le_bytes([m[0], m[1]]));
    if !bytes.starts_with(b"\x7fELF") || machine != Some(EM_BPF) {
        bail!(
            "--bpf-object {}: not an eBPF object (build one with cargo xtask build-ebpf)",
            path.display()
        );
    }
    Ok(())
}

/// Makes `dir` a directory on a bpf filesystem, mounting bpffs at /sys/fs/bpf when `dir` is
/// below it and nothing is mounted there (`ip netns exec` gives a fresh /sys).
/// Makes sure `dir` is on a bpffs, mounting one at /sys/fs/bpf where the host has none.
/// Returns whether its pins outlive us: not when we mounted that bpffs in a mount namespace
/// of our own (`ip netns exec` makes one), which dies with us.
pub(super) fn ensure_bpffs(dir: &Path) -> Result<bool> {
    use nix::sys::statfs::{statfs, BPF_FS_MAGIC};
    let root = Path::new("/sys/fs/bpf");
    let on_bpffs = |path: &Path| statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC);
    let mut outlives_us = true;
    if dir.starts_with(root) && !on_bpffs(root) {
        nix::mount::mount(
            Some("bpf"),
            root,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .context("mounting bpffs at /sys/fs/bpf")?;
        outlives_us = shares_init_mounts();
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if !on_bpffs(dir) {
        bail!("--bpf-pin-dir {} is not on a bpf filesystem", dir.display());
    }
    Ok(outlives_us)
}

/// Whether we are in init's mount namespace (false where we may not tell).
fn shares_init_mounts() -> bool {
    let namespace = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    namespace("self").is_some_and(|ours| Some(ours) == namespace("1"))
}

/// Every entry of a routes map (the agent's, or a pinned one): peer subnet → tunnel.
pub fn routes<T: std::borrow::Borrow<MapData>>(
    map: &LpmTrie<T, u32, Tunnel>,
) -> Result<Vec<(Ipv4Net, Tunnel)>> {
    map.iter()
        .map(|entry| {
            let (key, tunnel) = entry.context("reading the routes map")?;
            let network = Ipv4Addr::from(u32::from_be(key.data()));
            let subnet = Ipv4Net::new(network, key.prefix_len() as u8)
                .context("a routes map key with a bad prefix length")?;
            Ok((subnet, tunnel))
        })
        .collect()
}

/// Every entry of an IPv6 routes map: peer IPv6 subnet → tunnel.
pub fn routes6<T: std::borrow::Borrow<MapData>>(
    map: &LpmTrie<T, [u8; 16], Tunnel6>,
) -> Result<Vec<(Ipv6Net, Tunnel6)>> {
    map.iter()
        .map(|entry| {
            let (key, tunnel) = entry.context("reading the IPv6 routes map")?;
            let subnet = Ipv6Net::new(Ipv6Addr::from(key.data()), key.prefix_len() as u8)
                .context("an IPv6 routes map key with a bad prefix length")?;
            Ok((subnet, tunnel))
        })
        .collect()
}

/// A removal finds the entry already gone: what we wanted.
fn absent_ok(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        result => result,
    }
}

fn route_key(subnet: Ipv4Net) -> Key<u32> {
    flannel_common::pins::route_key(u32::from(subnet.network()), subnet.prefix_len())
}

fn route6_key(subnet: Ipv6Net) -> Key<[u8; 16]> {
    Key::new(u32::from(subnet.prefix_len()), subnet.network().octets())
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?;
    program
        .try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}
