//! flannel's rules on a host: the iptables chains (`--ip-masq`, `--iptables-forward-rules`),
//! exact and written atomically; the nftables tables (`EnableNFTables`), on a host without
//! `iptables`; switching between them; `--ip-masq-fully-random-disable`;
//! `--ip-blackhole-route`.

use std::net::IpAddr;

use flannel_tests::{
    agent::Agent,
    configs::{HOST_GW, READY},
    etcd::wait_for,
    netns::Netns,
    require_root,
    testbed::{Container, Testbed},
};

#[test]
fn ip_masq_and_forward_rules_are_flannels_and_come_back() {
    let bed = Testbed::configured(1, HOST_GW).unwrap();
    let mut a = bed
        .ready_agent(0, &["-ip-masq", "--iptables-resync=1"])
        .unwrap();
    let s = a.subnet().unwrap();
    let n = "10.1.0.0/16";
    let masq_rules = || -> Vec<String> {
        let nat = bed.hosts[0].exec("iptables-save", &["-t", "nat"]).unwrap();
        nat.lines()
            .filter(|l| l.contains("flanneld masq"))
            .map(str::to_owned)
            .collect()
    };
    let masq = masq_rules();
    assert_eq!(
        masq,
        [
            r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#.to_owned(),
            r#"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN"#.to_owned(),
            format!(r#"-A FLANNEL-POSTRTG -s {s} -d {n} -m comment --comment "flanneld masq" -j RETURN"#),
            format!(r#"-A FLANNEL-POSTRTG -s {n} -d {s} -m comment --comment "flanneld masq" -j RETURN"#),
            format!(r#"-A FLANNEL-POSTRTG ! -s {n} -d {s} -m comment --comment "flanneld masq" -j RETURN"#),
            format!(r#"-A FLANNEL-POSTRTG -s {n} ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#),
            format!(r#"-A FLANNEL-POSTRTG ! -s {n} -d {n} -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#),
        ]
    );
    let filter = bed.hosts[0]
        .exec("iptables-save", &["-t", "filter"])
        .unwrap();
    let forward: Vec<&str> = filter
        .lines()
        .filter(|l| l.contains("flanneld forward"))
        .collect();
    assert_eq!(
        forward,
        [
            r#"-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#,
            r#"-A FLANNEL-FWD -s 10.1.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
            r#"-A FLANNEL-FWD -d 10.1.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
        ]
    );
    // A rule deleted by hand is back, in its place, within the resync period.
    bed.hosts[0]
        .exec(
            "iptables",
            &[
                "-t",
                "nat",
                "-D",
                "FLANNEL-POSTRTG",
                "-s",
                &s,
                "-d",
                n,
                "-m",
                "comment",
                "--comment",
                "flanneld masq",
                "-j",
                "RETURN",
            ],
        )
        .unwrap();
    assert_eq!(masq_rules().len(), 6);
    // The chain is rewritten in one transaction: never seen empty or half written.
    let mut seen = Vec::new();
    wait_for("the rule to come back", READY, || {
        let rules = masq_rules();
        seen.push(rules.len());
        rules == masq
    })
    .unwrap();
    assert!(
        seen.iter().all(|n| *n == 6 || *n == 7),
        "rule counts seen: {seen:?}"
    );
    // The rewrite is logged once its last command is done (the rule may be back before).
    let rewrites = || a.log().matches("firewall rules (re)written").count();
    wait_for("the rewrite to be logged", READY, || rewrites() == 2).unwrap();
    // And the rules stay when the agent exits.
    a.terminate().unwrap();
    assert_eq!(masq_rules(), masq);
    let rewrites = a.log().matches("firewall rules (re)written").count();
    assert_eq!(
        rewrites,
        2,
        "written at start and after the deletion only:\n{}",
        a.log()
    );

    // --ip-masq-fully-random-disable: MASQUERADE without --random-fully, as flannel's.
    let flags = [
        "-ip-masq",
        "--iptables-resync=1",
        "--ip-masq-fully-random-disable",
    ];
    let mut plain = bed.agent(0, &flags).unwrap();
    plain.wait_ready(READY).unwrap();
    let without: Vec<String> = masq
        .iter()
        .map(|r| r.replace(" --random-fully", ""))
        .collect();
    assert_eq!(masq_rules(), without);
}

/// A PATH holding `ip` alone: a host without `iptables`, `ip6tables` or `nft`.
fn path_without_iptables() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/usr/sbin/ip", dir.path().join("ip")).unwrap();
    let path = dir.path().display().to_string();
    (dir, path)
}

/// Our nftables table of a family on `host`, as nft lists it ("" when there is none).
fn nft_table(host: &Netns, family: &str) -> String {
    let name = if family == "ip" {
        "flannel-ipv4"
    } else {
        "flannel-ipv6"
    };
    host.exec("nft", &["list", "table", family, name])
        .unwrap_or_default()
}

/// `EnableNFTables` on a host without `iptables`: flannel's rules, with their iptables
/// meaning, as nftables tables in both families; they masquerade as flannel's do, come back
/// after `nft flush ruleset`, follow `--ip-masq-fully-random-disable`, give way to iptables
/// chains when the mode is switched off (and back), and go with `--cleanup`.
#[test]
fn nftables_mode_on_a_host_without_iptables() {
    require_root();
    let config = r#"{"Network": "10.1.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10::/48",
        "EnableNFTables": true, "Backend": {"Type": "host-gw"}}"#;
    let bed = Testbed::new(2).unwrap();
    bed.put_config(config).unwrap();
    let (_bin, path) = path_without_iptables();
    let flags = ["--ip-masq", "--iptables-resync=1"];
    let mut agents = Vec::new();
    let mut containers = Vec::new();
    for host in 0..2 {
        bed.enable_ipv6(host).unwrap();
        let env: &[(&str, &str)] = if host == 0 { &[("PATH", &path)] } else { &[] };
        let mut agent = bed.agent_with_env(host, &flags, env).unwrap();
        agent.wait_ready(READY).unwrap();
        let mut container = bed.add_docker_container(host, &agent, 2).unwrap();
        bed.add_ipv6(host, &agent, &mut container).unwrap();
        containers.push(container);
        agents.push(agent);
    }
    let host = &bed.hosts[0];
    let (s, s6) = (
        agents[0].subnet().unwrap(),
        agents[0].ipv6_subnet().unwrap(),
    );
    let (n, n6) = ("10.1.0.0/16", "fd00:10::/48");
    // flannel's iptables meaning, where its own nftables rules differ: the kube-proxy mark is
    // a bit test (`--mark 0x4000/0x4000`), and the fourth rule leaves alone what comes from
    // outside the network to our subnet (`! -s N -d S`).
    let expected = |family: &str, n: &str, s: &str, multicast: &str, random: &str| {
        format!(
            "chain postrtg {{\n\
             type nat hook postrouting priority srcnat; policy accept;\n\
             meta mark & 0x00004000 == 0x00004000 return\n\
             {family} saddr {s} {family} daddr {n} return\n\
             {family} saddr {n} {family} daddr {s} return\n\
             {family} saddr != {n} {family} daddr {s} return\n\
             {family} saddr {n} {family} daddr != {multicast} masquerade{random}\n\
             {family} saddr != {n} {family} daddr {n} masquerade{random}\n\
             }}\n\
             chain forward {{\n\
             type filter hook forward priority filter; policy accept;\n\
             {family} saddr {n} accept\n\
             {family} daddr {n} accept\n\
             }}"
        )
    };
    let rules = |family| chains(&nft_table(host, family));
    let (ipv4, ipv6) = (
        expected("ip", n, &s, "224.0.0.0/4", " fully-random"),
        expected("ip6", n6, &s6.to_string(), "ff00::/8", " fully-random"),
    );
    assert_eq!(rules("ip"), ipv4);
    assert_eq!(rules("ip6"), ipv6);
    let iptables = host.exec("iptables-save", &[]).unwrap();
    assert!(!iptables.contains("FLANNEL"), "{iptables}");

    // They masquerade what leaves the network, not what stays in it.
    let (c0, c1) = (&containers[0], &containers[1]);
    let seen = |ns, target: IpAddr| c0.source_seen_by(ns, target).unwrap();
    assert_eq!(
        seen(&bed.hosts[1], Testbed::host_ip(1).into()),
        IpAddr::from(Testbed::host_ip(0))
    );
    assert_eq!(
        seen(&bed.hosts[1], Testbed::host_ipv6(1).into()),
        IpAddr::from(Testbed::host_ipv6(0))
    );
    assert_eq!(seen(&c1.ns, c1.ip.into()), IpAddr::from(c0.ip));
    let v6 = |c: &Container| IpAddr::from(c.ipv6.unwrap());
    assert_eq!(seen(&c1.ns, v6(c1)), v6(c0));

    // Flushed by hand, they come back.
    host.exec("nft", &["flush", "ruleset"]).unwrap();
    wait_for("the tables to come back", READY, || {
        rules("ip") == ipv4 && rules("ip6") == ipv6
    })
    .unwrap();

    // --ip-masq-fully-random-disable.
    agents[0].terminate().unwrap();
    let plain = [
        "--ip-masq",
        "--iptables-resync=1",
        "--ip-masq-fully-random-disable",
    ];
    let mut agent = bed.agent_with_env(0, &plain, &[("PATH", &path)]).unwrap();
    agent.wait_ready(READY).unwrap();
    assert_eq!(rules("ip"), expected("ip", n, &s, "224.0.0.0/4", ""));
    agent.terminate().unwrap();

    // Switched to iptables, the tables go and flannel's chains come; and back.
    let iptables_config = config.replace("\"EnableNFTables\": true,", "");
    bed.put_config(&iptables_config).unwrap();
    let mut agent = bed.agent(0, &flags).unwrap();
    agent.wait_ready(READY).unwrap();
    assert_eq!((rules("ip"), rules("ip6")), (String::new(), String::new()));
    let chain = |tool| {
        host.exec(tool, &["-t", "nat", "-S", "FLANNEL-POSTRTG"])
            .is_ok()
    };
    assert!(chain("iptables") && chain("ip6tables"));
    agent.terminate().unwrap();
    bed.put_config(config).unwrap();
    let mut agent = bed.agent(0, &flags).unwrap();
    agent.wait_ready(READY).unwrap();
    assert!(!chain("iptables") && !chain("ip6tables"));
    assert_eq!(rules("ip"), ipv4);
    agent.terminate().unwrap();

    // --cleanup removes them.
    let pins = format!("--bpf-pin-dir={}", bed.pin_dir(0).display());
    let mut cleanup =
        Agent::spawn_with_env(host, &["--cleanup", &pins], &[("PATH", &path)]).unwrap();
    assert!(
        cleanup.wait_exit(READY).unwrap().success(),
        "{}",
        cleanup.log()
    );
    assert_eq!((rules("ip"), rules("ip6")), (String::new(), String::new()));
}

/// The chains of an `nft list table` listing, a line each for their lines, without indent or
/// comment ("" for no table).
fn chains(listing: &str) -> String {
    let lines: Vec<&str> = listing
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    // Between the table's first line and its closing brace.
    let inner = lines
        .get(1..lines.len().saturating_sub(1))
        .unwrap_or_default();
    let rules: Vec<&str> = inner
        .iter()
        .map(|line| line.split(" comment ").next().unwrap_or(line))
        .collect();
    rules.join("\n")
}

/// In iptables mode, a host without `iptables` is refused at start, naming the binary and
/// `EnableNFTables`; nothing is leased.
#[test]
fn iptables_mode_without_iptables_is_refused_before_anything_is_leased() {
    let bed = Testbed::configured(1, HOST_GW).unwrap();
    let (_bin, path) = path_without_iptables();
    let mut agent = bed
        .agent_with_env(0, &["--ip-masq"], &[("PATH", &path)])
        .unwrap();
    let status = agent.wait_exit(READY).unwrap();
    assert!(!status.success());
    let log = agent.log();
    assert!(
        log.contains("need `iptables`") && log.contains("EnableNFTables"),
        "{log}"
    );
    assert!(bed.lease_keys().unwrap().is_empty());
}

/// `--ip-blackhole-route`: a blackhole route for each of our subnets, beneath the container
/// bridge's route (which still wins); removed by hand, it comes back; an agent without the
/// flag, and `--cleanup`, remove it.
#[test]
fn blackhole_routes_catch_what_no_container_holds() {
    require_root();
    let config = r#"{"Network": "10.1.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10::/48",
        "Backend": {"Type": "host-gw"}}"#;
    let bed = Testbed::new(1).unwrap();
    bed.put_config(config).unwrap();
    bed.enable_ipv6(0).unwrap();
    let flags = ["--ip-blackhole-route", "--iptables-resync=1"];
    let mut agent = bed.agent(0, &flags).unwrap();
    agent.wait_ready(READY).unwrap();
    let host = &bed.hosts[0];
    let (s, s6) = (
        agent.subnet().unwrap(),
        agent.ipv6_subnet().unwrap().to_string(),
    );
    let blackholes = || -> Vec<String> {
        ["-4", "-6"]
            .iter()
            .flat_map(|family| {
                let routes = host
                    .ip(&[family, "route", "show", "type", "blackhole"])
                    .unwrap();
                routes
                    .lines()
                    .map(str::trim)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let wanted = [
        format!("blackhole {s} proto 241 metric 1024"),
        format!("blackhole {s6} dev lo proto 241 metric 1024 pref medium"),
    ];
    assert_eq!(blackholes(), wanted);
    let route_to = |ip: &str| host.ip(&["route", "get", ip]);
    // The kernel refuses to route into a blackhole.
    let unused = s.replace(".0/24", ".99");
    let refused = route_to(&unused).unwrap_err().to_string();
    assert!(refused.contains("Invalid argument"), "{refused}");
    // A container's bridge route wins over it.
    let container = bed.add_docker_container(0, &agent, 2).unwrap();
    let to_container = route_to(&container.ip.to_string()).unwrap();
    assert!(to_container.contains("dev cni0"), "{to_container}");

    host.ip(&["route", "del", "blackhole", &s, "metric", "1024"])
        .unwrap();
    wait_for("the blackhole route to come back", READY, || {
        blackholes() == wanted
    })
    .unwrap();

    agent.terminate().unwrap();
    let mut without = bed.ready_agent(0, &["--iptables-resync=1"]).unwrap();
    wait_for("the blackhole routes to go", READY, || {
        blackholes().is_empty()
    })
    .unwrap();
    without.terminate().unwrap();

    let mut again = bed.agent(0, &flags).unwrap();
    again.wait_ready(READY).unwrap();
    assert_eq!(blackholes(), wanted);
    again.terminate().unwrap();
    let pins = format!("--bpf-pin-dir={}", bed.pin_dir(0).display());
    let mut cleanup = Agent::spawn(host, &["--cleanup", &pins]).unwrap();
    assert!(
        cleanup.wait_exit(READY).unwrap().success(),
        "{}",
        cleanup.log()
    );
    assert!(blackholes().is_empty());
}
