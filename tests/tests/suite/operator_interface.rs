//! What an operator meets: flags from the environment, the interface choice, health
//! endpoints, mk-docker-opts, log format, and the service manager protocol.

use std::time::Duration;

use flannel_tests::{
    configs::{HOST_GW, READY},
    etcd::wait_for,
    metrics, require_root,
    testbed::{lease_key, Testbed},
};

#[test]
fn flags_come_from_flanneld_env_vars_when_not_on_the_command_line() {
    let bed = Testbed::configured(1, HOST_GW).unwrap();
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
fn mk_docker_opts_as_a_subcommand_and_under_its_own_name() {
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("subnet.env");
    std::fs::write(&env, "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n").unwrap();
    let link = dir.path().join("mk-docker-opts");
    std::os::unix::fs::symlink(flannel_tests::agent::flanneld(), &link).unwrap();
    let out = dir.path().join("docker");
    let (env_s, out_s) = (env.to_str().unwrap(), out.to_str().unwrap());
    let expected = "DOCKER_NETWORK_OPTIONS=\" --bip=10.1.74.1/24 --ip-masq=false --mtu=1472\"\n";
    let args = [
        "-f",
        env_s,
        "-d",
        out_s,
        "-c",
        "-k",
        "DOCKER_NETWORK_OPTIONS",
    ];
    for (program, subcommand) in [
        (flannel_tests::agent::flanneld(), &["mk-docker-opts"][..]),
        (link.as_path(), &[]),
    ] {
        let _ = std::fs::remove_file(&out);
        let status = std::process::Command::new(program)
            .args(subcommand)
            .args(args)
            .env_remove("DOCKER_NETWORK_OPTIONS")
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(std::fs::read_to_string(&out).unwrap(), expected);
    }
}

#[test]
fn chooses_the_interface_as_flannel_does() {
    let bed = Testbed::configured(1, HOST_GW).unwrap();
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
fn tells_systemd_ready_with_a_status_then_stopping() {
    let bed = Testbed::configured(1, HOST_GW).unwrap();
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
    let bed = Testbed::configured(1, HOST_GW).unwrap();
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
    let bed = Testbed::configured(1, HOST_GW).unwrap();
    let a = bed.ready_agent(0, &["--log-format=json"]).unwrap();
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
    let bed = Testbed::configured(1, HOST_GW).unwrap();
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
