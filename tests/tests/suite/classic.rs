//! `--datapath=classic`: the kernel's vxlan device and the TUN udp loop as flanneld sets them
//! up, alone, mixed with hosts on the eBPF datapath, and as the eBPF datapath's fallback.

use flannel_tests::{
    agent::Agent,
    configs::{READY, UDP, VXLAN},
    etcd::wait_for,
    require_root,
    testbed::{self, lease_key, Container, Testbed},
};

fn cluster(config: &str, flags: &[&[&str]]) -> (Testbed, Vec<Agent>, Vec<Container>) {
    require_root();
    Testbed::cluster(config, flags).unwrap()
}

const CLASSIC: &[&str] = &["--datapath=classic"];
const EBPF: &[&str] = &["--datapath=ebpf"];

#[test]
fn classic_vxlan_on_three_hosts() {
    let (bed, _agents, containers) = cluster(VXLAN, &[CLASSIC, CLASSIC, CLASSIC]);
    testbed::all_reach_all(&containers, READY).unwrap();
    let device = bed.hosts[0]
        .ip(&["-d", "link", "show", "flannel.1"])
        .unwrap();
    for part in [
        "mtu 1450",
        "vxlan id 1 local 192.168.64.10 dev eth0",
        "dstport 8472",
        "nolearning",
    ] {
        assert!(device.contains(part), "{part}: {device}");
    }
}

#[test]
fn mixed_classic_and_ebpf_hosts_reach_each_other() {
    let (_bed, _agents, containers) = cluster(VXLAN, &[CLASSIC, EBPF]);
    testbed::all_reach_all(&containers, READY).unwrap();
}

#[test]
fn a_removed_lease_takes_its_neighbour_fdb_entry_and_route() {
    let (bed, mut agents, containers) = cluster(VXLAN, &[CLASSIC, CLASSIC]);
    testbed::all_reach_all(&containers, READY).unwrap();
    let gone = agents[1].subnet().unwrap();
    let gateway = gone.replace(".0/24", ".0");
    let host = &bed.hosts[0];
    let state = || {
        let neigh = host.ip(&["neigh", "show", "dev", "flannel.1"]).unwrap();
        let fdb = host
            .exec("bridge", &["fdb", "show", "dev", "flannel.1"])
            .unwrap();
        let routes = host.ip(&["route"]).unwrap();
        (
            neigh.contains(&gateway),
            fdb.contains("dst 192.168.64.11"),
            routes.contains(&gone),
        )
    };
    assert_eq!(state(), (true, true, true));
    agents[1].terminate().unwrap();
    bed.etcd.etcdctl(&["del", &lease_key(&gone)]).unwrap();
    wait_for("the peer's kernel state to go", READY, || {
        state() == (false, false, false)
    })
    .unwrap();
}

#[test]
fn a_restart_keeps_the_devices_mac() {
    let (bed, mut agents, _containers) = cluster(VXLAN, &[CLASSIC]);
    let mac = || {
        bed.hosts[0]
            .exec("cat", &["/sys/class/net/flannel.1/address"])
            .unwrap()
    };
    let before = mac();
    agents[0].restart().unwrap();
    agents[0].wait_ready(READY).unwrap();
    assert_eq!(mac(), before);
}

#[test]
fn a_bad_bpf_object_or_subnet_file_is_refused_before_anything_is_leased() {
    let bed = Testbed::configured(1, VXLAN).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("not-bpf.o");
    std::fs::write(&garbage, b"not an ELF object").unwrap();
    let object = format!("--bpf-object={}", garbage.display());
    let cases: [(&[&str], String); 3] = [
        (
            &[&object],
            format!("--bpf-object {}: not an eBPF object", garbage.display()),
        ),
        (
            &["--bpf-object=/nonexistent/flannel.bpf.o"],
            "--bpf-object /nonexistent/flannel.bpf.o".into(),
        ),
        (
            &["--subnet-file=/proc/flannel/subnet.env"],
            "--subnet-file /proc/flannel/subnet.env: can't write in /proc/flannel".into(),
        ),
    ];
    for (flags, message) in cases {
        let mut agent = bed.agent(0, flags).unwrap();
        let status = agent.wait_exit(READY).unwrap();
        assert!(!status.success(), "{flags:?} refused");
        assert!(agent.log().contains(&message), "{}", agent.log());
    }
    let host = &bed.hosts[0];
    assert!(bed.lease_keys().unwrap().is_empty(), "no lease");
    for device in ["flannel.1", "flannel-bpf", "flannel-gro"] {
        assert!(!host.has_link(device).unwrap(), "no {device}");
    }
}

#[test]
fn cleanup_removes_the_kernel_vxlan_device_and_its_routes() {
    let (bed, mut agents, containers) = cluster(VXLAN, &[CLASSIC, CLASSIC]);
    testbed::all_reach_all(&containers, READY).unwrap();
    let peer = agents[1].subnet().unwrap();
    agents[0].terminate().unwrap();
    let host = &bed.hosts[0];
    let status = Agent::spawn(host, &["--cleanup"])
        .unwrap()
        .wait_exit(READY)
        .unwrap();
    assert!(status.success());
    assert!(!host.has_link("flannel.1").unwrap(), "device removed");
    assert!(
        !host.ip(&["route"]).unwrap().contains(&peer),
        "route removed"
    );
}

#[test]
fn tun_udp_on_three_hosts() {
    let (bed, _agents, containers) = cluster(UDP, &[CLASSIC, CLASSIC, CLASSIC]);
    testbed::all_reach_all(&containers, READY).unwrap();
    let device = bed.hosts[0]
        .ip(&["-d", "link", "show", "flannel0"])
        .unwrap();
    assert!(
        device.contains("mtu 1472") && device.contains("tun"),
        "{device}"
    );
}

#[test]
fn mixed_tun_udp_and_ebpf_udp_hosts_reach_each_other() {
    let (_bed, _agents, containers) = cluster(UDP, &[CLASSIC, EBPF]);
    testbed::all_reach_all(&containers, READY).unwrap();
}

#[test]
fn tun_udp_answers_net_unreachable_for_a_subnet_nobody_holds() {
    let (_bed, _agents, containers) = cluster(UDP, &[CLASSIC]);
    // From the host's own overlay address, routed into flannel0 like container traffic.
    let err = containers[0]
        .ping("10.1.250.9".parse::<std::net::Ipv4Addr>().unwrap())
        .unwrap_err();
    assert!(
        err.to_string().contains("Destination Net Unreachable"),
        "{err:#}"
    );
}
