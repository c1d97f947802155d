//! A VTEP MAC that survives reboots. flannel's etcd mode lets the kernel pick a new one each
//! time it creates its vxlan device, so after a reboot every peer rewrites its entries for the
//! host (and users report lost connectivity: flannel issues 1155 and 1795, k3s 9957). Ours is
//! derived from the host's machine id, the device and the public address it tunnels from: the
//! same after every reboot, different between hosts (two hosts cloned from one image without a
//! machine id reset still differ by their addresses).

use std::net::IpAddr;

use sha2::{Digest, Sha256};
use tracing::warn;

use crate::control::lease::Mac;

const MACHINE_ID: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];

/// The MAC for `device` tunnelling from `public_ip`; None (the kernel picks one) where the
/// host has no machine id.
pub fn for_device(device: &str, public_ip: IpAddr) -> Option<Mac> {
    let Some(machine_id) = MACHINE_ID
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())
    else {
        warn!(
            "no machine id ({}): the VTEP MAC changes when {device} is made again",
            MACHINE_ID.join(", ")
        );
        return None;
    };
    Some(derive(&machine_id, device, public_ip))
}

fn derive(machine_id: &str, device: &str, public_ip: IpAddr) -> Mac {
    let digest = Sha256::new()
        .chain_update(b"flannel vtep mac\0")
        .chain_update(machine_id.as_bytes())
        .chain_update([0])
        .chain_update(device.as_bytes())
        .chain_update([0])
        .chain_update(public_ip.to_string().as_bytes())
        .finalize();
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&digest[..6]);
    // Locally administered, unicast.
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Mac(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_unicast_and_distinct_per_host_device_and_address() {
        let ip: IpAddr = "192.168.64.10".parse().unwrap();
        let mac = derive("0123456789abcdef0123456789abcdef", "flannel.1", ip);
        assert_eq!(
            mac,
            derive("0123456789abcdef0123456789abcdef", "flannel.1", ip)
        );
        assert_eq!(mac.0[0] & 0x03, 0x02, "{mac}: locally administered unicast");
        // Pinned: a change here would change every host's MAC at its next reboot after an
        // upgrade.
        assert_eq!(mac.to_string(), "52:7a:a7:fd:a5:c6");
        for other in [
            derive("fedcba9876543210fedcba9876543210", "flannel.1", ip),
            derive("0123456789abcdef0123456789abcdef", "flannel-v6.1", ip),
            derive(
                "0123456789abcdef0123456789abcdef",
                "flannel.1",
                "192.168.64.11".parse().unwrap(),
            ),
        ] {
            assert_ne!(other, mac);
        }
    }
}
