//! No transition loses a packet, and first packets answer at once: first contact between
//! containers of each family, a new container, a host that joins, and an agent's first start
//! on a host whose containers are already talking, an upgrade from the previous release.
//! (Restarts: `ebpf_overlay.rs`, `systemd.rs`.)

use std::{net::IpAddr, time::Duration};

use aya::programs::TcAttachType;
use flannel_tests::{
    agent::{previous_flanneld, Agent},
    configs::{DUAL_HOST_GW, DUAL_VXLAN, READY, UDP, VXLAN},
    etcd::wait_for,
    hooks, require_root,
    testbed::{Container, Testbed, Underlay},
};

/// The slowest a first packet may answer: resolving neighbours on the way costs well under a
/// millisecond; a packet the kernel holds (an address still tentative, a missing entry) costs
/// about a second.
const FIRST: Duration = Duration::from_millis(100);

/// The addresses of `container` in the network's families.
fn addresses(container: &Container) -> Vec<IpAddr> {
    let ipv4 = Some(IpAddr::V4(container.ip)).filter(|ip| !ip.is_unspecified());
    ipv4.into_iter()
        .chain(container.ipv6.map(IpAddr::V6))
        .collect()
}

/// The first ping from `from` to each of `to`'s addresses answers within [`FIRST`].
fn answers_at_once(from: &Container, to: &Container) {
    for target in addresses(to) {
        let rtt = from.ping_once(target, Duration::from_secs(2)).unwrap();
        eprintln!("first ping {} -> {target}: {rtt:?}", from.name());
        assert!(rtt < FIRST, "{} -> {target}: {rtt:?}", from.name());
    }
}

/// Waits until hosts `a` and `b` route each other's subnets (a signal that sends nothing).
fn routed_between(bed: &Testbed, agents: &[Agent], a: usize, b: usize) {
    for (from, to) in [(a, b), (b, a)] {
        let mut subnets = vec![agents[to].subnet().unwrap()];
        subnets.extend(agents[to].ipv6_subnet().ok().map(|net| net.to_string()));
        for subnet in subnets {
            bed.wait_routed(from, &subnet, READY).unwrap();
        }
    }
}

/// A container on host `index` as Docker starts one, with IPv6 where the network has it.
fn container(bed: &Testbed, index: usize, agent: &Agent, n: u8, ipv6: bool) -> Container {
    let mut container = bed.add_docker_container(index, agent, n).unwrap();
    if ipv6 {
        bed.add_ipv6(index, agent, &mut container).unwrap();
    }
    container
}

/// On a fresh network, the very first packets answer at once, each way and in each family:
/// between the first two containers, to and from a new container, to and from a host that
/// joins later. Traffic already flowing loses nothing meanwhile.
fn first_packets_answer_at_once(config: &str, flags: &[&str], ipv6: bool) {
    require_root();
    let kind = Underlay::Passthrough;
    let (mut bed, mut agents, containers) = match ipv6 {
        true => Testbed::dual_stack_cluster_on(kind, config, &[flags, flags]),
        false => Testbed::cluster_on(kind, config, &[flags, flags]),
    }
    .unwrap();
    routed_between(&bed, &agents, 0, 1);
    let (c0, c1) = (&containers[0], &containers[1]);
    answers_at_once(c0, c1);
    answers_at_once(c1, c0);

    let lost = c0.pings_lost_while(c1.ip, 300, || {
        // A new container, pinged first; another, pinging first.
        let pinged = container(&bed, 1, &agents[1], 3, ipv6);
        answers_at_once(c0, &pinged);
        answers_at_once(&pinged, c0);
        let pinging = container(&bed, 1, &agents[1], 4, ipv6);
        answers_at_once(&pinging, c0);
        answers_at_once(c0, &pinging);
    });
    assert_eq!(lost.unwrap(), 0, "pings lost while containers came");

    let lost = c0.pings_lost_while(c1.ip, 300, || {
        let index = bed.add_host().unwrap();
        if ipv6 {
            bed.enable_ipv6(index).unwrap();
        }
        let mut agent = bed.agent(index, flags).unwrap();
        agent.wait_ready(READY).unwrap();
        let joined = container(&bed, index, &agent, 2, ipv6);
        agents.push(agent);
        routed_between(&bed, &agents, 0, index);
        answers_at_once(c0, &joined);
        answers_at_once(&joined, c1);
    });
    assert_eq!(lost.unwrap(), 0, "pings lost while a host joined");
}

#[test]
fn first_packets_answer_at_once_on_ebpf_vxlan() {
    first_packets_answer_at_once(DUAL_VXLAN, &[], true);
}

#[test]
fn first_packets_answer_at_once_on_kernel_vxlan() {
    first_packets_answer_at_once(DUAL_VXLAN, &["--datapath=classic"], true);
}

#[test]
fn first_packets_answer_at_once_on_host_gw() {
    first_packets_answer_at_once(DUAL_HOST_GW, &[], true);
}

#[test]
fn first_packets_answer_at_once_on_ebpf_udp() {
    first_packets_answer_at_once(UDP, &[], false);
}

/// The agent's first start on a host whose containers are talking (to the host, and the host
/// to the underlay) loses none of their packets: our hooks on the NIC and the bridge are TCX
/// links, which need no `clsact` qdisc, whose graft drops what the device sends while the
/// kernel swaps qdiscs. (That window is short: pings rarely fall in it, so the qdisc is
/// checked too.)
#[test]
fn an_agents_first_start_beside_talking_containers_loses_nothing() {
    require_root();
    let bed = Testbed::new(1).unwrap();
    // One subnet to lease, so the bridge can be there first, as Docker's from a subnet.env.
    bed.put_config(
        r#"{"Network": "10.1.0.0/16", "SubnetMin": "10.1.7.0", "SubnetMax": "10.1.7.0",
            "Backend": {"Type": "vxlan"}}"#,
    )
    .unwrap();
    let host = &bed.hosts[0];
    let talking = bed.add_container(0, "10.1.7.0/24", 2).unwrap();
    let gateway: IpAddr = "10.1.7.1".parse().unwrap();
    let underlay: IpAddr = "192.168.64.1".parse().unwrap();
    let mut agent = None;
    let lost = std::thread::scope(|scope| {
        let host_pings = scope.spawn(|| host.pings_lost_while(underlay, 400, || {}));
        let container_pings = talking.pings_lost_while(gateway, 400, || {
            let mut started = bed.agent(0, &[]).unwrap();
            started.wait_ready(READY).unwrap();
            agent = Some(started);
        });
        (host_pings.join().unwrap(), container_pings)
    });
    let agent = agent.expect("the agent started");
    assert_eq!(agent.subnet().unwrap(), "10.1.7.0/24");
    assert_eq!(lost.0.unwrap(), 0, "the host's pings lost");
    assert_eq!(lost.1.unwrap(), 0, "the container's pings lost");
    for dev in ["eth0", "cni0"] {
        let qdiscs = host.exec("tc", &["qdisc", "show", "dev", dev]).unwrap();
        assert!(!qdiscs.contains("clsact"), "{dev}: {qdiscs}");
    }
    let hooked = |dev| hooks::hooked(host, dev, TcAttachType::Ingress).unwrap();
    assert_eq!(hooked("eth0"), ["tc_ingress"]);
    assert_eq!(hooked("cni0"), ["tc_encap"]);
}

/// An upgrade from the previous release, whose agents left filters, maps and pins, loses no
/// packet: each host's agent is replaced in turn under 10 ms pings. The new agents hook in
/// with TCX links, no filter of the old ones stays, and no old map is reused.
#[test]
fn an_upgrade_from_the_previous_release_loses_no_packet() {
    require_root();
    let previous = previous_flanneld();
    let bed = Testbed::new(2).unwrap();
    bed.put_config(VXLAN).unwrap();
    let mut agents = Vec::new();
    let mut containers = Vec::new();
    for index in 0..2 {
        let mut agent = bed.agent_built(previous, index, &[], &[]).unwrap();
        agent.wait_ready(READY).unwrap();
        containers.push(bed.add_docker_container(index, &agent, 2).unwrap());
        agents.push(agent);
    }
    let (c0, c1) = (&containers[0], &containers[1]);
    // The window starts in the steady state: both fast paths deliver into the containers.
    // (The previous release's maps have other names: its routes are not read here.)
    for (from, to) in [(c0, c1), (c1, c0)] {
        wait_for("delivery straight into the containers", READY, || {
            from.ping(to.ip).is_ok_and(|reply| reply.contains("ttl=64"))
        })
        .unwrap();
    }
    let host = &bed.hosts[1];
    let filters = host.exec("tc", &["filter", "show", "dev", "eth0", "ingress"]);
    let filters = filters.unwrap();
    assert!(
        filters.contains("tc_ingress"),
        "the old agent's filter: {filters}"
    );
    let old_maps = map_ids(&bed.pin_dir(1));

    let lost = c0.pings_lost_while(c1.ip, 400, || {
        for agent in &mut agents {
            agent.upgrade().unwrap();
            agent.wait_ready(READY).unwrap();
        }
    });
    assert_eq!(lost.unwrap(), 0, "pings lost during the upgrade");
    let ingress = TcAttachType::Ingress;
    let hooked = |dev| hooks::hooked(host, dev, ingress).unwrap();
    wait_for("the new agent's hooks alone", READY, || {
        hooked("eth0") == ["tc_ingress"] && hooked("cni0") == ["tc_encap"]
    })
    .unwrap();
    let new_maps = map_ids(&bed.pin_dir(1));
    assert!(
        new_maps.iter().all(|id| !old_maps.contains(id)),
        "an old map was reused: {old_maps:?} -> {new_maps:?}"
    );
    c0.ping(c1.ip).unwrap();
}

/// The kernel's ids of the maps pinned in `pins`.
fn map_ids(pins: &std::path::Path) -> Vec<u32> {
    let entries = std::fs::read_dir(pins).unwrap().flatten();
    let maps = entries.filter(|entry| entry.file_name().to_string_lossy().starts_with("FLANNEL_"));
    maps.map(|entry| aya::maps::MapInfo::from_pin(entry.path()).unwrap().id())
        .collect()
}

/// A host "reboots" (its agent killed, /run emptied, its pins, devices, hooks and routes
/// gone) and comes back with the same subnet and VTEP MAC, so its lease does not change and no
/// peer rewrites anything: traffic is back within a second of the agent's READY.
fn a_reboot_keeps_the_subnet_and_the_vtep_mac(flags: &[&str], devices: &[&str]) {
    require_root();
    let kind = Underlay::Passthrough;
    let (bed, mut agents, containers) =
        Testbed::dual_stack_cluster_on(kind, DUAL_VXLAN, &[flags, flags]).unwrap();
    routed_between(&bed, &agents, 0, 1);
    let (c0, c1) = (&containers[0], &containers[1]);
    answers_at_once(c1, c0);
    let key = agents[0].lease_key().unwrap();
    let lease = bed.etcd.get(&key).unwrap().expect("host 0's lease");

    let host = &bed.hosts[0];
    agents[0].kill().unwrap();
    std::fs::remove_file(agents[0].subnet_file()).unwrap();
    // (The classic datapath pins nothing.)
    let pins = bed.pin_dir(0);
    if pins.exists() {
        std::fs::remove_dir_all(pins).unwrap();
    }
    for device in devices {
        host.ip(&["link", "del", device]).unwrap();
    }
    assert!(!c1.reaches(c0.ip).unwrap(), "host 0 still forwards");

    agents[0].restart().unwrap();
    agents[0].wait_ready(READY).unwrap();
    assert_eq!(bed.etcd.get(&key).unwrap().as_deref(), Some(lease.as_str()));
    for target in addresses(c0) {
        flannel_tests::etcd::wait_for("traffic back", Duration::from_secs(1), || {
            c1.ping_once(target, Duration::from_millis(200)).is_ok()
        })
        .unwrap();
    }
}

#[test]
fn a_reboot_keeps_the_subnet_and_the_vtep_mac_on_ebpf() {
    a_reboot_keeps_the_subnet_and_the_vtep_mac(&[], &["flannel-bpf", "flannel-gro"]);
}

#[test]
fn a_reboot_keeps_the_subnet_and_the_vtep_mac_on_kernel_vxlan() {
    let devices = ["flannel.1", "flannel-v6.1"];
    a_reboot_keeps_the_subnet_and_the_vtep_mac(&["--datapath=classic"], &devices);
}
