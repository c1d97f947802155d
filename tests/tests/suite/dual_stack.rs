//! Dual-stack networks (`EnableIPv6`) on the host-gw and vxlan backends, as flannel runs
//! them: leases carry both subnets in flannel's key and value formats, subnet.env says both,
//! and every container reaches every other over IPv4 and IPv6. And IPv6-only networks
//! (`EnableIPv4: false`) between hosts that have no IPv4 at all.

use std::{
    collections::{BTreeSet, HashMap},
    io::{Read, Write},
    net::{Ipv6Addr, TcpListener, TcpStream, UdpSocket},
};

use flannel_common::VXLAN_PORT;

use flannel_tests::{
    agent::Agent,
    configs::{DUAL_HOST_GW, DUAL_VXLAN, IPV6_HOST_GW, IPV6_VXLAN, READY},
    etcd::wait_for,
    netns::Bpffs,
    packet::{
        self, EthHdr, Header, Ipv6Hdr, TcpHdr, TunnelHeader6, IPPROTO_TCP, IPPROTO_UDP, UDP_HLEN,
    },
    require_root,
    testbed::{all_reach_all, Container, Testbed, Underlay, PREFIX},
};
use ipnet::Ipv6Net;

/// A host per entry of `flags` with IPv6 on the underlay, running flanneld on `config` and
/// its flags, with a container on both of its subnets; every container reaches every other.
fn dual_stack(config: &str, flags: &[&[&str]]) -> (Testbed, Vec<Agent>, Vec<Container>) {
    require_root();
    let cluster = Testbed::dual_stack_cluster_on(Underlay::Passthrough, config, flags).unwrap();
    all_reach_all(&cluster.2, READY).unwrap();
    cluster
}

/// `dual_stack` for an IPv6-only `config`, on hosts without IPv4 (etcd over IPv6 too).
fn ipv6_only(config: &str, flags: &[&[&str]]) -> (Testbed, Vec<Agent>, Vec<Container>) {
    require_root();
    let cluster = Testbed::ipv6_only_cluster_on(Underlay::Passthrough, config, flags).unwrap();
    all_reach_all(&cluster.2, READY).unwrap();
    cluster
}

/// A container's IPv6 address.
fn v6(container: &Container) -> Ipv6Addr {
    container.ipv6.expect("a dual-stack container")
}

/// `sent` crosses over TCP on IPv6 from `a` to `b` and from `b` to `a`, byte for byte.
fn tcp_over_ipv6_both_ways(a: &Container, b: &Container, sent: &[u8]) {
    for (server, client) in [(a, b), (b, a)] {
        let target = v6(server);
        let listener = (server.ns)
            .enter(|| TcpListener::bind((target, 7777)))
            .unwrap()
            .unwrap();
        let client_ns = &client.ns;
        std::thread::scope(|scope| {
            let accept = scope.spawn(|| {
                let (mut stream, _) = listener.accept().unwrap();
                let mut got = Vec::new();
                stream.read_to_end(&mut got).unwrap();
                got
            });
            client_ns
                .enter(|| {
                    let mut stream = TcpStream::connect((target, 7777)).unwrap();
                    stream.write_all(sent).unwrap();
                })
                .unwrap();
            assert!(
                accept.join().unwrap() == sent,
                "the bytes sent over IPv6 differ"
            );
        });
    }
}

#[test]
fn dual_stack_host_gw_containers_reach_each_other_over_both_families() {
    let (bed, agents, containers) = dual_stack(DUAL_HOST_GW, &[&[], &[], &[]]);

    tcp_over_ipv6_both_ways(&containers[0], &containers[1], b"flannel over IPv6");

    // The lease, as flannel writes it: both subnets in the key, PublicIPv6 in the value.
    assert_eq!(
        lease_value(&bed, &agents[0]),
        r#"{"PublicIP":"192.168.64.10","PublicIPv6":"fd64::10","BackendType":"host-gw"}"#
    );
    let network6 = agents[0].subnet_env("FLANNEL_IPV6_NETWORK").unwrap();
    assert_eq!(network6, "fd00:10::/48");
}

#[test]
fn an_ipv6_route_removed_by_hand_comes_back() {
    let (bed, agents, containers) = dual_stack(DUAL_HOST_GW, &[&["--iptables-resync=1"], &[]]);
    let peer: Ipv6Net = agents[1]
        .subnet_env("FLANNEL_IPV6_SUBNET")
        .unwrap()
        .parse()
        .unwrap();
    let route = peer.trunc().to_string();
    bed.hosts[0].ip(&["-6", "route", "del", &route]).unwrap();
    wait_for("the IPv6 route to come back", READY, || {
        bed.hosts[0]
            .ip(&["-6", "route", "show", &route])
            .is_ok_and(|out| out.contains(&format!("via {}", Testbed::host_ipv6(1))))
    })
    .unwrap();
    assert!(containers[0].ping(v6(&containers[1])).is_ok());
}

/// `--ip-masq` in a dual-stack network writes flannel's ip6tables rules too: IPv6 leaving
/// the network is masqueraded behind the host's address, IPv6 inside it keeps its source,
/// and the rules come back when flushed by hand.
#[test]
fn ip_masq_masquerades_ipv6_leaving_the_network_as_flannel() {
    let (bed, agents, containers) =
        dual_stack(DUAL_HOST_GW, &[&["--ip-masq", "--iptables-resync=1"], &[]]);
    let subnet6 = agents[0].subnet_env("FLANNEL_IPV6_SUBNET").unwrap();
    let subnet6 = subnet6.parse::<Ipv6Net>().unwrap().trunc();
    let expected = [
        "-N FLANNEL-POSTRTG".to_owned(),
        r#"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN"#.to_owned(),
        format!(r#"-A FLANNEL-POSTRTG -s {subnet6} -d fd00:10::/48 -m comment --comment "flanneld masq" -j RETURN"#),
        format!(r#"-A FLANNEL-POSTRTG -s fd00:10::/48 -d {subnet6} -m comment --comment "flanneld masq" -j RETURN"#),
        format!(r#"-A FLANNEL-POSTRTG ! -s fd00:10::/48 -d {subnet6} -m comment --comment "flanneld masq" -j RETURN"#),
        r#"-A FLANNEL-POSTRTG -s fd00:10::/48 ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#.to_owned(),
        r#"-A FLANNEL-POSTRTG ! -s fd00:10::/48 -d fd00:10::/48 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#.to_owned(),
    ]
    .join("\n");
    let rules = || {
        let listing = bed.hosts[0].exec("ip6tables", &["-t", "nat", "-S", "FLANNEL-POSTRTG"]);
        listing
            .map(|text| text.trim().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(rules(), expected);

    // Leaving the network: host 0's own address; inside it, the container's.
    let seen = |target: Ipv6Addr, ns| containers[0].source_seen_by(ns, target.into()).unwrap();
    let host1 = Testbed::host_ipv6(1);
    assert_eq!(seen(host1, &bed.hosts[1]), Testbed::host_ipv6(0));
    assert_eq!(
        seen(v6(&containers[1]), &containers[1].ns),
        v6(&containers[0])
    );

    bed.hosts[0]
        .exec("ip6tables", &["-t", "nat", "-F", "FLANNEL-POSTRTG"])
        .unwrap();
    wait_for("the ip6tables rules to come back", READY, || {
        rules() == expected
    })
    .unwrap();
}

/// The agent on `bed`'s host 0 exits with an error saying `reason`, and leases nothing.
fn refused(bed: &Testbed, reason: &str) {
    let mut agent = bed.agent(0, &[]).unwrap();
    let status = agent.wait_exit(READY).unwrap();
    assert!(!status.success());
    assert!(agent.log().contains(reason), "{}", agent.log());
    assert!(bed.lease_keys().unwrap().is_empty());
}

#[test]
fn a_dual_stack_network_without_an_ipv6_address_is_refused_clearly() {
    let bed = Testbed::configured(1, DUAL_HOST_GW).unwrap();
    refused(
        &bed,
        "EnableIPv6: eth0 has no global IPv6 address to advertise",
    );
}

/// A dual-stack vxlan cluster on `flags` per host: every container reaches every other on
/// both families, 4 MB cross over TCP on IPv6 intact both ways between the first and the
/// last host, host 0's lease names its devices' MACs as flannel's vxlan does (`v4_device`,
/// `v6_device`), and a restart of host 0's agent loses no 10 ms IPv6 ping.
fn vxlan_carries_both_families(
    flags: &[&[&str]],
    (v4_device, v6_device): (&str, &str),
) -> (Testbed, Vec<Agent>, Vec<Container>) {
    let (bed, mut agents, containers) = dual_stack(DUAL_VXLAN, flags);
    // Patterned bytes: full-size segments cross the IPv6 underlay (and "packet too big" is
    // answered where the container's MTU is above the tunnel's).
    let bulk: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    tcp_over_ipv6_both_ways(&containers[0], containers.last().unwrap(), &bulk);

    let mac = |device: &str| {
        let path = format!("/sys/class/net/{device}/address");
        let mac = bed.hosts[0].exec("cat", &[&path]).unwrap();
        mac.trim().to_owned()
    };
    assert_eq!(
        lease_value(&bed, &agents[0]),
        format!(
            r#"{{"PublicIP":"192.168.64.10","PublicIPv6":"fd64::10","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
            mac(v4_device),
            mac(v6_device)
        )
    );

    no_ipv6_ping_lost_across_a_restart(&mut agents[0], &containers);
    (bed, agents, containers)
}

/// `agent` (on `--iptables-resync=1`, restarted once: some 5 resyncs) never found an entry
/// to fix: each resync reads back what the kernel holds as what it wrote.
fn assert_steady(agent: &Agent) {
    let log = agent.log();
    assert!(
        !log.contains("removing a stale") && !log.contains("lost this peer"),
        "{log}"
    );
}

/// The value of `agent`'s lease in etcd.
fn lease_value(bed: &Testbed, agent: &Agent) -> String {
    let key = agent.lease_key().unwrap();
    bed.etcd.get(&key).unwrap().expect("the agent's lease")
}

/// The IPv6 subnet of `agent`'s lease.
fn ipv6_subnet(agent: &Agent) -> Ipv6Net {
    agent.ipv6_subnet().unwrap()
}

/// Dual-stack vxlan on our eBPF datapath (the default) on a fresh host: one VTEP MAC for both
/// families, the overlay device's, and IPv6 delivered and routed as
/// `ebpf_delivers_ipv6_and_keeps_its_route` says.
#[test]
fn dual_stack_vxlan_on_ebpf_carries_both_families() {
    let resync: &[&str] = &["--iptables-resync=1"];
    let (bed, agents, containers) =
        vxlan_carries_both_families(&[resync, &[], &[]], ("flannel-bpf", "flannel-bpf"));
    // Replies cross no routing hop: the sending host tunnels them at its bridge and the
    // receiving host delivers them into the container (`redirect_peer`); routed on both,
    // they would arrive with hop limit 62.
    assert!(bed.hosts[0].ip(&["link", "show", "flannel-gro"]).is_ok());
    assert_steady(&agents[0]);
    ebpf_delivers_ipv6_and_keeps_its_route(&bed, &containers);
    a_connection_is_one_outer_flow(&bed, &containers);
}

/// Host 0 encapsulates a TCP connection's single packets (handshake, ACKs) itself and hands
/// its GSO packets to the kernel's vxlan: on the wire each connection is still one outer
/// flow, one UDP source port, so the receiver's RSS and GRO keep its packets in order; also
/// on a host whose ephemeral port range (where the kernel's vxlan picks its source ports
/// unless told a range) is not the default.
fn a_connection_is_one_outer_flow(bed: &Testbed, containers: &[Container]) {
    bed.hosts[0]
        .exec(
            "sysctl",
            &["-w", "net.ipv4.ip_local_port_range=40000 44999"],
        )
        .unwrap();
    let capture = bed.hosts[1]
        .enter(|| packet::capture_udp_frames(VXLAN_PORT, 400))
        .unwrap();
    let bulk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    tcp_over_ipv6_both_ways(&containers[0], &containers[1], &bulk);
    let from_host0 = Testbed::host_ipv6(0).octets();
    // Per connection (its inner ports, either way round): the outer source ports seen, and
    // whether GSO packets (whole on this underlay) and single packets were among them.
    let mut flows: HashMap<[u16; 2], (BTreeSet<u16>, bool, bool)> = HashMap::new();
    for frame in capture.join().unwrap() {
        let Some((tunnel, inner)) = packet::tunnelled::<TunnelHeader6>(&frame) else {
            continue;
        };
        let Some((ip, segment)) = packet::try_split::<Ipv6Hdr>(inner) else {
            continue;
        };
        let Some((tcp, _)) = packet::try_split::<TcpHdr>(segment) else {
            continue;
        };
        if tunnel.ip.saddr != from_host0 || ip.next_header != IPPROTO_TCP {
            continue;
        }
        let (a, b) = (u16::from_be_bytes(tcp.source), u16::from_be_bytes(tcp.dest));
        let flow = flows.entry([a.min(b), a.max(b)]).or_default();
        flow.0.insert(u16::from_be_bytes(tunnel.udp.source));
        flow.1 |= frame.len() > 1500;
        flow.2 |= frame.len() < 200;
    }
    assert!(
        flows.values().any(|(_, gso, single)| *gso && *single),
        "no connection sent both GSO and single packets: {flows:?}"
    );
    for (ports, (outer, ..)) in &flows {
        assert_eq!(
            outer.len(),
            1,
            "connection {ports:?} left by outer ports {outer:?}"
        );
    }
}

/// On the eBPF datapath, with host 0 on `--iptables-resync=1`: IPv6 is tunnelled at the
/// sender's bridge and decapsulated straight into its container (hop limit 64: no routing on
/// either host), and the IPv6 network's route comes back, with the tunnel's MTU, when deleted
/// by hand.
fn ebpf_delivers_ipv6_and_keeps_its_route(bed: &Testbed, containers: &[Container]) {
    wait_for(
        "IPv6 replies delivered straight to the container",
        READY,
        || {
            containers[0]
                .ping(v6(&containers[1]))
                .is_ok_and(|reply| reply.contains("ttl=64"))
        },
    )
    .unwrap();
    bed.hosts[0]
        .ip(&["-6", "route", "del", "fd00:10::/48", "dev", "flannel-bpf"])
        .unwrap();
    wait_for("the IPv6 network's route to come back", READY, || {
        bed.hosts[0]
            .ip(&["-6", "route", "show", "fd00:10::/48"])
            .is_ok_and(|out| out.contains("flannel-bpf") && out.contains("mtu 1430"))
    })
    .unwrap();
    assert!(containers[0].ping(v6(&containers[2])).is_ok());
}

/// Dual-stack vxlan on the kernel's devices (`--datapath=classic`), as flannel sets them up:
/// `flannel.1` and `flannel-v6.1`; an IPv6 neighbour deleted by hand comes back.
#[test]
fn dual_stack_vxlan_on_kernel_devices_carries_both_families() {
    let classic: &[&str] = &["--datapath=classic"];
    let resync: &[&str] = &["--datapath=classic", "--iptables-resync=1"];
    let (bed, agents, _) =
        vxlan_carries_both_families(&[resync, classic, classic], ("flannel.1", "flannel-v6.1"));
    assert_steady(&agents[0]);
    let gateway = ipv6_subnet(&agents[1]).network().to_string();
    bed.hosts[0]
        .ip(&["-6", "neigh", "del", &gateway, "dev", "flannel-v6.1"])
        .unwrap();
    wait_for("the IPv6 neighbour to come back", READY, || {
        bed.hosts[0]
            .ip(&["-6", "neigh", "show", &gateway, "dev", "flannel-v6.1"])
            .is_ok_and(|out| out.contains("PERMANENT"))
    })
    .unwrap();
}

/// Our eBPF host and a host running flannel's kernel vxlan devices carry each other's IPv6
/// (and IPv4): the wire format, checksums included, is the kernel's.
#[test]
fn ebpf_and_kernel_vxlan_hosts_carry_ipv6_between_them() {
    vxlan_carries_both_families(
        &[&[], &["--datapath=classic"]],
        ("flannel-bpf", "flannel-bpf"),
    );
}

/// An IPv6-only vxlan cluster on `flags` per host, between hosts without IPv4: every
/// container reaches every other, 4 MB cross over TCP intact both ways between the first
/// and the last host, host 0's lease and subnet.env are flannel's IPv6-only ones (key
/// `0.0.0.0-0&...`, `PublicIP` 0.0.0.0, only `BackendV6Data`, naming `device`'s MAC; no
/// IPv4 lines), and a restart of host 0's agent loses no 10 ms ping.
fn ipv6_only_vxlan(flags: &[&[&str]], device: &str) -> (Testbed, Vec<Agent>, Vec<Container>) {
    let (bed, mut agents, containers) = ipv6_only(IPV6_VXLAN, flags);
    let bulk: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    tcp_over_ipv6_both_ways(&containers[0], containers.last().unwrap(), &bulk);

    let key = agents[0].lease_key().unwrap();
    assert!(
        key.starts_with(&format!("{PREFIX}/subnets/0.0.0.0-0&fd00:10:")),
        "{key}"
    );
    let path = format!("/sys/class/net/{device}/address");
    let mac = bed.hosts[0].exec("cat", &[&path]).unwrap();
    assert_eq!(
        lease_value(&bed, &agents[0]),
        format!(
            r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"fd64::10","BackendType":"vxlan","BackendV6Data":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
            mac.trim()
        )
    );
    let first = Ipv6Addr::from(u128::from(ipv6_subnet(&agents[0]).network()) + 1);
    assert_eq!(
        std::fs::read_to_string(agents[0].subnet_file()).unwrap(),
        format!(
            "FLANNEL_IPV6_NETWORK=fd00:10::/48\nFLANNEL_IPV6_SUBNET={first}/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        )
    );
    // Nothing of IPv4: no device, address or route for it.
    assert!(!bed.hosts[0].has_link("flannel.1").unwrap());
    let ipv4 = bed.hosts[0]
        .ip(&["-4", "addr", "show", "dev", device])
        .unwrap();
    assert!(ipv4.trim().is_empty(), "{ipv4}");

    no_ipv6_ping_lost_across_a_restart(&mut agents[0], &containers);
    (bed, agents, containers)
}

/// IPv6-only vxlan on our eBPF datapath: decapsulated packets go straight into their
/// container, the IPv6 network's route comes back when deleted by hand, and `status` shows
/// the IPv6 lease and each peer's traffic.
#[test]
fn ipv6_only_vxlan_on_ebpf_carries_ipv6_between_hosts_without_ipv4() {
    require_root();
    let bpffs = Bpffs::mount().unwrap();
    let (_, pin) = bpffs.pin_dir("h0");
    let flags: &[&str] = &["--iptables-resync=1", &pin];
    let (bed, agents, containers) = ipv6_only_vxlan(&[flags, &[], &[]], "flannel-bpf");
    assert_steady(&agents[0]);
    ebpf_delivers_ipv6_and_keeps_its_route(&bed, &containers);
    // `status` names the IPv6 subnets, and counts each peer's traffic under its public IPv6
    // (since the restart, whose maps are new: the pings above reached both peers).
    let flanneld = flannel_tests::agent::flanneld().to_str().unwrap();
    let endpoints = format!("--etcd-endpoints={}", bed.etcd.ipv6_endpoint().unwrap());
    let subnet_file = format!("--subnet-file={}", agents[0].subnet_file().display());
    let args = ["status", "--json", &endpoints, &subnet_file, &pin];
    let status = bed.hosts[0].exec(flanneld, &args).unwrap();
    let json: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(json["network"], "fd00:10::/48", "{json}");
    let own = ipv6_subnet(&agents[0]).to_string();
    assert_eq!(json["lease"]["ipv6_subnet"], own.as_str(), "{json}");
    assert!(json["lease"]["subnet"].is_null(), "{json}");
    let peers = json["peers"].as_array().unwrap();
    let mut listed: Vec<String> = (peers.iter())
        .map(|peer| peer["ipv6_subnet"].as_str().unwrap().to_owned())
        .collect();
    let mut wanted: Vec<String> = agents[1..]
        .iter()
        .map(|a| ipv6_subnet(a).to_string())
        .collect();
    listed.sort();
    wanted.sort();
    assert_eq!(listed, wanted, "{json}");
    for peer in peers {
        let (tx, rx) = (peer["tx_packets"].as_u64(), peer["rx_packets"].as_u64());
        assert!(tx > Some(0) && rx > Some(0), "{peer}");
    }
    our_ipv6_vxlan_is_flannels_on_the_wire(&bed, &containers);
}

/// What host 0 (eBPF) puts on the wire for container 0's IPv6 datagram to container 1, as
/// host 1 receives it, is flannel's IPv6 vxlan frame field by field: outer IPv6 between the
/// hosts' public IPv6 addresses, UDP to 8472 with a checksum that verifies (flannel's
/// `flannel-v6.1` drops packets without), VXLAN with the I flag and VNI 1, inner Ethernet from our VTEP MAC
/// to host 1's, and the container's packet, tunnelled at host 0's bridge before any routing
/// (hop limit 64), byte for byte.
fn our_ipv6_vxlan_is_flannels_on_the_wire(bed: &Testbed, containers: &[Container]) {
    let (from, to) = (v6(&containers[0]), v6(&containers[1]));
    let capture = bed.hosts[1]
        .enter(|| packet::capture_udp(VXLAN_PORT))
        .unwrap();
    let payload = b"flannel's IPv6 vxlan, byte for byte";
    (containers[0].ns)
        .enter(|| UdpSocket::bind((from, 0)).and_then(|s| s.send_to(payload, (to, 9999))))
        .unwrap()
        .unwrap();
    let frame = capture.join().unwrap().expect("a VXLAN frame on host 1");
    let mac = |host: usize| {
        let text = bed.hosts[host]
            .exec("cat", &["/sys/class/net/flannel-bpf/address"])
            .unwrap();
        let bytes: Vec<u8> = (text.trim().split(':'))
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        bytes
    };
    assert!(packet::split::<EthHdr>(&frame).0.is_ipv6());
    let (tunnel, inner) = packet::tunnelled::<TunnelHeader6>(&frame).expect("a VXLAN frame");
    assert_eq!(tunnel.ip.next_header, IPPROTO_UDP, "no extension headers");
    assert_eq!(tunnel.ip.saddr, Testbed::host_ipv6(0).octets());
    assert_eq!(tunnel.ip.daddr, Testbed::host_ipv6(1).octets());
    assert_eq!(tunnel.udp.dest, VXLAN_PORT.to_be_bytes());
    assert_ne!(tunnel.udp.check, [0, 0], "IPv6 UDP needs a checksum");
    assert_eq!(tunnel.vxlan.as_bytes(), [0x08, 0, 0, 0, 0, 0, 1, 0]);
    let inner_eth = &tunnel.inner;
    assert_eq!(
        (&inner_eth.dst[..], &inner_eth.src[..]),
        (&mac(1)[..], &mac(0)[..])
    );
    assert!(inner_eth.is_ipv6());
    // The container's packet, its flow label the container's own, its hop limit unspent.
    let sent = packet::ipv6(from, to, IPPROTO_UDP, &[0; UDP_HLEN + 35]);
    let (sent, _) = packet::split::<Ipv6Hdr>(&sent);
    let (ip, datagram) = packet::split::<Ipv6Hdr>(inner);
    assert_eq!(ip.version_class_flow[0] >> 4, 6);
    let flow = ip.version_class_flow;
    assert_eq!(
        *ip,
        Ipv6Hdr {
            version_class_flow: flow,
            ..*sent
        }
    );
    assert_eq!(&datagram[UDP_HLEN..], payload);

    // A ping's echo request carries its final ICMPv6 checksum (a datagram's may still be the
    // device's to fill in): over it, the outer UDP checksum verifies, as flannel's device
    // checks it.
    let capture = bed.hosts[1]
        .enter(|| packet::capture_udp(VXLAN_PORT))
        .unwrap();
    containers[0].ping(to).unwrap();
    let frame = capture
        .join()
        .unwrap()
        .expect("a ping's VXLAN frame on host 1");
    let (src, dst) = (Testbed::host_ipv6(0), Testbed::host_ipv6(1));
    let (outer, datagram) = packet::split::<Ipv6Hdr>(packet::split::<EthHdr>(&frame).1);
    assert_eq!(outer.daddr, dst.octets());
    assert_eq!(
        packet::ipv6_upper_checksum(src, dst, IPPROTO_UDP, datagram),
        0,
        "the outer UDP checksum verifies"
    );
}

/// IPv6-only vxlan on the kernel's devices, as flannel sets it up: `flannel-v6.1` only.
#[test]
fn ipv6_only_vxlan_on_kernel_devices_carries_ipv6() {
    let classic: &[&str] = &["--datapath=classic"];
    let resync: &[&str] = &["--datapath=classic", "--iptables-resync=1"];
    let (_, agents, _) = ipv6_only_vxlan(&[resync, classic, classic], "flannel-v6.1");
    assert_steady(&agents[0]);
}

/// Our eBPF host and a host running flannel's kernel IPv6 vxlan device, IPv6 only.
#[test]
fn ebpf_and_kernel_vxlan_hosts_carry_an_ipv6_only_network() {
    ipv6_only_vxlan(&[&[], &["--datapath=classic"]], "flannel-bpf");
}

/// IPv6-only host-gw: routes via the peers' public IPv6, flannel's value.
#[test]
fn ipv6_only_host_gw_routes_between_hosts_without_ipv4() {
    let (bed, agents, containers) = ipv6_only(IPV6_HOST_GW, &[&[], &[]]);
    tcp_over_ipv6_both_ways(&containers[0], &containers[1], b"flannel over IPv6 only");
    assert_eq!(
        lease_value(&bed, &agents[0]),
        r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd64::10","BackendType":"host-gw"}"#
    );
    let route = ipv6_subnet(&agents[1]).to_string();
    let shown = bed.hosts[0].ip(&["-6", "route", "show", &route]).unwrap();
    assert!(
        shown.contains(&format!("via {}", Testbed::host_ipv6(1))),
        "{shown}"
    );
}

/// A network with IPv4 on a host without IPv4 is refused with the reason, and leases nothing.
#[test]
fn an_ipv4_network_on_a_host_without_ipv4_is_refused_clearly() {
    require_root();
    let mut bed = Testbed::new(1).unwrap();
    bed.make_ipv6_only(0).unwrap();
    bed.put_config(DUAL_VXLAN).unwrap();
    refused(&bed, "Network: eth0 has no IPv4 address to advertise");
}

/// On hosts without IPv4, flannel's ways of choosing the interface find it by IPv6: the
/// route to an IPv6 address, a regex over IPv6 addresses, and the IPv6 default route.
#[test]
fn the_interface_is_found_by_ipv6_on_hosts_without_ipv4() {
    require_root();
    let mut bed = Testbed::new(3).unwrap();
    for host in 0..3 {
        bed.make_ipv6_only(host).unwrap();
    }
    bed.put_config(IPV6_HOST_GW).unwrap();
    let endpoints = format!("--etcd-endpoints={}", bed.etcd.ipv6_endpoint().unwrap());
    let choices = [
        vec!["--iface-can-reach=fd64::1"],
        vec!["--iface-regex=^fd64::1[0-9]$"],
        vec![],
    ];
    for (host, choice) in choices.iter().enumerate() {
        let mut args = vec![endpoints.as_str()];
        args.extend(choice);
        let mut agent = Agent::spawn(&bed.hosts[host], &args).unwrap();
        agent.wait_ready(READY).unwrap();
        let value = lease_value(&bed, &agent);
        let ip = Testbed::host_ipv6(host);
        assert!(
            value.contains(&format!(r#""PublicIPv6":"{ip}""#)),
            "{choice:?}: {value}"
        );
    }
}

/// An IPv4 network routes only a lease's IPv4 half: the IPv6 half of a dual-stack lease is
/// nobody's to judge there (here it claims every IPv6 address), so it is never routed.
#[test]
fn an_ipv4_network_never_routes_a_leases_ipv6_half() {
    require_root();
    let bed = Testbed::new(1).unwrap();
    bed.enable_ipv6(0).unwrap();
    bed.put_config(r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "host-gw"}}"#)
        .unwrap();
    // Leased before the agent starts, so that the agent never picks the same subnet.
    let key = format!("{PREFIX}/subnets/10.1.77.0-24&::-0");
    let value = r#"{"PublicIP":"192.168.64.77","PublicIPv6":"fd64::77","BackendType":"host-gw"}"#;
    bed.etcd.put(&key, value).unwrap();
    let _agent = bed.ready_agent(0, &[]).unwrap();
    wait_for("the lease's IPv4 route", READY, || {
        bed.hosts[0]
            .ip(&["route", "show", "10.1.77.0/24"])
            .is_ok_and(|out| out.contains("via 192.168.64.77"))
    })
    .unwrap();
    let routes6 = bed.hosts[0].ip(&["-6", "route", "show"]).unwrap();
    assert!(!routes6.contains("fd64::77"), "{routes6}");
}

/// An IPv6-only network takes a dual-stack lease's IPv6 half, as flannel does (a lease that
/// outlived a change of the network's config, or a host configured by hand): host 1's lease
/// is handed over to a dual-stack one of the same IPv6 subnet while container 0 pings
/// container 1, then host 0's agent restarts on it; no ping is lost, the IPv6 route stays, no
/// IPv4 route is made, and `status` lists the peer and rejects nothing.
#[test]
fn an_ipv6_only_network_carries_a_dual_stack_leases_ipv6_half() {
    let (bed, mut agents, containers) = ipv6_only(IPV6_HOST_GW, &[&[], &[]]);
    // Host 1's routes stay when its agent is gone; its lease is left to etcd.
    agents[1].terminate().unwrap();
    let (old_key, old_value) = (
        agents[1].lease_key().unwrap(),
        lease_value(&bed, &agents[1]),
    );
    let key = old_key.replace("/0.0.0.0-0&", "/10.1.77.0-24&");
    let mut value: serde_json::Value = serde_json::from_str(&old_value).unwrap();
    value["PublicIP"] = "192.168.64.77".into();
    let lost = containers[0]
        .pings_lost_while(v6(&containers[1]), 300, || {
            bed.etcd.put(&key, &value.to_string()).unwrap();
            bed.etcd.etcdctl(&["del", &old_key]).unwrap();
            agents[0].restart().unwrap();
            agents[0].wait_ready(READY).unwrap();
        })
        .unwrap();
    assert_eq!(lost, 0, "IPv6 pings lost while the lease was handed over");

    let route = ipv6_subnet(&agents[1]).to_string();
    let shown = bed.hosts[0].ip(&["-6", "route", "show", &route]).unwrap();
    let via = format!("via {}", Testbed::host_ipv6(1));
    assert!(shown.contains(&via), "{shown}");
    let routes4 = bed.hosts[0].ip(&["-4", "route", "show"]).unwrap();
    assert!(!routes4.contains("10.1.77.0"), "{routes4}");

    let flanneld = flannel_tests::agent::flanneld().to_str().unwrap();
    let endpoints = format!("--etcd-endpoints={}", bed.etcd.ipv6_endpoint().unwrap());
    let subnet_file = format!("--subnet-file={}", agents[0].subnet_file().display());
    let args = ["status", "--json", &endpoints, &subnet_file];
    let status = bed.hosts[0].exec(flanneld, &args).unwrap();
    let json: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(json["rejected"], serde_json::json!([]), "{json}");
    let peers = json["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1, "{json}");
    assert_eq!(peers[0]["ipv6_subnet"], route.as_str(), "{json}");
    assert!(peers[0]["subnet"].is_null(), "{json}");
}

/// Container 0 pings container 1 over IPv6 every 10 ms while `agent` restarts: none is lost.
fn no_ipv6_ping_lost_across_a_restart(agent: &mut Agent, containers: &[Container]) {
    let lost = containers[0]
        .pings_lost_while(v6(&containers[1]), 400, || agent.restart().unwrap())
        .unwrap();
    agent.wait_ready(READY).unwrap();
    assert_eq!(lost, 0, "IPv6 pings lost across a restart");
}

/// A dual-stack host moving from flannel's kernel vxlan devices (`flannel.1` and
/// `flannel-v6.1`, each with its own MAC) to our eBPF datapath keeps both VTEP MACs, so its
/// peers rewrite nothing, and loses no 10 ms ping of either family: IPv6 single packets are
/// encapsulated by the program before the GRO device can take the port.
#[test]
fn a_dual_stack_host_moves_from_the_classic_vxlan_devices_to_ebpf() {
    require_root();
    let classic: &[&str] = &["--datapath=classic"];
    let (bed, mut agents, containers) =
        Testbed::dual_stack_cluster_on(Underlay::NicLike, DUAL_VXLAN, &[classic, classic]).unwrap();
    all_reach_all(&containers, READY).unwrap();
    let vtep_macs = |agent: &Agent| {
        let lease: serde_json::Value = serde_json::from_str(&lease_value(&bed, agent)).unwrap();
        let mac = |data: &str| lease[data]["VtepMAC"].as_str().map(str::to_owned);
        (mac("BackendData"), mac("BackendV6Data"))
    };
    let before = vtep_macs(&agents[1]);
    assert!(before.0.is_some() && before.1.is_some() && before.0 != before.1);
    agents[1].terminate().unwrap();
    let (from, to) = (&containers[0], &containers[1]);
    let mut ebpf = None;
    let mut lost6 = None;
    let lost4 = from.pings_lost_while(to.ip, 300, || {
        lost6 = Some(from.pings_lost_while(v6(to), 300, || {
            ebpf = Some(bed.ready_agent(1, &[]).unwrap());
        }));
    });
    let (lost4, lost6) = (lost4.unwrap(), lost6.unwrap().unwrap());
    assert_eq!(
        (lost4, lost6),
        (0, 0),
        "pings lost (IPv4, IPv6) while the host moved"
    );
    let mut ebpf = ebpf.unwrap();
    assert_eq!(vtep_macs(&ebpf), before, "a VTEP MAC changed");
    all_reach_all(&containers, READY).unwrap();
    // The classic devices are gone; a restarted agent keeps both MACs all the same.
    no_ipv6_ping_lost_across_a_restart(&mut ebpf, &containers);
    assert_eq!(vtep_macs(&ebpf), before, "a VTEP MAC changed on restart");
}
