//! The eBPF datapath end to end: hosts in network namespaces, flanneld on each, containers
//! behind docker0-style bridges, real packets.

use std::time::Duration;

use flannel_tests::{
    agent::Agent,
    etcd::wait_for,
    require_root,
    testbed::{Container, Testbed, PREFIX},
};

const VXLAN: &str = r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}}"#;
const UDP: &str = r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "udp"}}"#;
const READY: Duration = Duration::from_secs(20);

/// `hosts` hosts with agents on `config` and one container each.
fn overlay(config: &str, hosts: usize) -> (Testbed, Vec<Agent>, Vec<Container>) {
    require_root();
    let bed = Testbed::new(hosts).unwrap();
    bed.put_config(config).unwrap();
    let mut agents = Vec::new();
    let mut containers = Vec::new();
    for host in 0..hosts {
        let mut agent = bed.agent(host, &[]).unwrap();
        agent.wait_ready(READY).unwrap();
        containers.push(
            bed.add_container(host, &agent.subnet().unwrap(), 2)
                .unwrap(),
        );
        agents.push(agent);
    }
    (bed, agents, containers)
}

fn all_reach_all(containers: &[Container]) {
    for from in containers {
        for to in containers {
            wait_for(&format!("{} to reach {}", from.ip, to.ip), READY, || {
                from.ping(to.ip).is_ok()
            })
            .unwrap();
        }
    }
}

#[test]
fn vxlan_containers_on_three_hosts_reach_each_other() {
    let (_bed, _agents, containers) = overlay(VXLAN, 3);
    all_reach_all(&containers);
}

#[test]
fn udp_containers_on_three_hosts_reach_each_other() {
    let (_bed, _agents, containers) = overlay(UDP, 3);
    all_reach_all(&containers);
}

#[test]
fn vxlan_lease_advertises_the_overlay_devices_mac() {
    let (bed, agents, _containers) = overlay(VXLAN, 1);
    let subnet = agents[0].subnet().unwrap().replace('/', "-");
    let value = bed
        .etcd
        .get(&format!("{PREFIX}/subnets/{subnet}"))
        .unwrap()
        .unwrap();
    let mac = bed.hosts[0]
        .exec("cat", &["/sys/class/net/flannel-bpf/address"])
        .unwrap();
    assert_eq!(
        value,
        format!(
            r#"{{"PublicIP":"192.168.64.10","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
            mac.trim()
        )
    );
}
