//! `flanneld --cleanup`: what the agent installed goes, and only that.

use aya::programs::TcAttachType;
use flannel_common::map_names;

use flannel_tests::{
    agent::Agent,
    configs::{HOST_GW, READY, VXLAN},
    etcd::wait_for,
    hooks,
    testbed::Testbed,
};

#[test]
fn maps_are_pinned_and_cleanup_removes_everything_we_installed() {
    let bed = Testbed::configured(2, VXLAN).unwrap();
    let mut agents: Vec<Agent> = (0..2)
        .map(|i| bed.agent(i, &["--ip-masq"]).unwrap())
        .collect();
    for agent in &mut agents {
        agent.wait_ready(READY).unwrap();
    }
    let pins = bed.pin_dir(0);
    for name in [
        map_names::CONFIG,
        map_names::PEERS,
        map_names::ROUTES,
        map_names::DROPS,
        map_names::TRAFFIC,
        map_names::ENDPOINTS,
        "tc_nic_link",
        "tc_overlay_link",
    ] {
        assert!(pins.join(name).exists(), "{name} is pinned");
    }
    let host = &bed.hosts[0];
    let hooked = |dev, kind| hooks::hooked(host, dev, kind).unwrap();
    assert_eq!(hooked("eth0", TcAttachType::Ingress), ["tc_ingress"]);
    agents[0].terminate().unwrap();

    let pin_flag = format!("--bpf-pin-dir={}", pins.display());
    let cleanup = Agent::spawn(host, &["--cleanup", &pin_flag]).map(|mut a| a.wait_exit(READY));
    assert!(cleanup.unwrap().unwrap().success());
    assert!(
        hooked("eth0", TcAttachType::Ingress).is_empty(),
        "NIC hook removed"
    );
    assert!(
        !host.has_link("flannel-bpf").unwrap(),
        "overlay device removed"
    );
    assert!(
        !host.ip(&["route", "show"]).unwrap().contains("10.1.0.0/16"),
        "overlay route removed"
    );
    let nat = host.exec("iptables-save", &["-t", "nat"]).unwrap();
    let filter = host.exec("iptables-save", &["-t", "filter"]).unwrap();
    assert!(
        !nat.contains("FLANNEL") && !filter.contains("FLANNEL"),
        "{nat}{filter}"
    );
    assert!(!pins.exists(), "pins removed");
}

#[test]
fn cleanup_removes_host_gw_routes_and_only_ours() {
    let bed = Testbed::configured(2, HOST_GW).unwrap();
    let mut agents: Vec<Agent> = (0..2).map(|i| bed.agent(i, &[]).unwrap()).collect();
    for agent in &mut agents {
        agent.wait_ready(READY).unwrap();
    }
    let peer = agents[1].subnet().unwrap();
    let host = &bed.hosts[0];
    wait_for("the host-gw route", READY, || {
        host.ip(&["route"]).unwrap().contains(&peer)
    })
    .unwrap();
    host.ip(&["route", "add", "10.99.0.0/24", "via", "192.168.64.1"])
        .unwrap();
    agents[0].terminate().unwrap();
    let status = Agent::spawn(host, &["--cleanup"])
        .unwrap()
        .wait_exit(READY)
        .unwrap();
    assert!(status.success());
    let routes = host.ip(&["route"]).unwrap();
    assert!(!routes.contains(&peer), "{routes}");
    assert!(
        routes.contains("10.99.0.0/24"),
        "someone else's route stays: {routes}"
    );
}
