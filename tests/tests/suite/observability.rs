//! What the agent shows: drops in `flanneld monitor`, traffic in /metrics and `status`, and
//! the alerting rules and dashboard that read them.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use flannel_tests::{
    configs::{READY, VXLAN},
    etcd::wait_for,
    metrics,
    netns::{run, Bpffs},
    require_root,
    testbed::{self, all_reach_all, Testbed, PREFIX},
};

#[test]
fn a_strangers_vxlan_packet_reaches_no_container_and_monitor_shows_it() {
    require_root();
    let bpffs = Bpffs::mount().unwrap();
    let (pins, pin_flag) = bpffs.pin_dir("h1");
    let (bed, agents, containers) = Testbed::cluster(VXLAN, &[&[], &[pin_flag.as_str()]]).unwrap();
    wait_for("reachability", READY, || {
        containers[0].ping(containers[1].ip).is_ok()
    })
    .unwrap();
    // A stranger on the underlay, without a lease, forges a VXLAN frame with our VNI for
    // host 1's container, and the same packet from a peer's address would be delivered.
    let stranger = flannel_tests::netns::Netns::new("stranger").unwrap();
    flannel_tests::netns::link(
        &stranger,
        "eth0",
        "192.168.64.66/24",
        &bed.underlay,
        "p66",
        "0.0.0.0/32",
    )
    .unwrap();
    bed.underlay
        .ip(&["link", "set", "p66", "master", "br0"])
        .unwrap();
    let subnet = agents[1].subnet().unwrap();
    let vtep = testbed::lease_json(&bed, &subnet).unwrap()["BackendData"]["VtepMAC"]
        .as_str()
        .unwrap()
        .parse::<flannel_agent::control::lease::Mac>()
        .unwrap();
    let listener = containers[1].udp_listener(7777).unwrap();
    let inner_ip = flannel_tests::packet::ipv4(
        std::net::Ipv4Addr::new(10, 1, 66, 6),
        containers[1].ip,
        flannel_tests::packet::IPPROTO_UDP,
        &flannel_tests::packet::udp(5555, 7777, b"forged"),
    );
    let inner = flannel_tests::packet::ethernet(
        vtep.0,
        [2, 0, 0, 0, 0, 0x66],
        flannel_tests::packet::ETH_P_IP,
        &inner_ip,
    );
    let payload = flannel_tests::packet::vxlan(1, &inner);
    let monitor = Monitor::start(&bed.hosts[1], &pins);
    stranger
        .enter(|| {
            let socket = std::net::UdpSocket::bind("192.168.64.66:0").unwrap();
            socket.send_to(&payload, "192.168.64.11:8472").unwrap();
        })
        .unwrap();
    assert_eq!(
        listener.next().unwrap(),
        None,
        "the forged packet reached the container"
    );
    let shown = monitor.output();
    assert_eq!(
        shown,
        serde_json::json!({
            "reason": "unknown_peer", "hook": "tc_ingress", "interface": "eth0",
            "peer": "192.168.64.66", "src": "10.1.66.6", "dst": containers[1].ip.to_string(),
            "protocol": "udp", "sport": 5555, "dport": 7777, "suppressed": 0
        })
    );
}

/// `flanneld monitor --json --count 1` on a host, listening once `start` returns.
struct Monitor(std::process::Child);

impl Monitor {
    fn start(host: &flannel_tests::netns::Netns, pins: &std::path::Path) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &host.name])
            .arg(flannel_tests::agent::flanneld())
            .args(["monitor", "--json", "--count", "1", "--bpf-pin-dir"])
            .arg(pins)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut said = String::new();
        std::io::BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut said)
            .unwrap();
        assert!(said.starts_with("listening for drops"), "{said}");
        Monitor(child)
    }

    /// The one drop it printed, within 10 s.
    fn output(mut self) -> serde_json::Value {
        wait_for(
            "the monitor to print a drop",
            Duration::from_secs(10),
            || self.0.try_wait().unwrap().is_some(),
        )
        .unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(self.0.stdout.as_mut().unwrap(), &mut text).unwrap();
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn metrics_count_what_crosses_the_overlay() {
    require_root();
    let flags: [&[&str]; 2] = [&[metrics::FLAG], &[]];
    let (bed, _agents, containers) = Testbed::cluster(VXLAN, &flags).unwrap();
    testbed::all_reach_all(&containers, READY).unwrap();
    let metrics = || metrics::scrape(&bed.hosts[0]).unwrap();
    let tx = |text: &str| {
        metrics::value(text, "flannel_peer_tx_packets_total")
            .unwrap_or_else(|| panic!("no per-peer counter in:\n{text}"))
    };
    let before = metrics();
    // Every non-comment line is `name{labels} value` or `name value`, with a number.
    for line in before.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "not Prometheus text: {line}");
    }
    assert!(
        before.contains(r#"flannel_datapath_info{datapath="eBPF"} 1"#),
        "{before}"
    );
    assert!(
        before.contains(r#"flannel_bpf_decap_info{decap="tc",gro="tunnel frames"} 1"#),
        "{before}"
    );
    for _ in 0..5 {
        containers[0].ping(containers[1].ip).unwrap();
    }
    let after = metrics();
    assert!(tx(&after) >= tx(&before) + 5.0, "{before}\n{after}");
}

#[test]
fn status_lists_every_peer_with_its_traffic() {
    require_root();
    let bpffs = Bpffs::mount().unwrap();
    let pins: Vec<String> = (0..3)
        .map(|i| {
            format!(
                "--bpf-pin-dir={}",
                bpffs.path().join(format!("h{i}")).display()
            )
        })
        .collect();
    let flags: Vec<[&str; 1]> = pins.iter().map(|pin| [pin.as_str()]).collect();
    let flags: Vec<&[&str]> = flags.iter().map(|f| &f[..]).collect();
    let (mut bed, agents, containers) = Testbed::cluster(VXLAN, &flags).unwrap();
    testbed::all_reach_all(&containers, READY).unwrap();

    let flanneld = flannel_tests::agent::flanneld()
        .to_str()
        .unwrap()
        .to_owned();
    let endpoints = format!("--etcd-endpoints={}", bed.etcd.endpoint());
    let subnet_file = format!("--subnet-file={}", agents[0].subnet_file().display());
    let status = |extra: &[&str]| {
        let mut args = vec!["status", &endpoints, &subnet_file, &pins[0]];
        args.extend_from_slice(extra);
        bed.hosts[0].exec(&flanneld, &args).unwrap()
    };
    let json: serde_json::Value = serde_json::from_str(&status(&["--json"])).unwrap();
    assert_eq!(json["lease"]["subnet"], agents[0].subnet().unwrap());
    assert_eq!(json["network"], "10.1.0.0/16");
    assert_eq!(json["datapath"]["kind"], "eBPF");
    assert_eq!(json["datapath"]["decap"], "tc");
    assert_eq!(json["datapath"]["gro"], "tunnel frames");
    let attached = json["datapath"]["attached"].to_string();
    assert!(
        attached.contains("tc ingress on eth0") && attached.contains("tc ingress on cni0"),
        "{attached}"
    );
    let peers = json["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2, "{json}");
    for peer in peers {
        assert!(
            peer["tx_packets"].as_u64().unwrap() > 0,
            "pings went to every peer: {peer}"
        );
        assert!(peer["vtep_mac"].is_string());
    }
    let text = status(&[]);
    for agent in &agents[1..] {
        assert!(text.contains(&agent.subnet().unwrap()), "{text}");
    }
    assert!(text.contains("datapath:  eBPF"), "{text}");
    assert!(
        text.contains("decap:     tc; GRO merges tunnel frames"),
        "{text}"
    );

    // etcd down: what the host holds, from the pins and the kernel, and an exit code that
    // says etcd's part is missing.
    bed.etcd.stop();
    let output = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &bed.hosts[0].name,
            &flanneld,
            "status",
            "--json",
        ])
        .args([&endpoints, &subnet_file, &pins[0]])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["etcd"]["reachable"], false, "{json}");
    assert_eq!(json["network"], "10.1.0.0/16");
    let listed: Vec<&str> = json["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["subnet"].as_str().unwrap())
        .collect();
    for agent in &agents[1..] {
        assert!(listed.contains(&agent.subnet().unwrap().as_str()), "{json}");
    }
    assert!(
        json["datapath"]["attached"]
            .to_string()
            .contains("tc ingress on eth0"),
        "{json}"
    );
}

fn dist(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dist")
        .join(path)
}

/// Each metric of a `/metrics` text, with the label names its samples carry.
fn exported(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut metrics: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|l| l.split(' ').next())
        {
            metrics.entry(name.to_owned()).or_default();
        }
    }
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some((name, labels)) = line.split_once('{') else {
            continue;
        };
        let keys = labels
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, _)| k);
        let entry = metrics.entry(name.to_owned()).or_default();
        entry.extend(keys.map(str::to_owned));
    }
    metrics
}

/// The `flannel_...` names in a text, with the label names written inside braces right after
/// them (`flannel_drops_total{instance="h0", reason="x"}` gives `reason` and `instance`).
fn named(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut rest = text;
    while let Some(at) = rest.find("flannel_") {
        rest = &rest[at..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let labels = names.entry(rest[..end].to_owned()).or_default();
        if let Some(inside) = rest[end..].strip_prefix('{') {
            let inside = &inside[..inside.find('}').unwrap_or(0)];
            let keys = inside.split(',').filter_map(|pair| pair.split_once('='));
            labels.extend(keys.map(|(key, _)| key.trim().to_owned()));
        }
        rest = &rest[end..];
    }
    names
}

#[test]
fn the_alerting_rules_and_the_dashboard_name_what_the_agent_exports() {
    require_root();
    let (bed, agents, containers) = Testbed::cluster(VXLAN, &[&[metrics::FLAG], &[]]).unwrap();
    all_reach_all(&containers, READY).unwrap();
    // A lease that breaks a rule, so the rejections' labels are exported too.
    let stranger = r#"{"PublicIP":"192.168.64.99","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:00:00:00:00:99"}}"#;
    bed.etcd
        .put(&format!("{PREFIX}/subnets/10.2.0.0-24"), stranger)
        .unwrap();
    wait_for("the rejection", READY, || {
        metrics::scrape(&bed.hosts[0])
            .is_ok_and(|text| text.contains("flannel_leases_rejected_total{"))
    })
    .unwrap();
    let exports = exported(&metrics::scrape(&bed.hosts[0]).unwrap());
    // Prometheus adds these to every series it scrapes.
    let scrape_labels = ["job", "instance"];
    for file in [
        "prometheus/flanneld-alerts.yml",
        "prometheus/flanneld-alerts.test.yml",
        "grafana/flanneld.json",
    ] {
        let text = std::fs::read_to_string(dist(file)).unwrap();
        let names = named(&text);
        assert!(!names.is_empty(), "{file} names no metric");
        for (name, labels) in names {
            let Some(exported) = exports.get(&name) else {
                panic!("{file}: {name} is not among the agent's metrics: {exports:?}");
            };
            for label in labels
                .iter()
                .filter(|l| !scrape_labels.contains(&l.as_str()))
            {
                assert!(
                    exported.contains(label),
                    "{file}: {name} has no label {label}"
                );
            }
        }
    }
    let _ = agents;

    // promtool takes the rules, and their unit tests pass.
    let rules = dist("prometheus/flanneld-alerts.yml");
    run(
        "promtool",
        &["check", "rules", &rules.display().to_string()],
    )
    .unwrap();
    let tests = dist("prometheus/flanneld-alerts.test.yml");
    run("promtool", &["test", "rules", &tests.display().to_string()]).unwrap();
}
