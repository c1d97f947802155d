//! What operators watch, against what a running agent really exports: the Prometheus alerting
//! rules in `dist/prometheus` (checked and unit-tested by `promtool`) and the Grafana
//! dashboard in `dist/grafana` name only metrics and labels the agent's `/metrics` has.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use flannel_tests::{
    etcd::wait_for,
    metrics,
    netns::run,
    require_root,
    testbed::{all_reach_all, Testbed, PREFIX},
};

const VXLAN: &str = r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}}"#;
const READY: Duration = Duration::from_secs(20);

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
