//! The network config at `<prefix>/config`, parsed and validated as flannel does.
//!
//! Keys match case-insensitively (Go's encoding/json), unknown keys are ignored, and every
//! refusal names the field and the rule it breaks.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};

use crate::family::Family;

pub const DEFAULT_VXLAN_PORT: u16 = flannel_common::VXLAN_PORT;
pub const DEFAULT_UDP_PORT: u16 = flannel_common::UDP_BACKEND_PORT;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `Network` and its subnets; None in an IPv6-only network (`EnableIPv4: false`).
    pub ipv4: Option<Ipv4Config>,
    /// `IPv6Network` and its subnets (`EnableIPv6`).
    pub ipv6: Option<Ipv6Config>,
    pub backend: Backend,
    /// `EnableNFTables`: the rules go to nftables tables rather than iptables chains.
    pub nftables: bool,
}

/// One family's network and its subnets, with flannel's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyConfig<A: Family> {
    pub network: A::Net,
    pub subnet_len: u8,
    pub subnet_min: A,
    pub subnet_max: A,
}

pub type Ipv4Config = FamilyConfig<Ipv4Addr>;
pub type Ipv6Config = FamilyConfig<Ipv6Addr>;

impl<A: Family> FamilyConfig<A> {
    /// Every subnet between the SubnetMin and SubnetMax, in order.
    pub fn subnets(&self) -> impl Iterator<Item = A::Net> + '_ {
        let step = 1u128 << (A::BITS - self.subnet_len);
        let max = self.subnet_max.bits();
        std::iter::successors(Some(self.subnet_min.bits()), move |addr| {
            addr.checked_add(step).filter(|next| *next <= max)
        })
        .filter_map(move |addr| A::net(A::from_bits(addr), self.subnet_len))
    }

    /// True when `subnet` is a subnet this config can hand out.
    pub fn contains_subnet(&self, subnet: &A::Net) -> bool {
        let (first, _) = A::span(subnet);
        A::prefix_len(subnet) == self.subnet_len
            && A::span(&self.network).0 <= first
            && first <= A::span(&self.network).1
            && (self.subnet_min.bits()..=self.subnet_max.bits()).contains(&first)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    Udp {
        port: u16,
    },
    Vxlan {
        vni: u32,
        port: u16,
        mtu: Option<u32>,
        /// `DirectRouting`: peers on our interface's subnet are routed to, not tunnelled.
        direct_routing: bool,
    },
    HostGw,
}

impl Backend {
    /// The `BackendType` string of flannel's leases and config.
    pub fn type_name(&self) -> &'static str {
        match self {
            Backend::Udp { .. } => "udp",
            Backend::Vxlan { .. } => "vxlan",
            Backend::HostGw => "host-gw",
        }
    }
}

impl Config {
    /// Which families the network carries: (IPv4, IPv6).
    pub fn families(&self) -> (bool, bool) {
        (self.ipv4.is_some(), self.ipv6.is_some())
    }

    /// What this flanneld can serve: the udp backend carries IPv4 only, as flannel's.
    pub fn check_supported(&self) -> Result<()> {
        match (&self.ipv6, &self.backend) {
            (Some(_), Backend::Udp { .. }) => bail!(
                "EnableIPv6: the udp backend carries IPv4 only, as flannel's; use vxlan or \
                 host-gw for a dual-stack or IPv6-only network"
            ),
            _ => Ok(()),
        }
    }
}

pub fn parse(json: &str) -> Result<Config> {
    let value: Value = serde_json::from_str(json).context("the config is not valid JSON")?;
    let root = value
        .as_object()
        .ok_or_else(|| anyhow!("the config must be a JSON object"))?;

    let ipv4 = match flag(root, "EnableIPv4")? {
        None | Some(true) => Some(parse_family(root)?),
        Some(false) => None,
    };
    let ipv6 = match flag(root, "EnableIPv6")? {
        Some(true) => Some(parse_family(root)?),
        _ => None,
    };
    if ipv4.is_none() && ipv6.is_none() {
        bail!("EnableIPv4 is false and EnableIPv6 is not true: the network has no address family");
    }

    let backend = match field(root, "Backend") {
        None | Some(Value::Null) => Backend::Udp {
            port: DEFAULT_UDP_PORT,
        },
        Some(Value::Object(backend)) => parse_backend(backend)?,
        Some(_) => bail!("Backend: must be an object"),
    };
    Ok(Config {
        ipv4,
        ipv6,
        backend,
        nftables: flag(root, "EnableNFTables")?.unwrap_or(false),
    })
}

/// `Network` (or `IPv6Network`) and its subnets, as flannel checks them; IPv6's scaled:
/// subnets default to /64, at most /126, and the network must hold four.
fn parse_family<A: Family>(root: &Map<String, Value>) -> Result<FamilyConfig<A>> {
    let name = format!("{}Network", field_prefix::<A>());
    let text = string(root, &name)?.ok_or_else(|| {
        anyhow!(A::pick(
            "Network is required (or EnableIPv4: false, for an IPv6-only network)",
            "IPv6Network is required when EnableIPv6 is true",
        ))
    })?;
    let network: A::Net = text
        .parse()
        .map_err(|_| anyhow!("{name}: {text:?} is not an {} CIDR", A::NAME))?;
    let network = A::trunc(&network);
    if A::prefix_len(&network) > A::BITS - 4 {
        bail!("{name}: {network} is smaller than /{}", A::BITS - 4);
    }
    let subnet_len = subnet_len::<A>(root, A::prefix_len(&network))?;
    let (subnet_min, subnet_max) = bounds::<A>(root, &network, subnet_len)?;
    Ok(FamilyConfig {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
    })
}

/// The config's name prefix of a family's fields: "" (`Network`, `SubnetLen`) or "IPv6".
fn field_prefix<A: Family>() -> &'static str {
    A::pick("", "IPv6")
}

/// `SubnetLen` (or `IPv6SubnetLen`): the default when absent or 0 (the family's default if
/// the network holds four of those, else the prefix + 2), else at most two bits short of a
/// host and at least four subnets to the network.
fn subnet_len<A: Family>(root: &Map<String, Value>, prefix: u8) -> Result<u8> {
    let name = format!("{}SubnetLen", field_prefix::<A>());
    let max = A::BITS - 2;
    match integer(root, &name)? {
        None | Some(0) => Ok(A::pick(24, 64).max(prefix + 2)),
        Some(len) if len > u64::from(max) => bail!("{name}: {len} is larger than {max}"),
        Some(len) if len < u64::from(prefix) + 2 => {
            bail!(
                "{name}: {len} must be at least the network's prefix + 2 ({})",
                prefix + 2
            )
        }
        Some(len) => Ok(len as u8),
    }
}

/// `SubnetMin` and `SubnetMax` (or their IPv6 names): by default the second subnet and the
/// last one.
fn bounds<A: Family>(
    root: &Map<String, Value>,
    network: &A::Net,
    subnet_len: u8,
) -> Result<(A, A)> {
    let step = 1u128 << (A::BITS - subnet_len);
    let (first, last) = A::span(network);
    let (min_name, max_name) = (
        format!("{}SubnetMin", field_prefix::<A>()),
        format!("{}SubnetMax", field_prefix::<A>()),
    );
    let min = bound::<A>(root, &min_name, network, subnet_len)?
        .unwrap_or_else(|| A::from_bits(first + step));
    let max = bound::<A>(root, &max_name, network, subnet_len)?
        .unwrap_or_else(|| A::from_bits(last - (step - 1)));
    if min > max {
        bail!("{min_name}: {min} is above {max_name} {max}");
    }
    Ok((min, max))
}

fn parse_backend(backend: &Map<String, Value>) -> Result<Backend> {
    let kind = string(backend, "Type")
        .context("Backend")?
        .ok_or_else(|| anyhow!("Backend.Type is required when Backend is given"))?;
    match kind.as_str() {
        "udp" => Ok(Backend::Udp {
            port: port(backend)?.unwrap_or(DEFAULT_UDP_PORT),
        }),
        "vxlan" => {
            if flag(backend, "GBP").context("Backend")? == Some(true) {
                bail!("Backend.GBP: VXLAN group policy is not supported by this flanneld");
            }
            if flag(backend, "Learning").context("Backend")? == Some(true) {
                bail!(
                    "Backend.Learning: address learning on the vxlan device is not supported by \
                     this flanneld (peers come from etcd)"
                );
            }
            let direct_routing = flag(backend, "DirectRouting").context("Backend")?;
            let vni = match integer(backend, "VNI").context("Backend")? {
                None => 1,
                Some(vni) if vni >= 1 << 24 => bail!("Backend.VNI: {vni} does not fit in 24 bits"),
                Some(vni) => vni as u32,
            };
            let mtu = match integer(backend, "MTU").context("Backend")? {
                None | Some(0) => None,
                Some(mtu) if !(576..=65535).contains(&mtu) => {
                    bail!("Backend.MTU: {mtu} is outside 576..65535")
                }
                Some(mtu) => Some(mtu as u32),
            };
            let port = match port(backend)? {
                None | Some(0) => DEFAULT_VXLAN_PORT,
                Some(port) => port,
            };
            Ok(Backend::Vxlan {
                vni,
                port,
                mtu,
                direct_routing: direct_routing.unwrap_or(false),
            })
        }
        "host-gw" => Ok(Backend::HostGw),
        "ipip" | "wireguard" | "alloc" | "ipsec" | "tencent-vpc" | "ali-vpc" | "aws-vpc"
        | "gce" | "extension" => {
            bail!("Backend.Type: {kind:?} is not supported by this flanneld (udp, vxlan, host-gw)")
        }
        other => bail!("Backend.Type: unknown backend {other:?} (udp, vxlan, host-gw)"),
    }
}

/// A field, matched case-insensitively as Go's encoding/json does.
fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object.get(name).or_else(|| {
        object
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    })
}

fn string(object: &Map<String, Value>, name: &str) -> Result<Option<String>> {
    match field(object, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => bail!("{name}: expected a string, got {other}"),
    }
}

fn flag(object: &Map<String, Value>, name: &str) -> Result<Option<bool>> {
    match field(object, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(on)) => Ok(Some(*on)),
        Some(other) => bail!("{name}: expected true or false, got {other}"),
    }
}

fn integer(object: &Map<String, Value>, name: &str) -> Result<Option<u64>> {
    match field(object, name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| anyhow!("{name}: expected a non-negative integer, got {value}")),
    }
}

fn port(backend: &Map<String, Value>) -> Result<Option<u16>> {
    match integer(backend, "Port").context("Backend")? {
        None => Ok(None),
        Some(port) => u16::try_from(port)
            .map(Some)
            .map_err(|_| anyhow!("Backend.Port: {port} is not a UDP port")),
    }
}

/// One of the bounds, if given: inside the network and aligned to the subnet length.
fn bound<A: Family>(
    root: &Map<String, Value>,
    name: &str,
    network: &A::Net,
    subnet_len: u8,
) -> Result<Option<A>> {
    let Some(text) = string(root, name)? else {
        return Ok(None);
    };
    let addr: A = text
        .parse()
        .map_err(|_| anyhow!("{name}: {text:?} is not an {} address", A::NAME))?;
    let (first, last) = A::span(network);
    if !(first..=last).contains(&addr.bits()) {
        bail!(
            "{name}: {addr} is not inside {}Network {network}",
            field_prefix::<A>()
        );
    }
    let host_bits = (1u128 << (A::BITS - subnet_len)) - 1;
    if addr.bits() & host_bits != 0 {
        bail!(
            "{name}: {addr} is not aligned to {}SubnetLen /{subnet_len}",
            field_prefix::<A>()
        );
    }
    Ok(Some(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(json: &str) -> Config {
        parse(json).unwrap_or_else(|e| panic!("{json}: {e:#}"))
    }

    fn ipv4(json: &str) -> Ipv4Config {
        ok(json).ipv4.expect("IPv4 on by default")
    }

    fn refusal(json: &str) -> String {
        format!("{:#}", parse(json).expect_err(json))
    }

    #[test]
    fn defaults_for_a_slash_16() {
        let config = ipv4(r#"{"Network": "10.1.0.0/16"}"#);
        assert_eq!(config.network.to_string(), "10.1.0.0/16");
        assert_eq!(config.subnet_len, 24);
        assert_eq!(config.subnet_min.to_string(), "10.1.1.0");
        assert_eq!(config.subnet_max.to_string(), "10.1.255.0");
        assert_eq!(config.subnets().count(), 255);
        assert_eq!(
            ok(r#"{"Network": "10.1.0.0/16"}"#).backend,
            Backend::Udp { port: 8285 },
            "no Backend means udp"
        );
    }

    #[test]
    fn small_networks_get_prefix_plus_two() {
        let config = ipv4(r#"{"Network": "10.1.2.0/23"}"#);
        assert_eq!(config.subnet_len, 25);
        assert_eq!(config.subnet_min.to_string(), "10.1.2.128");
        assert_eq!(config.subnet_max.to_string(), "10.1.3.128");
        let config = ipv4(r#"{"Network": "10.1.2.0/22"}"#);
        assert_eq!(config.subnet_len, 24);
        let config = ipv4(r#"{"Network": "10.1.2.16/28"}"#);
        assert_eq!(config.subnet_len, 30);
    }

    #[test]
    fn keys_match_case_insensitively_and_host_bits_are_masked() {
        let config = ok(
            r#"{"network": "10.1.7.9/16", "subnetlen": 26, "backend": {"type": "vxlan", "vni": 7, "port": 4789}, "Other": 1}"#,
        );
        let v4 = config.ipv4.as_ref().unwrap();
        assert_eq!(v4.network.to_string(), "10.1.0.0/16");
        assert_eq!(v4.subnet_len, 26);
        assert_eq!(
            config.backend,
            Backend::Vxlan {
                vni: 7,
                port: 4789,
                mtu: None,
                direct_routing: false,
            }
        );
    }

    #[test]
    fn flannel_v0_28_keys_are_taken() {
        let config = ok(r#"{"Network": "10.1.0.0/16", "EnableNFTables": true,
            "Backend": {"Type": "vxlan", "DirectRouting": true, "GBP": false, "Learning": false}}"#);
        assert!(config.nftables);
        assert_eq!(
            config.backend,
            Backend::Vxlan {
                vni: 1,
                port: 8472,
                mtu: None,
                direct_routing: true,
            }
        );
        assert!(!ok(r#"{"Network": "10.1.0.0/16"}"#).nftables);
    }

    #[test]
    fn vxlan_defaults_to_vni_1_and_the_kernel_port() {
        let config = ok(r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan", "Port": 0}}"#);
        assert_eq!(
            config.backend,
            Backend::Vxlan {
                vni: 1,
                port: 8472,
                mtu: None,
                direct_routing: false,
            }
        );
        let config = ok(r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "udp"}}"#);
        assert_eq!(config.backend, Backend::Udp { port: 8285 });
        let config = ok(r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "host-gw"}}"#);
        assert_eq!(config.backend, Backend::HostGw);
    }

    #[test]
    fn explicit_bounds() {
        let config = ipv4(
            r#"{"Network": "10.1.0.0/16", "SubnetMin": "10.1.10.0", "SubnetMax": "10.1.20.0"}"#,
        );
        assert_eq!(config.subnets().count(), 11);
        assert!(config.contains_subnet(&"10.1.15.0/24".parse().unwrap()));
        assert!(!config.contains_subnet(&"10.1.21.0/24".parse().unwrap()));
        assert!(!config.contains_subnet(&"10.1.15.0/25".parse().unwrap()));
    }

    #[test]
    fn dual_stack_defaults_as_flannel() {
        let config =
            ok(r#"{"Network": "10.1.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:1:2::/48"}"#);
        let v6 = config.ipv6.expect("EnableIPv6");
        assert_eq!(v6.network.to_string(), "fd00:1:2::/48");
        assert_eq!(v6.subnet_len, 64);
        assert_eq!(v6.subnet_min.to_string(), "fd00:1:2:1::");
        assert_eq!(v6.subnet_max.to_string(), "fd00:1:2:ffff::");
        // Small networks get the prefix + 2, as IPv4's; host bits are masked.
        let v6 =
            ok(r#"{"Network": "10.1.0.0/16", "enableipv6": true, "ipv6network": "fd00::1:0/112"}"#)
                .ipv6
                .unwrap();
        assert_eq!(v6.network.to_string(), "fd00::1:0/112");
        assert_eq!(v6.subnet_len, 114);
        assert_eq!(v6.subnet_min.to_string(), "fd00::1:4000");
        assert_eq!(v6.subnet_max.to_string(), "fd00::1:c000");
        let v6 = ok(r#"{"Network": "10.1.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/48",
                 "IPv6SubnetLen": 56, "IPv6SubnetMin": "fd00:0:0:1000::", "IPv6SubnetMax": "fd00:0:0:2000::"}"#)
        .ipv6
        .unwrap();
        assert_eq!(v6.subnet_len, 56);
        assert_eq!(v6.subnet_min.to_string(), "fd00:0:0:1000::");
        assert_eq!(v6.subnet_max.to_string(), "fd00:0:0:2000::");
        assert_eq!(
            ok(r#"{"Network": "10.1.0.0/16", "EnableIPv6": false}"#).ipv6,
            None
        );
        // IPv6 only: no Network needed, and one given is not used.
        for json in [
            r#"{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/48"}"#,
            r#"{"Network": "10.1.0.0/16", "EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/48"}"#,
        ] {
            let config = ok(json);
            assert_eq!(config.ipv4, None, "{json}");
            assert_eq!(config.ipv6.unwrap().network.to_string(), "fd00::/48");
        }
    }

    #[test]
    fn the_agent_refuses_what_its_datapaths_cannot_carry() {
        let dual =
            ok(r#"{"Network": "10.1.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/48"}"#);
        assert_eq!(
            format!("{:#}", dual.check_supported().unwrap_err()),
            "EnableIPv6: the udp backend carries IPv4 only, as flannel's; use vxlan or host-gw \
             for a dual-stack or IPv6-only network"
        );
        assert!(ok(r#"{"Network": "10.1.0.0/16"}"#)
            .check_supported()
            .is_ok());
        for (backend, ipv4) in [
            ("host-gw", true),
            ("vxlan", true),
            ("host-gw", false),
            ("vxlan", false),
        ] {
            let config = ok(&format!(
                r#"{{"Network": "10.1.0.0/16", "EnableIPv4": {ipv4}, "EnableIPv6": true,
                     "IPv6Network": "fd00::/48", "Backend": {{"Type": "{backend}"}}}}"#
            ));
            assert!(config.check_supported().is_ok());
        }
    }

    #[test]
    fn refusals_name_the_field_and_the_rule() {
        let cases = [
            (r#"{}"#, "Network is required"),
            (
                r#"{"Network": "10.1.0.0"}"#,
                r#"Network: "10.1.0.0" is not an IPv4 CIDR"#,
            ),
            (
                r#"{"Network": "fd00::/64"}"#,
                r#"Network: "fd00::/64" is not an IPv4 CIDR"#,
            ),
            (
                r#"{"Network": "10.1.0.0/29"}"#,
                "Network: 10.1.0.0/29 is smaller than /28",
            ),
            (
                r#"{"Network": "10.1.0.0/16", "SubnetLen": 31}"#,
                "SubnetLen: 31 is larger than 30",
            ),
            (
                r#"{"Network": "10.1.0.0/16", "SubnetLen": 17}"#,
                "SubnetLen: 17 must be at least the network's prefix + 2 (18)",
            ),
            (
                r#"{"Network": "10.1.0.0/16", "SubnetMin": "10.2.0.0"}"#,
                "SubnetMin: 10.2.0.0 is not inside Network 10.1.0.0/16",
            ),
            (
                r#"{"Network": "10.1.0.0/16", "SubnetMax": "10.1.3.128"}"#,
                "SubnetMax: 10.1.3.128 is not aligned to SubnetLen /24",
            ),
            (
                r#"{"Network": "10.1.0.0/16", "SubnetMin": "10.1.9.0", "SubnetMax": "10.1.3.0"}"#,
                "SubnetMin: 10.1.9.0 is above SubnetMax 10.1.3.0",
            ),
            (
                r#"{"Network": "10.1.0.0/16", "Backend": {}}"#,
                "Backend.Type is required when Backend is given",
            ),
            (
                r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "carrier-pigeon"}}"#,
                r#"Backend.Type: unknown backend "carrier-pigeon" (udp, vxlan, host-gw)"#,
            ),
            (
                r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "wireguard"}}"#,
                r#"Backend.Type: "wireguard" is not supported by this flanneld (udp, vxlan, host-gw)"#,
            ),
            (
                r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan", "VNI": 16777216}}"#,
                "Backend.VNI: 16777216 does not fit in 24 bits",
            ),
            (
                r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "udp", "Port": 70000}}"#,
                "Backend.Port: 70000 is not a UDP port",
            ),
            (
                r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan", "GBP": true}}"#,
                "Backend.GBP: VXLAN group policy is not supported by this flanneld",
            ),
            (
                r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan", "Learning": true}}"#,
                "Backend.Learning: address learning on the vxlan device is not supported by \
                 this flanneld (peers come from etcd)",
            ),
            (
                r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": 1}}"#,
                "Backend: DirectRouting: expected true or false, got 1",
            ),
            (
                r#"{"Network": "10.1.0.0/16", "EnableNFTables": "yes"}"#,
                r#"EnableNFTables: expected true or false, got "yes""#,
            ),
            (
                r#"{"Network": "10.1.0.0/16", "EnableIPv4": false}"#,
                "EnableIPv4 is false and EnableIPv6 is not true: the network has no address family",
            ),
            (
                r#"{"EnableIPv6": true, "IPv6Network": "fd00::/48"}"#,
                "Network is required (or EnableIPv4: false, for an IPv6-only network)",
            ),
            (
                r#"{"EnableIPv4": false, "EnableIPv6": true}"#,
                "IPv6Network is required when EnableIPv6 is true",
            ),
            (
                r#"{"Network": "10.1.0.0/16", "EnableIPv6": "yes"}"#,
                r#"EnableIPv6: expected true or false, got "yes""#,
            ),
            (
                r#"{"Network": "10.1.0.0/16", "EnableIPv6": true}"#,
                "IPv6Network is required when EnableIPv6 is true",
            ),
            (
                r#"{"Network": "10.1.0.0/16", "EnableIPv6": true, "IPv6Network": "10.2.0.0/16"}"#,
                r#"IPv6Network: "10.2.0.0/16" is not an IPv6 CIDR"#,
            ),
            (
                r#"{"Network": "10.1.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/125"}"#,
                "IPv6Network: fd00::/125 is smaller than /124",
            ),
            (
                r#"{"Network": "10.1.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/48", "IPv6SubnetLen": 127}"#,
                "IPv6SubnetLen: 127 is larger than 126",
            ),
            (
                r#"{"Network": "10.1.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/48", "IPv6SubnetLen": 49}"#,
                "IPv6SubnetLen: 49 must be at least the network's prefix + 2 (50)",
            ),
            (
                r#"{"Network": "10.1.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/48", "IPv6SubnetMin": "fd01::"}"#,
                "IPv6SubnetMin: fd01:: is not inside IPv6Network fd00::/48",
            ),
            (
                r#"{"Network": "10.1.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/48", "IPv6SubnetMax": "fd00:0:0:5::1"}"#,
                "IPv6SubnetMax: fd00:0:0:5::1 is not aligned to IPv6SubnetLen /64",
            ),
            (
                r#"{"Network": "10.1.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/48", "IPv6SubnetMin": "10.1.0.0"}"#,
                r#"IPv6SubnetMin: "10.1.0.0" is not an IPv6 address"#,
            ),
            (r#"{"Network": 10}"#, "Network: expected a string, got 10"),
            ("not json", "the config is not valid JSON"),
        ];
        for (json, expected) in cases {
            let message = refusal(json);
            assert!(
                message.starts_with(expected),
                "{json}: got {message:?}, want {expected:?}"
            );
        }
    }
}
