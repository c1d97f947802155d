//! The programs run by the kernel on crafted packets with BPF_PROG_TEST_RUN: the tunnel guard
//! (XDP and TC ingress), decapsulation (also of a frame made by the kernel's vxlan device),
//! and encapsulation, byte for byte, for both wire formats.

use std::net::{Ipv4Addr, UdpSocket};

use aya::programs::{TestRun, TestRunOptions, XdpMode};
use flannel_agent::datapath::ebpf::programs::Programs;
use flannel_common::{
    event_addr_v4, map_names, mask_be, pins::Pins, DatapathConfig, DropEvent, DropReason, Encap,
    Endpoint, Hook, PeerInfo, Tunnel, TunnelEnds, CHECK_INNER_SOURCE, DIRECT_ROUTING,
    EVENTS_PER_SECOND, THROUGH_NETFILTER, UDP_BACKEND_PORT, UDP_OVERHEAD, VXLAN_OVERHEAD,
    VXLAN_PORT,
};
use flannel_tests::{
    bpf_run::{
        assert_decapsulated, drop_events, run, OUR_VTEP, PEER_VTEP, TC_ACT_OK, TC_ACT_REDIRECT,
        TC_ACT_SHOT, TC_ACT_UNSPEC, VNI, XDP_DROP, XDP_PASS,
    },
    netns::{kernel_vxlan_frame, link, Bpffs, Netns},
    packet::{
        self, udp_frame, vxlan, EthHdr, Header, Ipv4Hdr, UdpHdr, VxlanHdr, ETH_HLEN, IPPROTO_TCP,
        IPV4_HLEN, UDP_HLEN,
    },
    require_root,
};

const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 2);
const PEER: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 3);
const STRANGER: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 66);
const INNER_MTU: u32 = 1450;

/// The settings of a host with our address on `encap`'s port.
fn config(encap: Encap) -> DatapathConfig {
    let port = match encap {
        Encap::Vxlan => VXLAN_PORT,
        Encap::Udp => UDP_BACKEND_PORT,
    };
    DatapathConfig {
        vni: VNI,
        port_be: port.to_be(),
        encap: encap as u16,
        local_ip_be: u32::from(LOCAL).to_be(),
        nic_ifindex: 1,
        vtep_mac: OUR_VTEP,
        inner_mtu: INNER_MTU,
        ..Default::default()
    }
}

/// Programs loaded for `encap` with one peer, PEER, holding 10.1.74.0/24.
fn guard(encap: Encap) -> Programs {
    let config = config(encap);
    require_root();
    let mut programs = Programs::load(None).expect("load the embedded object");
    programs.set_config(map_names::CONFIG, config).unwrap();
    let peer = PeerInfo {
        subnet_be: u32::from(Ipv4Addr::new(10, 1, 74, 0)).to_be(),
        prefix_len: 24,
        ..Default::default()
    };
    programs.insert_peer(PEER, peer).unwrap();
    programs.track_traffic(PEER.into()).unwrap();
    let tunnel = Tunnel::new(&TunnelEnds {
        encap,
        local_ip_be: config.local_ip_be,
        remote_ip_be: u32::from(PEER).to_be(),
        port_be: config.port_be,
        vni: config.vni,
        local_mac: config.vtep_mac,
        remote_mac: PEER_VTEP,
    });
    programs
        .insert_route::<Ipv4Addr>("10.1.74.0/24".parse().unwrap(), tunnel)
        .unwrap();
    programs
}

/// Runs both programs on `frame`; returns (XDP verdict, TC verdict).
fn verdicts(programs: &mut Programs, frame: &[u8]) -> (u32, u32) {
    (
        run(programs.xdp_ingress(), frame).0,
        run(programs.tc_ingress(), frame).0,
    )
}

fn drops(programs: &mut Programs, reason: DropReason) -> u64 {
    programs
        .drops()
        .unwrap()
        .into_iter()
        .find(|(r, _)| *r == reason)
        .unwrap()
        .1
}

/// An inner IPv4 packet from a peer's container to one of ours.
fn inner_ip() -> Vec<u8> {
    packet::ipv4(
        Ipv4Addr::new(10, 1, 74, 2),
        Ipv4Addr::new(10, 1, 83, 2),
        IPPROTO_TCP,
        &[7; 20],
    )
}

fn inner_frame() -> Vec<u8> {
    packet::ethernet(OUR_VTEP, PEER_VTEP, packet::ETH_P_IP, &inner_ip())
}

fn vxlan_from(src: Ipv4Addr, vni: u32) -> Vec<u8> {
    udp_frame(src, LOCAL, 40000, VXLAN_PORT, &vxlan(vni, &inner_frame()))
}

#[test]
fn vxlan_from_a_peer_is_decapsulated_to_the_inner_packet() {
    let mut programs = guard(Encap::Vxlan);
    let frame = vxlan_from(PEER, VNI);
    let (verdict, out) = run(programs.tc_ingress(), &frame);
    assert_eq!(verdict, TC_ACT_OK);
    // The outer Ethernet header (addressed to this host) stays, the inner packet follows.
    assert_eq!(out, [&frame[..ETH_HLEN], &inner_ip()[..]].concat());
    let traffic = programs.traffic(PEER.into()).unwrap();
    assert_eq!(
        (traffic.rx_packets, traffic.rx_bytes),
        (1, frame.len() as u64)
    );
}

#[test]
fn vxlan_for_another_vtep_mac_is_dropped() {
    let mut programs = guard(Encap::Vxlan);
    let inner = packet::ethernet(
        [0x0a, 0, 0, 0, 0, 9],
        PEER_VTEP,
        packet::ETH_P_IP,
        &inner_ip(),
    );
    let frame = udp_frame(PEER, LOCAL, 40000, VXLAN_PORT, &vxlan(VNI, &inner));
    assert_eq!(run(programs.tc_ingress(), &frame).0, TC_ACT_SHOT);
    assert_eq!(drops(&mut programs, DropReason::WrongMac), 1);
}

#[test]
fn vxlan_from_a_stranger_is_dropped_and_counted() {
    let mut programs = guard(Encap::Vxlan);
    assert_eq!(
        verdicts(&mut programs, &vxlan_from(STRANGER, VNI)),
        (XDP_DROP, TC_ACT_SHOT)
    );
    assert_eq!(
        drops(&mut programs, DropReason::UnknownPeer),
        2,
        "one drop per program"
    );
    assert_eq!(drops(&mut programs, DropReason::WrongVni), 0);
}

/// Runs the test thread on CPU 0: the programs' per-CPU state is then one slot.
fn on_cpu_zero() {
    // SAFETY: a zeroed set with CPU 0 added, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(libc::sched_setaffinity(0, size_of_val(&set), &set), 0);
    }
}

#[test]
fn a_flood_of_drops_is_counted_whole_and_reported_at_the_rate_limit() {
    on_cpu_zero();
    let mut programs = guard(Encap::Vxlan);
    let bpffs = Bpffs::mount().unwrap();
    let (dir, _) = bpffs.pin_dir("flood");
    programs.pin_maps(&dir).unwrap();
    let pins = Pins::new(&dir);
    let frame = vxlan_from(STRANGER, VNI);
    let result = programs
        .tc_ingress()
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            repeat: 1000,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(result.return_value, TC_ACT_SHOT);
    assert_eq!(drops(&mut programs, DropReason::UnknownPeer), 1000);
    let events = drop_events(&pins);
    assert_eq!(events.len(), EVENTS_PER_SECOND as usize);
    let addr = |ip: Ipv4Addr| event_addr_v4(u32::from(ip).to_be());
    assert_eq!(
        events[0],
        DropEvent {
            reason: DropReason::UnknownPeer as u32,
            hook: Hook::TcIngress as u8,
            ifindex: 1,
            peer_family: 4,
            peer: addr(STRANGER),
            family: 4,
            src: addr(Ipv4Addr::new(10, 1, 74, 2)),
            dst: addr(Ipv4Addr::new(10, 1, 83, 2)),
            protocol: IPPROTO_TCP,
            sport_be: 0x0707,
            dport_be: 0x0707,
            ..DropEvent::default()
        }
    );
    // Once the second is over, the next event says how many went unreported.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(run(programs.tc_ingress(), &frame).0, TC_ACT_SHOT);
    let next = drop_events(&pins);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].suppressed, 1000 - EVENTS_PER_SECOND);
}

#[test]
fn vxlan_with_another_vni_is_dropped() {
    let mut programs = guard(Encap::Vxlan);
    assert_eq!(
        verdicts(&mut programs, &vxlan_from(PEER, 2)),
        (XDP_DROP, TC_ACT_SHOT)
    );
    assert_eq!(drops(&mut programs, DropReason::WrongVni), 2);
}

#[test]
fn vxlan_without_the_valid_vni_flag_is_dropped() {
    let mut programs = guard(Encap::Vxlan);
    let mut frame = vxlan_from(PEER, VNI);
    let (eth, rest) = packet::split::<EthHdr>(&frame);
    let (ip, _) = packet::split::<Ipv4Hdr>(rest);
    let vxlan_at = size_of_val(eth) + ip.header_len() + UDP_HLEN;
    packet::split_mut::<VxlanHdr>(&mut frame[vxlan_at..]).flags = [0; 4]; // no I flag
    assert_eq!(verdicts(&mut programs, &frame), (XDP_DROP, TC_ACT_SHOT));
    assert_eq!(drops(&mut programs, DropReason::WrongVni), 2);
}

#[test]
fn truncated_vxlan_header_is_dropped() {
    let mut programs = guard(Encap::Vxlan);
    let frame = udp_frame(PEER, LOCAL, 40000, VXLAN_PORT, &[0x08, 0, 0]);
    assert_eq!(verdicts(&mut programs, &frame), (XDP_DROP, TC_ACT_SHOT));
    assert_eq!(drops(&mut programs, DropReason::Truncated), 2);
}

/// What is not ours goes on to the next program or filter on the hook (`TC_ACT_UNSPEC`):
/// another tool's filter on the NIC still sees it.
#[test]
fn unrelated_traffic_passes() {
    let mut programs = guard(Encap::Vxlan);
    let dns = udp_frame(STRANGER, LOCAL, 40000, 53, b"query");
    let tcp = packet::ethernet(
        [2, 0, 0, 0, 0, 2],
        [2, 0, 0, 0, 0, 1],
        packet::ETH_P_IP,
        &packet::ipv4(STRANGER, LOCAL, IPPROTO_TCP, &[0; 20]),
    );
    let arp = packet::ethernet([0xff; 6], [2, 0, 0, 0, 0, 1], 0x0806, &[0; 28]);
    for frame in [dns, tcp, arp] {
        assert_eq!(verdicts(&mut programs, &frame), (XDP_PASS, TC_ACT_UNSPEC));
    }
    let total: u64 = programs.drops().unwrap().iter().map(|(_, n)| n).sum();
    assert_eq!(total, 0);
}

#[test]
fn tunnel_traffic_for_another_address_is_not_judged() {
    let mut programs = guard(Encap::Vxlan);
    let frame = udp_frame(
        STRANGER,
        Ipv4Addr::new(192, 168, 64, 9),
        40000,
        VXLAN_PORT,
        &vxlan(VNI, &inner_frame()),
    );
    assert_eq!(verdicts(&mut programs, &frame), (XDP_PASS, TC_ACT_UNSPEC));
}

#[test]
fn an_unconfigured_guard_passes_everything() {
    require_root();
    let mut programs = Programs::load(None).unwrap();
    assert_eq!(
        verdicts(&mut programs, &vxlan_from(STRANGER, 7)),
        (XDP_PASS, TC_ACT_UNSPEC)
    );
}

#[test]
fn udp_backend_checks_the_sender_but_has_no_vni() {
    let mut programs = guard(Encap::Udp);
    let inner = packet::ipv4(
        Ipv4Addr::new(10, 1, 83, 2),
        Ipv4Addr::new(10, 1, 74, 2),
        IPPROTO_TCP,
        &[0; 20],
    );
    let from_peer = udp_frame(PEER, LOCAL, UDP_BACKEND_PORT, UDP_BACKEND_PORT, &inner);
    let from_stranger = udp_frame(STRANGER, LOCAL, UDP_BACKEND_PORT, UDP_BACKEND_PORT, &inner);
    assert_eq!(verdicts(&mut programs, &from_peer), (XDP_PASS, TC_ACT_OK));
    assert_eq!(
        verdicts(&mut programs, &from_stranger),
        (XDP_DROP, TC_ACT_SHOT)
    );
    // Decapsulated with the inner TTL decremented, as flannel's udp backend does.
    let (verdict, out) = run(programs.tc_ingress(), &from_peer);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        out,
        [&from_peer[..ETH_HLEN], &with_ttl(&inner, 63)[..]].concat()
    );
}

/// udp with TC decap: a decapsulated frame for a local container goes, as it is, into the
/// GRO device (whose GRO merges it with its flow's next ones), and `tc_merged` on the
/// device's far end delivers it; a frame for anyone else goes into the stack. Without a GRO
/// device, `tc_ingress` delivers it itself.
#[test]
fn udp_frames_for_local_containers_take_the_gro_device() {
    let mut programs = guard(Encap::Udp);
    let container = Ipv4Addr::new(10, 1, 83, 2);
    let endpoint = Endpoint {
        ifindex: 1,
        mac: [2, 0, 0, 0, 0, 0x22],
        bridge_mac: [2, 0, 0, 0, 0, 0x11],
    };
    programs
        .insert_endpoint(container.into(), endpoint)
        .unwrap();
    let to = |dst| packet::ipv4(Ipv4Addr::new(10, 1, 74, 2), dst, IPPROTO_TCP, &[0; 20]);
    let from_peer =
        |inner: &[u8]| udp_frame(PEER, LOCAL, UDP_BACKEND_PORT, UDP_BACKEND_PORT, inner);
    let (local, other) = (to(container), to(Ipv4Addr::new(10, 1, 83, 3)));
    let decapsulated =
        |frame: &[u8], inner: &[u8]| [&frame[..ETH_HLEN], &with_ttl(inner, 63)].concat();
    let delivered = delivered(&decapsulated(&from_peer(&local), &local), &endpoint);

    // Without a GRO device: straight into the container.
    let (verdict, out) = run(programs.tc_ingress(), &from_peer(&local));
    assert_eq!((verdict, out), (TC_ACT_REDIRECT, delivered.clone()));

    let mut config = config(Encap::Udp);
    config.gro_ifindex = 1;
    programs.set_config(map_names::CONFIG, config).unwrap();
    let (verdict, out) = run(programs.tc_ingress(), &from_peer(&local));
    let into_gro_device = decapsulated(&from_peer(&local), &local);
    assert_eq!((verdict, &out), (TC_ACT_REDIRECT, &into_gro_device));
    let (verdict, out) = run(programs.tc_ingress(), &from_peer(&other));
    assert_eq!(
        (verdict, out),
        (TC_ACT_OK, decapsulated(&from_peer(&other), &other))
    );

    // On the far end: to the container, or (gone) into the stack.
    assert_eq!(
        run(programs.tc_merged(), &into_gro_device),
        (TC_ACT_REDIRECT, delivered)
    );
    programs.remove_endpoint(container.into()).unwrap();
    assert_eq!(
        run(programs.tc_merged(), &into_gro_device),
        (TC_ACT_OK, into_gro_device)
    );
}

/// Real packets on a veth: XDP drops a stranger's VXLAN, decapsulates a peer's into the
/// stack, and ordinary traffic keeps flowing.
#[test]
fn attached_guard_filters_real_packets() {
    require_root();
    let host = Netns::new("guard-host").unwrap();
    let peer = Netns::new("guard-peer").unwrap();
    link(
        &host,
        "eth0",
        "192.168.64.2/24",
        &peer,
        "eth0",
        "192.168.64.3/24",
    )
    .unwrap();
    peer.ip(&["addr", "add", "192.168.64.66/24", "dev", "eth0"])
        .unwrap();

    let mut programs = guard(Encap::Vxlan);
    host.enter(|| {
        programs
            .xdp_ingress()
            .attach("eth0", XdpMode::Default)
            .map(drop)
    })
    .unwrap()
    .expect("attach XDP");

    // Inside the tunnel: a datagram from a peer's container to a socket on this host.
    let receiver = host
        .enter(|| UdpSocket::bind((LOCAL, 7777)))
        .unwrap()
        .unwrap();
    receiver
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let inner = |text: &[u8]| {
        let ip = packet::ipv4(
            Ipv4Addr::new(10, 1, 74, 2),
            LOCAL,
            packet::IPPROTO_UDP,
            &packet::udp(5555, 7777, text),
        );
        vxlan(
            VNI,
            &packet::ethernet(OUR_VTEP, PEER_VTEP, packet::ETH_P_IP, &ip),
        )
    };
    let send_from = |src: Ipv4Addr, payload: Vec<u8>| {
        peer.enter(move || {
            let socket = UdpSocket::bind((src, 0)).unwrap();
            socket.send_to(&payload, (LOCAL, VXLAN_PORT)).unwrap();
        })
        .unwrap()
    };
    send_from(STRANGER, inner(b"forged"));
    send_from(PEER, inner(b"genuine"));

    // The stranger's frame was sent first: the first datagram to arrive must be the peer's,
    // decapsulated by XDP.
    let mut buf = [0u8; 64];
    let (len, from) = receiver
        .recv_from(&mut buf)
        .expect("the peer's packet arrives");
    assert_eq!(from.ip(), Ipv4Addr::new(10, 1, 74, 2));
    assert_eq!(&buf[..len], b"genuine");
    assert_eq!(
        drops(&mut programs, DropReason::UnknownPeer),
        1,
        "dropped once, by XDP"
    );
    assert_eq!(programs.traffic(PEER.into()).unwrap().rx_packets, 1);
    peer.exec("ping", &["-c", "1", "-W", "2", "192.168.64.2"])
        .expect("ping crosses the guarded link");
}

/// A container packet, as tc_encap sees it on the bridge or the overlay device.
fn container_frame(dst: Ipv4Addr, payload_len: usize) -> Vec<u8> {
    let ip = packet::ipv4(
        Ipv4Addr::new(10, 1, 83, 2),
        dst,
        IPPROTO_TCP,
        &vec![5; payload_len],
    );
    packet::ethernet(
        [2, 0, 0, 0, 0, 0xb],
        [2, 0, 0, 0, 0, 0xc],
        packet::ETH_P_IP,
        &ip,
    )
}

/// `ip` with its TTL set to `ttl` and the header checksum recomputed.
fn with_ttl(ip: &[u8], ttl: u8) -> Vec<u8> {
    let mut ip = ip.to_vec();
    let header = packet::split_mut::<Ipv4Hdr>(&mut ip);
    *header = Ipv4Hdr { ttl, ..*header }.checksummed();
    ip
}

/// `frame` as delivered to a container: from the bridge's MAC to the container's.
fn delivered(frame: &[u8], endpoint: &Endpoint) -> Vec<u8> {
    let mut frame = frame.to_vec();
    let eth = packet::split_mut::<EthHdr>(&mut frame);
    (eth.dst, eth.src) = (endpoint.mac, endpoint.bridge_mac);
    frame
}

/// Checks the outer headers tc_encap wrote in front of `inner_len` bytes, and returns the
/// bytes after them. The UDP source port comes from the flow hash: any ephemeral port.
fn check_outer(out: &[u8], original: &[u8], overhead: u32, port: u16) -> Vec<u8> {
    let inner_len = original.len() - ETH_HLEN;
    assert_eq!(out.len(), original.len() + overhead as usize);
    let (eth, rest) = packet::split::<EthHdr>(out);
    assert_eq!(
        eth,
        packet::split::<EthHdr>(original).0,
        "the L2 header is the neighbour layer's to rewrite"
    );
    let (outer_ip, rest) = packet::split::<Ipv4Hdr>(rest);
    let total = (inner_len + overhead as usize) as u16;
    assert_eq!(
        outer_ip.as_bytes(),
        [
            &[0x45, 0][..],
            &total.to_be_bytes(),
            &[0, 0, 0x40, 0, 64, 17],
            &outer_ip.check,
            &LOCAL.octets(),
            &PEER.octets(),
        ]
        .concat(),
        "IPv4 to the peer: no options, DF, TTL 64, UDP"
    );
    assert_eq!(
        packet::checksum(outer_ip.as_bytes()),
        0,
        "valid outer IPv4 checksum"
    );
    let (udp, rest) = packet::split::<UdpHdr>(rest);
    let sport = u16::from_be_bytes(udp.source);
    assert!(
        (32768..61000).contains(&sport),
        "source port {sport} is ephemeral"
    );
    assert_eq!(u16::from_be_bytes(udp.dest), port);
    assert_eq!(u16::from_be_bytes(udp.len), total - IPV4_HLEN as u16);
    assert_eq!(udp.check, [0, 0], "UDP checksum 0");
    rest.to_vec()
}

#[test]
fn vxlan_encap_byte_for_byte() {
    let mut programs = guard(Encap::Vxlan);
    let frame = container_frame(Ipv4Addr::new(10, 1, 74, 2), 100);
    let (verdict, out) = run(programs.tc_encap(), &frame);
    assert_eq!(verdict, TC_ACT_REDIRECT, "sent to the NIC");
    let rest = check_outer(&out, &frame, VXLAN_OVERHEAD, VXLAN_PORT);
    let (vxlan, rest) = packet::split::<VxlanHdr>(&rest);
    assert_eq!(
        vxlan.as_bytes(),
        [0x08, 0, 0, 0, 0, 0, 1, 0],
        "VXLAN flags and VNI 1"
    );
    let inner = packet::ethernet(PEER_VTEP, OUR_VTEP, packet::ETH_P_IP, &frame[ETH_HLEN..]);
    assert_eq!(
        rest,
        &inner[..],
        "inner Ethernet to the peer's VTEP, then the packet"
    );
    let traffic = programs.traffic(PEER.into()).unwrap();
    assert_eq!(
        (traffic.tx_packets, traffic.tx_bytes),
        (1, frame.len() as u64)
    );
}

#[test]
fn udp_encap_byte_for_byte_with_the_ttl_decremented() {
    let mut programs = guard(Encap::Udp);
    let frame = container_frame(Ipv4Addr::new(10, 1, 74, 2), 100);
    let (verdict, out) = run(programs.tc_encap(), &frame);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let rest = check_outer(&out, &frame, UDP_OVERHEAD, UDP_BACKEND_PORT);
    assert_eq!(
        rest,
        with_ttl(&frame[ETH_HLEN..], 63),
        "the raw IPv4 packet, TTL 64 - 1"
    );
}

#[test]
fn encap_leaves_other_destinations_and_oversize_packets_to_the_stack() {
    let mut programs = guard(Encap::Vxlan);
    for frame in [
        container_frame(Ipv4Addr::new(10, 1, 99, 2), 100),
        container_frame(Ipv4Addr::new(8, 8, 8, 8), 100),
        // 1451 bytes of IPv4 do not fit a 1500-byte NIC once encapsulated.
        container_frame(Ipv4Addr::new(10, 1, 74, 2), INNER_MTU as usize - 20 + 1),
    ] {
        assert_eq!(
            run(programs.tc_encap(), &frame),
            (TC_ACT_UNSPEC, frame.clone())
        );
    }
    let fits = container_frame(Ipv4Addr::new(10, 1, 74, 2), INNER_MTU as usize - 20);
    assert_eq!(run(programs.tc_encap(), &fits).0, TC_ACT_REDIRECT);
}

/// A frame sent by a Linux vxlan device set up as flannel sets up `flannel.1`, captured on
/// the wire, is decapsulated by our tc_ingress.
#[test]
fn decapsulates_a_frame_made_by_the_kernels_vxlan_device() {
    require_root();
    let frame = kernel_vxlan_frame(
        (Ipv4Addr::new(192, 168, 64, 3).into(), "10.1.74.0/24"),
        (LOCAL.into(), "10.1.83.0/24", "0a:00:00:00:00:01"),
        b"from a kernel vxlan peer",
    )
    .unwrap();

    let mut programs = guard(Encap::Vxlan);
    let (verdict, out) = run(programs.tc_ingress(), &frame);
    assert_eq!(verdict, TC_ACT_OK);
    let inner = assert_decapsulated(&out, &frame, VXLAN_OVERHEAD);
    let (ip, _) = packet::split::<Ipv4Hdr>(inner);
    assert_eq!((ip.saddr, ip.daddr), ([10, 1, 74, 0], [10, 1, 83, 2]));
    assert!(out.ends_with(b"from a kernel vxlan peer"));
}

#[test]
fn xdp_decapsulates_both_formats_like_tc() {
    let mut programs = guard(Encap::Vxlan);
    let frame = vxlan_from(PEER, VNI);
    assert_eq!(
        run(programs.xdp_ingress(), &frame),
        (XDP_PASS, [&frame[..ETH_HLEN], &inner_ip()[..]].concat())
    );

    let mut programs = guard(Encap::Udp);
    let inner = inner_ip();
    let frame = udp_frame(PEER, LOCAL, UDP_BACKEND_PORT, UDP_BACKEND_PORT, &inner);
    let (verdict, out) = run(programs.xdp_ingress(), &frame);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(
        out,
        [&frame[..ETH_HLEN], &with_ttl(&inner, 63)[..]].concat(),
        "TTL 64 - 1, checksum updated"
    );
}

/// `config` for a host on 10.1.83.0/24 of 10.1.0.0/16, with the inner-source check as asked.
fn config_in_network(encap: Encap, check_inner_source: bool) -> DatapathConfig {
    DatapathConfig {
        network_be: u32::from(Ipv4Addr::new(10, 1, 0, 0)).to_be(),
        network_mask_be: mask_be(16),
        subnet_be: u32::from(Ipv4Addr::new(10, 1, 83, 0)).to_be(),
        subnet_mask_be: mask_be(24),
        flags: if check_inner_source {
            CHECK_INNER_SOURCE
        } else {
            0
        },
        ..config(encap)
    }
}

/// A VXLAN frame from PEER whose inner packet comes from `src`.
fn vxlan_with_inner_source(src: Ipv4Addr) -> Vec<u8> {
    let ip = packet::ipv4(src, Ipv4Addr::new(10, 1, 83, 2), IPPROTO_TCP, &[7; 20]);
    let inner = packet::ethernet(OUR_VTEP, PEER_VTEP, packet::ETH_P_IP, &ip);
    udp_frame(PEER, LOCAL, 40000, VXLAN_PORT, &vxlan(VNI, &inner))
}

#[test]
fn a_peer_speaks_only_for_its_own_subnet_and_outside_clients() {
    let mut programs = guard(Encap::Vxlan);
    programs
        .set_config(map_names::CONFIG, config_in_network(Encap::Vxlan, true))
        .unwrap();
    let third_host = vxlan_with_inner_source(Ipv4Addr::new(10, 1, 99, 2));
    assert_eq!(
        verdicts(&mut programs, &third_host),
        (XDP_DROP, TC_ACT_SHOT)
    );
    assert_eq!(drops(&mut programs, DropReason::WrongInnerSource), 2);
    for src in [Ipv4Addr::new(10, 1, 74, 2), Ipv4Addr::new(8, 8, 8, 8)] {
        let frame = vxlan_with_inner_source(src);
        assert_eq!(
            verdicts(&mut programs, &frame),
            (XDP_PASS, TC_ACT_OK),
            "from {src}"
        );
    }
    // Turned off (--bpf-check-inner-source=false), the peer's word is taken.
    programs
        .set_config(map_names::CONFIG, config_in_network(Encap::Vxlan, false))
        .unwrap();
    assert_eq!(verdicts(&mut programs, &third_host), (XDP_PASS, TC_ACT_OK));
}

#[test]
fn local_traffic_is_never_tunnelled_whatever_the_routes_map_holds() {
    let mut programs = guard(Encap::Vxlan);
    programs
        .set_config(map_names::CONFIG, config_in_network(Encap::Vxlan, true))
        .unwrap();
    // Bogus entries, as a hostile lease once put there: the whole network, everything.
    let bogus = Tunnel::new(&TunnelEnds {
        encap: Encap::Vxlan,
        local_ip_be: u32::from(LOCAL).to_be(),
        remote_ip_be: u32::from(STRANGER).to_be(),
        port_be: VXLAN_PORT.to_be(),
        vni: VNI,
        local_mac: OUR_VTEP,
        remote_mac: PEER_VTEP,
    });
    for subnet in ["10.1.0.0/16", "0.0.0.0/0"] {
        programs
            .insert_route::<Ipv4Addr>(subnet.parse().unwrap(), bogus)
            .unwrap();
    }
    for dst in [Ipv4Addr::new(10, 1, 83, 5), Ipv4Addr::new(8, 8, 8, 8)] {
        let frame = container_frame(dst, 100);
        assert_eq!(
            run(programs.tc_encap(), &frame),
            (TC_ACT_UNSPEC, frame.clone()),
            "to {dst}: left to the stack, untouched"
        );
    }
    let to_peer = container_frame(Ipv4Addr::new(10, 1, 74, 2), 100);
    assert_eq!(run(programs.tc_encap(), &to_peer).0, TC_ACT_REDIRECT);
}

/// `DirectRouting`: a container's packet for a peer on our interface's subnet leaves as it
/// is, redirected to the NIC with no outer headers; a plain packet from that peer's subnet to
/// a local container goes straight into it; one from a tunnelled peer's subnet, or without
/// DirectRouting, goes on to the stack.
#[test]
fn direct_routing_sends_and_delivers_packets_as_they_are() {
    let mut programs = guard(Encap::Vxlan);
    let neighbour = Ipv4Addr::new(192, 168, 64, 4);
    let direct_subnet = "10.1.75.0/24".parse().unwrap();
    programs
        .insert_route::<Ipv4Addr>(direct_subnet, Tunnel::direct(u32::from(neighbour).to_be()))
        .unwrap();
    programs.track_traffic(neighbour.into()).unwrap();
    let frame = container_frame(Ipv4Addr::new(10, 1, 75, 2), 100);
    assert_eq!(
        run(programs.tc_encap(), &frame),
        (TC_ACT_REDIRECT, frame.clone())
    );
    assert_eq!(programs.traffic(neighbour.into()).unwrap().tx_packets, 1);

    let container = Ipv4Addr::new(10, 1, 83, 2);
    let endpoint = Endpoint {
        ifindex: 1,
        mac: [2, 0, 0, 0, 0, 0x22],
        bridge_mac: [2, 0, 0, 0, 0, 0x11],
    };
    programs
        .insert_endpoint(container.into(), endpoint)
        .unwrap();
    let from = |src| {
        let ip = packet::ipv4(src, container, IPPROTO_TCP, &[0; 20]);
        packet::ethernet(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            packet::ETH_P_IP,
            &ip,
        )
    };
    let plain = from(Ipv4Addr::new(10, 1, 75, 2));
    let tunnelled_subnet = from(Ipv4Addr::new(10, 1, 74, 2));
    // Without DirectRouting, a plain packet is the stack's.
    assert_eq!(
        run(programs.tc_ingress(), &plain),
        (TC_ACT_UNSPEC, plain.clone())
    );
    let mut config = config_in_network(Encap::Vxlan, true);
    config.flags |= DIRECT_ROUTING;
    programs.set_config(map_names::CONFIG, config).unwrap();
    let delivered = delivered(&plain, &endpoint);
    assert_eq!(
        run(programs.tc_ingress(), &plain),
        (TC_ACT_REDIRECT, delivered)
    );
    assert_eq!(programs.traffic(neighbour.into()).unwrap().rx_packets, 1);
    assert_eq!(
        run(programs.tc_ingress(), &tunnelled_subnet),
        (TC_ACT_UNSPEC, tunnelled_subnet.clone())
    );
    // Through netfilter (--bpf-fast-path=false), the stack routes it.
    config.flags |= THROUGH_NETFILTER;
    programs.set_config(map_names::CONFIG, config).unwrap();
    assert_eq!(
        run(programs.tc_ingress(), &plain),
        (TC_ACT_UNSPEC, plain.clone())
    );
}
