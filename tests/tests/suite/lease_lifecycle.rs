//! The agent's own lease from start to stop: distinct subnets and flannel's files, restarts
//! that keep the subnet, a lease deleted or reserved, renewal, a full network, garbage keys.

use flannel_tests::{
    configs::{HOST_GW, READY},
    etcd::wait_for,
    require_root,
    testbed::{lease_key, Testbed, PREFIX},
};

#[test]
fn agents_lease_distinct_subnets_and_write_flannels_files() {
    let bed = Testbed::configured(2, HOST_GW).unwrap();
    let mut a = bed.agent(0, &[]).unwrap();
    let mut b = bed.agent(1, &[]).unwrap();
    a.wait_ready(READY).unwrap();
    b.wait_ready(READY).unwrap();
    let (sa, sb) = (a.subnet().unwrap(), b.subnet().unwrap());
    assert_ne!(sa, sb);

    let env = std::fs::read_to_string(a.subnet_file()).unwrap();
    let first = sa.replace(".0/24", ".1/24");
    assert_eq!(
        env,
        format!("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET={first}\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n")
    );
    let value = bed
        .etcd
        .get(&lease_key(&sa))
        .unwrap()
        .expect("lease in etcd");
    assert_eq!(
        value,
        r#"{"PublicIP":"192.168.64.10","PublicIPv6":null,"BackendType":"host-gw"}"#
    );
    assert_ne!(
        bed.etcd.lease_of(&lease_key(&sa)).unwrap(),
        0,
        "leases carry a TTL"
    );
}

#[test]
fn sigterm_leaves_everything_and_a_restart_keeps_the_subnet() {
    let bed = Testbed::configured(2, HOST_GW).unwrap();
    let mut a = bed.agent(0, &[]).unwrap();
    let mut b = bed.agent(1, &[]).unwrap();
    a.wait_ready(READY).unwrap();
    b.wait_ready(READY).unwrap();
    let subnet = a.subnet().unwrap();
    let peer_subnet = b.subnet().unwrap();
    wait_for("a's route to b", READY, || {
        bed.hosts[0].ip(&["route"]).unwrap().contains(&peer_subnet)
    })
    .unwrap();
    let before = std::fs::read_to_string(a.subnet_file()).unwrap();

    assert!(a.terminate().unwrap().success(), "SIGTERM exits 0");
    assert_eq!(std::fs::read_to_string(a.subnet_file()).unwrap(), before);
    assert!(
        bed.etcd.get(&lease_key(&subnet)).unwrap().is_some(),
        "the lease stays"
    );
    assert!(
        bed.hosts[0].ip(&["route"]).unwrap().contains(&peer_subnet),
        "routes stay"
    );

    a.restart().unwrap();
    a.wait_ready(READY).unwrap();
    assert_eq!(a.subnet().unwrap(), subnet);
}

#[test]
fn a_restart_with_the_subnet_file_but_no_lease_takes_the_old_subnet_back() {
    let bed = Testbed::configured(1, HOST_GW).unwrap();
    let mut a = bed.ready_agent(0, &[]).unwrap();
    let subnet = a.subnet().unwrap();
    a.terminate().unwrap();
    bed.etcd.etcdctl(&["del", &lease_key(&subnet)]).unwrap();
    a.restart().unwrap();
    a.wait_ready(READY).unwrap();
    assert_eq!(
        a.subnet().unwrap(),
        subnet,
        "the old subnet file's subnet, being free"
    );
}

#[test]
fn a_deleted_lease_is_reacquired_with_the_same_subnet() {
    let bed = Testbed::configured(1, HOST_GW).unwrap();
    let a = bed.ready_agent(0, &[]).unwrap();
    let key = lease_key(&a.subnet().unwrap());
    bed.etcd.etcdctl(&["del", &key]).unwrap();
    wait_for("the lease to come back", READY, || {
        bed.etcd.get(&key).unwrap().is_some()
    })
    .unwrap();
    assert_ne!(bed.etcd.lease_of(&key).unwrap(), 0);
    assert!(a.log().contains("our lease was deleted or expired"));
}

#[test]
fn garbage_under_subnets_is_skipped_with_a_warning() {
    let bed = Testbed::configured(1, HOST_GW).unwrap();
    bed.etcd
        .put(&format!("{PREFIX}/subnets/junk"), "x")
        .unwrap();
    bed.etcd
        .put(&lease_key("10.1.77.0/24"), "not json")
        .unwrap();
    bed.etcd
        .put(
            &lease_key("10.1.78.0/24"),
            r#"{"PublicIP":"192.168.64.78","BackendType":"host-gw"}"#,
        )
        .unwrap();
    let a = bed.ready_agent(0, &[]).unwrap();
    wait_for("the good peer's route", READY, || {
        bed.hosts[0]
            .ip(&["route"])
            .unwrap()
            .contains("10.1.78.0/24")
    })
    .unwrap();
    let log = a.log();
    assert!(
        log.contains("key=/coreos.com/network/subnets/junk"),
        "{log}"
    );
    assert!(
        log.contains("key=/coreos.com/network/subnets/10.1.77.0-24"),
        "{log}"
    );
    assert!(!bed.hosts[0].ip(&["route"]).unwrap().contains("10.1.77.0"));
    assert_ne!(
        a.subnet().unwrap(),
        "10.1.77.0/24",
        "a garbage lease still holds its subnet"
    );
}

#[test]
fn a_full_network_says_out_of_subnets() {
    require_root();
    let bed = Testbed::new(1).unwrap();
    // 10.1.0.0/24 in /26s: SubnetMin .64 to SubnetMax .192, three subnets.
    bed.put_config(
        r#"{"Network": "10.1.0.0/24", "SubnetLen": 26, "Backend": {"Type": "host-gw"}}"#,
    )
    .unwrap();
    for (subnet, ip) in [
        ("10.1.0.64/26", 1),
        ("10.1.0.128/26", 2),
        ("10.1.0.192/26", 3),
    ] {
        let value = format!(
            r#"{{"PublicIP":"192.168.99.{ip}","PublicIPv6":null,"BackendType":"host-gw"}}"#
        );
        bed.etcd.put(&lease_key(subnet), &value).unwrap();
    }
    let mut a = bed.agent(0, &[]).unwrap();
    let status = a.wait_exit(READY).unwrap();
    assert!(!status.success());
    assert!(
        a.log().contains(
            "out of subnets: every /26 between 10.1.0.64 and 10.1.0.192 of 10.1.0.0/24 is leased"
        ),
        "{}",
        a.log()
    );
}

#[test]
fn a_reservation_is_honoured_and_never_gets_a_ttl() {
    let bed = Testbed::configured(1, HOST_GW).unwrap();
    let key = lease_key("10.1.5.0/24");
    bed.etcd
        .put(
            &key,
            r#"{"PublicIP":"192.168.64.10","PublicIPv6":null,"BackendType":"host-gw"}"#,
        )
        .unwrap();
    let mut a = bed.ready_agent(0, &[]).unwrap();
    assert_eq!(a.subnet().unwrap(), "10.1.5.0/24");
    assert_eq!(
        bed.etcd.lease_of(&key).unwrap(),
        0,
        "the reservation has no TTL"
    );
    a.restart().unwrap();
    a.wait_ready(READY).unwrap();
    assert_eq!(bed.etcd.lease_of(&key).unwrap(), 0);
}

#[test]
fn renews_its_lease_at_the_margin() {
    let bed = Testbed::configured(1, HOST_GW).unwrap();
    // A 62 s TTL renewed 1 minute before it runs out: every 2 s.
    let mut a = bed
        .agent(
            0,
            &["--subnet-lease-ttl=62", "--subnet-lease-renew-margin=1"],
        )
        .unwrap();
    a.wait_ready(READY).unwrap();
    let key = lease_key(&a.subnet().unwrap());
    let mut seen = Vec::new();
    let mut record = || {
        let now = bed.etcd.lease_of(&key).unwrap();
        assert_ne!(now, 0, "the key never loses its lease");
        if !seen.contains(&now) {
            seen.push(now);
        }
    };
    wait_for("two renewals", READY, || {
        record();
        a.log().matches("lease renewed").count() >= 2
    })
    .unwrap();
    record();
    assert!(
        seen.len() >= 3,
        "each renewal attaches a fresh etcd lease: {seen:?}"
    );
}
