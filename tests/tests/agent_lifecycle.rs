//! flanneld against a real etcd, on hosts in network namespaces: leases, subnet.env, routes,
//! restarts, readiness.

use std::time::Duration;

use flannel_tests::{
    etcd::wait_for,
    require_root,
    testbed::{Testbed, PREFIX},
};

const HOST_GW: &str = r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "host-gw"}}"#;
const READY: Duration = Duration::from_secs(20);

fn lease_key(subnet: &str) -> String {
    format!("{PREFIX}/subnets/{}", subnet.replace('/', "-"))
}

#[test]
fn agents_lease_distinct_subnets_and_write_flannels_files() {
    require_root();
    let bed = Testbed::new(2).unwrap();
    bed.put_config(HOST_GW).unwrap();
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
fn containers_on_three_hosts_reach_each_other_over_host_gw() {
    require_root();
    let bed = Testbed::new(3).unwrap();
    bed.put_config(HOST_GW).unwrap();
    let mut agents: Vec<_> = (0..3).map(|i| bed.agent(i, &[]).unwrap()).collect();
    let mut containers = Vec::new();
    for (i, agent) in agents.iter_mut().enumerate() {
        agent.wait_ready(READY).unwrap();
        containers.push(bed.add_container(i, &agent.subnet().unwrap(), 2).unwrap());
    }
    for from in &containers {
        for to in &containers {
            wait_for(&format!("{} to reach {}", from.ip, to.ip), READY, || {
                from.ping(to.ip).is_ok()
            })
            .unwrap();
        }
    }
    // A peer removed from etcd loses its route on the others.
    let gone = agents[2].subnet().unwrap();
    drop(agents.pop());
    bed.etcd.etcdctl(&["del", &lease_key(&gone)]).unwrap();
    wait_for("the route to be removed", READY, || {
        !bed.hosts[0].ip(&["route", "show"]).unwrap().contains(&gone)
    })
    .unwrap();
}

#[test]
fn sigterm_leaves_everything_and_a_restart_keeps_the_subnet() {
    require_root();
    let bed = Testbed::new(2).unwrap();
    bed.put_config(HOST_GW).unwrap();
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
    require_root();
    let bed = Testbed::new(1).unwrap();
    bed.put_config(HOST_GW).unwrap();
    let mut a = bed.agent(0, &[]).unwrap();
    a.wait_ready(READY).unwrap();
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
    bed.put_config(HOST_GW).unwrap();
    a.wait_ready(READY).unwrap();
}

#[test]
fn a_deleted_lease_is_reacquired_with_the_same_subnet() {
    require_root();
    let bed = Testbed::new(1).unwrap();
    bed.put_config(HOST_GW).unwrap();
    let mut a = bed.agent(0, &[]).unwrap();
    a.wait_ready(READY).unwrap();
    let key = lease_key(&a.subnet().unwrap());
    bed.etcd.etcdctl(&["del", &key]).unwrap();
    wait_for("the lease to come back", READY, || {
        bed.etcd.get(&key).unwrap().is_some()
    })
    .unwrap();
    assert_ne!(bed.etcd.lease_of(&key).unwrap(), 0);
    assert!(a.log().contains("our lease was deleted or expired"));
}
