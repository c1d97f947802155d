//! Loading the eBPF programs and owning their maps.

use std::{fs, net::IpAddr, path::Path};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuHashMap},
    programs::{SchedClassifier, Xdp},
    Ebpf,
};
use flannel_common::{map_names, program_names, DropReason, Endpoint, PeerTraffic};

use crate::datapath::ebpf::entries::MapFamily;

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

    /// Writes the programs' settings: `CONFIG`'s [`flannel_common::DatapathConfig`] or `CONFIG6`'s
    /// [`flannel_common::DatapathConfig6`].
    pub fn set_config<C: aya::Pod>(&mut self, name: &str, config: C) -> Result<()> {
        let mut map: Array<&mut MapData, C> = self.map(name)?;
        map.set(0, config, 0)
            .with_context(|| format!("writing the datapath config {name}"))
    }

    /// Lets `public_ip` send to us, speaking for the subnet in `peer`.
    pub fn insert_peer<A: MapFamily>(&mut self, public_ip: A, peer: A::Peer) -> Result<()> {
        let mut map: HashMap<&mut MapData, A::Key, A::Peer> = self.map(A::PEERS)?;
        map.insert(public_ip.key(), peer, 0)
            .with_context(|| format!("adding peer {public_ip} to the {} peer map", A::NAME))
    }

    pub fn remove_peer<A: MapFamily>(&mut self, public_ip: A) -> Result<()> {
        let mut map: HashMap<&mut MapData, A::Key, A::Peer> = self.map(A::PEERS)?;
        absent_ok(map.remove(&public_ip.key()))
            .with_context(|| format!("removing peer {public_ip} from the {} peer map", A::NAME))
    }

    /// Routes `subnet` through `tunnel`.
    pub fn insert_route<A: MapFamily>(&mut self, subnet: A::Net, tunnel: A::Tunnel) -> Result<()> {
        let mut map: LpmTrie<&mut MapData, A::Key, A::Tunnel> = self.map(A::ROUTES)?;
        map.insert(&route_key::<A>(&subnet), tunnel, 0)
            .with_context(|| format!("adding the route to {subnet}"))
    }

    pub fn remove_route<A: MapFamily>(&mut self, subnet: A::Net) -> Result<()> {
        let mut map: LpmTrie<&mut MapData, A::Key, A::Tunnel> = self.map(A::ROUTES)?;
        absent_ok(map.remove(&route_key::<A>(&subnet)))
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
    pub fn track_traffic(&mut self, public_ip: IpAddr) -> Result<()> {
        let key = traffic_key(public_ip);
        let mut map: PerCpuHashMap<&mut MapData, [u8; 16], PeerTraffic> =
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

    pub fn untrack_traffic(&mut self, public_ip: IpAddr) -> Result<()> {
        let mut map: PerCpuHashMap<&mut MapData, [u8; 16], PeerTraffic> =
            self.map(map_names::TRAFFIC)?;
        absent_ok(map.remove(&traffic_key(public_ip)))
            .with_context(|| format!("removing traffic counters for {public_ip}"))
    }

    /// Traffic with `public_ip`, summed over CPUs.
    pub fn traffic(&mut self, public_ip: IpAddr) -> Result<PeerTraffic> {
        let map: PerCpuHashMap<&mut MapData, [u8; 16], PeerTraffic> =
            self.map(map_names::TRAFFIC)?;
        let per_cpu = map
            .get(&traffic_key(public_ip), 0)
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

/// Every entry of a routes map of family `A` (the agent's, or a pinned one): peer subnet →
/// tunnel.
pub fn routes<A: MapFamily, T: std::borrow::Borrow<MapData>>(
    map: &LpmTrie<T, A::Key, A::Tunnel>,
) -> Result<Vec<(A::Net, A::Tunnel)>> {
    map.iter()
        .map(|entry| {
            let (key, tunnel) =
                entry.with_context(|| format!("reading the {} routes map", A::NAME))?;
            let subnet =
                A::net(A::from_key(key.data()), key.prefix_len() as u8).with_context(|| {
                    format!("an {} routes map key with a bad prefix length", A::NAME)
                })?;
            Ok((subnet, tunnel))
        })
        .collect()
}

/// The key of a public address in the traffic map: IPv6, or IPv4 mapped.
fn traffic_key(public_ip: IpAddr) -> [u8; 16] {
    match public_ip {
        IpAddr::V4(ip) => flannel_common::traffic_key_v4(u32::from(ip).to_be()),
        IpAddr::V6(ip) => ip.octets(),
    }
}

/// A removal finds the entry already gone: what we wanted.
fn absent_ok(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        result => result,
    }
}

fn route_key<A: MapFamily>(subnet: &A::Net) -> Key<A::Key> {
    Key::new(u32::from(A::prefix_len(subnet)), A::network(subnet).key())
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
