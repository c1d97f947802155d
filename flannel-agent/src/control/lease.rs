//! Leases as flannel stores them: the key `<prefix>/subnets/10.1.83.0-24` and a JSON value that
//! must match flannel's byte for byte.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use anyhow::{anyhow, bail, Context, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::Value;

use crate::family::Family;

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
        /// The IPv4 vxlan device's MAC (`BackendData`); none in an IPv6-only network.
        vtep_mac: Option<Mac>,
        /// The IPv6 vxlan device's MAC (`BackendV6Data`), in a dual-stack or IPv6-only
        /// network.
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

/// A lease's subnets, as its key names them: IPv4 (none in an IPv6-only network) and IPv6
/// (in a dual-stack or IPv6-only network). Every table knows a lease by these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subnets {
    pub ipv4: Option<Ipv4Net>,
    pub ipv6: Option<Ipv6Net>,
}

impl Subnets {
    pub fn ipv4(subnet: Ipv4Net) -> Self {
        Self {
            ipv4: Some(subnet),
            ipv6: None,
        }
    }

    /// The subnet of family `A`, if the lease has one.
    pub fn half<A: Family>(&self) -> Option<A::Net> {
        A::pick(self.ipv4.map(IpNet::V4), self.ipv6.map(IpNet::V6)).and_then(A::net_of)
    }

    /// The subnets it has, IPv4's first.
    pub fn halves(&self) -> impl Iterator<Item = IpNet> {
        (self.ipv4.map(IpNet::V4).into_iter()).chain(self.ipv6.map(IpNet::V6))
    }

    /// The IPv4 subnet, or the IPv6 one when there is no IPv4 (an IPv6-only network).
    pub fn either(&self) -> Option<IpNet> {
        (self.ipv4.map(IpNet::V4)).or(self.ipv6.map(IpNet::V6))
    }

    /// `<prefix>/subnets/10.1.83.0-24`; in a dual-stack network
    /// `<prefix>/subnets/10.1.83.0-24&fd00:0:0:53::-64`, in an IPv6-only one
    /// `<prefix>/subnets/0.0.0.0-0&fd00:0:0:53::-64`, as flannel writes them.
    pub fn key(&self, etcd_prefix: &str) -> String {
        let ipv4 = self.ipv4.unwrap_or_default();
        let mut key = format!(
            "{}{}-{}",
            subnets_prefix(etcd_prefix),
            ipv4.network(),
            ipv4.prefix_len()
        );
        if let Some(ipv6) = self.ipv6 {
            key.push_str(&format!("&{}-{}", ipv6.network(), ipv6.prefix_len()));
        }
        key
    }

    /// The subnets named by a key under `subnets/`: IPv4, and IPv6 after a `&` (flannel's
    /// `0.0.0.0-0` names no IPv4 subnet; alone it names none, which the peer table rejects).
    /// None for a key that does not parse.
    pub fn parse_key(etcd_prefix: &str, key: &str) -> Option<Self> {
        let name = key.strip_prefix(&subnets_prefix(etcd_prefix))?;
        let (v4, v6) = match name.split_once('&') {
            Some((v4, v6)) => (v4, Some(v6)),
            None => (name, None),
        };
        let (addr, len) = v4.split_once('-')?;
        let ipv4 = Ipv4Net::new(addr.parse().ok()?, len.parse().ok()?).ok()?;
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
        if ipv4.trunc() != ipv4 {
            return None;
        }
        let ipv4 = (ipv4 != Ipv4Net::default()).then_some(ipv4);
        Some(Self { ipv4, ipv6 })
    }
}

impl fmt::Display for Subnets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ipv4, self.ipv6) {
            (Some(ipv4), Some(ipv6)) => write!(f, "{ipv4}&{ipv6}"),
            (Some(ipv4), None) => write!(f, "{ipv4}"),
            (None, Some(ipv6)) => write!(f, "{ipv6}"),
            (None, None) => f.write_str("no subnet"),
        }
    }
}

/// The `Display` form back: `10.1.83.0/24`, `fd00::/64` or `10.1.83.0/24&fd00::/64`.
impl FromStr for Subnets {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> Result<Self> {
        let bad = || anyhow!("{text:?} names no subnets");
        let mut subnets = Self {
            ipv4: None,
            ipv6: None,
        };
        for part in text.split('&') {
            match part.parse::<IpNet>().map_err(|_| bad())? {
                IpNet::V4(v4) if subnets.ipv4.is_none() => subnets.ipv4 = Some(v4),
                IpNet::V6(v6) if subnets.ipv6.is_none() => subnets.ipv6 = Some(v6),
                _ => return Err(bad()),
            }
        }
        Ok(subnets)
    }
}

fn both_into<N: Into<IpNet>>((network, subnet): (N, N)) -> (IpNet, IpNet) {
    (network.into(), subnet.into())
}

/// Our end of the overlay, once leased: per family in use, the network and our subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ours {
    pub ipv4: Option<(Ipv4Net, Ipv4Net)>,
    pub ipv6: Option<(Ipv6Net, Ipv6Net)>,
}

impl Ours {
    /// The network and our subnet of family `A`, if the network carries it.
    pub fn half<A: Family>(&self) -> Option<(A::Net, A::Net)> {
        let (v4, v6) = (self.ipv4.map(both_into), self.ipv6.map(both_into));
        let (network, subnet) = A::pick(v4, v6)?;
        Some((A::net_of(network)?, A::net_of(subnet)?))
    }

    pub fn subnets(&self) -> Subnets {
        Subnets {
            ipv4: self.ipv4.map(|(_, subnet)| subnet),
            ipv6: self.ipv6.map(|(_, subnet)| subnet),
        }
    }
}

/// What a lease's value says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseAttrs {
    /// `0.0.0.0` in an IPv6-only network, as flannel writes it.
    pub public_ip: Ipv4Addr,
    /// The host's IPv6 address, in a dual-stack network.
    pub public_ipv6: Option<Ipv6Addr>,
    pub backend: BackendAttrs,
}

impl LeaseAttrs {
    /// The public address of family `A` (IPv4's is `0.0.0.0` in an IPv6-only network).
    pub fn public<A: Family>(&self) -> Option<A> {
        A::pick(
            Some(self.public_ip.into()),
            self.public_ipv6.map(IpAddr::V6),
        )
        .and_then(A::of)
    }

    /// The VTEP MAC of family `A`'s vxlan device; None for other backends.
    pub fn vtep_mac<A: Family>(&self) -> Option<Mac> {
        match self.backend {
            BackendAttrs::Vxlan {
                vtep_mac,
                v6_vtep_mac,
                ..
            } => A::pick(vtep_mac, v6_vtep_mac),
            _ => None,
        }
    }

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
                let data = |name, mac: Option<Mac>| {
                    mac.map(|mac| format!(r#","{name}":{{"VNI":{vni},"VtepMAC":"{mac}"}}"#))
                        .unwrap_or_default()
                };
                format!(
                    r#"{{{head},"BackendType":"vxlan"{}{}}}"#,
                    data("BackendData", *vtep_mac),
                    data("BackendV6Data", *v6_vtep_mac)
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
                // Either may be absent (IPv4 or IPv6 only), not both.
                let vxlan_data = |name: &str| -> Result<Option<(u32, Mac)>> {
                    let data = match get(&value, name) {
                        None | Some(Value::Null) => return Ok(None),
                        Some(data) => data,
                    };
                    let vni = get(&data, "VNI").and_then(|v| v.as_u64()).unwrap_or(1);
                    let mac = get(&data, "VtepMAC")
                        .and_then(|mac| mac.as_str().map(str::to_owned))
                        .ok_or_else(|| anyhow!("no {name}.VtepMAC"))?;
                    let vni = u32::try_from(vni).map_err(|_| anyhow!("VNI {vni} out of range"))?;
                    Ok(Some((vni, mac.parse()?)))
                };
                let (v4, v6) = (vxlan_data("BackendData")?, vxlan_data("BackendV6Data")?);
                let vni =
                    (v4.or(v6).map(|(vni, _)| vni)).ok_or_else(|| anyhow!("no BackendData"))?;
                let (vtep_mac, v6_vtep_mac) = (v4.map(|d| d.1), v6.map(|d| d.1));
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

#[cfg(test)]
mod tests {
    use super::*;

    const IP: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 3);

    #[test]
    fn lease_json_is_flannels_byte_for_byte() {
        let vxlan = LeaseAttrs {
            public_ip: IP,
            public_ipv6: None,
            backend: BackendAttrs::Vxlan {
                vni: 1,
                vtep_mac: Some("C6:D2:32:6F:8F:44".parse().unwrap()),
                v6_vtep_mac: None,
            },
        };
        assert_eq!(
            vxlan.to_json(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
        );
        let host_gw = LeaseAttrs {
            public_ip: IP,
            public_ipv6: None,
            backend: BackendAttrs::HostGw,
        };
        assert_eq!(
            host_gw.to_json(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"host-gw"}"#
        );
        let udp = LeaseAttrs {
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
                vtep_mac: Some("c6:d2:32:6f:8f:44".parse().unwrap()),
                v6_vtep_mac: Some("8a:3e:10:5b:2c:01".parse().unwrap()),
            },
            ..vxlan.clone()
        };
        assert_eq!(
            dual_vxlan.to_json(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":"fd00:64::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"8a:3e:10:5b:2c:01"}}"#
        );
        // IPv6 only, as flannel writes it: PublicIP 0.0.0.0, no BackendData.
        let ipv6_vxlan = LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            backend: BackendAttrs::Vxlan {
                vni: 1,
                vtep_mac: None,
                v6_vtep_mac: Some("8a:3e:10:5b:2c:01".parse().unwrap()),
            },
            ..dual_vxlan.clone()
        };
        assert_eq!(
            ipv6_vxlan.to_json(),
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:64::3","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"8a:3e:10:5b:2c:01"}}"#
        );
        let ipv6_host_gw = LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            ..dual.clone()
        };
        assert_eq!(
            ipv6_host_gw.to_json(),
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:64::3","BackendType":"host-gw"}"#
        );
        for attrs in [
            vxlan,
            host_gw,
            udp,
            dual,
            dual_vxlan,
            ipv6_vxlan,
            ipv6_host_gw,
        ] {
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
            r#"{"PublicIP":"192.168.64.3","BackendType":"vxlan"}"#,
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
        let dual = Subnets {
            ipv4: Some(subnet),
            ipv6: Some(ipv6),
        };
        let ipv6_only = Subnets {
            ipv4: None,
            ipv6: Some(ipv6),
        };
        assert_eq!(
            Subnets::ipv4(subnet).key(prefix),
            "/coreos.com/network/subnets/10.1.83.0-24"
        );
        assert_eq!(
            dual.key(prefix),
            "/coreos.com/network/subnets/10.1.83.0-24&fd00:0:0:53::-64"
        );
        // flannel's IPv6-only form names no IPv4 subnet.
        assert_eq!(
            ipv6_only.key(prefix),
            "/coreos.com/network/subnets/0.0.0.0-0&fd00:0:0:53::-64"
        );
        assert_eq!(
            Subnets::ipv4(subnet).key("/coreos.com/network/"),
            Subnets::ipv4(subnet).key(prefix)
        );
        let parse = |key: &str| Subnets::parse_key(prefix, key);
        for subnets in [Subnets::ipv4(subnet), dual, ipv6_only] {
            assert_eq!(parse(&subnets.key(prefix)), Some(subnets));
            assert_eq!(subnets.to_string().parse::<Subnets>().unwrap(), subnets);
        }
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
        // Alone, flannel's "no IPv4 subnet" names nothing (a hostile key, rejected later).
        let nothing = Subnets {
            ipv4: None,
            ipv6: None,
        };
        assert_eq!(
            parse("/coreos.com/network/subnets/0.0.0.0-0"),
            Some(nothing)
        );
    }
}
