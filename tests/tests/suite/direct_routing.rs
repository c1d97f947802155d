//! vxlan's `DirectRouting`, as flannel v0.28 has it: a peer whose public address is on our
//! interface's subnet is reached by plain routing, the others through the tunnel; a peer that
//! moves off the subnet goes back to the tunnel. On both datapaths, between them, both
//! families.

use std::{net::IpAddr, time::Duration};

use flannel_tests::configs::READY;
use flannel_tests::{
    agent::Agent,
    etcd::wait_for,
    testbed::{all_reach_all, Container, Testbed},
};

const CONFIG: &str = r#"{"Network": "10.1.0.0/16", "EnableIPv6": true,
    "IPv6Network": "fd00:10::/48", "Backend": {"Type": "vxlan", "DirectRouting": true}}"#;

/// The addresses of `container`, both families.
fn addresses(container: &Container) -> [IpAddr; 2] {
    [
        container.ip.into(),
        container.ipv6.expect("dual stack").into(),
    ]
}

/// How many VXLAN packets cross host `index`'s NIC while `from` pings `to` in both families.
fn vxlan_packets(bed: &Testbed, index: usize, from: &Container, to: &Container) -> usize {
    let during = || {
        for target in addresses(to) {
            from.ping_once(target, Duration::from_secs(2)).unwrap();
        }
    };
    bed.hosts[index]
        .packets_seen("eth0", "udp port 8472", during)
        .unwrap()
}

/// Host 0 on the eBPF datapath and host 1 on the classic one share a subnet: they route to
/// each other, no VXLAN between them. Host 2, behind a router, is reached through the tunnel
/// by both. Then host 1 moves behind the router: host 0 tunnels to it from then on.
#[test]
fn on_link_peers_are_routed_and_the_others_tunnelled_on_both_datapaths() {
    let bed = Testbed::configured(3, CONFIG).unwrap();
    let datapaths: [&[&str]; 3] = [&[], &["--datapath=classic"], &[]];
    bed.enable_ipv6(2).unwrap();
    bed.move_off_link(2).unwrap();
    let mut agents = Vec::new();
    let mut containers = Vec::new();
    for (host, flags) in datapaths.iter().enumerate() {
        if host < 2 {
            bed.enable_ipv6(host).unwrap();
        }
        let mut agent = bed.agent(host, flags).unwrap();
        agent.wait_ready(READY).unwrap();
        let mut container = bed.add_docker_container(host, &agent, 2).unwrap();
        bed.add_ipv6(host, &agent, &mut container).unwrap();
        containers.push(container);
        agents.push(agent);
    }
    all_reach_all(&containers, READY).unwrap();
    let [c0, c1, c2] = &containers[..] else {
        unreachable!()
    };
    assert_eq!(vxlan_packets(&bed, 0, c0, c1), 0, "eBPF to classic, direct");
    assert_eq!(vxlan_packets(&bed, 1, c1, c0), 0, "classic to eBPF, direct");
    assert!(
        vxlan_packets(&bed, 0, c0, c2) > 0,
        "eBPF to off-link, tunnelled"
    );
    assert!(
        vxlan_packets(&bed, 1, c1, c2) > 0,
        "classic to off-link, tunnelled"
    );
    // As flannel routes a direct peer: via its public address.
    let subnet = agents[0].subnet().unwrap();
    let route = bed.hosts[1].ip(&["route", "show", &subnet]).unwrap();
    assert!(route.contains("via 192.168.64.10 dev eth0"), "{route}");

    // Host 1 moves off host 0's subnet; its lease says so.
    agents[1].terminate().unwrap();
    let key = agents[1].lease_key().unwrap();
    let lease = bed.etcd.get(&key).unwrap().unwrap();
    let (ipv4, ipv6) = bed.move_off_link(1).unwrap();
    let moved = lease
        .replace("192.168.64.11", &ipv4.to_string())
        .replace("fd64::11", &ipv6.unwrap().to_string());
    bed.etcd.put(&key, &moved).unwrap();
    let mut moved_agent = bed.agent(1, datapaths[1]).unwrap();
    moved_agent.wait_ready(READY).unwrap();
    agents[1] = moved_agent;
    all_reach_all(&containers, READY).unwrap();
    wait_for("host 0 to tunnel to host 1", READY, || {
        vxlan_packets(&bed, 0, c0, c1) > 0
    })
    .unwrap();
    assert!(vxlan_packets(&bed, 1, c1, c0) > 0, "classic, off-link now");
    let _: &[Agent] = &agents;
}
