//! The programs' IPv6 half (dual-stack and IPv6-only vxlan) run by the kernel on crafted
//! packets with BPF_PROG_TEST_RUN: the IPv6 tunnel guard, decapsulation (also of a frame made
//! by a kernel IPv6 vxlan device set up as flannel's `flannel-v6.1`), encapsulation (by the
//! program, or by the GRO device it hands packets to), and an IPv6-only config leaving IPv4
//! alone.

use std::{
    mem::offset_of,
    net::{Ipv4Addr, Ipv6Addr},
};

use flannel_agent::datapath::ebpf::programs::Programs;
use flannel_common::{
    map_names, pins::Pins, DatapathConfig, DatapathConfig6, DropEvent, DropReason, Encap, Endpoint,
    Hook, PeerInfo6, Tunnel, Tunnel6, TunnelEnds, CHECK_INNER_SOURCE, IPV6_ONLY, VXLAN6_OVERHEAD,
    VXLAN_PORT,
};
use flannel_tests::{
    bpf_run::{
        assert_decapsulated, drop_events, run, run_gso, OUR_VTEP, PEER_VTEP, TC_ACT_OK,
        TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, VNI, XDP_PASS,
    },
    netns::{kernel_vxlan_frame, Bpffs},
    packet::{
        self, udp6_frame, udp_frame, vxlan, EthHdr, Header, IcmpHdr, Ipv6Hdr, TcpHdr, UdpHdr,
        VxlanHdr, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    },
    require_root,
};
use ipnet::Ipv6Net;

const LOCAL: Ipv6Addr = Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 2);
const PEER: Ipv6Addr = Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 3);
const STRANGER: Ipv6Addr = Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 0x66);
/// The peer's public IPv4.
const PEER_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 3);
/// Our IPv6 VTEP MAC: flannel gives its IPv6 device a MAC of its own, which a host taking
/// over from it keeps.
const OUR_VTEP6: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x06];
/// In BPF_PROG_TEST_RUN a TC program's packet is on the loopback device.
const LOOPBACK: u32 = 1;

fn net(text: &str) -> Ipv6Net {
    text.parse().unwrap()
}

/// The IPv4 half of `dual_stack`'s config, with a GRO device (ifindex 42).
fn config(check_inner_source: bool) -> DatapathConfig {
    DatapathConfig {
        vni: VNI,
        port_be: VXLAN_PORT.to_be(),
        encap: Encap::Vxlan as u16,
        local_ip_be: u32::from(Ipv4Addr::new(192, 168, 64, 2)).to_be(),
        vtep_mac: OUR_VTEP,
        gro_ifindex: 42,
        flags: if check_inner_source {
            CHECK_INNER_SOURCE
        } else {
            0
        },
        ..Default::default()
    }
}

/// A dual-stack host on fd00:10:0:83::/64 of fd00:10::/48 at LOCAL, with one peer, PEER,
/// holding fd00:10:0:74::/64; the overlay device is `overlay_ifindex`.
fn dual_stack(check_inner_source: bool, overlay_ifindex: u32) -> Programs {
    require_root();
    let mut programs = Programs::load(None).expect("load the embedded object");
    programs
        .set_config(map_names::CONFIG, config(check_inner_source))
        .unwrap();
    let (network, subnet) = (net("fd00:10::/48"), net("fd00:10:0:83::/64"));
    programs
        .set_config(
            map_names::CONFIG6,
            DatapathConfig6 {
                local_ip: LOCAL.octets(),
                network: network.network().octets(),
                network_mask: network.netmask().octets(),
                subnet: subnet.network().octets(),
                subnet_mask: subnet.netmask().octets(),
                overlay_ifindex,
                inner_mtu: TUNNEL_MTU,
                vtep_mac: OUR_VTEP6,
                _pad: [0; 2],
            },
        )
        .unwrap();
    let peer_subnet = net("fd00:10:0:74::/64");
    programs
        .insert_peer(
            PEER,
            PeerInfo6 {
                subnet: peer_subnet.network().octets(),
                subnet_mask: peer_subnet.netmask().octets(),
            },
        )
        .unwrap();
    programs
        .insert_route::<Ipv6Addr>(
            peer_subnet,
            Tunnel6 {
                remote_ip: PEER.octets(),
                remote_mac: PEER_VTEP,
                flags: 0,
            },
        )
        .unwrap();
    programs.track_traffic(PEER.into()).unwrap();
    programs
}

fn drops(programs: &mut Programs, reason: DropReason) -> u64 {
    let drops = programs.drops().unwrap();
    drops.into_iter().find(|(r, _)| *r == reason).unwrap().1
}

/// An inner IPv6 packet from `src` to one of our containers.
fn inner_ip(src: &str) -> Vec<u8> {
    let dst = "fd00:10:0:83::2".parse().unwrap();
    packet::ipv6(src.parse().unwrap(), dst, IPPROTO_TCP, &[7; 20])
}

/// A VXLAN frame over IPv6 from `from` to LOCAL with `vni`, to `inner_mac`, carrying
/// `inner`.
fn vxlan6(from: Ipv6Addr, vni: u32, inner_mac: [u8; 6], inner: &[u8]) -> Vec<u8> {
    let inner = packet::ethernet(inner_mac, PEER_VTEP, ETH_P_IPV6, inner);
    udp6_frame(from, LOCAL, 40000, VXLAN_PORT, &vxlan(vni, &inner))
}

fn from_the_peer() -> Vec<u8> {
    vxlan6(PEER, VNI, OUR_VTEP6, &inner_ip("fd00:10:0:74::2"))
}

#[test]
fn ipv6_vxlan_from_a_peer_is_decapsulated_to_the_inner_packet() {
    let mut programs = dual_stack(false, LOOPBACK);
    let frame = from_the_peer();
    let (verdict, out) = run(programs.tc_ingress(), &frame);
    assert_eq!(verdict, TC_ACT_OK);
    // The outer Ethernet header (addressed to this host) stays, the inner packet follows.
    assert_eq!(
        out,
        [&frame[..ETH_HLEN], &inner_ip("fd00:10:0:74::2")[..]].concat()
    );
    let traffic = programs.traffic(PEER.into()).unwrap();
    assert_eq!(
        (traffic.rx_packets, traffic.rx_bytes),
        (1, frame.len() as u64)
    );
    // XDP leaves IPv6 to TC.
    assert_eq!(run(programs.xdp_ingress(), &frame), (XDP_PASS, frame));
}

#[test]
fn decapsulated_ipv6_for_a_local_container_goes_straight_into_it() {
    let mut programs = dual_stack(false, LOOPBACK);
    let (container, bridge) = ([0x02, 0, 0, 0, 0x83, 2], [0x02, 0, 0, 0, 0x83, 1]);
    let endpoint = Endpoint {
        ifindex: LOOPBACK,
        mac: container,
        bridge_mac: bridge,
    };
    let ip: Ipv6Addr = "fd00:10:0:83::2".parse().unwrap();
    programs.insert_endpoint(ip.into(), endpoint).unwrap();
    let frame = from_the_peer();
    let (verdict, out) = run(programs.tc_ingress(), &frame);
    // Redirected into the container's namespace, addressed from the bridge to the container.
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let inner = inner_ip("fd00:10:0:74::2");
    let eth = EthHdr::new(container, bridge, ETH_P_IPV6);
    assert_eq!(out, [eth.as_bytes(), &inner].concat());
}

#[test]
fn forged_ipv6_vxlan_is_dropped_counted_and_reported() {
    let mut programs = dual_stack(true, LOOPBACK);
    let bpffs = Bpffs::mount().unwrap();
    let (dir, _) = bpffs.pin_dir("forged");
    programs.pin_maps(&dir).unwrap();
    let ours = inner_ip("fd00:10:0:74::2");
    for (frame, reason) in [
        (
            vxlan6(STRANGER, VNI, OUR_VTEP6, &ours),
            DropReason::UnknownPeer,
        ),
        (vxlan6(PEER, 2, OUR_VTEP, &ours), DropReason::WrongVni),
        (vxlan6(PEER, VNI, OUR_VTEP, &ours), DropReason::WrongMac),
        // A peer speaks for its own IPv6 subnet only.
        (
            vxlan6(PEER, VNI, OUR_VTEP6, &inner_ip("fd00:10:0:99::2")),
            DropReason::WrongInnerSource,
        ),
    ] {
        let before = drops(&mut programs, reason);
        assert_eq!(
            run(programs.tc_ingress(), &frame).0,
            TC_ACT_SHOT,
            "{reason:?}"
        );
        assert_eq!(drops(&mut programs, reason), before + 1, "{reason:?}");
    }
    // `flanneld monitor` sees each with its IPv6 peer and inner addresses.
    let events = drop_events(&Pins::new(&dir));
    let reported: Vec<_> = events.iter().map(|e| (e.reason, e.peer)).collect();
    assert_eq!(
        reported,
        [
            (DropReason::UnknownPeer as u32, STRANGER.octets()),
            (DropReason::WrongVni as u32, PEER.octets()),
            (DropReason::WrongMac as u32, PEER.octets()),
            (DropReason::WrongInnerSource as u32, PEER.octets()),
        ]
    );
    let src: Ipv6Addr = "fd00:10:0:74::2".parse().unwrap();
    let dst: Ipv6Addr = "fd00:10:0:83::2".parse().unwrap();
    assert_eq!(
        events[0],
        DropEvent {
            reason: DropReason::UnknownPeer as u32,
            ifindex: LOOPBACK,
            peer_family: 6,
            family: 6,
            protocol: IPPROTO_TCP,
            hook: Hook::TcIngress as u8,
            sport_be: 0x0707,
            dport_be: 0x0707,
            peer: STRANGER.octets(),
            src: src.octets(),
            dst: dst.octets(),
            ..DropEvent::default()
        }
    );
    // An outside client's packet, forwarded by the peer, passes.
    let outside = vxlan6(PEER, VNI, OUR_VTEP6, &inner_ip("2001:db8::7"));
    assert_eq!(run(programs.tc_ingress(), &outside).0, TC_ACT_OK);
}

#[test]
fn ipv6_traffic_not_for_our_tunnel_passes_untouched() {
    let mut programs = dual_stack(false, LOOPBACK);
    let inner = inner_ip("fd00:10:0:74::2");
    let elsewhere = {
        let inner = packet::ethernet(OUR_VTEP6, PEER_VTEP, ETH_P_IPV6, &inner);
        let other: Ipv6Addr = "fd64::99".parse().unwrap();
        udp6_frame(PEER, other, 40000, VXLAN_PORT, &vxlan(VNI, &inner))
    };
    let other_port = udp6_frame(STRANGER, LOCAL, 40000, 53, b"a DNS query");
    for frame in [elsewhere, other_port] {
        assert_eq!(run(programs.tc_ingress(), &frame), (TC_ACT_UNSPEC, frame));
    }
    // An IPv4-only network (an all-zero IPv6 config) takes no IPv6 tunnel packet.
    let mut programs = dual_stack(false, LOOPBACK);
    programs
        .set_config(map_names::CONFIG6, DatapathConfig6::default())
        .unwrap();
    let frame = from_the_peer();
    assert_eq!(run(programs.tc_ingress(), &frame), (TC_ACT_UNSPEC, frame));
}

/// An IPv6-only network's config (IPv6_ONLY, no IPv4 address, network or subnet): IPv4
/// tunnel packets are not judged, IPv4 is not tunnelled, IPv6 still is.
#[test]
fn an_ipv6_only_config_judges_and_tunnels_no_ipv4() {
    let mut programs = dual_stack(false, LOOPBACK);
    let ipv6_only = |flags| DatapathConfig {
        vni: VNI,
        port_be: VXLAN_PORT.to_be(),
        encap: Encap::Vxlan as u16,
        vtep_mac: OUR_VTEP,
        inner_mtu: 1450,
        gro_ifindex: 42,
        flags,
        ..Default::default()
    };
    // IPv4 VXLAN from no peer of ours: another tenant's on this host, not ours to drop.
    let (stranger, us) = (
        Ipv4Addr::new(192, 168, 64, 66),
        Ipv4Addr::new(192, 168, 64, 2),
    );
    let inner = packet::ethernet(OUR_VTEP, PEER_VTEP, ETH_P_IP, &[0x45; 40]);
    let frame = udp_frame(stranger, us, 40000, VXLAN_PORT, &vxlan(VNI, &inner));
    // Routed to the overlay device: IPv4 for a subnet the routes map holds.
    let dst = Ipv4Addr::new(10, 1, 74, 2);
    let ip = packet::ipv4(Ipv4Addr::new(10, 1, 83, 2), dst, IPPROTO_TCP, &[9; 20]);
    let outgoing = packet::ethernet([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 8], ETH_P_IP, &ip);
    let ends = TunnelEnds {
        encap: Encap::Vxlan,
        local_ip_be: u32::from(us).to_be(),
        remote_ip_be: u32::from(PEER_V4).to_be(),
        port_be: VXLAN_PORT.to_be(),
        vni: VNI,
        local_mac: OUR_VTEP,
        remote_mac: PEER_VTEP,
    };
    let route = "10.1.74.0/24".parse().unwrap();
    programs
        .insert_route::<Ipv4Addr>(route, Tunnel::new(&ends))
        .unwrap();
    // Without the flag, a config naming no local IPv4 judges (and drops) that frame and
    // tunnels that packet...
    programs
        .set_config(map_names::CONFIG, ipv6_only(0))
        .unwrap();
    assert_eq!(run(programs.tc_ingress(), &frame).0, TC_ACT_SHOT);
    assert_eq!(run(programs.tc_encap(), &outgoing).0, TC_ACT_REDIRECT);
    // ...with it, both pass untouched, and IPv6 from the peer is still decapsulated.
    programs
        .set_config(map_names::CONFIG, ipv6_only(IPV6_ONLY))
        .unwrap();
    let unknown = drops(&mut programs, DropReason::UnknownPeer);
    assert_eq!(
        run(programs.tc_ingress(), &frame),
        (TC_ACT_UNSPEC, frame.clone())
    );
    assert_eq!(run(programs.xdp_ingress(), &frame), (XDP_PASS, frame));
    assert_eq!(drops(&mut programs, DropReason::UnknownPeer), unknown);
    assert_eq!(
        run(programs.tc_encap(), &outgoing),
        (TC_ACT_UNSPEC, outgoing)
    );
    let (verdict, out) = run(programs.tc_ingress(), &from_the_peer());
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(&out[ETH_HLEN..], &inner_ip("fd00:10:0:74::2")[..]);
}

/// The IPv6 tunnel's MTU in `dual_stack`: a 1,500-byte underlay less vxlan over IPv6.
const TUNNEL_MTU: u32 = 1430;
/// A container on our subnet and one on the peer's.
const CONTAINER: &str = "fd00:10:0:83::2";
const PEER_CONTAINER: &str = "fd00:10:0:74::2";

/// A container's IPv6 packet to `dst`, as the bridge or the overlay device sees it: of
/// protocol `next_header`, its upper-layer part `upper` given a right checksum (at `check`,
/// its offset there) unless `check` is None.
fn frame_to(dst: &str, next_header: u8, mut upper: Vec<u8>, check: Option<usize>) -> Vec<u8> {
    let (src, dst) = (CONTAINER.parse().unwrap(), dst.parse().unwrap());
    if let Some(at) = check {
        upper[at..at + 2].fill(0);
        let sum = packet::ipv6_upper_checksum(src, dst, next_header, &upper);
        upper[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    }
    let ip = packet::ipv6(src, dst, next_header, &upper);
    packet::ethernet(
        [0x02, 0, 0, 0, 0, 9],
        [0x02, 0, 0, 0, 0, 8],
        ETH_P_IPV6,
        &ip,
    )
}

/// A container's TCP segment to `dst` with `payload` bytes of data, its checksum right.
fn tcp_to(dst: &str, payload: usize) -> Vec<u8> {
    let header = TcpHdr {
        data_offset: 5 << 4, // 5 words: no options
        ..TcpHdr::default()
    };
    let tcp = [header.as_bytes(), &vec![9; payload]].concat();
    frame_to(dst, IPPROTO_TCP, tcp, Some(offset_of!(TcpHdr, check)))
}

fn to(dst: &str) -> Vec<u8> {
    tcp_to(dst, 0)
}

/// `out` is `frame` (its Ethernet header then its IPv6 packet) in flannel's IPv6 vxlan to
/// PEER: outer IPv6 from LOCAL (hop limit 64), UDP from an ephemeral port to 8472 with a
/// checksum that verifies, VXLAN with the I flag and our VNI, inner Ethernet from our VTEP
/// MAC to the peer's, and the packet byte for byte.
fn assert_flannels_ipv6_vxlan(out: &[u8], frame: &[u8]) {
    assert_eq!(out.len(), frame.len() + VXLAN6_OVERHEAD as usize);
    let (eth, rest) = packet::split::<EthHdr>(out);
    assert!(eth.is_ipv6());
    let (outer, datagram) = packet::split::<Ipv6Hdr>(rest);
    let udp_len = datagram.len() as u16;
    assert_eq!(
        outer.version_class_flow,
        [0x60, 0, 0, 0],
        "class and flow label 0"
    );
    assert_eq!(outer.payload_len, udp_len.to_be_bytes());
    assert_eq!((outer.next_header, outer.hop_limit), (IPPROTO_UDP, 64));
    assert_eq!((outer.saddr, outer.daddr), (LOCAL.octets(), PEER.octets()));
    let (udp, rest) = packet::split::<UdpHdr>(datagram);
    assert!((32768..61000).contains(&u16::from_be_bytes(udp.source)));
    assert_eq!(udp.dest, VXLAN_PORT.to_be_bytes());
    assert_eq!(udp.len, udp_len.to_be_bytes());
    assert_ne!(udp.check, [0, 0], "IPv6 UDP needs a checksum");
    assert_eq!(
        packet::ipv6_upper_checksum(LOCAL, PEER, IPPROTO_UDP, datagram),
        0,
        "the outer UDP checksum verifies"
    );
    let (vxlan, rest) = packet::split::<VxlanHdr>(rest);
    assert_eq!(vxlan.as_bytes(), [0x08, 0, 0, 0, 0, 0, VNI as u8, 0]);
    let (inner_eth, inner) = packet::split::<EthHdr>(rest);
    assert_eq!(
        inner_eth.as_bytes(),
        [&PEER_VTEP[..], &OUR_VTEP6, &[0x86, 0xdd]].concat()
    );
    assert_eq!(inner, &frame[ETH_HLEN..]);
}

/// Handed to the GRO device for the kernel's encapsulation: only the inner Ethernet header
/// is addressed, from our VTEP MAC to the peer's.
fn assert_handed_to_the_gro_device((verdict, out): (u32, Vec<u8>), frame: &[u8]) {
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let mut addressed = frame.to_vec();
    let eth = packet::split_mut::<EthHdr>(&mut addressed);
    (eth.dst, eth.src) = (PEER_VTEP, OUR_VTEP6);
    assert_eq!(out, addressed);
}

/// Single TCP, UDP and ICMPv6 packets for a peer are encapsulated by the program itself, in
/// flannel's IPv6 vxlan format, with the outer UDP checksum IPv6 requires made from the
/// inner packet's headers; traffic counts under the peer.
#[test]
fn single_ipv6_packets_for_a_peer_are_encapsulated_with_a_valid_udp_checksum() {
    let mut programs = dual_stack(false, LOOPBACK);
    let echo = vec![128, 0, 0, 0, 0, 1, 0, 1, 42, 42];
    let frames = [
        to(PEER_CONTAINER),
        tcp_to(PEER_CONTAINER, 1000),
        frame_to(
            PEER_CONTAINER,
            IPPROTO_UDP,
            packet::udp(5000, 53, b"query"),
            Some(offset_of!(UdpHdr, check)),
        ),
        // ICMPv6's header begins as ICMP's: type, code, checksum.
        frame_to(
            PEER_CONTAINER,
            IPPROTO_ICMPV6,
            echo,
            Some(offset_of!(IcmpHdr, check)),
        ),
    ];
    for frame in &frames {
        let (verdict, out) = run(programs.tc_encap(), frame);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_flannels_ipv6_vxlan(&out, frame);
    }
    let traffic = programs.traffic(PEER.into()).unwrap();
    let bytes = frames.iter().map(|f| f.len() as u64).sum();
    assert_eq!((traffic.tx_packets, traffic.tx_bytes), (4, bytes));

    // Our own subnet, outside the network, or a subnet without a peer: the stack's.
    for frame in [
        to("fd00:10:0:83::5"),
        to("2001:db8::1"),
        to("fd00:10:0:99::2"),
    ] {
        assert_eq!(
            run(programs.tc_encap(), &frame),
            (TC_ACT_UNSPEC, frame.clone())
        );
    }
}

/// Packets whose outer checksum the program cannot make from headers alone go to the GRO
/// device: GSO packets (each segment needs its own), UDP without a checksum, and anything
/// behind an extension header (a fragment, here).
#[test]
fn other_ipv6_for_a_peer_is_handed_to_the_gro_device() {
    let mut programs = dual_stack(false, LOOPBACK);
    let gso = tcp_to(PEER_CONTAINER, 3000);
    assert_handed_to_the_gro_device(run_gso(programs.tc_encap(), &gso, 1000), &gso);
    let unchecked = frame_to(
        PEER_CONTAINER,
        IPPROTO_UDP,
        packet::udp(5000, 53, b"q"),
        None,
    );
    assert_handed_to_the_gro_device(run(programs.tc_encap(), &unchecked), &unchecked);
    let fragment = frame_to(
        PEER_CONTAINER,
        44,
        vec![IPPROTO_UDP, 0, 0, 1, 0, 0, 0, 7],
        None,
    );
    assert_handed_to_the_gro_device(run(programs.tc_encap(), &fragment), &fragment);
}

/// While a classic vxlan device we take over from holds the port, there is no GRO device:
/// single packets are still encapsulated by the program, the others are left to the stack
/// (whose routes are still the classic device's), never sent to a device that is not there.
#[test]
fn without_a_gro_device_ipv6_the_program_cannot_encapsulate_is_left_to_the_stack() {
    let mut programs = dual_stack(false, LOOPBACK);
    let no_gro_device = DatapathConfig {
        gro_ifindex: 0,
        ..config(false)
    };
    programs
        .set_config(map_names::CONFIG, no_gro_device)
        .unwrap();
    let single = to(PEER_CONTAINER);
    let (verdict, out) = run(programs.tc_encap(), &single);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_flannels_ipv6_vxlan(&out, &single);
    let gso = tcp_to(PEER_CONTAINER, 3000);
    assert_eq!(
        run_gso(programs.tc_encap(), &gso, 1000),
        (TC_ACT_UNSPEC, gso)
    );
    let unchecked = frame_to(
        PEER_CONTAINER,
        IPPROTO_UDP,
        packet::udp(5000, 53, b"q"),
        None,
    );
    assert_eq!(
        run(programs.tc_encap(), &unchecked),
        (TC_ACT_UNSPEC, unchecked.clone())
    );
}

/// At the container bridge, before routing, IPv6 that fits the tunnel is tunnelled at once;
/// bigger packets, or GSO packets whose segments would be, are left to the stack, which
/// answers "packet too big".
#[test]
fn ipv6_at_the_bridge_is_tunnelled_when_it_fits_the_tunnel_mtu() {
    let mut programs = dual_stack(false, 77);
    let header = 40 + 20;
    let fits = tcp_to(PEER_CONTAINER, TUNNEL_MTU as usize - header);
    let (verdict, out) = run(programs.tc_encap(), &fits);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_flannels_ipv6_vxlan(&out, &fits);
    let too_big = tcp_to(PEER_CONTAINER, TUNNEL_MTU as usize - header + 1);
    assert_eq!(run(programs.tc_encap(), &too_big), (TC_ACT_UNSPEC, too_big));

    // A GSO packet: what counts is the size of the segments it will be cut into.
    let gso = tcp_to(PEER_CONTAINER, 3000);
    let segment = TUNNEL_MTU - header as u32;
    assert_handed_to_the_gro_device(run_gso(programs.tc_encap(), &gso, segment), &gso);
    assert_eq!(
        run_gso(programs.tc_encap(), &gso, segment + 1),
        (TC_ACT_UNSPEC, gso)
    );
}

/// A frame sent by a Linux IPv6 vxlan device set up as flannel sets up `flannel-v6.1`,
/// captured on the wire, is decapsulated by our tc_ingress.
#[test]
fn decapsulates_a_frame_made_by_the_kernels_ipv6_vxlan_device() {
    require_root();
    let frame = kernel_vxlan_frame(
        (PEER.into(), "fd00:10:0:74::/64"),
        (LOCAL.into(), "fd00:10:0:83::/64", "0a:00:00:00:00:06"),
        b"from a kernel IPv6 vxlan peer",
    )
    .unwrap();
    // The kernel's IPv6 vxlan sets the UDP checksum (flannel's device drops frames without).
    let (_, outer) = packet::split::<EthHdr>(&frame);
    let (_, datagram) = packet::split::<Ipv6Hdr>(outer);
    let (udp, _) = packet::split::<UdpHdr>(datagram);
    assert_ne!(udp.check, [0, 0], "outer UDP checksum");

    let mut programs = dual_stack(true, LOOPBACK);
    let (verdict, out) = run(programs.tc_ingress(), &frame);
    assert_eq!(verdict, TC_ACT_OK);
    let inner = assert_decapsulated(&out, &frame, VXLAN6_OVERHEAD);
    let (ip, _) = packet::split::<Ipv6Hdr>(inner);
    assert_eq!(
        Ipv6Addr::from(ip.saddr),
        "fd00:10:0:74::".parse::<Ipv6Addr>().unwrap()
    );
    assert!(out.ends_with(b"from a kernel IPv6 vxlan peer"));
}
