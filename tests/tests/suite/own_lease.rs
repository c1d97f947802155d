//! Our lease is ours: another writer's value in our key is overwritten at once and the
//! subnet stays; when the subnet really moves, subnet.env follows even after failed writes.

use std::{path::Path, time::Duration};

use flannel_tests::{
    configs::{HOST_GW, READY, VXLAN},
    etcd::wait_for,
    netns::run,
    require_root,
    testbed::{lease_key, Testbed},
};

#[test]
fn our_key_overwritten_by_another_host_is_written_back_and_traffic_keeps_flowing() {
    require_root();
    let (bed, agents, containers) = Testbed::cluster(VXLAN, &[&[], &[]]).unwrap();
    let subnet = agents[0].subnet().unwrap();
    let key = lease_key(&subnet);
    let ours = bed.etcd.get(&key).unwrap().unwrap();
    let intruder = r#"{"PublicIP":"192.168.64.99","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:00:00:00:00:99"}}"#;
    let lost = containers[1]
        .pings_lost_while(containers[0].ip, 300, || {
            bed.etcd.put(&key, intruder).unwrap();
            wait_for("our value back", Duration::from_secs(1), || {
                bed.etcd.get(&key).unwrap().as_deref() == Some(ours.as_str())
            })
            .unwrap();
        })
        .unwrap();
    assert!(
        lost <= 100,
        "{lost} of 300 pings lost (at most 1 s of them)"
    );
    assert_ne!(bed.etcd.lease_of(&key).unwrap(), 0, "under our etcd lease");
    assert_eq!(agents[0].subnet().unwrap(), subnet, "the subnet stays");
    assert!(
        agents[0].log().contains("wrote ours back"),
        "{}",
        agents[0].log()
    );
}

/// The subnet (`10.1.5.0/24`) that the subnet.env at `path` gives.
fn subnet_in(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let first = text
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
        .unwrap_or("0.0.0.0/0");
    first.parse::<ipnet::Ipv4Net>().unwrap().trunc().to_string()
}

/// A tmpfs of its own, unmounted however the test ends.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let options = format!("size={size}");
        let path = dir.path().to_str().unwrap();
        run("mount", &["-t", "tmpfs", "-o", &options, "tmpfs", path]).unwrap();
        Self(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = run("umount", &[self.0.path().to_str().unwrap()]);
    }
}

#[test]
fn subnet_env_follows_a_move_once_the_disk_has_room_again() {
    let bed = Testbed::configured(1, HOST_GW).unwrap();
    let tmpfs = Tmpfs::mount("64k");
    let file = tmpfs.path().join("subnet.env");
    let flag = format!("--subnet-file={}", file.display());
    let agent = bed.ready_agent(0, &[&flag, "--iptables-resync=1"]).unwrap();
    let before = std::fs::read_to_string(&file).unwrap();
    let old = subnet_in(&file);
    let key = lease_key(&old);

    // While the agent is stopped: our etcd lease goes, another host's live lease takes the
    // subnet, and the disk fills up.
    let pid = agent.pid().unwrap().to_string();
    run("kill", &["-STOP", &pid]).unwrap();
    let ours = format!("{:x}", bed.etcd.lease_of(&key).unwrap());
    bed.etcd.etcdctl(&["lease", "revoke", &ours]).unwrap();
    let granted = bed.etcd.etcdctl(&["lease", "grant", "600"]).unwrap();
    let theirs = granted.split_whitespace().nth(1).unwrap().to_owned();
    let value = r#"{"PublicIP":"192.168.64.77","BackendType":"host-gw"}"#;
    bed.etcd
        .etcdctl(&["put", &format!("--lease={theirs}"), &key, value])
        .unwrap();
    let filler = tmpfs.path().join("filler");
    let chunk = vec![0u8; 4096];
    let mut fill = std::fs::File::create(&filler).unwrap();
    while std::io::Write::write_all(&mut fill, &chunk).is_ok() {}
    run("kill", &["-CONT", &pid]).unwrap();

    wait_for("the failed write", READY, || {
        agent.log().contains("retrying at the next resync")
    })
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        before,
        "the old file stays whole"
    );
    drop(fill);
    std::fs::remove_file(&filler).unwrap();
    wait_for("subnet.env on the new subnet", READY, || {
        subnet_in(&file) != old
    })
    .unwrap();
    let new_key = lease_key(&subnet_in(&file));
    assert!(
        bed.etcd
            .get(&new_key)
            .unwrap()
            .is_some_and(|v| v.contains(&Testbed::host_ip(0).to_string())),
        "subnet.env names the subnet we hold"
    );
}
