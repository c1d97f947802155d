//! The network config at `<prefix>/config`, parsed and validated as flannel does.
//!
//! Keys match case-insensitively (Go's encoding/json), unknown keys are ignored, and every
//! refusal names the field and the rule it breaks.

use std::net::Ipv4Addr;

use anyhow::{anyhow, bail, Context, Result};
use ipnet::Ipv4Net;
use serde_json::{Map, Value};

pub const DEFAULT_VXLAN_PORT: u16 = flannel_common::VXLAN_PORT;
pub const DEFAULT_UDP_PORT: u16 = flannel_common::UDP_BACKEND_PORT;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
    pub backend: Backend,
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
    /// Every subnet between SubnetMin and SubnetMax, in order.
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let step = 1u32 << (32 - self.subnet_len);
        let (min, max) = (u32::from(self.subnet_min), u32::from(self.subnet_max));
        (min..=max)
            .step_by(step as usize)
            .map(move |addr| Ipv4Net::new(addr.into(), self.subnet_len).unwrap())
    }

    /// True when `subnet` is a subnet this config can hand out.
    pub fn contains_subnet(&self, subnet: &Ipv4Net) -> bool {
        subnet.prefix_len() == self.subnet_len
            && self.network.contains(subnet)
            && (self.subnet_min..=self.subnet_max).contains(&subnet.network())
    }
}

pub fn parse(json: &str) -> Result<Config> {
    let value: Value = serde_json::from_str(json).context("the config is not valid JSON")?;
    let root = value
        .as_object()
        .ok_or_else(|| anyhow!("the config must be a JSON object"))?;

    if field(root, "EnableIPv6").and_then(Value::as_bool) == Some(true) {
        bail!("EnableIPv6: IPv6 networks are not supported by this flanneld");
    }
    if field(root, "EnableIPv4").and_then(Value::as_bool) == Some(false) {
        bail!("EnableIPv4: an IPv4 network is required (IPv6-only is not supported)");
    }
    let network_text = string(root, "Network")?.ok_or_else(|| anyhow!("Network is required"))?;
    let network: Ipv4Net = network_text
        .parse()
        .map_err(|_| anyhow!("Network: {network_text:?} is not an IPv4 CIDR"))?;
    let network = network.trunc();
    let prefix = network.prefix_len();
    if prefix > 28 {
        bail!("Network: {network} is smaller than /28");
    }

    let subnet_len = match integer(root, "SubnetLen")? {
        None | Some(0) => {
            if prefix <= 22 {
                24
            } else {
                prefix + 2
            }
        }
        Some(len) if len > 30 => bail!("SubnetLen: {len} is larger than 30"),
        Some(len) if len < u64::from(prefix) + 2 => {
            bail!(
                "SubnetLen: {len} must be at least the network's prefix + 2 ({})",
                prefix + 2
            )
        }
        Some(len) => len as u8,
    };

    let step = 1u32 << (32 - subnet_len);
    let first = u32::from(network.network());
    let last = u32::from(network.broadcast()) - (step - 1);
    let subnet_min =
        bound(root, "SubnetMin", &network, subnet_len)?.unwrap_or((first + step).into());
    let subnet_max = bound(root, "SubnetMax", &network, subnet_len)?.unwrap_or(last.into());
    if subnet_min > subnet_max {
        bail!("SubnetMin: {subnet_min} is above SubnetMax {subnet_max}");
    }

    let backend = match field(root, "Backend") {
        None | Some(Value::Null) => Backend::Udp {
            port: DEFAULT_UDP_PORT,
        },
        Some(Value::Object(backend)) => parse_backend(backend)?,
        Some(_) => bail!("Backend: must be an object"),
    };
    Ok(Config {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
        backend,
    })
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
            if field(backend, "GBP").and_then(Value::as_bool) == Some(true) {
                bail!("Backend.GBP: VXLAN group policy is not supported by this flanneld");
            }
            if field(backend, "DirectRouting").and_then(Value::as_bool) == Some(true) {
                bail!("Backend.DirectRouting: not supported by this flanneld");
            }
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
            Ok(Backend::Vxlan { vni, port, mtu })
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

/// SubnetMin / SubnetMax: inside the network and aligned to SubnetLen.
fn bound(
    root: &Map<String, Value>,
    name: &str,
    network: &Ipv4Net,
    subnet_len: u8,
) -> Result<Option<Ipv4Addr>> {
    let Some(text) = string(root, name)? else {
        return Ok(None);
    };
    let addr: Ipv4Addr = text
        .parse()
        .map_err(|_| anyhow!("{name}: {text:?} is not an IPv4 address"))?;
    if !network.contains(&addr) {
        bail!("{name}: {addr} is not inside Network {network}");
    }
    let mask = u32::MAX >> subnet_len;
    if u32::from(addr) & mask != 0 {
        bail!("{name}: {addr} is not aligned to SubnetLen /{subnet_len}");
    }
    Ok(Some(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(json: &str) -> Config {
        parse(json).unwrap_or_else(|e| panic!("{json}: {e:#}"))
    }

    fn refusal(json: &str) -> String {
        format!("{:#}", parse(json).expect_err(json))
    }

    #[test]
    fn defaults_for_a_slash_16() {
        let config = ok(r#"{"Network": "10.1.0.0/16"}"#);
        assert_eq!(config.network.to_string(), "10.1.0.0/16");
        assert_eq!(config.subnet_len, 24);
        assert_eq!(config.subnet_min.to_string(), "10.1.1.0");
        assert_eq!(config.subnet_max.to_string(), "10.1.255.0");
        assert_eq!(
            config.backend,
            Backend::Udp { port: 8285 },
            "no Backend means udp"
        );
        assert_eq!(config.subnets().count(), 255);
    }

    #[test]
    fn small_networks_get_prefix_plus_two() {
        let config = ok(r#"{"Network": "10.1.2.0/23"}"#);
        assert_eq!(config.subnet_len, 25);
        assert_eq!(config.subnet_min.to_string(), "10.1.2.128");
        assert_eq!(config.subnet_max.to_string(), "10.1.3.128");
        let config = ok(r#"{"Network": "10.1.2.0/22"}"#);
        assert_eq!(config.subnet_len, 24);
        let config = ok(r#"{"Network": "10.1.2.16/28"}"#);
        assert_eq!(config.subnet_len, 30);
    }

    #[test]
    fn keys_match_case_insensitively_and_host_bits_are_masked() {
        let config = ok(
            r#"{"network": "10.1.7.9/16", "subnetlen": 26, "backend": {"type": "vxlan", "vni": 7, "port": 4789}, "Other": 1}"#,
        );
        assert_eq!(config.network.to_string(), "10.1.0.0/16");
        assert_eq!(config.subnet_len, 26);
        assert_eq!(
            config.backend,
            Backend::Vxlan {
                vni: 7,
                port: 4789,
                mtu: None
            }
        );
    }

    #[test]
    fn vxlan_defaults_to_vni_1_and_the_kernel_port() {
        let config = ok(r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan", "Port": 0}}"#);
        assert_eq!(
            config.backend,
            Backend::Vxlan {
                vni: 1,
                port: 8472,
                mtu: None
            }
        );
        let config = ok(r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "udp"}}"#);
        assert_eq!(config.backend, Backend::Udp { port: 8285 });
        let config = ok(r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "host-gw"}}"#);
        assert_eq!(config.backend, Backend::HostGw);
    }

    #[test]
    fn explicit_bounds() {
        let config =
            ok(r#"{"Network": "10.1.0.0/16", "SubnetMin": "10.1.10.0", "SubnetMax": "10.1.20.0"}"#);
        assert_eq!(config.subnets().count(), 11);
        assert!(config.contains_subnet(&"10.1.15.0/24".parse().unwrap()));
        assert!(!config.contains_subnet(&"10.1.21.0/24".parse().unwrap()));
        assert!(!config.contains_subnet(&"10.1.15.0/25".parse().unwrap()));
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
                r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": true}}"#,
                "Backend.DirectRouting: not supported by this flanneld",
            ),
            (
                r#"{"Network": "10.1.0.0/16", "EnableIPv6": true}"#,
                "EnableIPv6: IPv6 networks are not supported by this flanneld",
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
