//! `--ip-masq` and `--iptables-forward-rules` in iptables mode: flannel's chains and rules,
//! exactly as flannel writes them, through the `iptables` and `ip6tables` commands (no library
//! speaks nftables' iptables-compat). Our chains are written whole, atomically, with
//! `iptables-restore --noflush`: no moment without them.

use std::process::Stdio;

use tokio::{io::AsyncWriteExt, process::Command};

use crate::host::rules::{self, Hook, Match, Verdict};
use anyhow::{bail, Context, Result};

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

fn chain_of(hook: Hook) -> &'static Chain {
    match hook {
        Hook::Postrouting => &MASQ,
        Hook::Forward => &FORWARD,
    }
}

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

/// `chain` as iptables rules, the built-in chain's jump first.
pub fn rules(chain: &rules::Chain) -> Vec<Rule> {
    let ours = chain_of(chain.hook);
    let own = chain.rules.iter().map(|r| {
        let matches: Vec<String> = r.matches.iter().map(match_text).collect();
        let target = match r.verdict {
            Verdict::Return => "-j RETURN",
            Verdict::Accept => "-j ACCEPT",
            Verdict::Masquerade { fully_random: true } => "-j MASQUERADE --random-fully",
            Verdict::Masquerade {
                fully_random: false,
            } => "-j MASQUERADE",
        };
        rule(chain.ipv6, ours, ours.2, &matches.join(" "), target)
    });
    std::iter::once(jump(chain.ipv6, ours)).chain(own).collect()
}

fn match_text(matched: &Match) -> String {
    match matched {
        Match::Mark(bits) => format!("-m mark --mark {bits:#x}/{bits:#x}"),
        Match::Source(n) => format!("-s {n}"),
        Match::NotSource(n) => format!("! -s {n}"),
        Match::Destination(n) => format!("-d {n}"),
        Match::NotDestination(n) => format!("! -d {n}"),
    }
}

/// Whether `iptables` (`ip6tables` for IPv6) runs here.
pub async fn available(ipv6: bool) -> bool {
    Command::new(command(ipv6))
        .arg("--version")
        .output()
        .await
        .is_ok_and(|output| output.status.success())
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
/// Our own chains are rewritten whole, in one `iptables-restore --noflush` transaction, when
/// any rule is missing or out of place, so a changed subnet or a rule deleted by hand comes
/// back in flannel's order; jumps from built-in chains are added when missing.
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
        if present != wanted {
            changed = true;
            // Declared in a --noflush restore, the chain is created or emptied, and filled,
            // in one commit.
            let input = format!(
                "*{table}\n:{chain} - [0:0]\n{}\nCOMMIT\n",
                wanted.join("\n")
            );
            restore(ipv6, &input).await?;
        }
    }
    for rule in rules.iter().filter(|r| !r.chain.starts_with("FLANNEL-")) {
        let mut check = vec!["-C", rule.chain];
        check.extend(rule.spec.iter().map(String::as_str));
        if iptables(rule.ipv6, rule.table, &check).await.is_err() {
            changed = true;
            let mut append = vec!["-A", rule.chain];
            append.extend(rule.spec.iter().map(String::as_str));
            iptables(rule.ipv6, rule.table, &append).await?;
        }
    }
    Ok(changed)
}

/// How `iptables -S` prints a rule (and `iptables-restore` reads it).
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

fn command(ipv6: bool) -> &'static str {
    if ipv6 {
        "ip6tables"
    } else {
        "iptables"
    }
}

/// Runs `iptables`, or `ip6tables` when `ipv6`.
async fn iptables(ipv6: bool, table: &str, args: &[&str]) -> Result<String> {
    let command = command(ipv6);
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

/// Feeds `input` to `iptables-restore --noflush` (`ip6tables-restore` when `ipv6`).
async fn restore(ipv6: bool, input: &str) -> Result<()> {
    let command = format!("{}-restore", command(ipv6));
    let mut child = Command::new(&command)
        .args(["--noflush", "-w", "5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {command}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(input.as_bytes()).await?;
    drop(stdin);
    let output = child.wait_with_output().await?;
    if !output.status.success() {
        bail!(
            "{command} --noflush failed: {}; its input:\n{input}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
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
        let masq = |fully_random| rules(&rules::masquerade(n.into(), s.into(), fully_random));
        let text: Vec<String> = masq(true).iter().map(listing).collect();
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
        let text: Vec<String> = rules(&rules::forward(n.into()))
            .iter()
            .map(listing)
            .collect();
        assert_eq!(
            text,
            [
                r#"-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#,
                r#"-A FLANNEL-FWD -s 10.1.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
                r#"-A FLANNEL-FWD -d 10.1.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
            ]
        );
        assert!(masq(true).iter().all(|rule| !rule.ipv6));
        // --ip-masq-fully-random-disable: flannel's MASQUERADE without --random-fully.
        let plain: Vec<String> = masq(false).iter().map(listing).collect();
        assert_eq!(
            plain[5..],
            [
                r#"-A FLANNEL-POSTRTG -s 10.1.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE"#,
                r#"-A FLANNEL-POSTRTG ! -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE"#,
            ]
        );
    }

    #[test]
    fn ipv6_rule_text_is_flannels() {
        let n: ipnet::Ipv6Net = "fd00:10::/48".parse().unwrap();
        let s: ipnet::Ipv6Net = "fd00:10:0:53::/64".parse().unwrap();
        let masq = rules(&rules::masquerade(n.into(), s.into(), true));
        assert!(masq.iter().all(|rule| rule.ipv6));
        let text: Vec<String> = masq.iter().map(listing).collect();
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
        let text: Vec<String> = rules(&rules::forward(n.into()))
            .iter()
            .map(listing)
            .collect();
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
