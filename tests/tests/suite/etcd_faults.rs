//! etcd as it fails: absent at start, a bad config, restarts and long outages, a compacted
//! watch, a dead endpoint in the list. The agent waits, keeps what it has, and converges.

use std::{net::Ipv4Addr, time::Duration};

use flannel_tests::{
    configs::{HOST_GW, READY, VXLAN},
    etcd::wait_for,
    metrics, pins, require_root,
    testbed::{lease_key, Testbed},
};

#[test]
fn waits_for_etcd_and_the_config_then_proceeds() {
    require_root();
    let mut bed = Testbed::new(1).unwrap();
    bed.etcd.stop();
    let mut a = bed.agent(0, &[]).unwrap();
    wait_for("a log line about etcd", READY, || {
        a.log().contains("etcd is not reachable")
    })
    .unwrap();
    bed.etcd.resume().unwrap();
    wait_for("a hint about the missing config", READY, || {
        a.log()
            .contains("no network config at /coreos.com/network/config")
            && a.log().contains("ETCDCTL_API=3 etcdctl put")
    })
    .unwrap();
    bed.put_config(HOST_GW).unwrap();
    a.wait_ready(READY).unwrap();
}

#[test]
fn an_invalid_config_is_reported_and_a_fixed_one_is_taken() {
    require_root();
    let bed = Testbed::new(1).unwrap();
    bed.put_config(r#"{"Network": "10.1.0.0/16", "SubnetLen": 31}"#)
        .unwrap();
    let mut a = bed.agent(0, &[]).unwrap();
    wait_for("the refusal in the log", READY, || {
        a.log().contains("SubnetLen: 31 is larger than 30")
    })
    .unwrap();
    // A valid dual-stack config for a backend that carries IPv4 only: said so, no lease.
    bed.put_config(
        r#"{"Network": "10.1.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/48", "Backend": {"Type": "udp"}}"#,
    )
    .unwrap();
    wait_for("the IPv6 refusal in the log", READY, || {
        a.log().contains(
            "EnableIPv6: the udp backend carries IPv4 only, as flannel's; use vxlan or host-gw \
             for a dual-stack or IPv6-only network",
        )
    })
    .unwrap();
    assert!(bed.lease_keys().unwrap().is_empty());
    bed.put_config(HOST_GW).unwrap();
    a.wait_ready(READY).unwrap();
}

#[test]
fn keeps_its_lease_and_peers_across_an_etcd_restart() {
    let mut bed = Testbed::configured(3, HOST_GW).unwrap();
    let a = bed.ready_agent(0, &[]).unwrap();
    let subnet = a.subnet().unwrap();
    bed.etcd.stop();
    bed.etcd.resume().unwrap();
    // A host that joins after the restart reaches a's routes: the watch resumed.
    let b = bed.ready_agent(1, &[]).unwrap();
    let b_subnet = b.subnet().unwrap();
    wait_for("a's route to the new peer", READY, || {
        bed.hosts[0].ip(&["route"]).unwrap().contains(&b_subnet)
    })
    .unwrap();
    assert_eq!(a.subnet().unwrap(), subnet);
    assert!(bed.etcd.get(&lease_key(&subnet)).unwrap().is_some());
}

/// etcd gone for longer than the watch's retry interval and the resync period: a lease put
/// after it is back still reaches the agent within 5 s (the loop's resync once kept
/// restarting the reconnect wait, so the agent never followed leases again).
#[test]
fn follows_leases_put_after_a_long_etcd_outage() {
    let mut bed = Testbed::configured(1, HOST_GW).unwrap();
    let _a = bed.ready_agent(0, &["--iptables-resync=1"]).unwrap();
    bed.etcd.stop();
    // The fault under test is the outage's length: backoff grows past the resync period.
    std::thread::sleep(Duration::from_secs(8));
    bed.etcd.resume().unwrap();
    let value = r#"{"PublicIP":"192.168.64.200","PublicIPv6":null,"BackendType":"host-gw"}"#;
    bed.etcd.put(&lease_key("10.1.200.0/24"), value).unwrap();
    wait_for("the new peer's route", Duration::from_secs(5), || {
        bed.hosts[0]
            .ip(&["route"])
            .unwrap()
            .contains("10.1.200.0/24")
    })
    .unwrap();
}

#[test]
fn a_watch_behind_a_compaction_relists_its_peers() {
    let mut bed = Testbed::configured(1, HOST_GW).unwrap();
    let a = bed.ready_agent(0, &[]).unwrap();
    let value =
        |ip: &str| format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"host-gw"}}"#);
    bed.etcd
        .put(&lease_key("10.1.200.0/24"), &value("192.168.64.200"))
        .unwrap();
    wait_for("the first peer's route", READY, || {
        bed.hosts[0]
            .ip(&["route"])
            .unwrap()
            .contains("10.1.200.0/24")
    })
    .unwrap();

    // Freeze the agent, and while it can't follow: restart etcd, change the leases, compact.
    let pid = a.pid().unwrap().to_string();
    flannel_tests::netns::run("kill", &["-STOP", &pid]).unwrap();
    bed.etcd.stop();
    bed.etcd.resume().unwrap();
    bed.etcd
        .etcdctl(&["del", &lease_key("10.1.200.0/24")])
        .unwrap();
    bed.etcd
        .put(&lease_key("10.1.201.0/24"), &value("192.168.64.201"))
        .unwrap();
    let revision = bed.etcd.revision().unwrap();
    bed.etcd
        .etcdctl(&["compact", &revision.to_string()])
        .unwrap();
    flannel_tests::netns::run("kill", &["-CONT", &pid]).unwrap();

    wait_for("the re-listed peers' routes", READY, || {
        let routes = bed.hosts[0].ip(&["route"]).unwrap();
        routes.contains("10.1.201.0/24") && !routes.contains("10.1.200.0/24")
    })
    .unwrap();
    assert!(a.log().contains("re-listing leases"), "{}", a.log());
}

#[test]
fn a_dead_etcd_endpoint_in_the_list_is_skipped() {
    let bed = Testbed::configured(1, HOST_GW).unwrap();
    let endpoints = format!(
        "--etcd-endpoints=http://192.168.64.1:1,{}",
        bed.etcd.endpoint()
    );
    let mut a =
        flannel_tests::agent::Agent::spawn(&bed.hosts[0], &[&endpoints, "--iface=eth0"]).unwrap();
    // One failed call moves the agent to the live endpoint for good (retries are 1 s apart);
    // a balancer that keeps trying the dead one would miss this deadline now and then.
    a.wait_ready(Duration::from_secs(6)).unwrap();
    assert!(a.log().contains("moving to the next etcd endpoint"));
}

#[test]
fn etcd_outages_of_2_s_30_s_and_two_in_a_row_lose_no_ping_and_no_lease() {
    require_root();
    let (mut bed, _agents, containers) = Testbed::cluster(VXLAN, &[&[metrics::FLAG], &[]]).unwrap();
    let (pins_a, pins_b) = (bed.pin_dir(0), bed.pin_dir(1));
    let mut next = 200;
    let lost = containers[0]
        .pings_lost_while(containers[1].ip, 5000, || {
            for seconds in [2, 30, 2] {
                bed.etcd.stop();
                // The fault under test is the outage's length.
                std::thread::sleep(Duration::from_secs(seconds));
                bed.etcd.resume().unwrap();
                let subnet = format!("10.1.{next}.0/24");
                next += 1;
                let value = format!(
                    r#"{{"PublicIP":"{}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0a:00:00:00:00:{next:02x}"}}}}"#,
                    Ipv4Addr::new(192, 168, 64, next as u8)
                );
                bed.etcd.put(&lease_key(&subnet), &value).unwrap();
                wait_for("the lease in both agents' maps", Duration::from_secs(5), || {
                    pins::has_route(&pins_a, &subnet) && pins::has_route(&pins_b, &subnet)
                })
                .unwrap();
            }
        })
        .unwrap();
    assert_eq!(lost, 0, "pings lost through the outages");
    let outages = metrics::read(&bed.hosts[0], "flannel_etcd_outages_total");
    assert_eq!(outages.unwrap(), 3.0);
}
