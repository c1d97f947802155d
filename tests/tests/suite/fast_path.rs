//! The eBPF fast path between containers and the NIC: it follows containers coming, going
//! and forgotten by the bridge, skips the bridge, and keeps its hooks.

use std::time::Duration;

use aya::programs::TcAttachType;

use flannel_tests::{
    configs::{READY, VXLAN},
    etcd::wait_for,
    hooks,
    netns::{Bpffs, Netns},
    require_root,
    testbed::{self, Container, Testbed},
};

#[test]
fn a_container_recreated_with_its_ip_is_reachable_at_once() {
    require_root();
    // Resyncs an hour apart: only the agent following link and neighbour events explains it.
    let flags: &[&str] = &["--iptables-resync=3600"];
    let (bed, mut agents, mut containers) = Testbed::cluster(VXLAN, &[flags, flags]).unwrap();
    testbed::all_reach_all(&containers, READY).unwrap();
    // A restart learns the containers there are at start-up.
    agents[1].restart().unwrap();
    agents[1].wait_ready(READY).unwrap();
    assert!(agents[1].log().contains("fast path endpoints updated"));
    // Container 1 goes; a new one takes its IP, on a new veth with a new MAC.
    bed.hosts[1].ip(&["link", "del", "veth2"]).unwrap();
    drop(containers.pop());
    let new = bed.add_docker_container(1, &agents[1], 2).unwrap();
    // It speaks first, as a starting container does, so its host learns its new MAC; the
    // replies must not go to the old veth.
    wait_for(
        "the new container to reach the peer",
        Duration::from_secs(3),
        || new.ping(containers[0].ip).is_ok(),
    )
    .unwrap();
}

/// A container that talks only to other hosts skips its bridge (see the next test), so the
/// bridge's entry for it ages out, and the host's neighbour entry, unused, may be collected: it
/// stays in the fast path while its port is on the bridge.
#[test]
fn a_container_the_bridge_forgot_stays_in_the_fast_path() {
    require_root();
    let bpffs = Bpffs::mount().unwrap();
    let ((_, flag_0), (pins, flag_1)) = (bpffs.pin_dir("host0"), bpffs.pin_dir("host1"));
    let (bed, agents, containers) = Testbed::cluster(VXLAN, &[&[&flag_0], &[&flag_1]]).unwrap();
    testbed::all_reach_all(&containers, READY).unwrap();
    let (host, b) = (&bed.hosts[1], &containers[1]);
    let in_fast_path = |c: &Container| flannel_tests::pins::has_endpoint(&pins, c.ip);
    wait_for("the container in the fast path", READY, || in_fast_path(b)).unwrap();
    let mac = b.ns.exec("cat", &["/sys/class/net/eth0/address"]).unwrap();
    host.exec(
        "bridge",
        &["fdb", "del", mac.trim(), "dev", "veth2", "master"],
    )
    .unwrap();
    host.ip(&["neigh", "del", &b.ip.to_string(), "dev", "cni0"])
        .unwrap();
    // The agent's pass that takes a new container in sees the forgotten one too.
    let new = bed.add_docker_container(1, &agents[1], 3).unwrap();
    host.exec("ping", &["-c", "1", "-W", "2", &new.ip.to_string()])
        .unwrap();
    wait_for("the new container in the fast path", READY, || {
        in_fast_path(&new)
    })
    .unwrap();
    assert!(
        in_fast_path(b),
        "the forgotten container left the fast path"
    );
    containers[0].ping(b.ip).unwrap();
}

#[test]
fn container_traffic_to_peers_skips_the_bridge() {
    require_root();
    let flags: &[&str] = &["--iptables-resync=1"];
    let (bed, agents, containers) = Testbed::cluster(VXLAN, &[flags, flags]).unwrap();
    wait_for("reachability", READY, || {
        containers[0].ping(containers[1].ip).is_ok()
    })
    .unwrap();
    // The container's port was attached at a resync after the container appeared.
    wait_for("the container port to get the fast path", READY, || {
        agents[0]
            .log()
            .contains("fast path attached to container ports")
    })
    .unwrap();
    // Frames the bridge passes up to the host; encapsulated at the port, ours never get there.
    let bridge_rx = || -> u64 {
        let path = "/sys/class/net/cni0/statistics/rx_packets";
        bed.hosts[0]
            .exec("cat", &[path])
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = bridge_rx();
    containers[0]
        .ns
        .exec(
            "ping",
            &[
                "-q",
                "-c",
                "200",
                "-i",
                "0.002",
                &containers[1].ip.to_string(),
            ],
        )
        .unwrap();
    let passed_up = bridge_rx() - before;
    assert!(
        passed_up < 20,
        "{passed_up} of 200 pings went through the bridge"
    );
}

/// A new container's port gets the fast path as a TCX link, without the `clsact` qdisc a first
/// filter brings: while the kernel swaps qdiscs it drops what the port sends, the container's
/// first replies. Pings into the new container from its first moments all arrive.
#[test]
fn a_new_containers_port_gets_the_fast_path_without_a_qdisc() {
    let (bed, mut agents, containers) = testbed::overlay(VXLAN, 2);
    testbed::all_reach_all(&containers, READY).unwrap();
    let new = bed.add_docker_container(1, &agents[1], 3).unwrap();
    let to_new = [
        "-q",
        "-c",
        "300",
        "-i",
        "0.002",
        "-W",
        "2",
        &new.ip.to_string(),
    ];
    let pings = containers[0].ns.exec("ping", &to_new).unwrap();
    wait_for("the new port in the fast path", READY, || {
        agents[1].log().contains("ports=2")
    })
    .unwrap();
    let host = &bed.hosts[1];
    let hooks = || port_programs(host, "veth3");
    assert_eq!(hooks(), ["tc_encap"]);
    let qdiscs = host.exec("tc", &["qdisc", "show", "dev", "veth3"]).unwrap();
    assert!(!qdiscs.contains("clsact"), "{qdiscs}");
    assert!(pings.contains(" 0% packet loss"), "{pings}");

    // An older agent's filter on a port (our handle, one of our priorities) goes when the
    // link comes: it would run again, with maps no agent updates, once the agent exits.
    agents[1].terminate().unwrap();
    host.exec("tc", &["qdisc", "add", "dev", "veth3", "clsact"])
        .unwrap();
    let old = [
        "prio",
        "61856",
        "handle",
        "0xf1a",
        "bpf",
        "bytecode",
        "1,6 0 0 0,",
    ];
    let add = [&["filter", "add", "dev", "veth3", "ingress"][..], &old].concat();
    host.exec("tc", &add).unwrap();
    let upgraded = bed.ready_agent(1, &[]).unwrap();
    wait_for("the ports in the fast path", READY, || {
        upgraded.log().contains("ports=2")
    })
    .unwrap();
    let filters = host.exec("tc", &["filter", "show", "dev", "veth3", "ingress"]);
    assert_eq!(filters.unwrap().trim(), "", "the old filter stayed");
    assert_eq!(hooks(), ["tc_encap"]);
}

/// The names of the programs on `port`'s TCX ingress.
fn port_programs(host: &Netns, port: &str) -> Vec<String> {
    let programs = host.tcx_programs(port, TcAttachType::Ingress).unwrap();
    programs.into_iter().map(|(name, _)| name).collect()
}

/// The fast path's hooks removed by hand come back at the next resync: the bridge's and a
/// port's TCX link detached (`bpftool link detach`), the overlay device's link gone with its
/// pin.
#[test]
fn the_fast_paths_hooks_removed_by_hand_come_back() {
    require_root();
    let flags: &[&str] = &["--iptables-resync=1"];
    let (bed, agents, containers) = Testbed::cluster(VXLAN, &[flags, flags]).unwrap();
    testbed::all_reach_all(&containers, READY).unwrap();
    wait_for("the port in the fast path", READY, || {
        agents[0].log().contains("ports=1")
    })
    .unwrap();
    let host = &bed.hosts[0];
    let (ingress, egress) = (TcAttachType::Ingress, TcAttachType::Egress);
    hooks::unhook(host, "veth2", ingress).unwrap();
    hooks::unhook(host, "cni0", ingress).unwrap();
    std::fs::remove_file(bed.pin_dir(0).join("tc_overlay_link")).unwrap();
    let hooked = |dev, kind| hooks::hooked(host, dev, kind).unwrap();
    assert!(hooked("veth2", ingress).is_empty());
    assert!(hooked("cni0", ingress).is_empty());
    assert!(hooked("flannel-bpf", egress).is_empty());
    wait_for("the hooks to come back", READY, || {
        [
            ("veth2", ingress),
            ("cni0", ingress),
            ("flannel-bpf", egress),
        ]
        .into_iter()
        .all(|(dev, kind)| hooked(dev, kind) == ["tc_encap"])
    })
    .unwrap();
    assert!(agents[0].log().contains("our TCX link on the port is gone"));
    containers[0].ping(containers[1].ip).unwrap();
}
