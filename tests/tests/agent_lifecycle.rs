//! flanneld against a real etcd, on hosts in network namespaces: leases, subnet.env, routes,
//! restarts, readiness.

use std::time::Duration;

use flannel_tests::{
    etcd::wait_for,
    metrics, require_root,
    testbed::{lease_key, Testbed, PREFIX},
};

const HOST_GW: &str = r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "host-gw"}}"#;
const READY: Duration = Duration::from_secs(20);

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
    assert!(bed
        .etcd
        .keys(&format!("{PREFIX}/subnets/"))
        .unwrap()
        .is_empty());
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

#[test]
fn keeps_its_lease_and_peers_across_an_etcd_restart() {
    require_root();
    let mut bed = Testbed::new(3).unwrap();
    bed.put_config(HOST_GW).unwrap();
    let mut a = bed.agent(0, &[]).unwrap();
    a.wait_ready(READY).unwrap();
    let subnet = a.subnet().unwrap();
    bed.etcd.stop();
    bed.etcd.resume().unwrap();
    // A host that joins after the restart reaches a's routes: the watch resumed.
    let mut b = bed.agent(1, &[]).unwrap();
    b.wait_ready(READY).unwrap();
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
    require_root();
    let mut bed = Testbed::new(1).unwrap();
    bed.put_config(HOST_GW).unwrap();
    let mut a = bed.agent(0, &["--iptables-resync=1"]).unwrap();
    a.wait_ready(READY).unwrap();
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
    require_root();
    let mut bed = Testbed::new(1).unwrap();
    bed.put_config(HOST_GW).unwrap();
    let mut a = bed.agent(0, &[]).unwrap();
    a.wait_ready(READY).unwrap();
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
fn garbage_under_subnets_is_skipped_with_a_warning() {
    require_root();
    let bed = Testbed::new(1).unwrap();
    bed.put_config(HOST_GW).unwrap();
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
    let mut a = bed.agent(0, &[]).unwrap();
    a.wait_ready(READY).unwrap();
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
    require_root();
    let bed = Testbed::new(1).unwrap();
    bed.put_config(HOST_GW).unwrap();
    let key = lease_key("10.1.5.0/24");
    bed.etcd
        .put(
            &key,
            r#"{"PublicIP":"192.168.64.10","PublicIPv6":null,"BackendType":"host-gw"}"#,
        )
        .unwrap();
    let mut a = bed.agent(0, &[]).unwrap();
    a.wait_ready(READY).unwrap();
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
fn flags_come_from_flanneld_env_vars_when_not_on_the_command_line() {
    require_root();
    let bed = Testbed::new(1).unwrap();
    bed.put_config(HOST_GW).unwrap();
    // FLANNELD_IP_MASQ applies; FLANNELD_IFACE loses to the --iface=eth0 the testbed passes.
    let mut a = flannel_tests::agent::Agent::spawn_with_env(
        &bed.hosts[0],
        &[
            &format!("-etcd-endpoints={}", bed.etcd.endpoint()),
            "--iface=eth0",
        ],
        &[
            ("FLANNELD_IP_MASQ", "true"),
            ("FLANNELD_IFACE", "no-such-iface"),
        ],
    )
    .unwrap();
    a.wait_ready(READY).unwrap();
    let env = std::fs::read_to_string(a.subnet_file()).unwrap();
    assert!(env.ends_with("FLANNEL_IPMASQ=true\n"), "{env}");
}

#[test]
fn healthz_and_readyz() {
    require_root();
    let bed = Testbed::new(1).unwrap();
    let mut a = bed
        .agent(0, &[metrics::FLAG, "--healthz-ip=127.0.0.1"])
        .unwrap();
    let get = |path: &str| {
        bed.hosts[0]
            .exec(
                "curl",
                &[
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &format!("http://127.0.0.1:{}{path}", metrics::PORT),
                ],
            )
            .unwrap_or_default()
    };
    let metrics = || metrics::scrape(&bed.hosts[0]).unwrap_or_default();
    wait_for("/healthz", READY, || get("/healthz") == "200").unwrap();
    assert_eq!(get("/readyz"), "503", "no config, no lease: not ready");
    assert!(metrics().contains("\nflannel_ready 0\n"), "{}", metrics());
    bed.put_config(HOST_GW).unwrap();
    a.wait_ready(READY).unwrap();
    assert_eq!(get("/readyz"), "200");
    let text = metrics();
    assert!(text.contains("\nflannel_ready 1\n"), "{text}");
    assert!(text.contains("flannel_datapath_errors_total 0"), "{text}");
}

#[test]
fn renews_its_lease_at_the_margin() {
    require_root();
    let bed = Testbed::new(1).unwrap();
    bed.put_config(HOST_GW).unwrap();
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

#[test]
fn a_dead_etcd_endpoint_in_the_list_is_skipped() {
    require_root();
    let bed = Testbed::new(1).unwrap();
    bed.put_config(HOST_GW).unwrap();
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
fn mk_docker_opts_as_a_subcommand_and_under_its_own_name() {
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("subnet.env");
    std::fs::write(&env, "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n").unwrap();
    let link = dir.path().join("mk-docker-opts");
    std::os::unix::fs::symlink(flannel_tests::agent::flanneld(), &link).unwrap();
    let out = dir.path().join("docker");
    let (env_s, out_s) = (env.to_str().unwrap(), out.to_str().unwrap());
    let expected = "DOCKER_NETWORK_OPTIONS=\" --bip=10.1.74.1/24 --ip-masq=false --mtu=1472\"\n";
    for (program, args) in [
        (
            flannel_tests::agent::flanneld(),
            vec![
                "mk-docker-opts",
                "-f",
                env_s,
                "-d",
                out_s,
                "-c",
                "-k",
                "DOCKER_NETWORK_OPTIONS",
            ],
        ),
        (
            link.as_path(),
            vec![
                "-f",
                env_s,
                "-d",
                out_s,
                "-c",
                "-k",
                "DOCKER_NETWORK_OPTIONS",
            ],
        ),
    ] {
        let _ = std::fs::remove_file(&out);
        let status = std::process::Command::new(program)
            .args(&args)
            .env_remove("DOCKER_NETWORK_OPTIONS")
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(std::fs::read_to_string(&out).unwrap(), expected);
    }
}

#[test]
fn chooses_the_interface_as_flannel_does() {
    require_root();
    let bed = Testbed::new(1).unwrap();
    bed.put_config(HOST_GW).unwrap();
    // A second interface (a veth standing in for a dummy), so that the choice matters.
    let host = &bed.hosts[0];
    host.ip(&[
        "link", "add", "second", "type", "veth", "peer", "name", "second-p",
    ])
    .unwrap();
    host.ip(&["addr", "add", "172.16.9.1/24", "dev", "second"])
        .unwrap();
    host.ip(&["link", "set", "second", "up"]).unwrap();
    let endpoints = format!("--etcd-endpoints={}", bed.etcd.endpoint());
    for (flags, public_ip) in [
        (&[][..], "192.168.64.10"),
        (&["--iface=second"], "172.16.9.1"),
        (&["--iface=172.16.9.1"], "172.16.9.1"),
        (&["--iface=no-such-iface", "--iface=eth0"], "192.168.64.10"),
        (&["--iface-regex=^sec"], "172.16.9.1"),
        (&[r"--iface-regex=^172\.16\."], "172.16.9.1"),
        (&["--iface-can-reach=172.16.9.77"], "172.16.9.1"),
        (
            &["--iface=eth0", "--public-ip=192.168.64.10"],
            "192.168.64.10",
        ),
    ] {
        let mut args = vec![endpoints.as_str()];
        args.extend_from_slice(flags);
        let mut agent = flannel_tests::agent::Agent::spawn(host, &args).unwrap();
        agent.wait_ready(READY).unwrap();
        let value = bed
            .etcd
            .get(&lease_key(&agent.subnet().unwrap()))
            .unwrap()
            .unwrap();
        assert!(
            value.contains(&format!(r#""PublicIP":"{public_ip}""#)),
            "{flags:?}: {value}"
        );
        agent.terminate().unwrap();
    }
    let mut refused = flannel_tests::agent::Agent::spawn(
        host,
        &[&endpoints, "--iface=eth0", "--public-ip=10.9.9.9"],
    )
    .unwrap();
    assert!(!refused.wait_exit(READY).unwrap().success());
    assert!(
        refused
            .log()
            .contains("host-gw: the public IP 10.9.9.9 is not an address of eth0"),
        "{}",
        refused.log()
    );
}

#[test]
fn host_gw_restores_a_route_deleted_by_hand() {
    require_root();
    let bed = Testbed::new(2).unwrap();
    bed.put_config(HOST_GW).unwrap();
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

#[test]
fn tells_systemd_ready_with_a_status_then_stopping() {
    require_root();
    let bed = Testbed::new(1).unwrap();
    bed.put_config(HOST_GW).unwrap();
    let mut a = bed.agent(0, &[]).unwrap();
    let ready = a.wait_notify("READY=1", READY).unwrap();
    assert!(a.subnet_file().exists(), "READY=1 comes after subnet.env");
    let status = format!(
        "STATUS=subnet {}, 0 peers, datapath host-gw routes",
        a.subnet().unwrap()
    );
    assert!(ready.lines().any(|l| l == status), "{ready}");
    assert!(a.terminate().unwrap().success());
    a.wait_notify("STOPPING=1", READY).unwrap();
}

#[test]
fn pings_the_systemd_watchdog() {
    require_root();
    let bed = Testbed::new(1).unwrap();
    bed.put_config(HOST_GW).unwrap();
    let mut a = bed
        .agent_with_env(0, &[], &[("WATCHDOG_USEC", "200000")])
        .unwrap();
    a.wait_ready(READY).unwrap();
    for _ in 0..3 {
        a.wait_notify("WATCHDOG=1", Duration::from_secs(2)).unwrap();
    }
}

#[test]
fn logs_json_lines_on_request() {
    require_root();
    let bed = Testbed::new(1).unwrap();
    bed.put_config(HOST_GW).unwrap();
    let mut a = bed.agent(0, &["--log-format=json"]).unwrap();
    a.wait_ready(READY).unwrap();
    let log = a.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["fields"]["message"] == "ready"),
        "{log}"
    );
}

#[test]
fn a_service_manager_that_stops_reading_never_blocks_the_agent() {
    require_root();
    let bed = Testbed::new(1).unwrap();
    bed.put_config(HOST_GW).unwrap();
    // Watchdog pings every 10 ms into a socket nobody reads any more.
    let mut a = bed
        .agent_with_env(0, &[], &[("WATCHDOG_USEC", "20000")])
        .unwrap();
    a.wait_ready(READY).unwrap();
    // Time for hundreds of pings, far more than a datagram socket queues.
    std::thread::sleep(Duration::from_secs(2));
    let status = a.terminate().expect("the agent still answers SIGTERM");
    assert!(status.success());
}
