//! The eBPF datapath end to end: hosts in network namespaces, flanneld on each, containers
//! behind docker0-style bridges, real packets.

use flannel_tests::{
    agent::Agent,
    configs::{READY, UDP, VXLAN},
    etcd::wait_for,
    netns::{kernel_vxlan, kernel_vxlan_peer, Bpffs},
    require_root,
    testbed::{self, lease_key, Container, Testbed, PREFIX},
};

#[test]
fn vxlan_containers_on_three_hosts_reach_each_other() {
    let (_bed, _agents, containers) = testbed::overlay(VXLAN, 3);
    testbed::all_reach_all(&containers, READY).unwrap();
}

#[test]
fn udp_containers_on_three_hosts_reach_each_other() {
    let (_bed, _agents, containers) = testbed::overlay(UDP, 3);
    testbed::all_reach_all(&containers, READY).unwrap();
}

#[test]
fn vxlan_lease_advertises_the_overlay_devices_mac() {
    let (bed, agents, _containers) = testbed::overlay(VXLAN, 1);
    let value = bed
        .etcd
        .get(&lease_key(&agents[0].subnet().unwrap()))
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

/// One host ours, the other a Linux vxlan device set up exactly as flannel sets up
/// `flannel.1`; containers on both reach each other, both ways.
#[test]
fn interoperates_with_a_kernel_vxlan_host_configured_like_flannel() {
    let bed = Testbed::configured(2, VXLAN).unwrap();
    let kernel_subnet = "10.1.200.0/24";
    let kernel_mac = kernel_vxlan(&bed.hosts[1], Testbed::host_ip(1), kernel_subnet).unwrap();
    let kernel_lease = format!(
        r#"{{"PublicIP":"192.168.64.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
        kernel_mac.trim()
    );
    bed.etcd
        .put(&format!("{PREFIX}/subnets/10.1.200.0-24"), &kernel_lease)
        .unwrap();
    let kernel_container = bed.add_container(1, kernel_subnet, 2).unwrap();

    let ours = bed.ready_agent(0, &[]).unwrap();
    let our_subnet = ours.subnet().unwrap();
    let our_mac = testbed::lease_json(&bed, &our_subnet).unwrap()["BackendData"]["VtepMAC"]
        .as_str()
        .unwrap()
        .to_owned();
    kernel_vxlan_peer(&bed.hosts[1], &our_subnet, &our_mac, Testbed::host_ip(0)).unwrap();
    let our_container = bed.add_container(0, &our_subnet, 2).unwrap();

    wait_for("ours to reach the kernel host's container", READY, || {
        our_container.ping(kernel_container.ip).is_ok()
    })
    .unwrap();
    wait_for("the kernel host's container to reach ours", READY, || {
        kernel_container.ping(our_container.ip).is_ok()
    })
    .unwrap();
}

/// iperf3 between two containers, one way or the other; returns Gbit/s.
fn iperf(server: &Container, client: &Container, reverse: bool) -> f64 {
    server.ns.exec("iperf3", &["-s", "-D", "-1"]).unwrap();
    let ip = server.ip.to_string();
    let mut args = vec!["-c", ip.as_str(), "-t", "2", "-J"];
    if reverse {
        args.push("-R");
    }
    let mut out = Err(anyhow::anyhow!("not run"));
    wait_for("iperf3 to connect", READY, || {
        out = client.ns.exec("iperf3", &args);
        out.is_ok()
    })
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&out.unwrap()).unwrap();
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap()
        / 1e9
}

#[test]
fn tcp_bulk_transfer_works_both_ways() {
    for config in [VXLAN, UDP] {
        let (_bed, _agents, containers) = testbed::overlay(config, 2);
        let forward = iperf(&containers[0], &containers[1], false);
        let reverse = iperf(&containers[0], &containers[1], true);
        assert!(
            forward > 0.1 && reverse > 0.1,
            "{config}: {forward} / {reverse} Gbit/s"
        );
    }
}

#[test]
fn a_peer_removed_from_etcd_stops_being_reachable() {
    let (bed, mut agents, containers) = testbed::overlay(VXLAN, 2);
    wait_for("reachability", READY, || {
        containers[0].ping(containers[1].ip).is_ok()
    })
    .unwrap();
    let gone = agents[1].subnet().unwrap();
    agents[1].terminate().unwrap();
    bed.etcd.etcdctl(&["del", &lease_key(&gone)]).unwrap();
    wait_for("the peer to leave the datapath", READY, || {
        agents[0].log().contains("peer left the datapath")
    })
    .unwrap();
    assert!(
        !containers[0].reaches(containers[1].ip).unwrap(),
        "the removed peer is unreachable"
    );
}

#[test]
fn a_peer_that_changes_its_public_ip_keeps_working() {
    let (bed, mut agents, containers) = testbed::overlay(VXLAN, 2);
    wait_for("reachability", READY, || {
        containers[0].ping(containers[1].ip).is_ok()
    })
    .unwrap();
    // Host 1 moves from 192.168.64.11 to 192.168.64.21; its lease says so.
    agents[1].terminate().unwrap();
    let subnet = agents[1].subnet().unwrap();
    let key = lease_key(&subnet);
    let moved = bed
        .etcd
        .get(&key)
        .unwrap()
        .unwrap()
        .replace("192.168.64.11", "192.168.64.21");
    // (Deleting the primary address first: the kernel would take secondaries with it.)
    bed.hosts[1]
        .ip(&["addr", "del", "192.168.64.11/24", "dev", "eth0"])
        .unwrap();
    bed.hosts[1]
        .ip(&["addr", "add", "192.168.64.21/24", "dev", "eth0"])
        .unwrap();
    bed.hosts[1]
        .ip(&["route", "replace", "default", "via", "192.168.64.1"])
        .unwrap();
    bed.etcd.put(&key, &moved).unwrap();
    let endpoints = format!("--etcd-endpoints={}", bed.etcd.endpoint());
    let mut restarted = Agent::spawn(&bed.hosts[1], &[&endpoints, "--iface=eth0"]).unwrap();
    restarted.wait_ready(READY).unwrap();
    assert_eq!(
        restarted.subnet().unwrap(),
        subnet,
        "same subnet, new address"
    );
    for (from, to) in [(0, 1), (1, 0)] {
        wait_for("reachability after the move", READY, || {
            containers[from].ping(containers[to].ip).is_ok()
        })
        .unwrap();
    }
}

/// Pings `to` from `from` every 10 ms, `count` times, while every agent restarts in turn;
/// returns how many got no reply.
fn pings_lost_through_restarts(
    from: &Container,
    to: &Container,
    agents: &mut [Agent],
    count: u32,
    steady_ttl: u8,
) -> u32 {
    // The window starts in the steady state: both hosts deliver as they will from now on
    // (`steady_ttl`: 64 once TC decap hands replies straight to the container, 63 where they
    // are routed).
    let ttl = format!("ttl={steady_ttl}");
    for (a, b) in [(from, to), (to, from)] {
        wait_for("delivery to settle", READY, || {
            a.ping(b.ip).is_ok_and(|reply| reply.contains(&ttl))
        })
        .unwrap();
    }
    from.pings_lost_while(to.ip, count, || {
        for agent in agents.iter_mut() {
            agent.restart().unwrap();
            agent.wait_ready(READY).unwrap();
        }
    })
    .unwrap()
}

#[test]
fn an_agent_restart_loses_no_packet() {
    let (_bed, mut agents, containers) = testbed::overlay(VXLAN, 2);
    wait_for("reachability", READY, || {
        containers[0].ping(containers[1].ip).is_ok()
    })
    .unwrap();
    let lost = pings_lost_through_restarts(&containers[0], &containers[1], &mut agents, 400, 64);
    assert_eq!(lost, 0);
    assert!(agents[0].log().matches("eBPF programs attached").count() == 2);
}

#[test]
fn an_oversize_packet_gets_fragmentation_needed() {
    let (_bed, _agents, containers) = testbed::overlay(VXLAN, 2);
    wait_for("reachability", READY, || {
        containers[0].ping(containers[1].ip).is_ok()
    })
    .unwrap();
    // A container whose MTU ignores FLANNEL_MTU (1450 for vxlan on a 1500 NIC).
    containers[0]
        .ns
        .ip(&["link", "set", "eth0", "mtu", "1500"])
        .unwrap();
    let err = containers[0]
        .ns
        .exec(
            "ping",
            &[
                "-c",
                "1",
                "-W",
                "2",
                "-M",
                "do",
                "-s",
                "1460",
                &containers[1].ip.to_string(),
            ],
        )
        .unwrap_err();
    assert!(err.to_string().contains("mtu = 1450"), "{err:#}");
}

#[test]
fn xdp_decap_carries_traffic_and_restarts_without_loss() {
    require_root();
    // The XDP link is pinned: give each host a pin directory that outlives its agent.
    let bpffs = Bpffs::mount().unwrap();
    let pins: Vec<String> = (0..2)
        .map(|i| {
            format!(
                "--bpf-pin-dir={}",
                bpffs.path().join(format!("h{i}")).display()
            )
        })
        .collect();
    let flags: Vec<[&str; 2]> = pins
        .iter()
        .map(|pin| [pin.as_str(), "--bpf-decap=xdp"])
        .collect();
    let flags: Vec<&[&str]> = flags.iter().map(|f| &f[..]).collect();
    let (bed, mut agents, containers) = Testbed::cluster(VXLAN, &flags).unwrap();
    let xdp = |host: usize| bed.hosts[host].ip(&["link", "show", "eth0"]).unwrap();
    assert!(xdp(0).contains("prog/xdp"), "{}", xdp(0));
    testbed::all_reach_all(&containers, READY).unwrap();
    let forward = iperf(&containers[0], &containers[1], false);
    assert!(forward > 0.1, "{forward} Gbit/s");

    let lost = pings_lost_through_restarts(&containers[0], &containers[1], &mut agents, 300, 63);
    assert_eq!(lost, 0);
}

/// `cargo xtask build-ebpf`, as a user types it, prints the object flanneld embeds, and
/// agents given it with `--bpf-object` carry traffic.
#[test]
fn the_object_build_ebpf_prints_is_the_embedded_one_and_carries_traffic() {
    require_root();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .current_dir(root)
        .args(["xtask", "build-ebpf"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let object = stdout.lines().last().expect("the object's path");
    let bytes = std::fs::read(object).unwrap();
    assert!(
        bytes == flannel_agent::datapath::ebpf::programs::EMBEDDED_OBJECT,
        "{object} is not the object flanneld embeds"
    );
    let flag = format!("--bpf-object={object}");
    let (_bed, agents, containers) = Testbed::cluster(VXLAN, &[&[&flag], &[&flag]]).unwrap();
    testbed::all_reach_all(&containers, READY).unwrap();
    assert!(agents[0].log().contains("eBPF programs attached"));
}
