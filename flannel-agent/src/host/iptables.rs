//! `--ip-masq` and `--iptables-forward-rules`: flannel's chains and rules, exactly as flannel
//! writes them, through the `iptables` and `ip6tables` commands (no library speaks nftables'
//! iptables-compat).

use tokio::process::Command;

use anyhow::{bail, Context, Result};
use ipnet::IpNet;

pub const MASQ_CHAIN: &str = "FLANNEL-POSTRTG";
pub const FORWARD_CHAIN: &str = "FLANNEL-FWD";

/// One rule: appended to `chain` of `table`, by `ip6tables` when `ipv6`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub ipv6: bool,
    pub table: &'static str,
    pub chain: &'static str,
    pub spec: Vec<String>,
}

/// Our chains: (table, the built-in chain that jumps to it, the chain, its rules' comment).
type Chain = (&'static str, &'static str, &'static str, &'static str);
const MASQ: Chain = ("nat", "POSTROUTING", MASQ_CHAIN, "flanneld masq");
const FORWARD: Chain = ("filter", "FORWARD", FORWARD_CHAIN, "flanneld forward");

/// `<matches> -m comment --comment "<comment>" <target>`, as flannel writes its rules.
fn rule(ipv6: bool, chain: &Chain, in_chain: &'static str, matches: &str, target: &str) -> Rule {
    let (table, _, _, comment) = *chain;
    let mut spec: Vec<String> = matches.split_whitespace().map(str::to_owned).collect();
    spec.extend(["-m", "comment", "--comment", comment].map(str::to_owned));
    spec.extend(target.split_whitespace().map(str::to_owned));
    Rule {
        ipv6,
        table,
        chain: in_chain,
        spec,
    }
}

/// The built-in chain's jump to our chain.
fn jump(ipv6: bool, chain: &Chain) -> Rule {
    rule(ipv6, chain, chain.1, "", &format!("-j {}", chain.2))
}

/// flannel's masquerade rules for network `n` and our subnet `s` of one family, jump first.
pub fn masq_rules(n: impl Into<IpNet>, s: impl Into<IpNet>) -> Vec<Rule> {
    let (n, s) = (n.into(), s.into());
    let ipv6 = matches!(n, IpNet::V6(_));
    let multicast = if ipv6 { "ff00::/8" } else { "224.0.0.0/4" };
    let own = |matches: String, target: &str| rule(ipv6, &MASQ, MASQ_CHAIN, &matches, target);
    vec![
        jump(ipv6, &MASQ),
        own("-m mark --mark 0x4000/0x4000".into(), "-j RETURN"),
        own(format!("-s {s} -d {n}"), "-j RETURN"),
        own(format!("-s {n} -d {s}"), "-j RETURN"),
        own(format!("! -s {n} -d {s}"), "-j RETURN"),
        own(
            format!("-s {n} ! -d {multicast}"),
            "-j MASQUERADE --random-fully",
        ),
        own(format!("! -s {n} -d {n}"), "-j MASQUERADE --random-fully"),
    ]
}

/// flannel's forward rules for network `n` of one family, jump first (Docker sets FORWARD's
/// policy to DROP).
pub fn forward_rules(n: impl Into<IpNet>) -> Vec<Rule> {
    let n = n.into();
    let ipv6 = matches!(n, IpNet::V6(_));
    let own = |matches: String| rule(ipv6, &FORWARD, FORWARD_CHAIN, &matches, "-j ACCEPT");
    vec![
        jump(ipv6, &FORWARD),
        own(format!("-s {n}")),
        own(format!("-d {n}")),
    ]
}

/// The rules in FORWARD and DOCKER-USER that overlay traffic on the eBPF fast path never
/// meets: all but ours and Docker's defaults (jumps to its chains, ACCEPTs for its bridges,
/// DOCKER-USER's final RETURN), as `iptables -S` prints them.
pub async fn forward_rules_bypassed() -> Result<Vec<String>> {
    let mut found = Vec::new();
    for chain in ["FORWARD", "DOCKER-USER"] {
        // DOCKER-USER exists only with Docker.
        let Ok(listing) = iptables(false, "filter", &["-S", chain]).await else {
            continue;
        };
        found.extend(
            listing
                .lines()
                .filter(|line| line.starts_with("-A ") && !ours_or_dockers(line))
                .map(str::to_owned),
        );
    }
    Ok(found)
}

fn ours_or_dockers(rule: &str) -> bool {
    let target = rule.rsplit_once(" -j ").map_or("", |(_, target)| target);
    let docker_bridge = rule.contains("docker0") || rule.contains(" br-");
    target.starts_with("FLANNEL-")
        || target.starts_with("DOCKER")
        || (docker_bridge && target == "ACCEPT")
        || rule == "-A DOCKER-USER -j RETURN"
}

/// Removes our jumps and chains of both families (`flanneld --cleanup`); what is already
/// gone is fine.
pub async fn remove_all() -> Result<()> {
    for (ipv6, chain) in [false, true]
        .into_iter()
        .flat_map(|v6| [(v6, MASQ), (v6, FORWARD)])
    {
        let (table, _, own, _) = chain;
        let jump = jump(ipv6, &chain);
        let mut delete = vec!["-D", jump.chain];
        delete.extend(jump.spec.iter().map(String::as_str));
        while iptables(ipv6, table, &delete).await.is_ok() {}
        if iptables(ipv6, table, &["-S", own]).await.is_ok() {
            iptables(ipv6, table, &["-F", own]).await?;
            iptables(ipv6, table, &["-X", own]).await?;
        }
    }
    Ok(())
}

/// Makes the rules present and in order; returns true when something had to be (re)written.
///
/// Our own chains are rewritten whole when any rule is missing or out of place, so a changed
/// subnet or a rule deleted by hand comes back in flannel's order; jumps from built-in chains
/// are added when missing.
pub async fn ensure(rules: &[Rule]) -> Result<bool> {
    let mut changed = false;
    let mut own_chains: Vec<(bool, &str, &str)> = Vec::new();
    for rule in rules.iter().filter(|r| r.chain.starts_with("FLANNEL-")) {
        if !own_chains.contains(&(rule.ipv6, rule.table, rule.chain)) {
            own_chains.push((rule.ipv6, rule.table, rule.chain));
        }
    }
    for &(ipv6, table, chain) in &own_chains {
        let mine: Vec<&Rule> = (rules.iter())
            .filter(|r| r.ipv6 == ipv6 && r.chain == chain)
            .collect();
        let listed = iptables(ipv6, table, &["-S", chain]).await.ok();
        let wanted: Vec<String> = mine.iter().map(|r| listing(r)).collect();
        let present: Vec<String> = listed
            .as_deref()
            .unwrap_or_default()
            .lines()
            .filter(|line| line.starts_with("-A "))
            .map(str::to_owned)
            .collect();
        if present == wanted {
            continue;
        }
        changed = true;
        if listed.is_none() {
            iptables(ipv6, table, &["-N", chain]).await?;
        } else {
            iptables(ipv6, table, &["-F", chain]).await?;
        }
        for rule in mine {
            append(rule).await?;
        }
    }
    for rule in rules.iter().filter(|r| !r.chain.starts_with("FLANNEL-")) {
        let mut check = vec!["-C", rule.chain];
        check.extend(rule.spec.iter().map(String::as_str));
        if iptables(rule.ipv6, rule.table, &check).await.is_err() {
            changed = true;
            append(rule).await?;
        }
    }
    Ok(changed)
}

/// How `iptables -S` prints a rule.
fn listing(rule: &Rule) -> String {
    let spec: Vec<String> = rule
        .spec
        .iter()
        .map(|arg| {
            if arg.contains(' ') {
                format!("\"{arg}\"")
            } else {
                arg.clone()
            }
        })
        .collect();
    format!("-A {} {}", rule.chain, spec.join(" "))
}

async fn append(rule: &Rule) -> Result<()> {
    let mut args = vec!["-A", rule.chain];
    args.extend(rule.spec.iter().map(String::as_str));
    iptables(rule.ipv6, rule.table, &args).await.map(drop)
}

/// Runs `iptables`, or `ip6tables` when `ipv6`.
async fn iptables(ipv6: bool, table: &str, args: &[&str]) -> Result<String> {
    let command = if ipv6 { "ip6tables" } else { "iptables" };
    let output = Command::new(command)
        .args(["-w", "5", "-t", table])
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {command}"))?;
    if !output.status.success() {
        bail!(
            "{command} -t {table} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockers_defaults_and_ours_are_not_bypassed_rules_but_others_are() {
        for rule in [
            "-A FORWARD -j DOCKER-USER",
            "-A FORWARD -j DOCKER-ISOLATION-STAGE-1",
            "-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-A FORWARD -o docker0 -j DOCKER",
            "-A FORWARD -i docker0 ! -o docker0 -j ACCEPT",
            "-A FORWARD -i docker0 -o docker0 -j ACCEPT",
            "-A DOCKER-USER -j RETURN",
            "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD",
        ] {
            assert!(ours_or_dockers(rule), "{rule}");
        }
        for rule in [
            "-A FORWARD -d 10.1.5.2/32 -j DROP",
            "-A DOCKER-USER -s 10.1.0.0/16 -j REJECT --reject-with icmp-port-unreachable",
            "-A FORWARD -i docker0 -o docker0 -j DROP",
        ] {
            assert!(!ours_or_dockers(rule), "{rule}");
        }
    }

    #[test]
    fn rule_text_is_flannels() {
        let n: ipnet::Ipv4Net = "10.1.0.0/16".parse().unwrap();
        let s: ipnet::Ipv4Net = "10.1.83.0/24".parse().unwrap();
        let text: Vec<String> = masq_rules(n, s).iter().map(listing).collect();
        assert_eq!(
            text,
            [
                r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#,
                r#"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG -s 10.1.83.0/24 -d 10.1.0.0/16 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG -s 10.1.0.0/16 -d 10.1.83.0/24 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG ! -s 10.1.0.0/16 -d 10.1.83.0/24 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG -s 10.1.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#,
                r#"-A FLANNEL-POSTRTG ! -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#,
            ]
        );
        let text: Vec<String> = forward_rules(n).iter().map(listing).collect();
        assert_eq!(
            text,
            [
                r#"-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#,
                r#"-A FLANNEL-FWD -s 10.1.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
                r#"-A FLANNEL-FWD -d 10.1.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
            ]
        );
        assert!(masq_rules(n, s).iter().all(|rule| !rule.ipv6));
    }

    #[test]
    fn ipv6_rule_text_is_flannels() {
        let n: ipnet::Ipv6Net = "fd00:10::/48".parse().unwrap();
        let s: ipnet::Ipv6Net = "fd00:10:0:53::/64".parse().unwrap();
        let rules = masq_rules(n, s);
        assert!(rules.iter().all(|rule| rule.ipv6));
        let text: Vec<String> = rules.iter().map(listing).collect();
        assert_eq!(
            text,
            [
                r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#,
                r#"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG -s fd00:10:0:53::/64 -d fd00:10::/48 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG -s fd00:10::/48 -d fd00:10:0:53::/64 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG ! -s fd00:10::/48 -d fd00:10:0:53::/64 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG -s fd00:10::/48 ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#,
                r#"-A FLANNEL-POSTRTG ! -s fd00:10::/48 -d fd00:10::/48 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#,
            ]
        );
        let text: Vec<String> = forward_rules(n).iter().map(listing).collect();
        assert_eq!(
            text,
            [
                r#"-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#,
                r#"-A FLANNEL-FWD -s fd00:10::/48 -m comment --comment "flanneld forward" -j ACCEPT"#,
                r#"-A FLANNEL-FWD -d fd00:10::/48 -m comment --comment "flanneld forward" -j ACCEPT"#,
            ]
        );
    }
}
