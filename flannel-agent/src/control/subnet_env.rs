//! `/run/flannel/subnet.env`, the file Docker's `--bip` and CNI read.

use std::{
    collections::BTreeMap,
    fs, io,
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context, Result};
use ipnet::{Ipv4Net, Ipv6Net};

use crate::control::{
    atomic_write::write_atomic,
    lease::{Ours, Subnets},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetEnv {
    pub ours: Ours,
    pub mtu: u32,
    pub ip_masq: bool,
}

impl SubnetEnv {
    /// The file's text, in flannel's order, with the lines of the families in use:
    /// `FLANNEL_SUBNET` and `FLANNEL_IPV6_SUBNET` are the subnet's first usable address.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Some((network, subnet)) = &self.ours.ipv4 {
            let first = Ipv4Addr::from(u32::from(subnet.network()) + 1);
            text.push_str(&format!(
                "FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={first}/{}\n",
                subnet.prefix_len()
            ));
        }
        if let Some((network, subnet)) = &self.ours.ipv6 {
            let first = Ipv6Addr::from(u128::from(subnet.network()) + 1);
            text.push_str(&format!(
                "FLANNEL_IPV6_NETWORK={network}\nFLANNEL_IPV6_SUBNET={first}/{}\n",
                subnet.prefix_len()
            ));
        }
        text.push_str(&format!(
            "FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.mtu, self.ip_masq
        ));
        text
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.render(), 0o644)
    }
}

/// Refuses a subnet file we could not write, before anything is leased or created: its
/// directory is created if missing (as flannel does with /run/flannel) and must take a file.
pub fn check_writable(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let probe = dir.join(format!(".flanneld-probe-{}", std::process::id()));
    fs::create_dir_all(dir)
        .and_then(|()| fs::File::create(&probe))
        .and_then(|_| fs::remove_file(&probe))
        .with_context(|| {
            format!(
                "--subnet-file {}: can't write in {}",
                path.display(),
                dir.display()
            )
        })
}

/// `KEY=VALUE` lines of an env file (subnet.env, or what mk-docker-opts reads).
pub fn read_vars(path: &Path) -> io::Result<BTreeMap<String, String>> {
    let text = fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|line| line.trim().split_once('='))
        .map(|(key, value)| {
            (
                key.trim().to_owned(),
                value.trim().trim_matches('"').to_owned(),
            )
        })
        .collect())
}

/// The subnets recorded in an existing subnet file, if there is a readable one with a subnet.
pub fn previous_subnets(path: &Path) -> Result<Option<Subnets>> {
    let vars = match read_vars(path) {
        Ok(vars) => vars,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let subnet = vars
        .get("FLANNEL_SUBNET")
        .and_then(|subnet| subnet.parse::<Ipv4Net>().ok());
    let ipv6 = vars
        .get("FLANNEL_IPV6_SUBNET")
        .and_then(|subnet| subnet.parse::<Ipv6Net>().ok());
    let subnets = Subnets {
        ipv4: subnet.map(|net| net.trunc()),
        ipv6: ipv6.map(|net| net.trunc()),
    };
    Ok((subnets.ipv4.is_some() || subnets.ipv6.is_some()).then_some(subnets))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn env() -> SubnetEnv {
        SubnetEnv {
            ours: Ours {
                ipv4: Some((
                    "10.1.0.0/16".parse().unwrap(),
                    "10.1.83.0/24".parse().unwrap(),
                )),
                ipv6: None,
            },
            mtu: 1450,
            ip_masq: true,
        }
    }

    #[test]
    fn renders_flannels_format() {
        assert_eq!(
            env().render(),
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.83.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn dual_stack_lines_sit_between_subnet_and_mtu() {
        let ipv6 = Some((
            "fd00:1::/48".parse().unwrap(),
            "fd00:1:0:53::/64".parse().unwrap(),
        ));
        let dual = SubnetEnv {
            ours: Ours { ipv6, ..env().ours },
            ..env()
        };
        let text = dual.render();
        assert_eq!(
            text,
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.83.1/24\n\
             FLANNEL_IPV6_NETWORK=fd00:1::/48\nFLANNEL_IPV6_SUBNET=fd00:1:0:53::1/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        dual.write(&path).unwrap();
        assert_eq!(previous_subnets(&path).unwrap(), Some(dual.ours.subnets()));
        // IPv6 only, as flannel writes it: no IPv4 lines.
        let ipv6_only = SubnetEnv {
            ours: Ours { ipv4: None, ipv6 },
            ..env()
        };
        assert_eq!(
            ipv6_only.render(),
            "FLANNEL_IPV6_NETWORK=fd00:1::/48\nFLANNEL_IPV6_SUBNET=fd00:1:0:53::1/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        ipv6_only.write(&path).unwrap();
        assert_eq!(
            previous_subnets(&path).unwrap(),
            Some(ipv6_only.ours.subnets())
        );
    }

    #[test]
    fn written_atomically_with_mode_0644_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/flannel/subnet.env");
        env().write(&path).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), env().render());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(previous_subnets(&path).unwrap(), Some(env().ours.subnets()));
        let leftovers = fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file left behind");
        assert_eq!(previous_subnets(&dir.path().join("absent")).unwrap(), None);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        env().write(&path).unwrap();
        // A directory where the temp file would go makes the write fail midway.
        let blocker = dir
            .path()
            .join(format!(".subnet.env.{}.tmp", std::process::id()));
        fs::create_dir(&blocker).unwrap();
        let changed = SubnetEnv { mtu: 1400, ..env() };
        assert!(changed.write(&path).is_err());
        assert_eq!(fs::read_to_string(&path).unwrap(), env().render());
    }
}
