//! Leases as flannel stores them: the key `<prefix>/subnets/10.1.83.0-24` and a JSON value that
//! must match flannel's byte for byte.

use std::{fmt, net::Ipv4Addr, str::FromStr};

use anyhow::{anyhow, bail, Context, Result};
use ipnet::Ipv4Net;
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

/// The value of a lease key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseAttrs {
    pub public_ip: Ipv4Addr,
    pub backend: BackendAttrs,
}

impl LeaseAttrs {
    /// The JSON flannel writes, byte for byte (field order, `null`, lower-case MAC).
    pub fn to_json(&self) -> String {
        let ip = self.public_ip;
        match &self.backend {
            BackendAttrs::Udp => format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null}}"#),
            BackendAttrs::Vxlan { vni, vtep_mac } => format!(
                r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":{vni},"VtepMAC":"{vtep_mac}"}}}}"#
            ),
            BackendAttrs::HostGw => {
                format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"host-gw"}}"#)
            }
            BackendAttrs::Other(kind) => format!(
                r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":{}}}"#,
                Value::String(kind.clone())
            ),
        }
    }

    /// Parses a lease value written by flannel or by us (keys case-insensitive, as Go's).
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
        let backend = match get(&value, "BackendType") {
            None | Some(Value::Null) => BackendAttrs::Udp,
            Some(Value::String(kind)) if kind.is_empty() || kind == "udp" => BackendAttrs::Udp,
            Some(Value::String(kind)) if kind == "host-gw" => BackendAttrs::HostGw,
            Some(Value::String(kind)) if kind == "vxlan" => {
                let data = get(&value, "BackendData").ok_or_else(|| anyhow!("no BackendData"))?;
                let vni = get(&data, "VNI").and_then(|v| v.as_u64()).unwrap_or(1);
                let mac = get(&data, "VtepMAC")
                    .and_then(|mac| mac.as_str().map(str::to_owned))
                    .ok_or_else(|| anyhow!("no BackendData.VtepMAC"))?;
                let vni = u32::try_from(vni).map_err(|_| anyhow!("VNI {vni} out of range"))?;
                BackendAttrs::Vxlan {
                    vni,
                    vtep_mac: mac.parse()?,
                }
            }
            Some(Value::String(kind)) => BackendAttrs::Other(kind),
            Some(other) => bail!("BackendType {other} is not a string"),
        };
        Ok(LeaseAttrs { public_ip, backend })
    }
}

/// `<prefix>/subnets/`
pub fn subnets_prefix(etcd_prefix: &str) -> String {
    format!("{}/subnets/", etcd_prefix.trim_end_matches('/'))
}

/// `<prefix>/subnets/10.1.83.0-24`
pub fn subnet_key(etcd_prefix: &str, subnet: &Ipv4Net) -> String {
    format!(
        "{}{}-{}",
        subnets_prefix(etcd_prefix),
        subnet.network(),
        subnet.prefix_len()
    )
}

/// The subnet named by a key under `subnets/`; a dual-stack key's `&<ipv6>-<len>` part is
/// ignored. None for a key that does not parse.
pub fn parse_subnet_key(etcd_prefix: &str, key: &str) -> Option<Ipv4Net> {
    let name = key.strip_prefix(&subnets_prefix(etcd_prefix))?;
    let v4 = name.split('&').next()?;
    let (addr, len) = v4.split_once('-')?;
    let subnet = Ipv4Net::new(addr.parse().ok()?, len.parse().ok()?).ok()?;
    (subnet.trunc() == subnet).then_some(subnet)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 3);

    #[test]
    fn lease_json_is_flannels_byte_for_byte() {
        let vxlan = LeaseAttrs {
            public_ip: IP,
            backend: BackendAttrs::Vxlan {
                vni: 1,
                vtep_mac: "C6:D2:32:6F:8F:44".parse().unwrap(),
            },
        };
        assert_eq!(
            vxlan.to_json(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
        );
        let host_gw = LeaseAttrs {
            public_ip: IP,
            backend: BackendAttrs::HostGw,
        };
        assert_eq!(
            host_gw.to_json(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"host-gw"}"#
        );
        let udp = LeaseAttrs {
            public_ip: IP,
            backend: BackendAttrs::Udp,
        };
        assert_eq!(
            udp.to_json(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null}"#
        );
        for attrs in [vxlan, host_gw, udp] {
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
        ] {
            assert!(LeaseAttrs::from_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys() {
        let subnet: Ipv4Net = "10.1.83.0/24".parse().unwrap();
        let prefix = "/coreos.com/network";
        assert_eq!(
            subnet_key(prefix, &subnet),
            "/coreos.com/network/subnets/10.1.83.0-24"
        );
        assert_eq!(
            subnet_key("/coreos.com/network/", &subnet),
            subnet_key(prefix, &subnet)
        );
        let parse = |key| parse_subnet_key(prefix, key);
        assert_eq!(
            parse("/coreos.com/network/subnets/10.1.83.0-24"),
            Some(subnet)
        );
        assert_eq!(
            parse("/coreos.com/network/subnets/10.1.83.0-24&fc00::-64"),
            Some(subnet)
        );
        for bad in [
            "10.1.83.0-24",
            "/coreos.com/network/subnets/10.1.83.0",
            "/coreos.com/network/subnets/10.1.83.7-24",
            "/coreos.com/network/subnets/junk",
            "/coreos.com/network/subnets/10.1.83.0-33",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
