//! flanneld as users run it: `cargo xtask install`, or the Debian package, then a real systemd
//! starts, watches, restarts and stops it (see `flannel_tests::systemd`). Host 0 runs it under
//! systemd; host 1 runs a plain agent; containers behind both ping each other every 10 ms
//! through each fault.

use std::time::Duration;

use aya::programs::TcAttachType;
use flannel_tests::configs::VXLAN;
use flannel_tests::{
    agent::Agent,
    etcd::wait_for,
    hooks, require_root,
    systemd::{package, Systemd},
    testbed::{all_reach_all, lease_key, Container, Testbed},
};

const UNIT: &str = "flanneld.service";
const START: Duration = Duration::from_secs(30);

/// The settings an operator would put in /etc/sysconfig/flanneld, as a drop-in; and a
/// watchdog short enough to test.
fn settings(etcd: &str) -> String {
    format!(
        "[Service]\n\
         Environment=FLANNEL_ETCD_ENDPOINTS={etcd} \"FLANNEL_OPTIONS=-iface=eth0 -ip-masq\"\n\
         WatchdogSec=3s\n"
    )
}

/// A stand-in for dockerd, started as docker.service with our drop-in: it records the
/// options it was given.
const FAKE_DOCKER: &str = "[Service]\nExecStart=\n\
    ExecStart=/bin/sh -c 'echo \"$DOCKER_NETWORK_OPTIONS\" > /run/docker-options; exec sleep infinity'\n";

/// `KEY=value` of a file's lines.
fn value_of(text: &str, key: &str) -> String {
    let prefix = format!("{key}=");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        .trim_matches('"')
        .to_owned()
}

/// Host 0's subnet, from the subnet.env the unit's agent wrote.
fn subnet(systemd: &Systemd) -> String {
    let env = systemd.read("/run/flannel/subnet.env").unwrap();
    let net: ipnet::Ipv4Net = value_of(&env, "FLANNEL_SUBNET").parse().unwrap();
    net.trunc().to_string()
}

/// Restarts flanneld through `fault` and waits until systemd has it running again;
/// returns how many of the 10 ms pings across were lost meanwhile.
fn pings_lost_through(
    systemd: &Systemd,
    from: &Container,
    to: &Container,
    count: u32,
    fault: &[&str],
) -> u32 {
    let before = systemd.property(UNIT, "MainPID").unwrap();
    from.pings_lost_while(to.ip, count, || {
        systemd.systemctl(fault).unwrap();
        wait_for("systemd to restart flanneld", START, || {
            systemd
                .property(UNIT, "MainPID")
                .is_ok_and(|pid| pid != before && pid != "0")
        })
        .unwrap();
        systemd.wait_state(UNIT, "active", START).unwrap();
    })
    .unwrap()
}

#[test]
fn installed_unit_under_systemd_starts_restarts_and_stops_without_dropping_traffic() {
    let mut bed = Testbed::configured(2, VXLAN).unwrap();
    let systemd = Systemd::boot(&bed.hosts[0]).unwrap();
    systemd
        .write(
            "/run/systemd/system/flanneld.service.d/test.conf",
            settings(&bed.etcd.endpoint()),
        )
        .unwrap();
    systemd
        .write(
            "/run/systemd/system/docker.service",
            "[Service]\nExecStart=/bin/true\n",
        )
        .unwrap();
    systemd
        .write(
            "/run/systemd/system/docker.service.d/zz-fake.conf",
            FAKE_DOCKER,
        )
        .unwrap();
    systemd.systemctl(&["daemon-reload"]).unwrap();

    // With etcd down the agent has no lease: the start waits, `activating`, until READY=1.
    bed.etcd.stop();
    systemd.systemctl(&["start", "--no-block", UNIT]).unwrap();
    wait_for("the agent to find etcd unreachable", START, || {
        systemd
            .journal(UNIT)
            .is_ok_and(|log| log.contains("etcd is not reachable"))
    })
    .unwrap();
    assert_eq!(systemd.property(UNIT, "ActiveState").unwrap(), "activating");
    bed.etcd.resume().unwrap();
    systemd.wait_state(UNIT, "active", START).unwrap();
    let status = systemd.property(UNIT, "StatusText").unwrap();
    let subnet_before = subnet(&systemd);
    assert!(
        status.starts_with(&format!("subnet {subnet_before}, ")),
        "{status}"
    );
    assert!(systemd
        .systemctl(&["status", UNIT, "--no-pager"])
        .unwrap()
        .contains(&format!("Status: \"{status}\"")));

    // The journal has the agent's lines at their levels.
    let journal = systemd.journal_json(UNIT).unwrap();
    let priority_of = |text: &str| {
        journal
            .iter()
            .find(|entry| entry["MESSAGE"].as_str().is_some_and(|m| m.contains(text)))
            .map(|entry| entry["PRIORITY"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(priority_of("etcd is not reachable").as_deref(), Some("4"));
    assert_eq!(priority_of(" ready ").as_deref(), Some("6"));

    // ExecStartPost wrote Docker's options, -ip-masq's rules hold under the sandbox, and
    // docker.service starts after flanneld with those options.
    let options = value_of(
        &systemd.read("/run/flannel/docker").unwrap(),
        "DOCKER_NETWORK_OPTIONS",
    );
    let gateway = format!(
        "--bip={}",
        value_of(
            &systemd.read("/run/flannel/subnet.env").unwrap(),
            "FLANNEL_SUBNET"
        )
    );
    assert!(options.contains(&gateway), "{options}");
    let nat = bed.hosts[0].exec("iptables", &["-t", "nat", "-S"]).unwrap();
    assert!(nat.contains("-j FLANNEL-POSTRTG"), "{nat}");
    assert!(systemd
        .property("docker.service", "After")
        .unwrap()
        .contains(UNIT));
    systemd.systemctl(&["start", "docker.service"]).unwrap();
    wait_for("docker to record its options", START, || {
        systemd.read("/run/docker-options").is_ok()
    })
    .unwrap();
    assert_eq!(
        systemd.read("/run/docker-options").unwrap().trim(),
        options.trim()
    );

    // Traffic across, from a container on the systemd host to one on a plain agent's host.
    let (_peer, both) = containers_across(&bed, &systemd, &subnet_before);
    let [here, there] = &both;

    // SIGKILL: systemd restarts it, and the kernel's datapath forwards meanwhile.
    let lost = pings_lost_through(&systemd, here, there, 800, &["kill", "-s", "SIGKILL", UNIT]);
    assert_eq!(lost, 0, "pings lost across a SIGKILL and restart");
    assert_eq!(subnet(&systemd), subnet_before);

    // A hung agent: no watchdog pings, so systemd aborts and restarts it.
    let restarts = systemd.property(UNIT, "NRestarts").unwrap();
    let lost = pings_lost_through(
        &systemd,
        here,
        there,
        1200,
        &["kill", "-s", "SIGSTOP", UNIT],
    );
    assert_eq!(lost, 0, "pings lost across a hang, watchdog and restart");
    assert_ne!(systemd.property(UNIT, "NRestarts").unwrap(), restarts);
    assert!(
        systemd.journal(UNIT).unwrap().contains("Watchdog timeout"),
        "{}",
        systemd.journal(UNIT).unwrap()
    );
    assert_eq!(subnet(&systemd), subnet_before);
    // Bounded to its capabilities, the agent still sees its own hooks: it never takes them
    // for gone and attaches them again.
    let journal = systemd
        .exec("journalctl", &["-u", UNIT, "--no-pager"])
        .unwrap();
    assert!(!journal.contains("attaching it again"), "{journal}");

    // stop: exit 0, the lease and traffic stay.
    systemd
        .systemctl(&["stop", "docker.service", UNIT])
        .unwrap();
    assert_eq!(systemd.property(UNIT, "ActiveState").unwrap(), "inactive");
    assert_eq!(systemd.property(UNIT, "ExecMainStatus").unwrap(), "0");
    assert_eq!(systemd.property(UNIT, "Result").unwrap(), "success");
    let lost = here.pings_lost_while(there.ip, 100, || {}).unwrap();
    assert_eq!(lost, 0, "pings lost after a stop");
    assert!(bed.etcd.get(&lease_key(&subnet_before)).unwrap().is_some());

    // uninstall: no unit left.
    systemd.uninstall().unwrap();
    systemd.systemctl(&["daemon-reload"]).unwrap();
    assert_eq!(systemd.property(UNIT, "LoadState").unwrap(), "not-found");
    assert!(!systemd.destdir().join("usr/local").exists());
}

/// The Debian package, as operators use it: `dpkg -i` on a host without flanneld, `systemctl
/// enable --now`, traffic across; `dpkg -i` of a newer build restarts the agent into it with
/// no ping lost and the same lease; `dpkg -r` stops it and its datapath forwards on; `dpkg
/// -P` cleans up after it, leaving nothing of it on the host.
#[test]
fn the_package_installs_upgrades_removes_and_purges() {
    require_root();
    let (first, newer) = (package(1).unwrap(), package(2).unwrap());
    let bed = Testbed::new(2).unwrap();
    bed.put_config(VXLAN).unwrap();
    let host = &bed.hosts[0];
    let systemd = Systemd::boot_for_packages(host).unwrap();
    let dpkg = |args: &[&str]| systemd.exec("dpkg", args).unwrap();
    assert!(
        !systemd.check("dpkg", &["-s", "flanneld"]).unwrap(),
        "installed before"
    );
    // A host, not a Docker image: no policy-rc.d forbids maintainer scripts to act on units.
    systemd
        .exec("rm", &["-f", "/usr/sbin/policy-rc.d"])
        .unwrap();
    dpkg(&["-i", &systemd.copy_in(&first).unwrap()]);
    // The operator's settings, as an edit of /etc/sysconfig/flanneld would give them.
    systemd
        .write(
            "/etc/sysconfig/flanneld",
            format!(
                "FLANNEL_ETCD_ENDPOINTS=\"{}\"\nFLANNEL_OPTIONS=\"-iface=eth0\"\n",
                bed.etcd.endpoint()
            ),
        )
        .unwrap();
    systemd
        .systemctl(&["enable", "--now", "flanneld.service"])
        .unwrap();
    systemd.wait_state(UNIT, "active", START).unwrap();
    let subnet_before = subnet(&systemd);
    let (_peer, both) = containers_across(&bed, &systemd, &subnet_before);
    let [here, there] = &both;

    // The upgrade restarts the agent into the new build: no ping lost, the same lease.
    let newer = systemd.copy_in(&newer).unwrap();
    let pid = systemd.property(UNIT, "MainPID").unwrap();
    let lost = here.pings_lost_while(there.ip, 500, || {
        dpkg(&["-i", &newer]);
        wait_for("the new agent", START, || {
            systemd
                .property(UNIT, "MainPID")
                .is_ok_and(|p| p != pid && p != "0")
        })
        .unwrap();
        systemd.wait_state(UNIT, "active", START).unwrap();
    });
    assert_eq!(lost.unwrap(), 0, "pings lost across the upgrade");
    let version = dpkg(&["-s", "flanneld"]);
    assert!(version.contains("Version: 0.2.0-2"), "{version}");
    assert_eq!(subnet(&systemd), subnet_before);
    // The operator's edit of the conffile survived the upgrade.
    let settings = systemd.read("/etc/sysconfig/flanneld").unwrap();
    assert!(settings.contains(&bed.etcd.endpoint()), "{settings}");

    // Removed: stopped, its datapath forwards on.
    dpkg(&["-r", "flanneld"]);
    assert_eq!(systemd.property(UNIT, "ActiveState").unwrap(), "inactive");
    assert!(!systemd.check("test", &["-e", "/usr/bin/flanneld"]).unwrap());
    let lost = here.pings_lost_while(there.ip, 100, || {}).unwrap();
    assert_eq!(lost, 0, "pings lost after the removal");

    // Purged: nothing of it on the host, and so no more traffic.
    dpkg(&["-P", "flanneld"]);
    assert!(!systemd.check("dpkg", &["-s", "flanneld"]).unwrap());
    for gone in [
        "/etc/sysconfig/flanneld",
        "/run/flannel",
        "/var/lib/flanneld",
        "/sys/fs/bpf/flannel",
    ] {
        assert!(
            !systemd.check("test", &["-e", gone]).unwrap(),
            "{gone} stayed"
        );
    }
    for device in ["flannel-bpf", "flannel-gro"] {
        assert!(!host.has_link(device).unwrap(), "{device} stayed");
    }
    let hooked = hooks::hooked(host, "eth0", TcAttachType::Ingress).unwrap();
    assert!(hooked.is_empty(), "{hooked:?}");
    let routes = host.ip(&["route", "show", "proto", "241"]).unwrap();
    assert!(routes.trim().is_empty(), "{routes}");
    assert!(!host.exec("iptables-save", &[]).unwrap().contains("FLANNEL"));
    assert!(!here.reaches(there.ip).unwrap(), "traffic after the purge");
}

/// A container on the systemd host (host 0, holding `subnet`) and one on host 1 behind a
/// plain agent, which reach each other; with that agent, which must live as long.
fn containers_across(bed: &Testbed, systemd: &Systemd, subnet: &str) -> (Agent, [Container; 2]) {
    let mut peer = bed.agent(1, &[]).unwrap();
    peer.wait_ready(START).unwrap();
    let mtu = value_of(
        &systemd.read("/run/flannel/subnet.env").unwrap(),
        "FLANNEL_MTU",
    );
    let here = bed.add_container(0, subnet, 2).unwrap();
    here.ns.ip(&["link", "set", "eth0", "mtu", &mtu]).unwrap();
    let there = bed.add_docker_container(1, &peer, 2).unwrap();
    let both = [here, there];
    all_reach_all(&both, START).unwrap();
    (peer, both)
}
