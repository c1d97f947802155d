//! `cargo xtask demo`: etcd and three hosts in network namespaces on one underlay, a
//! dual-stack vxlan network, each host with a docker0-style bridge on its FLANNEL_SUBNET and
//! FLANNEL_IPV6_SUBNET and two containers, flanneld on every host; then every container pings
//! every other once over IPv4 and IPv6 (each its pair's first contact, which must answer
//! within 100 ms), and iperf3 runs across. Cleans up on exit and Ctrl-C.

use std::{net::IpAddr, time::Duration};

use anyhow::{bail, Context, Result};
use flannel_tests::{
    etcd::wait_for,
    netns::remove_own_namespaces,
    testbed::{Container, Testbed},
};

const HOSTS: usize = 3;
/// The slowest a first ping may answer.
const FIRST_CONTACT: Duration = Duration::from_millis(100);
const CONFIG: &str = r#"{"Network": "10.1.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10::/48", "Backend": {"Type": "vxlan"}}"#;

pub fn run() -> Result<()> {
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: removing the demo's namespaces");
        remove_own_namespaces();
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")?;
    println!("building flanneld ...");
    flannel_tests::agent::flanneld();

    let bed = Testbed::new(HOSTS)?;
    println!("etcd at {}; network config: {CONFIG}", bed.etcd.endpoint());
    bed.put_config(CONFIG)?;
    let mut agents = Vec::new();
    let mut containers: Vec<(usize, Container)> = Vec::new();
    println!(
        "\n{:<6} {:<15} {:<15} {:<20} containers",
        "host", "public IP", "subnet", "IPv6 subnet"
    );
    for host in 0..HOSTS {
        bed.enable_ipv6(host)?;
        let mut agent = bed.agent(host, &["--ip-masq", "--iptables-resync=1"])?;
        agent.wait_ready(Duration::from_secs(30))?;
        let subnet = agent.subnet()?;
        let mut pair = [
            bed.add_docker_container(host, &agent, 2)?,
            bed.add_docker_container(host, &agent, 3)?,
        ];
        for container in &mut pair {
            bed.add_ipv6(host, &agent, container)?;
        }
        println!(
            "{:<6} {:<15} {:<15} {:<20} {}, {}",
            format!("h{host}"),
            Testbed::host_ip(host),
            subnet,
            agent.subnet_env("FLANNEL_IPV6_SUBNET")?,
            pair[0].ip,
            pair[1].ip
        );
        containers.extend(pair.into_iter().map(|c| (host, c)));
        agents.push(agent);
    }

    // Every host routes every other's subnets before the first ping (nothing is sent to
    // find out): each ping below is its pair's first contact.
    for host in 0..agents.len() {
        for (_, other) in agents
            .iter()
            .enumerate()
            .filter(|(other, _)| *other != host)
        {
            for subnet in [other.subnet()?, other.ipv6_subnet()?.to_string()] {
                bed.wait_routed(host, &subnet, Duration::from_secs(20))?;
            }
        }
    }
    let mut failures = 0;
    for family in ["IPv4", "IPv6"] {
        let address = |container: &Container| match (family, container.ipv6) {
            ("IPv6", Some(ipv6)) => IpAddr::V6(ipv6),
            _ => IpAddr::V4(container.ip),
        };
        let width = if family == "IPv6" { 20 } else { 12 };
        println!("\nfirst ping over {family} (round trip ms), every container to every other:");
        print!("{:<width$}", "from \\ to");
        for (_, to) in &containers {
            print!("{:>width$}", address(to).to_string());
        }
        println!();
        for (_, from) in &containers {
            print!("{:<width$}", address(from).to_string());
            for (_, to) in &containers {
                // A first packet held back (an unsettled address, a missing entry) costs
                // about a second; resolving neighbours on the way, well under a millisecond.
                let cell = match from.ping_once(address(to), Duration::from_secs(2)) {
                    Ok(rtt) if rtt <= FIRST_CONTACT => format!("{:.3}", rtt.as_secs_f64() * 1e3),
                    Ok(rtt) => {
                        failures += 1;
                        format!("SLOW {:.0}", rtt.as_secs_f64() * 1e3)
                    }
                    Err(_) => {
                        failures += 1;
                        "FAIL".into()
                    }
                };
                print!("{cell:>width$}");
            }
            println!();
        }
    }

    let (server, client) = (&containers[0].1, &containers[2].1);
    // Measure once the fast path knows the containers (the agents learn them every resync).
    for agent in &agents[..2] {
        wait_for("the fast path endpoints", Duration::from_secs(20), || {
            agent.log().contains("fast path endpoints updated")
        })?;
    }
    let gbits = iperf(server, client)?;
    println!(
        "\niperf3 TCP, {} (h0) <- {} (h1), 3 s: {gbits:.2} Gbit/s",
        server.ip, client.ip
    );
    println!("datapath: dual-stack vxlan on our eBPF programs (flanneld --datapath=ebpf)");
    drop(agents);
    if failures > 0 {
        bail!("{failures} first pings failed or took over {FIRST_CONTACT:?}");
    }
    println!(
        "\nall {} containers reach each other over IPv4 and IPv6; cleaning up",
        containers.len()
    );
    Ok(())
}

fn iperf(server: &Container, client: &Container) -> Result<f64> {
    server.ns.exec("iperf3", &["-s", "-D", "-1"])?;
    let ip = server.ip.to_string();
    // The daemonized server may take a moment to listen: retry the connect briefly.
    let mut last = None;
    for _ in 0..50 {
        match client.ns.exec("iperf3", &["-c", &ip, "-t", "3", "-J"]) {
            Ok(out) => {
                let json: serde_json::Value = serde_json::from_str(&out)?;
                let bps = json["end"]["sum_received"]["bits_per_second"]
                    .as_f64()
                    .context("no throughput in iperf3's report")?;
                return Ok(bps / 1e9);
            }
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last.unwrap()).context("iperf3 across the overlay")
}
