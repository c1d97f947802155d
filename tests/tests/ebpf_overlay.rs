//! The eBPF datapath end to end: hosts in network namespaces, flanneld on each, containers
//! behind docker0-style bridges, real packets.

use std::time::Duration;

use aya::programs::TcAttachType;
use flannel_common::map_names;

use flannel_tests::{
    agent::Agent,
    etcd::wait_for,
    hooks, metrics,
    netns::{kernel_vxlan, kernel_vxlan_peer, Bpffs, Netns},
    require_root,
    testbed::{self, lease_key, Container, Testbed, PREFIX},
};

const VXLAN: &str = r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}}"#;
const UDP: &str = r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "udp"}}"#;
const READY: Duration = Duration::from_secs(20);

/// `hosts` hosts with agents on `config` and one container each.
fn overlay(config: &str, hosts: usize) -> (Testbed, Vec<Agent>, Vec<Container>) {
    require_root();
    Testbed::cluster(config, &vec![&[][..]; hosts]).unwrap()
}

fn all_reach_all(containers: &[Container]) {
    testbed::all_reach_all(containers, READY).unwrap();
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

fn lease_value(bed: &Testbed, subnet: &str) -> serde_json::Value {
    let key = lease_key(subnet);
    serde_json::from_str(&bed.etcd.get(&key).unwrap().expect("lease")).unwrap()
}

/// One host ours, the other a Linux vxlan device set up exactly as flannel sets up
/// `flannel.1`; containers on both reach each other, both ways.
#[test]
fn interoperates_with_a_kernel_vxlan_host_configured_like_flannel() {
    require_root();
    let bed = Testbed::new(2).unwrap();
    bed.put_config(VXLAN).unwrap();
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

    let mut ours = bed.agent(0, &[]).unwrap();
    ours.wait_ready(READY).unwrap();
    let our_subnet = ours.subnet().unwrap();
    let our_mac = lease_value(&bed, &our_subnet)["BackendData"]["VtepMAC"]
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
        let (_bed, _agents, containers) = overlay(config, 2);
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
    let (bed, mut agents, containers) = overlay(VXLAN, 2);
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
        containers[0].ping(containers[1].ip).is_err(),
        "the removed peer is unreachable"
    );
}

#[test]
fn a_peer_that_changes_its_public_ip_keeps_working() {
    let (bed, mut agents, containers) = overlay(VXLAN, 2);
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

#[test]
fn a_container_recreated_with_its_ip_is_reachable_at_once() {
    require_root();
    // Resyncs an hour apart: only the agent following link and neighbour events explains it.
    let flags: &[&str] = &["--iptables-resync=3600"];
    let (bed, mut agents, mut containers) = Testbed::cluster(VXLAN, &[flags, flags]).unwrap();
    all_reach_all(&containers);
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
    all_reach_all(&containers);
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
    let (bed, mut agents, containers) = overlay(VXLAN, 2);
    all_reach_all(&containers);
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
    let mut upgraded = bed.agent(1, &[]).unwrap();
    upgraded.wait_ready(READY).unwrap();
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
    all_reach_all(&containers);
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

/// Pings `to` from `from` every 10 ms, `count` times, while every agent restarts in turn;
/// returns ping's report.
fn ping_through_restarts(
    from: &Container,
    to: &Container,
    agents: &mut [Agent],
    count: u32,
    steady_ttl: u8,
) -> String {
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
    let (target, count) = (to.ip.to_string(), count.to_string());
    std::thread::scope(|scope| {
        let pinger = scope.spawn(|| {
            from.ns
                .exec("ping", &["-i", "0.01", "-c", &count, "-W", "1", &target])
        });
        // Let traffic flow before the first restart, so the window covers the handover.
        std::thread::sleep(Duration::from_millis(500));
        for agent in agents.iter_mut() {
            agent.restart().unwrap();
            agent.wait_ready(READY).unwrap();
        }
        pinger.join().unwrap()
    })
    .expect("ping ran")
}

#[test]
fn an_agent_restart_loses_no_packet() {
    let (_bed, mut agents, containers) = overlay(VXLAN, 2);
    wait_for("reachability", READY, || {
        containers[0].ping(containers[1].ip).is_ok()
    })
    .unwrap();
    let out = ping_through_restarts(&containers[0], &containers[1], &mut agents, 400, 64);
    assert!(out.contains(" 0% packet loss"), "{out}");
    assert!(agents[0].log().matches("eBPF programs attached").count() == 2);
}

#[test]
fn a_strangers_vxlan_packet_reaches_no_container_and_monitor_shows_it() {
    require_root();
    let bpffs = Bpffs::mount().unwrap();
    let (pins, pin_flag) = bpffs.pin_dir("h1");
    let (bed, agents, containers) = Testbed::cluster(VXLAN, &[&[], &[pin_flag.as_str()]]).unwrap();
    wait_for("reachability", READY, || {
        containers[0].ping(containers[1].ip).is_ok()
    })
    .unwrap();
    // A stranger on the underlay, without a lease, forges a VXLAN frame with our VNI for
    // host 1's container, and the same packet from a peer's address would be delivered.
    let stranger = flannel_tests::netns::Netns::new("stranger").unwrap();
    flannel_tests::netns::link(
        &stranger,
        "eth0",
        "192.168.64.66/24",
        &bed.underlay,
        "p66",
        "0.0.0.0/32",
    )
    .unwrap();
    bed.underlay
        .ip(&["link", "set", "p66", "master", "br0"])
        .unwrap();
    let vtep = lease_value(&bed, &agents[1].subnet().unwrap())["BackendData"]["VtepMAC"]
        .as_str()
        .unwrap()
        .parse::<flannel_agent::control::lease::Mac>()
        .unwrap();
    let listener = containers[1].udp_listener(7777).unwrap();
    let inner_ip = flannel_tests::packet::ipv4(
        std::net::Ipv4Addr::new(10, 1, 66, 6),
        containers[1].ip,
        flannel_tests::packet::IPPROTO_UDP,
        &flannel_tests::packet::udp(5555, 7777, b"forged"),
    );
    let inner = flannel_tests::packet::ethernet(
        vtep.0,
        [2, 0, 0, 0, 0, 0x66],
        flannel_tests::packet::ETH_P_IP,
        &inner_ip,
    );
    let payload = flannel_tests::packet::vxlan(1, &inner);
    let monitor = Monitor::start(&bed.hosts[1], &pins);
    stranger
        .enter(|| {
            let socket = std::net::UdpSocket::bind("192.168.64.66:0").unwrap();
            socket.send_to(&payload, "192.168.64.11:8472").unwrap();
        })
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        listener.recv(&mut buf).is_err(),
        "the forged packet reached the container"
    );
    let shown = monitor.output();
    assert_eq!(
        shown,
        serde_json::json!({
            "reason": "unknown_peer", "hook": "tc_ingress", "interface": "eth0",
            "peer": "192.168.64.66", "src": "10.1.66.6", "dst": containers[1].ip.to_string(),
            "protocol": "udp", "sport": 5555, "dport": 7777, "suppressed": 0
        })
    );
}

/// `flanneld monitor --json --count 1` on a host, listening once `start` returns.
struct Monitor(std::process::Child);

impl Monitor {
    fn start(host: &flannel_tests::netns::Netns, pins: &std::path::Path) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &host.name])
            .arg(flannel_tests::agent::flanneld())
            .args(["monitor", "--json", "--count", "1", "--bpf-pin-dir"])
            .arg(pins)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut said = String::new();
        std::io::BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut said)
            .unwrap();
        assert!(said.starts_with("listening for drops"), "{said}");
        Monitor(child)
    }

    /// The one drop it printed, within 10 s.
    fn output(mut self) -> serde_json::Value {
        wait_for(
            "the monitor to print a drop",
            Duration::from_secs(10),
            || self.0.try_wait().unwrap().is_some(),
        )
        .unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(self.0.stdout.as_mut().unwrap(), &mut text).unwrap();
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_oversize_packet_gets_fragmentation_needed() {
    let (_bed, _agents, containers) = overlay(VXLAN, 2);
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
fn maps_are_pinned_and_cleanup_removes_everything_we_installed() {
    require_root();
    let bed = Testbed::new(2).unwrap();
    bed.put_config(VXLAN).unwrap();
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
        host.ip(&["link", "show", "flannel-bpf"]).is_err(),
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
    require_root();
    let bed = Testbed::new(2).unwrap();
    bed.put_config(r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "host-gw"}}"#)
        .unwrap();
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
    all_reach_all(&containers);
    let forward = iperf(&containers[0], &containers[1], false);
    assert!(forward > 0.1, "{forward} Gbit/s");

    let out = ping_through_restarts(&containers[0], &containers[1], &mut agents, 300, 63);
    assert!(out.contains(" 0% packet loss"), "{out}");
}

#[test]
fn metrics_count_what_crosses_the_overlay() {
    require_root();
    let flags: [&[&str]; 2] = [&[metrics::FLAG], &[]];
    let (bed, _agents, containers) = Testbed::cluster(VXLAN, &flags).unwrap();
    all_reach_all(&containers);
    let metrics = || metrics::scrape(&bed.hosts[0]).unwrap();
    let tx = |text: &str| {
        metrics::value(text, "flannel_peer_tx_packets_total")
            .unwrap_or_else(|| panic!("no per-peer counter in:\n{text}"))
    };
    let before = metrics();
    // Every non-comment line is `name{labels} value` or `name value`, with a number.
    for line in before.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "not Prometheus text: {line}");
    }
    assert!(
        before.contains(r#"flannel_datapath_info{datapath="eBPF"} 1"#),
        "{before}"
    );
    assert!(
        before.contains(r#"flannel_bpf_decap_info{decap="tc",gro="tunnel frames"} 1"#),
        "{before}"
    );
    for _ in 0..5 {
        containers[0].ping(containers[1].ip).unwrap();
    }
    let after = metrics();
    assert!(tx(&after) >= tx(&before) + 5.0, "{before}\n{after}");
}

#[test]
fn status_lists_every_peer_with_its_traffic() {
    require_root();
    let bpffs = Bpffs::mount().unwrap();
    let pins: Vec<String> = (0..3)
        .map(|i| {
            format!(
                "--bpf-pin-dir={}",
                bpffs.path().join(format!("h{i}")).display()
            )
        })
        .collect();
    let flags: Vec<[&str; 1]> = pins.iter().map(|pin| [pin.as_str()]).collect();
    let flags: Vec<&[&str]> = flags.iter().map(|f| &f[..]).collect();
    let (mut bed, agents, containers) = Testbed::cluster(VXLAN, &flags).unwrap();
    all_reach_all(&containers);

    let flanneld = flannel_tests::agent::flanneld()
        .to_str()
        .unwrap()
        .to_owned();
    let endpoints = format!("--etcd-endpoints={}", bed.etcd.endpoint());
    let subnet_file = format!("--subnet-file={}", agents[0].subnet_file().display());
    let status = |extra: &[&str]| {
        let mut args = vec!["status", &endpoints, &subnet_file, &pins[0]];
        args.extend_from_slice(extra);
        bed.hosts[0].exec(&flanneld, &args).unwrap()
    };
    let json: serde_json::Value = serde_json::from_str(&status(&["--json"])).unwrap();
    assert_eq!(json["lease"]["subnet"], agents[0].subnet().unwrap());
    assert_eq!(json["network"], "10.1.0.0/16");
    assert_eq!(json["datapath"]["kind"], "eBPF");
    assert_eq!(json["datapath"]["decap"], "tc");
    assert_eq!(json["datapath"]["gro"], "tunnel frames");
    let attached = json["datapath"]["attached"].to_string();
    assert!(
        attached.contains("tc ingress on eth0") && attached.contains("tc ingress on cni0"),
        "{attached}"
    );
    let peers = json["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2, "{json}");
    for peer in peers {
        assert!(
            peer["tx_packets"].as_u64().unwrap() > 0,
            "pings went to every peer: {peer}"
        );
        assert!(peer["vtep_mac"].is_string());
    }
    let text = status(&[]);
    for agent in &agents[1..] {
        assert!(text.contains(&agent.subnet().unwrap()), "{text}");
    }
    assert!(text.contains("datapath:  eBPF"), "{text}");
    assert!(
        text.contains("decap:     tc; GRO merges tunnel frames"),
        "{text}"
    );

    // etcd down: what the host holds, from the pins and the kernel, and an exit code that
    // says etcd's part is missing.
    bed.etcd.stop();
    let output = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &bed.hosts[0].name,
            &flanneld,
            "status",
            "--json",
        ])
        .args([&endpoints, &subnet_file, &pins[0]])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["etcd"]["reachable"], false, "{json}");
    assert_eq!(json["network"], "10.1.0.0/16");
    let listed: Vec<&str> = json["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["subnet"].as_str().unwrap())
        .collect();
    for agent in &agents[1..] {
        assert!(listed.contains(&agent.subnet().unwrap().as_str()), "{json}");
    }
    assert!(
        json["datapath"]["attached"]
            .to_string()
            .contains("tc ingress on eth0"),
        "{json}"
    );
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
    all_reach_all(&containers);
    assert!(agents[0].log().contains("eBPF programs attached"));
}
