//! The eBPF datapath on the NIC-like underlay (the sender segments, the receiver merges with
//! GRO, as real NICs do): bulk TCP arrives byte for byte in each decap mode and wire format,
//! also through a container that routes on to another; and the GRO devices behave: the one
//! that lets the NIC merge our vxlan frames, and the one that merges decapsulated udp frames.
//! IPv6 too.

use std::net::{Ipv4Addr, SocketAddrV4, SocketAddrV6};

use aya::programs::TcAttachType;
use flannel_common::pins::Pins;
use flannel_tests::{
    agent::Agent,
    bulk::verified_transfer,
    configs::{DUAL_VXLAN, READY, UDP, VXLAN},
    etcd::wait_for,
    hooks, metrics,
    packet::{self, TunnelHeader, IPV4_DF},
    pins, require_root,
    testbed::{self, Container, Testbed, Underlay},
};

const BYTES: usize = 64 << 20;

/// Two hosts on the NIC-like underlay, each agent with `flags`, one container each.
fn cluster(config: &str, flags: &[&str]) -> (Testbed, Vec<Agent>, Vec<Container>) {
    require_root();
    let (bed, agents, containers) =
        Testbed::cluster_on(Underlay::NicLike, config, &[flags, flags]).unwrap();
    testbed::all_reach_all(&containers, READY).unwrap();
    (bed, agents, containers)
}

fn at(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// `router` forwards TCP `port` on its own address to `to`, masquerading, as a proxy or load
/// balancer container does.
fn forward_port(router: &Container, port: u16, to: Ipv4Addr) {
    let port = port.to_string();
    let dest = format!("{to}:{port}");
    router
        .ns
        .exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    for rule in [
        &[
            "PREROUTING",
            "-p",
            "tcp",
            "--dport",
            &port,
            "-j",
            "DNAT",
            "--to-destination",
            &dest,
        ][..],
        &[
            "POSTROUTING",
            "-p",
            "tcp",
            "-d",
            &to.to_string(),
            "-j",
            "MASQUERADE",
        ],
    ] {
        let args = [&["-t", "nat", "-A"][..], rule].concat();
        router.ns.exec("iptables", &args).unwrap();
    }
}

/// Container A on host 0 and R on host 1 exchange 64 MiB each way; then R forwards to C, a
/// second container on host 0, and A and C exchange 64 MiB each way through R: what host 1
/// decapsulated (GRO aggregates included) goes out through the tunnel again.
fn bulk_transfers_arrive_intact(config: &str, decap: &str) {
    let (bed, agents, containers) = cluster(config, &[decap, metrics::FLAG]);
    let (a, r) = (&containers[0], &containers[1]);
    verified_transfer(&r.ns, at(r.ip, 5001), &a.ns, at(r.ip, 5001), BYTES).unwrap();
    verified_transfer(&a.ns, at(a.ip, 5002), &r.ns, at(a.ip, 5002), BYTES).unwrap();

    let c = bed.add_docker_container(0, &agents[0], 3).unwrap();
    forward_port(r, 6001, c.ip);
    forward_port(r, 6002, a.ip);
    verified_transfer(&c.ns, at(c.ip, 6001), &a.ns, at(r.ip, 6001), BYTES).unwrap();
    verified_transfer(&a.ns, at(a.ip, 6002), &c.ns, at(r.ip, 6002), BYTES).unwrap();
    for host in &bed.hosts {
        let dropped = metric(host, r#"flannel_drops_total{reason="encap_failed"}"#);
        assert_eq!(dropped, 0.0, "packets the programs could not encapsulate");
    }
}

#[test]
fn vxlan_bulk_tcp_is_intact_with_tc_decap() {
    bulk_transfers_arrive_intact(VXLAN, "--bpf-decap=tc");
}

#[test]
fn vxlan_bulk_tcp_is_intact_with_xdp_decap() {
    bulk_transfers_arrive_intact(VXLAN, "--bpf-decap=xdp");
}

#[test]
fn udp_bulk_tcp_is_intact_with_tc_decap() {
    bulk_transfers_arrive_intact(UDP, "--bpf-decap=tc");
}

#[test]
fn udp_bulk_tcp_is_intact_with_xdp_decap() {
    bulk_transfers_arrive_intact(UDP, "--bpf-decap=xdp");
}

/// A dual-stack network's IPv6: 64 MiB each way, tunnelled at the sending host's bridge. The
/// containers' MTU is above the IPv6 tunnel's, so the first full-size packets are too big for
/// it and must get "packet too big" from the stack, not be tunnelled or lost.
#[test]
fn ipv6_bulk_tcp_is_intact() {
    require_root();
    let (bed, _agents, containers) = Testbed::dual_stack_cluster_on(
        Underlay::NicLike,
        DUAL_VXLAN,
        &[&[metrics::FLAG], &[metrics::FLAG]],
    )
    .unwrap();
    testbed::all_reach_all(&containers, READY).unwrap();
    let [a, b] = [&containers[0], &containers[1]].map(|c| c.ipv6.expect("an IPv6 address"));
    let at6 = |ip, port| SocketAddrV6::new(ip, port, 0, 0);
    let (ns_a, ns_b) = (&containers[0].ns, &containers[1].ns);
    verified_transfer(ns_b, at6(b, 5001), ns_a, at6(b, 5001), BYTES).unwrap();
    verified_transfer(ns_a, at6(a, 5002), ns_b, at6(a, 5002), BYTES).unwrap();
    for host in &bed.hosts {
        let dropped = metric(host, r#"flannel_drops_total{reason="encap_failed"}"#);
        assert_eq!(dropped, 0.0, "packets the programs could not encapsulate");
    }
}

/// The value of `series` in `host`'s `/metrics`.
fn metric(host: &flannel_tests::netns::Netns, series: &str) -> f64 {
    metrics::read(host, series).unwrap()
}

#[test]
fn gro_merges_vxlan_frames_before_tc_decap_and_its_device_follows_the_agent() {
    require_root();
    let (bed, mut agents, containers) = cluster(VXLAN, &[metrics::FLAG]);
    let host = &bed.hosts[1];
    let details = host.ip(&["-d", "link", "show", "flannel-gro"]).unwrap();
    assert!(
        details.contains("vxlan external")
            && details.contains("dstport 8472")
            && details.contains("srcport 32768 60999"),
        "{details}"
    );
    assert!(details.contains(",UP"), "{details}");
    let forwarding = host
        .exec("sysctl", &["-n", "net.ipv4.conf.flannel-gro.forwarding"])
        .unwrap();
    assert_eq!(forwarding.trim(), "0");

    // What TC decapsulates are GRO aggregates, not wire frames.
    let (a, b) = (&containers[0], &containers[1]);
    verified_transfer(&b.ns, at(b.ip, 5001), &a.ns, at(b.ip, 5001), BYTES).unwrap();
    let merged =
        metric(host, "flannel_peer_rx_bytes_total") / metric(host, "flannel_peer_rx_packets_total");
    assert!(merged > 3000.0, "{merged} bytes per decapsulated packet");

    // A restart keeps the device (no moment without GRO).
    let index = |h: &flannel_tests::netns::Netns| {
        h.exec("cat", &["/sys/class/net/flannel-gro/ifindex"])
            .unwrap()
    };
    let before = index(host);
    agents[1].restart().unwrap();
    agents[1].wait_ready(READY).unwrap();
    assert_eq!(index(host), before, "the GRO device was recreated");

    // One that an older agent left, picking its source ports elsewhere, is replaced.
    agents[1].terminate().unwrap();
    host.ip(&["link", "del", "flannel-gro"]).unwrap();
    host.ip(&[
        "link",
        "add",
        "flannel-gro",
        "type",
        "vxlan",
        "external",
        "dstport",
        "8472",
        "nolearning",
    ])
    .unwrap();
    let mut tc = bed.ready_agent(1, &[]).unwrap();
    let details = host.ip(&["-d", "link", "show", "flannel-gro"]).unwrap();
    assert!(details.contains("srcport 32768 60999"), "{details}");
    tc.terminate().unwrap();

    // XDP decap runs before GRO: no device.
    let mut xdp = bed.ready_agent(1, &["--bpf-decap=xdp"]).unwrap();
    assert!(!host.has_link("flannel-gro").unwrap());
    xdp.terminate().unwrap();

    agents[0].terminate().unwrap();
    cleanup_removes(&bed, 0, &["flannel-gro"]);
}

/// udp with TC decap: the GRO device is a veth whose far end merges what `tc_ingress`
/// decapsulated, so a container gets aggregates, not wire frames. Deleted by hand, the device
/// or its filter comes back and traffic flows again; a restart keeps it; XDP decap and
/// `--cleanup` remove it.
#[test]
fn gro_merges_udp_frames_after_tc_decap_and_its_device_follows_the_agent() {
    require_root();
    let (bed, mut agents, containers) = cluster(UDP, &["--bpf-decap=tc", metrics::FLAG]);
    let (host, pin_dir) = (&bed.hosts[1], bed.pin_dir(1));
    let decap = r#"flannel_bpf_decap_info{decap="tc",gro="decapsulated frames"}"#;
    assert_eq!(metric(host, decap), 1.0);
    let details = host.ip(&["-d", "link", "show", "flannel-gro"]).unwrap();
    assert!(
        details.contains("veth") && details.contains(",UP"),
        "{details}"
    );
    let offloads = |name| host.exec("ethtool", &["-k", name]).unwrap();
    assert!(offloads("flannel-gro-p").contains("generic-receive-offload: on"));
    assert!(offloads("flannel-gro").contains("tx-tcp-segmentation: off"));

    let (a, b) = (&containers[0], &containers[1]);
    let received = |what: &str| -> f64 {
        let path = format!("/sys/class/net/eth0/statistics/rx_{what}");
        b.ns.exec("cat", &[&path]).unwrap().trim().parse().unwrap()
    };
    // The agent learns a container from the host's neighbour entry, which the pings above
    // made; until then what arrives for it takes the stack, unmerged.
    wait_for("b in the fast path", READY, || {
        pins::has_endpoint(&pin_dir, b.ip)
    })
    .unwrap();
    let before = (received("bytes"), received("packets"));
    verified_transfer(&b.ns, at(b.ip, 5001), &a.ns, at(b.ip, 5001), BYTES).unwrap();
    let merged = (received("bytes") - before.0) / (received("packets") - before.1);
    assert!(
        merged > 3000.0,
        "{merged} bytes per packet the container got"
    );

    // Deleted by hand, the device comes back with its hook, and the programs use it.
    let ingress = TcAttachType::Ingress;
    let merging =
        || hooks::hooked(host, "flannel-gro-p", ingress).is_ok_and(|h| h == ["tc_merged"]);
    let index = || {
        let index = host.exec("cat", &["/sys/class/net/flannel-gro/ifindex"]);
        index.ok().and_then(|i| i.trim().parse::<u32>().ok())
    };
    let configured = || {
        Pins::new(&pin_dir)
            .config()
            .unwrap()
            .get(&0, 0)
            .unwrap()
            .gro_ifindex
    };
    host.ip(&["link", "del", "flannel-gro"]).unwrap();
    wait_for("the GRO device", READY, || {
        merging() && index().is_some_and(|i| i == configured())
    })
    .unwrap();
    verified_transfer(&b.ns, at(b.ip, 5002), &a.ns, at(b.ip, 5002), 8 << 20).unwrap();
    hooks::unhook(host, "flannel-gro-p", ingress).unwrap();
    wait_for("the GRO device's hook", READY, merging).unwrap();
    verified_transfer(&b.ns, at(b.ip, 5003), &a.ns, at(b.ip, 5003), 8 << 20).unwrap();

    // A restart keeps the device (no moment without GRO).
    let before = index();
    agents[1].restart().unwrap();
    agents[1].wait_ready(READY).unwrap();
    assert_eq!(index(), before, "the GRO device was recreated");
    verified_transfer(&b.ns, at(b.ip, 5004), &a.ns, at(b.ip, 5004), 8 << 20).unwrap();
    agents[1].terminate().unwrap();

    // XDP decap runs before GRO: no device.
    let mut xdp = bed.ready_agent(1, &["--bpf-decap=xdp"]).unwrap();
    assert!(index().is_none());
    assert!(!host.has_link("flannel-gro-p").unwrap());
    xdp.terminate().unwrap();

    agents[0].terminate().unwrap();
    cleanup_removes(&bed, 0, &["flannel-gro", "flannel-gro-p"]);
}

/// `flanneld --cleanup` succeeds on host `index`, whose agent has exited, and removes the
/// `devices`.
fn cleanup_removes(bed: &Testbed, index: usize, devices: &[&str]) {
    let (host, pins) = (&bed.hosts[index], bed.pin_dir(index));
    let pins = format!("--bpf-pin-dir={}", pins.display());
    let mut cleanup = Agent::spawn(host, &["--cleanup", &pins]).unwrap();
    let status = cleanup.wait_exit(READY).unwrap();
    assert!(status.success(), "{}", cleanup.log());
    for name in devices {
        assert!(!host.has_link(name).unwrap(), "{name}");
    }
}

/// With our hook gone (removed by hand), a peer's VXLAN packet for a container, which the
/// GRO device's socket now gets, reaches no container: the device passes nothing on.
#[test]
fn the_gro_device_never_takes_a_packet_in() {
    let (bed, _agents, containers) = cluster(VXLAN, &[]);
    let host = &bed.hosts[1];
    hooks::unhook(host, "eth0", TcAttachType::Ingress).unwrap();
    let gro_mac = host
        .exec("cat", &["/sys/class/net/flannel-gro/address"])
        .unwrap()
        .trim()
        .parse::<flannel_agent::control::lease::Mac>()
        .unwrap();
    let listener = containers[1].udp_listener(7777).unwrap();
    use flannel_tests::packet;
    let inner_ip = packet::ipv4(
        containers[0].ip,
        containers[1].ip,
        packet::IPPROTO_UDP,
        &packet::udp(5555, 7777, b"through the GRO device"),
    );
    let inner = packet::ethernet(gro_mac.0, [2, 0, 0, 0, 0, 1], packet::ETH_P_IP, &inner_ip);
    let payload = packet::vxlan(1, &inner);
    // From host 0's own address, a current peer.
    bed.hosts[0]
        .enter(|| {
            let socket = std::net::UdpSocket::bind((Testbed::host_ip(0), 0)).unwrap();
            for _ in 0..3 {
                socket
                    .send_to(&payload, (Testbed::host_ip(1), 8472))
                    .unwrap();
            }
        })
        .unwrap();
    assert_eq!(
        listener.next().unwrap(),
        None,
        "the packet came in through the GRO device"
    );
}

/// What the NIC is handed: where it segments tunnel packets itself (a veth as created, like a
/// NIC with `tx-udp_tnl-segmentation`), our GSO packets whole; without that (the NIC-like
/// underlay), frames of at most the MTU, segmented by the kernel. Both with a zero UDP
/// checksum, legal over IPv4, as flannel's vxlan device sends, and DF set.
#[test]
fn the_nic_gets_whole_tunnel_gso_packets_only_if_it_segments_them() {
    require_root();
    for (underlay, whole) in [(Underlay::Passthrough, true), (Underlay::NicLike, false)] {
        let (bed, _agents, containers) = Testbed::cluster_on(underlay, VXLAN, &[&[], &[]]).unwrap();
        testbed::all_reach_all(&containers, READY).unwrap();
        let capture = bed.hosts[0]
            .enter(|| packet::capture_udp_frames(8472, 400))
            .unwrap();
        let (a, b) = (&containers[0], &containers[1]);
        verified_transfer(&b.ns, at(b.ip, 5001), &a.ns, at(b.ip, 5001), 16 << 20).unwrap();
        let sent: Vec<Vec<u8>> = capture
            .join()
            .unwrap()
            .into_iter()
            .filter(|frame| {
                packet::tunnelled::<TunnelHeader>(frame)
                    .is_some_and(|(t, _)| t.ip.saddr == Testbed::host_ip(0).octets())
            })
            .collect();
        let largest = sent.iter().map(Vec::len).max().unwrap_or(0);
        assert_eq!(
            largest > 1514,
            whole,
            "{underlay:?}: largest frame {largest} bytes"
        );
        for frame in &sent {
            let (tunnel, _) = packet::tunnelled::<TunnelHeader>(frame).unwrap();
            assert_eq!(tunnel.udp.check, [0, 0], "{underlay:?}: UDP checksum");
            let df = u16::from_be_bytes(tunnel.ip.frag_off) & IPV4_DF;
            assert_eq!(df, IPV4_DF, "{underlay:?}: DF");
        }
    }
}

/// Each backend decapsulates where it measured fastest on NIC-like hosts: in TC, behind its
/// GRO device: vxlan's kernel tunnel socket, udp's veth.
#[test]
fn each_backend_defaults_to_its_fastest_decap() {
    for (config, gro_device) in [(UDP, "veth"), (VXLAN, "vxlan")] {
        let (bed, _agents, _containers) = cluster(config, &[]);
        for host in &bed.hosts {
            let eth0 = host.ip(&["link", "show", "eth0"]).unwrap();
            assert!(!eth0.contains("prog/xdp"), "{config}: {eth0}");
            let gro = host.ip(&["-d", "link", "show", "flannel-gro"]).unwrap();
            assert!(gro.contains(gro_device), "{config}: {gro}");
        }
    }
}

/// A host moving from flannel's kernel vxlan (`--datapath=classic`) to ours: the eBPF
/// datapath keeps the classic device's MAC (the peers rewrite nothing), takes the traffic
/// over (the container bridge's hook too: the classic device holds an address of our subnet
/// but is no bridge), then removes the device, which holds the vxlan port, for the GRO device.
/// Not a ping lost under 10 ms pings.
#[test]
fn a_host_moves_from_the_classic_vxlan_device_to_ebpf() {
    let (bed, mut agents, containers) = cluster(VXLAN, &["--datapath=classic"]);
    let host = &bed.hosts[1];
    let subnet = agents[1].subnet().unwrap();
    let vtep_mac = || testbed::lease_json(&bed, &subnet).unwrap()["BackendData"]["VtepMAC"].clone();
    let classic_mac = vtep_mac();
    agents[1].terminate().unwrap();
    assert!(
        host.has_link("flannel.1").unwrap(),
        "classic leaves its device"
    );
    let mut ebpf = None;
    let lost = containers[0].pings_lost_while(containers[1].ip, 300, || {
        ebpf = Some(bed.ready_agent(1, &[]).unwrap());
    });
    assert_eq!(lost.unwrap(), 0, "pings lost while the host moved");
    assert_eq!(vtep_mac(), classic_mac, "the VTEP MAC changed");
    assert!(!host.has_link("flannel.1").unwrap());
    let gro = host.ip(&["link", "show", "flannel-gro"]).unwrap();
    assert!(gro.contains(",UP"), "{gro}");
    testbed::all_reach_all(&containers, READY).unwrap();
}
