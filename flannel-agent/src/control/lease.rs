//! Leases as flannel stores them: the key `<prefix>/subnets/10.1.83.0-24` and a JSON value that
//! must match flannel's byte for byte.

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use anyhow::{anyhow, bail, Context, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::Value;

/// A MAC address, printed lower case with colons as Go's `net.HardwareAddr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for Mac {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> Result<Self> {
        let mut mac = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut mac {
            let part = parts
                .next()
                .ok_or_else(|| anyhow!("{text:?} is not a MAC address"))?;
            *byte = u8::from_str_radix(part, 16)
                .ok()
                .filter(|_| part.len() == 2)
                .ok_or_else(|| anyhow!("{text:?} is not a MAC address"))?;
        }
        if parts.next().is_some() {
            bail!("{text:?} is not a MAC address");
        }
        Ok(Mac(mac))
    }
}

/// What a lease says about its host's backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendAttrs {
    /// flannel's udp backend writes no BackendType at all.
    Udp,
    Vxlan {
        vni: u32,
        vtep_mac: Mac,
        /// The IPv6 vxlan device's MAC (`BackendV6Data`), in a dual-stack network.
        v6_vtep_mac: Option<Mac>,
    },
    HostGw,
    /// Another backend type (ipip, wireguard, ...): not ours to talk to.
    Other(String),
}

impl BackendAttrs {
    pub fn type_name(&self) -> &str {
        match self {
            BackendAttrs::Udp => "udp",
            BackendAttrs::Vxlan { .. } => "vxlan",
            BackendAttrs::HostGw => "host-gw",
            BackendAttrs::Other(name) => name,
        }
    }
}

/// What a lease says besides its IPv4 subnet: its key's IPv6 subnet, and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseAttrs {
    /// The IPv6 subnet, in a dual-stack network; named by the key, not in the value.
    pub ipv6_subnet: Option<Ipv6Net>,
    pub public_ip: Ipv4Addr,
    /// The host's IPv6 address, in a dual-stack network.
    pub public_ipv6: Option<Ipv6Addr>,
    pub backend: BackendAttrs,
}

impl LeaseAttrs {
    /// The value's JSON as flannel writes it, byte for byte (field order, `null`, lower-case
    /// MAC).
    pub fn to_json(&self) -> String {
        let ip = self.public_ip;
        let ipv6 = match self.public_ipv6 {
            Some(ipv6) => format!(r#""{ipv6}""#),
            None => "null".to_owned(),
        };
        let head = format!(r#""PublicIP":"{ip}","PublicIPv6":{ipv6}"#);
        match &self.backend {
            BackendAttrs::Udp => format!("{{{head}}}"),
            BackendAttrs::Vxlan {
                vni,
                vtep_mac,
                v6_vtep_mac,
            } => {
                let data = |mac| format!(r#"{{"VNI":{vni},"VtepMAC":"{mac}"}}"#);
                let v6_data = v6_vtep_mac
                    .map(|mac| format!(r#","BackendV6Data":{}"#, data(mac)))
                    .unwrap_or_default();
                format!(
                    r#"{{{head},"BackendType":"vxlan","BackendData":{}{v6_data}}}"#,
                    data(*vtep_mac)
                )
            }
            BackendAttrs::HostGw => format!(r#"{{{head},"BackendType":"host-gw"}}"#),
            BackendAttrs::Other(kind) => format!(
                r#"{{{head},"BackendType":{}}}"#,
                Value::String(kind.clone())
            ),
        }
    }

    /// Parses a lease value written by flannel or by us (keys case-insensitive, as Go's); the
    /// IPv6 subnet comes from the key.
    pub fn from_json(json: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(json).context("not JSON")?;
        let get = |object: &Value, name: &str| -> Option<Value> {
            object.as_object().and_then(|map| {
                map.iter()
                    .find(|(key, _)| key.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
            })
        };
        let public_ip = get(&value, "PublicIP")
            .and_then(|ip| ip.as_str().map(str::to_owned))
            .ok_or_else(|| anyhow!("no PublicIP"))?;
        let public_ip: Ipv4Addr = public_ip
            .parse()
            .map_err(|_| anyhow!("PublicIP {public_ip:?} is not IPv4"))?;
        let public_ipv6 = match get(&value, "PublicIPv6") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(
                text.parse()
                    .map_err(|_| anyhow!("PublicIPv6 {text:?} is not IPv6"))?,
            ),
            Some(other) => bail!("PublicIPv6 {other} is not a string"),
        };
        let backend = match get(&value, "BackendType") {
            None | Some(Value::Null) => BackendAttrs::Udp,
            Some(Value::String(kind)) if kind.is_empty() || kind == "udp" => BackendAttrs::Udp,
            Some(Value::String(kind)) if kind == "host-gw" => BackendAttrs::HostGw,
            Some(Value::String(kind)) if kind == "vxlan" => {
                let vxlan_data = |name: &str| -> Result<(u32, Mac)> {
                    let data = get(&value, name).ok_or_else(|| anyhow!("no {name}"))?;
                    let vni = get(&data, "VNI").and_then(|v| v.as_u64()).unwrap_or(1);
                    let mac = get(&data, "VtepMAC")
                        .and_then(|mac| mac.as_str().map(str::to_owned))
                        .ok_or_else(|| anyhow!("no {name}.VtepMAC"))?;
                    let vni = u32::try_from(vni).map_err(|_| anyhow!("VNI {vni} out of range"))?;
                    Ok((vni, mac.parse()?))
                };
                let (vni, vtep_mac) = vxlan_data("BackendData")?;
                let v6_vtep_mac = match get(&value, "BackendV6Data") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(vxlan_data("BackendV6Data")?.1),
                };
                BackendAttrs::Vxlan {
                    vni,
                    vtep_mac,
                    v6_vtep_mac,
                }
            }
            Some(Value::String(kind)) => BackendAttrs::Other(kind),
            Some(other) => bail!("BackendType {other} is not a string"),
        };
        Ok(LeaseAttrs {
            ipv6_subnet: None,
            public_ip,
            public_ipv6,
            backend,
        })
    }
}

/// Whether two subnets (of one family) share an address: aligned prefixes do when one holds
/// the other.
pub fn overlap(a: impl Into<IpNet>, b: impl Into<IpNet>) -> bool {
    let (a, b) = (a.into(), b.into());
    a.contains(&b.network()) || b.contains(&a.network())
}

/// `<prefix>/subnets/`
pub fn subnets_prefix(etcd_prefix: &str) -> String {
    format!("{}/subnets/", etcd_prefix.trim_end_matches('/'))
}

/// `<prefix>/subnets/10.1.83.0-24`, or in a dual-stack network
/// `<prefix>/subnets/10.1.83.0-24&fd00:0:0:53::-64`.
pub fn subnet_key(etcd_prefix: &str, subnet: &Ipv4Net, ipv6: Option<&Ipv6Net>) -> String {
    let mut key = format!(
        "{}{}-{}",
        subnets_prefix(etcd_prefix),
        subnet.network(),
        subnet.prefix_len()
    );
    if let Some(ipv6) = ipv6 {
        key.push_str(&format!("&{}-{}", ipv6.network(), ipv6.prefix_len()));
    }
    key
}

/// The subnets named by a key under `subnets/`: IPv4, and IPv6 after a `&`. None for a key
/// that does not parse.
pub fn parse_subnet_key(etcd_prefix: &str, key: &str) -> Option<(Ipv4Net, Option<Ipv6Net>)> {
    let name = key.strip_prefix(&subnets_prefix(etcd_prefix))?;
    let (v4, v6) = match name.split_once('&') {
        Some((v4, v6)) => (v4, Some(v6)),
        None => (name, None),
    };
    let (addr, len) = v4.split_once('-')?;
    let subnet = Ipv4Net::new(addr.parse().ok()?, len.parse().ok()?).ok()?;
    let ipv6 = match v6 {
        Some(v6) => {
            let (addr, len) = v6.split_once('-')?;
            let ipv6 = Ipv6Net::new(addr.parse().ok()?, len.parse().ok()?).ok()?;
            if ipv6.trunc() != ipv6 {
                return None;
            }
            Some(ipv6)
        }
        None => None,
    };
    (subnet.trunc() == subnet).then_some((subnet, ipv6))
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 3);

    #[test]
    fn lease_json_is_flannels_byte_for_byte() {
        let vxlan = LeaseAttrs {
            ipv6_subnet: None,
            public_ip: IP,
            public_ipv6: None,
            backend: BackendAttrs::Vxlan {
                vni: 1,
                vtep_mac: "C6:D2:32:6F:8F:44".parse().unwrap(),
                v6_vtep_mac: None,
            },
        };
        assert_eq!(
            vxlan.to_json(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
        );
        let host_gw = LeaseAttrs {
            ipv6_subnet: None,
            public_ip: IP,
            public_ipv6: None,
            backend: BackendAttrs::HostGw,
        };
        assert_eq!(
            host_gw.to_json(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"host-gw"}"#
        );
        let udp = LeaseAttrs {
            ipv6_subnet: None,
            public_ip: IP,
            public_ipv6: None,
            backend: BackendAttrs::Udp,
        };
        assert_eq!(
            udp.to_json(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null}"#
        );
        // Dual stack, as flannel's host-gw writes it.
        let dual = LeaseAttrs {
            public_ipv6: Some("fd00:64::3".parse().unwrap()),
            ..host_gw.clone()
        };
        assert_eq!(
            dual.to_json(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":"fd00:64::3","BackendType":"host-gw"}"#
        );
        // Dual stack, as flannel's vxlan writes it: the IPv6 device's MAC in BackendV6Data.
        let dual_vxlan = LeaseAttrs {
            public_ipv6: Some("fd00:64::3".parse().unwrap()),
            backend: BackendAttrs::Vxlan {
                vni: 1,
                vtep_mac: "c6:d2:32:6f:8f:44".parse().unwrap(),
                v6_vtep_mac: Some("8a:3e:10:5b:2c:01".parse().unwrap()),
            },
            ..vxlan.clone()
        };
        assert_eq!(
            dual_vxlan.to_json(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":"fd00:64::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"8a:3e:10:5b:2c:01"}}"#
        );
        for attrs in [vxlan, host_gw, udp, dual, dual_vxlan] {
            assert_eq!(LeaseAttrs::from_json(&attrs.to_json()).unwrap(), attrs);
        }
    }

    #[test]
    fn reads_other_backends_and_go_spellings() {
        let wg = LeaseAttrs::from_json(
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"x"}}"#,
        )
        .unwrap();
        assert_eq!(wg.backend, BackendAttrs::Other("wireguard".into()));
        let lower = LeaseAttrs::from_json(r#"{"publicip":"192.168.64.3","backendtype":"host-gw"}"#);
        assert_eq!(lower.unwrap().backend, BackendAttrs::HostGw);
        for bad in [
            "garbage",
            r#"{"PublicIP":"nope"}"#,
            r#"{"PublicIPv6":null}"#,
            r#"{"PublicIP":"192.168.64.3","BackendType":"vxlan","BackendData":{"VNI":1}}"#,
            r#"{"PublicIP":"192.168.64.3","BackendType":"vxlan","BackendData":{"VtepMAC":"zz"}}"#,
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":"192.168.64.4"}"#,
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":6}"#,
            r#"{"PublicIP":"192.168.64.3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1}}"#,
        ] {
            assert!(LeaseAttrs::from_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys() {
        let subnet: Ipv4Net = "10.1.83.0/24".parse().unwrap();
        let ipv6: Ipv6Net = "fd00:0:0:53::/64".parse().unwrap();
        let prefix = "/coreos.com/network";
        assert_eq!(
            subnet_key(prefix, &subnet, None),
            "/coreos.com/network/subnets/10.1.83.0-24"
        );
        assert_eq!(
            subnet_key(prefix, &subnet, Some(&ipv6)),
            "/coreos.com/network/subnets/10.1.83.0-24&fd00:0:0:53::-64"
        );
        assert_eq!(
            subnet_key("/coreos.com/network/", &subnet, None),
            subnet_key(prefix, &subnet, None)
        );
        let parse = |key| parse_subnet_key(prefix, key);
        assert_eq!(
            parse("/coreos.com/network/subnets/10.1.83.0-24"),
            Some((subnet, None))
        );
        assert_eq!(
            parse("/coreos.com/network/subnets/10.1.83.0-24&fd00:0:0:53::-64"),
            Some((subnet, Some(ipv6)))
        );
        // flannel's IPv6-only form names no IPv4 subnet.
        assert_eq!(
            parse("/coreos.com/network/subnets/0.0.0.0-0&fc00::-64"),
            Some((
                "0.0.0.0/0".parse().unwrap(),
                Some("fc00::/64".parse().unwrap())
            ))
        );
        for bad in [
            "10.1.83.0-24",
            "/coreos.com/network/subnets/10.1.83.0",
            "/coreos.com/network/subnets/10.1.83.7-24",
            "/coreos.com/network/subnets/junk",
            "/coreos.com/network/subnets/10.1.83.0-33",
            "/coreos.com/network/subnets/10.1.83.0-24&fd00::1-64",
            "/coreos.com/network/subnets/10.1.83.0-24&fd00::-129",
            "/coreos.com/network/subnets/10.1.83.0-24&junk",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
