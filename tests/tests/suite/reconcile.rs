//! The datapath converges on the peer table whatever happens to the kernel: entries removed
//! by hand come back, stale ones go, devices and filters deleted under the agent are
//! recreated, and a write the kernel refuses is retried until it holds.

use std::net::Ipv4Addr;

use aya::{maps::lpm_trie::Key, programs::TcAttachType};
use flannel_common::{pins::Pins, Encap, PeerInfo, Tunnel, TunnelEnds};
use flannel_tests::{
    configs::{HOST_GW, READY, UDP, VXLAN},
    etcd::wait_for,
    hooks,
    netns::Bpffs,
    pins, require_root,
    testbed::{lease_key, Testbed},
};

/// Long enough that only the retry of a failed write, not the periodic resync, can converge.
const NO_RESYNC: &str = "--iptables-resync=600";

fn vxlan_lease(ip: Ipv4Addr, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    )
}

#[test]
fn ebpf_maps_devices_and_filters_changed_by_hand_converge() {
    require_root();
    let bpffs = Bpffs::mount().unwrap();
    let ((pins, pin_flag), (_, other_pins)) = (bpffs.pin_dir("a"), bpffs.pin_dir("b"));
    let (bed, agents, containers) = Testbed::cluster(
        VXLAN,
        &[
            &[&pin_flag, "--iptables-resync=1"],
            &[&other_pins, "--iptables-resync=1"],
        ],
    )
    .unwrap();
    let host = &bed.hosts[0];
    let peer = agents[1].subnet().unwrap();
    let has_route = |subnet: &str| pins::has_route(&pins, subnet);
    wait_for("the peer's route", READY, || has_route(&peer)).unwrap();

    // A route deleted from the map comes back; one no lease explains goes.
    let tunnel = pins::routes(&pins)
        .unwrap()
        .get(&pins::route_key(&peer), 0)
        .unwrap();
    pins::routes(&pins)
        .unwrap()
        .remove(&pins::route_key(&peer))
        .unwrap();
    pins::routes(&pins)
        .unwrap()
        .insert(&pins::route_key("10.1.250.0/24"), tunnel, 0)
        .unwrap();
    let stranger = u32::from(Ipv4Addr::new(192, 168, 64, 99)).to_be();
    pins::peers(&pins)
        .unwrap()
        .insert(stranger, PeerInfo::default(), 0)
        .unwrap();
    wait_for("the map to converge", READY, || {
        has_route(&peer)
            && !has_route("10.1.250.0/24")
            && pins::peers(&pins).unwrap().get(&stranger, 0).is_err()
    })
    .unwrap();
    assert_eq!(
        pins::routes(&pins)
            .unwrap()
            .get(&pins::route_key(&peer), 0)
            .unwrap(),
        tunnel
    );

    // The overlay device deleted: it comes back with the VTEP MAC our lease advertises, and
    // the host reaches the other host's container through it again.
    let mac = || host.exec("cat", &["/sys/class/net/flannel-bpf/address"]);
    let mac_before = mac().unwrap();
    host.ip(&["link", "del", "flannel-bpf"]).unwrap();
    wait_for("the overlay device", READY, || {
        mac().is_ok_and(|m| m == mac_before)
    })
    .unwrap();
    let target = containers[1].ip.to_string();
    wait_for("the host to reach the peer's container", READY, || {
        host.exec("ping", &["-c1", "-W1", &target]).is_ok()
    })
    .unwrap();

    // The GRO device deleted: it comes back as the agent makes it (its source ports too),
    // and the programs hand packets to the new one.
    host.ip(&["link", "del", "flannel-gro"]).unwrap();
    wait_for("the GRO device", READY, || {
        host.ip(&["-d", "link", "show", "flannel-gro"])
            .is_ok_and(|d| d.contains("srcport 32768 60999") && d.contains(",UP"))
    })
    .unwrap();
    let gro_index = host.exec("cat", &["/sys/class/net/flannel-gro/ifindex"]);
    let gro_index: u32 = gro_index.unwrap().trim().parse().unwrap();
    wait_for("the programs to know the new GRO device", READY, || {
        let config = Pins::new(&pins).config().unwrap().get(&0, 0).unwrap();
        config.gro_ifindex == gro_index
    })
    .unwrap();

    // Our hook on the NIC removed: attached again, containers reach each other.
    hooks::unhook(host, "eth0", TcAttachType::Ingress).unwrap();
    wait_for("the NIC's hook", READY, || {
        hooks::hooked(host, "eth0", TcAttachType::Ingress).unwrap() == ["tc_ingress"]
    })
    .unwrap();
    containers[0].ping(containers[1].ip).unwrap();
    containers[1].ping(containers[0].ip).unwrap();
}

#[test]
fn ebpf_retries_a_route_the_full_map_refused() {
    require_root();
    let bpffs = Bpffs::mount().unwrap();
    let (pins, pin_flag) = bpffs.pin_dir("a");
    let bed = Testbed::new(1).unwrap();
    bed.put_config(VXLAN).unwrap();
    let agent = bed.ready_agent(0, &[&pin_flag, NO_RESYNC]).unwrap();
    // Fill the routes map with entries no lease explains.
    let tunnel = Tunnel::new(&TunnelEnds {
        encap: Encap::Vxlan,
        local_ip_be: 0,
        remote_ip_be: 0,
        port_be: 0,
        vni: 1,
        local_mac: [0; 6],
        remote_mac: [0; 6],
    });
    let mut junk = 0u32;
    let mut routes = pins::routes(&pins).unwrap();
    while routes
        .insert(&Key::new(32, (0xac10_0000 + junk).to_be()), tunnel, 0)
        .is_ok()
    {
        junk += 1;
    }
    assert!(junk > 1000, "the map took {junk} entries");
    let lease = vxlan_lease(Ipv4Addr::new(192, 168, 64, 50), "0a:00:00:00:00:50");
    bed.etcd.put(&lease_key("10.1.200.0/24"), &lease).unwrap();
    wait_for("the failed write", READY, || {
        agent.log().contains("adding the route to 10.1.200.0/24")
    })
    .unwrap();
    // The retry reads the map back, removes what no lease explains, and writes the route.
    wait_for("the route", READY, || {
        pins::routes(&pins)
            .unwrap()
            .get(&pins::route_key("10.1.200.0/24"), 0)
            .is_ok()
    })
    .unwrap();
    assert!(
        pins::routes(&pins)
            .unwrap()
            .get(&Key::new(32, 0xac10_0000u32.to_be()), 0)
            .is_err(),
        "stale entries removed"
    );
}

#[test]
fn classic_vxlan_entries_and_device_changed_by_hand_converge() {
    require_root();
    let flags: &[&str] = &["--datapath=classic", "--iptables-resync=1"];
    let (bed, agents, containers) = Testbed::cluster(VXLAN, &[flags, flags]).unwrap();
    let host = &bed.hosts[0];
    let peer = agents[1].subnet().unwrap();
    let gateway = peer.trim_end_matches("/24");
    let neighbours = || host.ip(&["neigh", "show", "dev", "flannel.1"]).unwrap();
    let fdb = || {
        host.exec("bridge", &["fdb", "show", "dev", "flannel.1"])
            .unwrap()
    };
    wait_for("the peer's neighbour", READY, || {
        neighbours().contains(gateway)
    })
    .unwrap();
    // In the steady state each resync reads the kernel back and finds nothing to fix: no
    // entry is rewritten, and no packet is lost over 3 resyncs. (The fdb entries' remotes
    // once went unread, so each resync deleted and rewrote them, dropping packets.)
    let lost = containers[0]
        .pings_lost_while(containers[1].ip, 300, || ())
        .unwrap();
    assert_eq!(lost, 0, "pings lost in the steady state");
    let log = agents[0].log();
    assert!(
        !log.contains("removing a stale") && !log.contains("lost this peer"),
        "{log}"
    );

    host.ip(&["neigh", "del", gateway, "dev", "flannel.1"])
        .unwrap();
    host.ip(&[
        "neigh",
        "add",
        "10.1.250.0",
        "lladdr",
        "0a:00:00:00:02:50",
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ])
    .unwrap();
    host.exec(
        "bridge",
        &[
            "fdb",
            "append",
            "0a:00:00:00:02:50",
            "dev",
            "flannel.1",
            "dst",
            "192.168.64.250",
        ],
    )
    .unwrap();
    wait_for("neighbours and fdb to converge", READY, || {
        let (n, f) = (neighbours(), fdb());
        n.contains(gateway) && !n.contains("10.1.250.0") && !f.contains("192.168.64.250")
    })
    .unwrap();

    let mac = || host.exec("cat", &["/sys/class/net/flannel.1/address"]);
    let mac_before = mac().unwrap();
    host.ip(&["link", "del", "flannel.1"]).unwrap();
    wait_for("the device with its MAC", READY, || {
        mac().is_ok_and(|m| m == mac_before)
    })
    .unwrap();
    wait_for("containers to reach each other", READY, || {
        containers[0].ping(containers[1].ip).is_ok()
    })
    .unwrap();
    containers[1].ping(containers[0].ip).unwrap();
}

#[test]
fn classic_vxlan_retries_a_peer_whose_device_was_removed() {
    let bed = Testbed::configured(1, VXLAN).unwrap();
    let agent = bed
        .ready_agent(0, &["--datapath=classic", NO_RESYNC])
        .unwrap();
    let host = &bed.hosts[0];
    host.ip(&["link", "del", "flannel.1"]).unwrap();
    let lease = vxlan_lease(Ipv4Addr::new(192, 168, 64, 50), "0a:00:00:00:00:50");
    bed.etcd.put(&lease_key("10.1.200.0/24"), &lease).unwrap();
    wait_for("the failed write", READY, || {
        agent.log().contains("retrying in")
    })
    .unwrap();
    wait_for("the device and the peer's route", READY, || {
        host.ip(&["route", "show", "10.1.200.0/24"])
            .is_ok_and(|r| r.contains("dev flannel.1"))
    })
    .unwrap();
}

#[test]
fn host_gw_retries_a_refused_route_and_removes_stale_ones() {
    let bed = Testbed::configured(1, HOST_GW).unwrap();
    let agent = bed.ready_agent(0, &["--iptables-resync=1"]).unwrap();
    let host = &bed.hosts[0];
    let routes = || host.ip(&["route"]).unwrap();

    // A gateway off our link: the kernel refuses the route until it is on it.
    let lease = r#"{"PublicIP":"192.168.99.5","BackendType":"host-gw"}"#;
    bed.etcd.put(&lease_key("10.1.200.0/24"), lease).unwrap();
    wait_for("the refused route", READY, || {
        agent.log().contains("route 10.1.200.0/24 via 192.168.99.5")
    })
    .unwrap();
    host.ip(&["addr", "add", "192.168.99.1/24", "dev", "eth0"])
        .unwrap();
    wait_for("the route", READY, || {
        routes().contains("10.1.200.0/24 via 192.168.99.5 dev eth0")
    })
    .unwrap();

    // A route of ours that no lease explains goes; the kernel's own stay.
    host.ip(&[
        "route",
        "add",
        "10.1.201.0/24",
        "via",
        "192.168.64.1",
        "dev",
        "eth0",
        "proto",
        "241",
    ])
    .unwrap();
    host.ip(&[
        "route",
        "add",
        "10.1.202.0/24",
        "via",
        "192.168.64.1",
        "dev",
        "eth0",
    ])
    .unwrap();
    wait_for("the stale route to go", READY, || {
        !routes().contains("10.1.201.0/24")
    })
    .unwrap();
    assert!(routes().contains("10.1.202.0/24"), "not ours: kept");
    bed.etcd
        .etcdctl(&["del", &lease_key("10.1.200.0/24")])
        .unwrap();
    wait_for("the route of a deleted lease to go", READY, || {
        !routes().contains("10.1.200.0/24")
    })
    .unwrap();
}

#[test]
fn tun_udp_restores_its_network_route() {
    let bed = Testbed::configured(1, UDP).unwrap();
    let mut agent = bed
        .agent(0, &["--datapath=classic", "--iptables-resync=1"])
        .unwrap();
    agent.wait_ready(READY).unwrap();
    let host = &bed.hosts[0];
    let route = || host.ip(&["route", "show", "10.1.0.0/16"]).unwrap();
    assert!(route().contains("dev flannel0"), "{}", route());
    host.ip(&["route", "del", "10.1.0.0/16"]).unwrap();
    wait_for("the network's route", READY, || {
        route().contains("dev flannel0")
    })
    .unwrap();
}
