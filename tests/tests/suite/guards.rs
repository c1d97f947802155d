//! What the programs refuse whatever the maps or the peers say: a bogus route never
//! shadows local traffic, and a peer never speaks for a third host's subnet.

use std::net::Ipv4Addr;

use flannel_common::{Encap, Tunnel, TunnelEnds};
use flannel_tests::{
    configs::{READY, VXLAN},
    etcd::wait_for,
    metrics,
    netns::Bpffs,
    packet, pins, require_root,
    testbed::{lease_key, Testbed},
};

#[test]
fn a_bogus_route_in_the_map_never_shadows_local_traffic() {
    require_root();
    let bpffs = Bpffs::mount().unwrap();
    let ((pins_a, flag_a), (_, flag_b)) = (bpffs.pin_dir("a"), bpffs.pin_dir("b"));
    // No resync for a while: the bogus entries stay until the test is done.
    let quiet = "--iptables-resync=600";
    let (bed, agents, containers) =
        Testbed::cluster(VXLAN, &[&[&flag_a, quiet, "--ip-masq"], &[&flag_b, quiet]]).unwrap();
    let neighbour = bed.add_docker_container(0, &agents[0], 3).unwrap();
    // Judged once the agent has the new container's port in the fast path: the program on
    // the port, not the bridge's, is the one that sees the neighbour's packets first.
    wait_for("the neighbour's port in the fast path", READY, || {
        agents[0].log().contains("ports=2")
    })
    .unwrap();
    let stranger = u32::from(Ipv4Addr::new(192, 168, 64, 99)).to_be();
    let bogus = Tunnel::new(&TunnelEnds {
        encap: Encap::Vxlan,
        local_ip_be: u32::from(Testbed::host_ip(0)).to_be(),
        remote_ip_be: stranger,
        port_be: 8472u16.to_be(),
        vni: 1,
        local_mac: [2, 0, 0, 0, 0, 1],
        remote_mac: [2, 0, 0, 0, 0, 2],
    });
    let mut routes = pins::routes(&pins_a).unwrap();
    for subnet in ["10.1.0.0/16", "0.0.0.0/0"] {
        routes.insert(&pins::route_key(subnet), bogus, 0).unwrap();
    }
    // Containers on one host, the host and its container, a container and the underlay
    // (masqueraded).
    neighbour.ping(containers[0].ip).unwrap();
    containers[0].ping(neighbour.ip).unwrap();
    bed.hosts[0]
        .exec("ping", &["-c1", "-W2", &containers[0].ip.to_string()])
        .unwrap();
    containers[0].ping(Ipv4Addr::new(192, 168, 64, 1)).unwrap();
    // The peer's own, more specific route still carries its traffic.
    containers[0].ping(containers[1].ip).unwrap();
}

#[test]
fn a_peer_cannot_speak_for_a_third_hosts_subnet() {
    require_root();
    let (bed, agents, containers) = Testbed::cluster(VXLAN, &[&[], &[metrics::FLAG]]).unwrap();
    wait_for("reachability", READY, || {
        containers[0].ping(containers[1].ip).is_ok()
    })
    .unwrap();
    let lease: serde_json::Value = serde_json::from_str(
        &bed.etcd
            .get(&lease_key(&agents[1].subnet().unwrap()))
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    let vtep = lease["BackendData"]["VtepMAC"]
        .as_str()
        .unwrap()
        .parse::<flannel_agent::control::lease::Mac>()
        .unwrap();
    let listener = containers[1].udp_listener(7777).unwrap();
    // Host 0, a current peer, sends host 1's container a VXLAN packet from `src`.
    let send_from = |src: Ipv4Addr| {
        let ip = packet::ipv4(
            src,
            containers[1].ip,
            packet::IPPROTO_UDP,
            &packet::udp(5555, 7777, b"hello"),
        );
        let inner = packet::ethernet(vtep.0, [2, 0, 0, 0, 0, 0x10], packet::ETH_P_IP, &ip);
        let payload = packet::vxlan(1, &inner);
        let to = format!("{}:8472", Testbed::host_ip(1));
        bed.hosts[0]
            .enter(|| {
                let socket = std::net::UdpSocket::bind((Testbed::host_ip(0), 0)).unwrap();
                socket.send_to(&payload, to).unwrap();
            })
            .unwrap();
    };
    send_from(Ipv4Addr::new(10, 1, 250, 5));
    assert_eq!(
        listener.next().unwrap(),
        None,
        "a packet from a third host's subnet reached the container"
    );
    let dropped = r#"flannel_drops_total{reason="wrong_inner_source"}"#;
    assert_eq!(metrics::read(&bed.hosts[1], dropped).unwrap(), 1.0);
    // An outside client's packet, forwarded by the peer, is delivered.
    send_from(Ipv4Addr::new(8, 8, 8, 8));
    let received = listener.next().unwrap();
    assert_eq!(
        received.as_deref(),
        Some(&b"hello"[..]),
        "the outside client's packet"
    );
}

/// The FORWARD rule's packet count, from `iptables -L FORWARD -v -x -n` (it is inserted
/// first).
fn first_forward_rule_packets(host: &flannel_tests::netns::Netns) -> u64 {
    let listing = host
        .exec(
            "iptables",
            &["-L", "FORWARD", "-v", "-x", "-n", "--line-numbers"],
        )
        .unwrap();
    listing
        .lines()
        .find(|line| line.starts_with("1 "))
        .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn forward_rules_apply_without_the_fast_path_and_are_named_with_it() {
    require_root();
    let firewall: &[&str] = &["--bpf-fast-path=false", "--iptables-resync=1"];
    let (bed, mut agents, containers) = Testbed::cluster(VXLAN, &[firewall, firewall]).unwrap();
    wait_for("reachability", READY, || {
        containers[0].ping(containers[1].ip).is_ok()
    })
    .unwrap();
    let target = format!("{}/32", containers[1].ip);
    let host = &bed.hosts[1];
    host.exec("iptables", &["-I", "FORWARD", "-d", &target, "-j", "DROP"])
        .unwrap();
    let out = containers[0]
        .ns
        .exec(
            "ping",
            &[
                "-c",
                "5",
                "-i",
                "0.2",
                "-W",
                "1",
                &containers[1].ip.to_string(),
            ],
        )
        .unwrap_err()
        .to_string();
    assert!(out.contains("5 packets transmitted, 0 received"), "{out}");
    assert!(
        first_forward_rule_packets(host) >= 5,
        "the rule saw the pings"
    );

    // With the fast path, the rule would see nothing: the agent says so, naming it.
    agents[1].terminate().unwrap();
    let fast = bed.ready_agent(1, &["--iptables-resync=1"]).unwrap();
    wait_for("the warning", READY, || {
        fast.log()
            .contains(&format!("-A FORWARD -d {target} -j DROP"))
    })
    .unwrap();
}
