//! flannel's host-gw backend end to end: routes via the peers, kept against changes by hand.

use flannel_tests::{
    configs::{HOST_GW, READY},
    etcd::wait_for,
    testbed::{lease_key, Testbed},
};

#[test]
fn containers_on_three_hosts_reach_each_other_over_host_gw() {
    let bed = Testbed::configured(3, HOST_GW).unwrap();
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
fn host_gw_restores_a_route_deleted_by_hand() {
    let bed = Testbed::configured(2, HOST_GW).unwrap();
    let mut a = bed.agent(0, &["--iptables-resync=1"]).unwrap();
    let mut b = bed.agent(1, &[]).unwrap();
    a.wait_ready(READY).unwrap();
    b.wait_ready(READY).unwrap();
    let peer = b.subnet().unwrap();
    let routes = || bed.hosts[0].ip(&["route"]).unwrap();
    wait_for("the route to the peer", READY, || routes().contains(&peer)).unwrap();
    // (The agent may put it back at once: the deletion itself is what `ip` confirms.)
    bed.hosts[0].ip(&["route", "del", &peer]).unwrap();
    wait_for("the route to come back", READY, || {
        routes().contains(&format!("{peer} via 192.168.64.11 dev eth0"))
    })
    .unwrap();
}
