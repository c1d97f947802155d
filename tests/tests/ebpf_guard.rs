//! The tunnel guard programs (XDP and TC ingress), run by the kernel on crafted packets with
//! BPF_PROG_TEST_RUN, and attached to a real interface.

use std::net::{Ipv4Addr, UdpSocket};

use aya::programs::{tc, TcAttachType, TestRun, TestRunOptions, XdpMode};
use flannel_agent::bpf::Programs;
use flannel_common::{DatapathConfig, DropReason, Encap, PeerInfo, UDP_BACKEND_PORT, VXLAN_PORT};
use flannel_tests::{
    netns::{link, Netns},
    packet::{self, udp_frame, vxlan, IPPROTO_TCP},
    require_root,
};

const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 2);
const PEER: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 3);
const STRANGER: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 66);
const VNI: u32 = 1;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

fn config(encap: Encap, port: u16) -> DatapathConfig {
    DatapathConfig {
        vni: VNI,
        port_be: port.to_be(),
        encap: encap as u16,
        local_ip_be: u32::from(LOCAL).to_be(),
        ..Default::default()
    }
}

/// Programs loaded with `config` and one peer, PEER.
fn guard(config: DatapathConfig) -> Programs {
    require_root();
    let mut programs = Programs::load(None).expect("load the embedded object");
    programs.set_config(config).unwrap();
    let peer = PeerInfo {
        subnet_be: u32::from(Ipv4Addr::new(10, 1, 83, 0)).to_be(),
        prefix_len: 24,
        ..Default::default()
    };
    programs.insert_peer(PEER, peer).unwrap();
    programs
}

/// Runs both programs on `frame`; returns (XDP verdict, TC verdict).
fn verdicts(programs: &mut Programs, frame: &[u8]) -> (u32, u32) {
    let xdp = programs
        .xdp_ingress()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..Default::default()
        })
        .expect("xdp test run")
        .return_value;
    let tc = programs
        .tc_ingress()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..Default::default()
        })
        .expect("tc test run")
        .return_value;
    (xdp, tc)
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

fn inner_frame() -> Vec<u8> {
    let ip = packet::ipv4(
        Ipv4Addr::new(10, 1, 83, 2),
        Ipv4Addr::new(10, 1, 74, 2),
        IPPROTO_TCP,
        &[0; 20],
    );
    packet::ethernet(
        [0x0a, 0, 0, 0, 0, 1],
        [0x0a, 0, 0, 0, 0, 2],
        packet::ETH_P_IP,
        &ip,
    )
}

fn vxlan_from(src: Ipv4Addr, vni: u32) -> Vec<u8> {
    udp_frame(src, LOCAL, 40000, VXLAN_PORT, &vxlan(vni, &inner_frame()))
}

#[test]
fn vxlan_from_a_peer_with_our_vni_passes() {
    let mut programs = guard(config(Encap::Vxlan, VXLAN_PORT));
    assert_eq!(
        verdicts(&mut programs, &vxlan_from(PEER, VNI)),
        (XDP_PASS, TC_ACT_OK)
    );
}

#[test]
fn vxlan_from_a_stranger_is_dropped_and_counted() {
    let mut programs = guard(config(Encap::Vxlan, VXLAN_PORT));
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

#[test]
fn vxlan_with_another_vni_is_dropped() {
    let mut programs = guard(config(Encap::Vxlan, VXLAN_PORT));
    assert_eq!(
        verdicts(&mut programs, &vxlan_from(PEER, 2)),
        (XDP_DROP, TC_ACT_SHOT)
    );
    assert_eq!(drops(&mut programs, DropReason::WrongVni), 2);
}

#[test]
fn vxlan_without_the_valid_vni_flag_is_dropped() {
    let mut programs = guard(config(Encap::Vxlan, VXLAN_PORT));
    let mut frame = vxlan_from(PEER, VNI);
    frame[14 + 20 + 8] = 0; // clear the I flag
    assert_eq!(verdicts(&mut programs, &frame), (XDP_DROP, TC_ACT_SHOT));
    assert_eq!(drops(&mut programs, DropReason::WrongVni), 2);
}

#[test]
fn truncated_vxlan_header_is_dropped() {
    let mut programs = guard(config(Encap::Vxlan, VXLAN_PORT));
    let frame = udp_frame(PEER, LOCAL, 40000, VXLAN_PORT, &[0x08, 0, 0]);
    assert_eq!(verdicts(&mut programs, &frame), (XDP_DROP, TC_ACT_SHOT));
    assert_eq!(drops(&mut programs, DropReason::Truncated), 2);
}

#[test]
fn unrelated_traffic_passes() {
    let mut programs = guard(config(Encap::Vxlan, VXLAN_PORT));
    let dns = udp_frame(STRANGER, LOCAL, 40000, 53, b"query");
    let tcp = packet::ethernet(
        [2, 0, 0, 0, 0, 2],
        [2, 0, 0, 0, 0, 1],
        packet::ETH_P_IP,
        &packet::ipv4(STRANGER, LOCAL, IPPROTO_TCP, &[0; 20]),
    );
    let arp = packet::ethernet([0xff; 6], [2, 0, 0, 0, 0, 1], 0x0806, &[0; 28]);
    for frame in [dns, tcp, arp] {
        assert_eq!(verdicts(&mut programs, &frame), (XDP_PASS, TC_ACT_OK));
    }
    let total: u64 = programs.drops().unwrap().iter().map(|(_, n)| n).sum();
    assert_eq!(total, 0);
}

#[test]
fn tunnel_traffic_for_another_address_is_not_judged() {
    let mut programs = guard(config(Encap::Vxlan, VXLAN_PORT));
    let frame = udp_frame(
        STRANGER,
        Ipv4Addr::new(192, 168, 64, 9),
        40000,
        VXLAN_PORT,
        &vxlan(VNI, &inner_frame()),
    );
    assert_eq!(verdicts(&mut programs, &frame), (XDP_PASS, TC_ACT_OK));
}

#[test]
fn an_unconfigured_guard_passes_everything() {
    require_root();
    let mut programs = Programs::load(None).unwrap();
    assert_eq!(
        verdicts(&mut programs, &vxlan_from(STRANGER, 7)),
        (XDP_PASS, TC_ACT_OK)
    );
}

#[test]
fn udp_backend_checks_the_sender_but_has_no_vni() {
    let mut programs = guard(config(Encap::Udp, UDP_BACKEND_PORT));
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
}

/// Real packets on a veth: the attached programs drop a stranger's VXLAN and let a peer's
/// through, and ordinary traffic keeps flowing.
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

    let mut programs = guard(config(Encap::Vxlan, VXLAN_PORT));
    host.enter(|| {
        programs
            .xdp_ingress()
            .attach("eth0", XdpMode::Default)
            .expect("attach XDP");
        tc::qdisc_add_clsact("eth0").expect("add clsact");
        programs
            .tc_ingress()
            .attach("eth0", TcAttachType::Ingress)
            .expect("attach TC");
    })
    .unwrap();

    let receiver = host
        .enter(|| UdpSocket::bind((LOCAL, VXLAN_PORT)))
        .unwrap()
        .unwrap();
    receiver
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let send_from = |src: Ipv4Addr, payload: Vec<u8>| {
        peer.enter(move || {
            let socket = UdpSocket::bind((src, 0)).unwrap();
            socket.send_to(&payload, (LOCAL, VXLAN_PORT)).unwrap();
        })
        .unwrap()
    };
    send_from(STRANGER, vxlan(VNI, b"forged"));
    send_from(PEER, vxlan(VNI, b"genuine"));

    // The stranger's datagram was sent first: the first one to arrive must be the peer's.
    let mut buf = [0u8; 64];
    let (len, from) = receiver
        .recv_from(&mut buf)
        .expect("the peer's packet arrives");
    assert_eq!(from.ip(), PEER);
    assert_eq!(&buf[8..len], b"genuine");
    assert_eq!(
        drops(&mut programs, DropReason::UnknownPeer),
        1,
        "dropped once, by XDP"
    );
    peer.exec("ping", &["-c", "1", "-W", "2", "192.168.64.2"])
        .expect("ping crosses the guarded link");
}
