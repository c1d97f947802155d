//! Loading the eBPF programs and owning their maps.

use std::{net::Ipv4Addr, path::Path};

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{SchedClassifier, Xdp},
    Ebpf,
};
use flannel_common::{map_names, program_names, DatapathConfig, DropReason, PeerInfo};

/// The object built from `flannel-ebpf` when this binary was compiled.
static EMBEDDED_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flannel.bpf.o"));

/// The loaded programs and their maps.
pub struct Programs {
    ebpf: Ebpf,
}

impl Programs {
    /// Loads the embedded object, or the one at `object` (`--bpf-object`), and verifies both
    /// programs in the kernel.
    pub fn load(object: Option<&Path>) -> Result<Self> {
        let mut ebpf = match object {
            Some(path) => Ebpf::load_file(path)
                .with_context(|| format!("loading eBPF object {}", path.display()))?,
            None => Ebpf::load(EMBEDDED_OBJECT).context("loading the embedded eBPF object")?,
        };
        let xdp: &mut Xdp = program(&mut ebpf, program_names::XDP_INGRESS)?;
        xdp.load().context("verifying xdp_ingress")?;
        let tc: &mut SchedClassifier = program(&mut ebpf, program_names::TC_INGRESS)?;
        tc.load().context("verifying tc_ingress")?;
        Ok(Self { ebpf })
    }

    pub fn xdp_ingress(&mut self) -> &mut Xdp {
        program(&mut self.ebpf, program_names::XDP_INGRESS).expect("checked at load")
    }

    pub fn tc_ingress(&mut self) -> &mut SchedClassifier {
        program(&mut self.ebpf, program_names::TC_INGRESS).expect("checked at load")
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
        map.remove(&u32::from(public_ip).to_be())
            .with_context(|| format!("removing peer {public_ip} from the peer map"))
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
