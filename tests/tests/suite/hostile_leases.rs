//! Leases nobody should trust: each is skipped with its rule, counted, and never reaches a
//! map, while traffic between the real hosts and on one host goes on untouched.

use flannel_tests::{
    configs::{READY, VXLAN},
    etcd::wait_for,
    metrics, pins, require_root,
    testbed::{lease_key, Testbed},
};

fn vxlan(ip: &str, mac: &str, vni: u32) -> String {
    format!(
        r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VNI":{vni},"VtepMAC":"{mac}"}}}}"#
    )
}

/// `10.1.5.0/24` → `10.1.5.0/26`: a smaller subnet at the same address.
fn narrower(subnet: &str, len: u8) -> String {
    let net: ipnet::Ipv4Net = subnet.parse().unwrap();
    format!("{}/{len}", net.network())
}

#[test]
fn hostile_leases_are_rejected_counted_and_never_in_a_map() {
    require_root();
    let (bed, agents, containers) = Testbed::cluster(VXLAN, &[&[metrics::FLAG], &[]]).unwrap();
    let (pins_a, pins_b) = (bed.pin_dir(0), bed.pin_dir(1));
    let neighbour = bed.add_docker_container(0, &agents[0], 3).unwrap();
    let (a, b) = (agents[0].subnet().unwrap(), agents[1].subnet().unwrap());
    let host_a = Testbed::host_ip(0).to_string();
    let host_b = Testbed::host_ip(1).to_string();
    let good_mac = "0a:00:00:00:00:77";
    let peer = "192.168.64.77";
    let hostile: Vec<(String, String)> = vec![
        ("10.1.0.0/16".into(), vxlan(peer, good_mac, 1)),
        ("10.0.0.0/8".into(), vxlan(peer, good_mac, 1)),
        ("0.0.0.0/0".into(), vxlan(peer, good_mac, 1)),
        ("10.1.128.0/17".into(), vxlan(peer, good_mac, 1)),
        ("10.1.240.0/20".into(), vxlan(peer, good_mac, 1)),
        ("10.2.0.0/24".into(), vxlan(peer, good_mac, 1)),
        ("192.168.64.0/24".into(), vxlan(peer, good_mac, 1)),
        (narrower(&a, 25), vxlan(peer, good_mac, 1)),
        (narrower(&b, 26), vxlan(peer, good_mac, 1)),
        ("10.1.201.0/24".into(), vxlan("0.0.0.0", good_mac, 1)),
        ("10.1.202.0/24".into(), vxlan("127.0.0.1", good_mac, 1)),
        ("10.1.203.0/24".into(), vxlan("224.0.0.1", good_mac, 1)),
        (
            "10.1.204.0/24".into(),
            vxlan("255.255.255.255", good_mac, 1),
        ),
        ("10.1.205.0/24".into(), vxlan("10.1.9.9", good_mac, 1)),
        ("10.1.206.0/24".into(), vxlan(&host_a, good_mac, 1)),
        ("10.1.207.0/24".into(), vxlan(&host_b, good_mac, 1)),
        ("10.1.208.0/24".into(), vxlan(peer, "ff:ff:ff:ff:ff:ff", 1)),
        ("10.1.209.0/24".into(), vxlan(peer, "01:00:5e:00:00:01", 1)),
        ("10.1.210.0/24".into(), vxlan(peer, "00:00:00:00:00:00", 1)),
        ("10.1.211.0/24".into(), vxlan(peer, good_mac, 1 << 24)),
        ("10.1.212.0/24".into(), vxlan("192.168.64.78", good_mac, 1)),
    ];
    // An older, sound lease holds 192.168.64.78: the last hostile lease's PublicIP is taken.
    bed.etcd
        .put(
            &lease_key("10.1.213.0/24"),
            &vxlan("192.168.64.78", "0a:00:00:00:00:78", 1),
        )
        .unwrap();
    wait_for("the sound lease", READY, || {
        pins::has_route(&pins_a, "10.1.213.0/24") && pins::has_route(&pins_b, "10.1.213.0/24")
    })
    .unwrap();
    let rejected = || -> u64 {
        let text = metrics::scrape(&bed.hosts[0]).unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with("flannel_leases_rejected_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };

    let mut lost_on_host = 0;
    let lost_across = containers[0]
        .pings_lost_while(containers[1].ip, 300, || {
            lost_on_host = neighbour
                .pings_lost_while(containers[0].ip, 300, || {
                    for (subnet, value) in &hostile {
                        bed.etcd.put(&lease_key(subnet), value).unwrap();
                    }
                    wait_for("every rejection counted", READY, || {
                        rejected() == hostile.len() as u64
                    })
                    .unwrap();
                })
                .unwrap();
        })
        .unwrap();
    assert_eq!(lost_across, 0, "pings lost between the hosts");
    assert_eq!(lost_on_host, 0, "pings lost between containers on one host");
    for (pins, other) in [(&pins_a, &b), (&pins_b, &a)] {
        let mut routes = pins::route_subnets(pins);
        routes.sort();
        let mut wanted = vec![other.clone(), "10.1.213.0/24".to_owned()];
        wanted.sort();
        assert_eq!(routes, wanted, "only the sound leases are routed");
    }
    let text = metrics::scrape(&bed.hosts[0]).unwrap();
    for reason in [
        "wider_than_subnet_len",
        "outside_network",
        "bad_vtep_mac",
        "public_ip_taken",
    ] {
        assert!(text.contains(&format!("reason=\"{reason}\"")), "{text}");
    }
}
