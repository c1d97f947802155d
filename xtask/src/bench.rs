//! `cargo xtask bench [--quick]`: every datapath side by side on the same two-host testbed,
//! container to container, in interleaved rounds; medians with min-max, and ratios against
//! the kernel's vxlan (and the other baselines) round by round in the same run.

use std::{fmt::Write as _, fs, net::IpAddr, time::Duration};

use anyhow::{bail, Context, Result};
use flannel_tests::{
    agent::Agent,
    etcd::wait_for,
    testbed::{Container, Testbed, Underlay},
};
use serde_json::json;

use crate::{
    chart, rr, scale,
    stats::{round_ratios, stats_table, table_header, Metric},
    workspace_root,
};

/// A datapath as the bench runs it, for `--row`.
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub enum Row {
    /// Plain routing between the hosts: the no-overlay limit.
    HostGw,
    /// flannel's vxlan backend: the kernel's vxlan device (`--datapath=classic`).
    KernelVxlan,
    /// flannel's udp backend: the TUN device and a userspace loop (`--datapath=classic`).
    TunUdp,
    /// vxlan on eBPF, the default: TC decap, with the GRO device.
    EbpfVxlan,
    /// `--bpf-decap=xdp`.
    EbpfVxlanXdp,
    /// `--bpf-fast-path=false`: through the host's FORWARD chain, as flannel's traffic goes.
    EbpfVxlanForward,
    /// udp on eBPF, the default: TC decap, with the GRO device.
    EbpfUdp,
    /// `--bpf-decap=xdp`.
    EbpfUdpXdp,
    /// A dual-stack network's IPv6, container to container: flannel's `flannel-v6.1`.
    KernelVxlan6,
    /// A dual-stack network's IPv6 on eBPF (the default).
    EbpfVxlan6,
    /// vxlan's `DirectRouting` on eBPF: the hosts share a subnet, so no tunnel.
    EbpfDirect,
}

const ROWS: [Row; 11] = [
    Row::HostGw,
    Row::KernelVxlan,
    Row::TunUdp,
    Row::EbpfVxlan,
    Row::EbpfVxlanXdp,
    Row::EbpfVxlanForward,
    Row::EbpfUdp,
    Row::EbpfUdpXdp,
    Row::KernelVxlan6,
    Row::EbpfVxlan6,
    Row::EbpfDirect,
];

impl Row {
    fn name(self) -> &'static str {
        match self {
            Row::HostGw => "host-gw (plain routing)",
            Row::KernelVxlan => "vxlan, kernel device",
            Row::EbpfVxlan => "vxlan, eBPF TC (default)",
            Row::EbpfVxlanXdp => "vxlan, eBPF XDP",
            Row::EbpfVxlanForward => "vxlan, eBPF TC, through FORWARD",
            Row::EbpfUdp => "udp, eBPF TC (default)",
            Row::EbpfUdpXdp => "udp, eBPF XDP",
            Row::TunUdp => "udp, TUN loop",
            Row::KernelVxlan6 => "IPv6: vxlan, kernel device",
            Row::EbpfVxlan6 => "IPv6: vxlan, eBPF (default)",
            Row::EbpfDirect => "vxlan DirectRouting, eBPF",
        }
    }

    /// The config's backend (its JSON members) and flanneld's flags for this row.
    fn setup(self) -> (&'static str, &'static [&'static str]) {
        const VXLAN: &str = r#""Type": "vxlan""#;
        const UDP: &str = r#""Type": "udp""#;
        match self {
            Row::HostGw => (r#""Type": "host-gw""#, &[]),
            Row::KernelVxlan => (VXLAN, &["--datapath=classic"]),
            Row::TunUdp => (UDP, &["--datapath=classic"]),
            Row::EbpfVxlan => (VXLAN, &[]),
            Row::EbpfVxlanXdp => (VXLAN, &["--bpf-decap=xdp"]),
            Row::EbpfVxlanForward => (VXLAN, &["--bpf-fast-path=false"]),
            Row::EbpfUdp => (UDP, &[]),
            Row::EbpfUdpXdp => (UDP, &["--bpf-decap=xdp"]),
            Row::KernelVxlan6 => (VXLAN, &["--datapath=classic"]),
            Row::EbpfVxlan6 => (VXLAN, &[]),
            Row::EbpfDirect => (r#""Type": "vxlan", "DirectRouting": true"#, &[]),
        }
    }

    /// Container traffic takes the eBPF fast path (not the stack's FORWARD path).
    /// The row measures a dual-stack network's IPv6.
    fn ipv6(self) -> bool {
        matches!(self, Row::KernelVxlan6 | Row::EbpfVxlan6)
    }

    fn fast_path(self) -> bool {
        self.ebpf() && self != Row::EbpfVxlanForward
    }

    fn ebpf(self) -> bool {
        matches!(
            self,
            Row::EbpfVxlan
                | Row::EbpfVxlanXdp
                | Row::EbpfVxlanForward
                | Row::EbpfUdp
                | Row::EbpfUdpXdp
                | Row::EbpfVxlan6
                | Row::EbpfDirect
        )
    }
}

/// The underlay to measure on, for `--underlay`.
#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum UnderlayArg {
    /// NIC-like: segmentation on send, GRO on receive, one queue per CPU.
    Nic,
    /// veth passthrough: 64 KB GSO packets cross whole (an upper bound).
    Veth,
}

impl UnderlayArg {
    fn underlay(self) -> Underlay {
        match self {
            UnderlayArg::Nic => Underlay::NicLike,
            UnderlayArg::Veth => Underlay::Passthrough,
        }
    }
}

/// What `cargo xtask bench` was asked to run.
pub struct Options {
    pub quick: bool,
    /// Rounds instead of the default 3.
    pub rounds: Option<u32>,
    pub only: Option<Part>,
    /// The containers' TCP congestion control; the machine's by default.
    pub tcp_cc: Option<String>,
    /// One underlay; by default a full run measures both (NIC-like first), `--quick` the
    /// NIC-like one.
    pub underlay: Option<UnderlayArg>,
    /// Only these rows; all when empty.
    pub rows: Vec<Row>,
}

/// One measurement of one row.
#[derive(Clone, Copy)]
struct Sample {
    tcp_1: f64,
    tcp_4: f64,
    lat_p50: f64,
    lat_p99: f64,
    /// CPU busy (% of one core) per Gbit/s during the 1-stream run: all cores, the sending
    /// host's CPU and the receiving host's.
    cpu_per_gbit: f64,
    cpu_tx_per_gbit: f64,
    cpu_rx_per_gbit: f64,
    udp_kpps: f64,
    rss_mib: f64,
    converge_ms: f64,
}

const METRICS: [Metric<Sample>; 10] = [
    ("TCP 1 stream Gbit/s", |s| s.tcp_1),
    ("TCP 4 streams Gbit/s", |s| s.tcp_4),
    ("TCP RR p50 us (RTT/2)", |s| s.lat_p50),
    ("TCP RR p99 us (RTT/2)", |s| s.lat_p99),
    ("CPU % per Gbit/s", |s| s.cpu_per_gbit),
    ("sender CPU % per Gbit/s", |s| s.cpu_tx_per_gbit),
    ("receiver CPU % per Gbit/s", |s| s.cpu_rx_per_gbit),
    ("UDP 64 B kpps", |s| s.udp_kpps),
    ("agent RSS MiB", |s| s.rss_mib),
    ("lease put to first packet ms", |s| s.converge_ms),
];

/// A part of the bench, for `--only`.
#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum Part {
    /// Every datapath's traffic, container to container.
    Datapath,
    /// The control plane with 1,000 and 5,000 leases.
    Scale,
}

/// The samples of every row measured on one underlay.
struct UnderlayRun {
    underlay: Underlay,
    rows: Vec<(Row, Vec<Sample>)>,
}

pub fn run(options: &Options) -> Result<()> {
    // Measure the code users run: a release build.
    std::env::set_var("FLANNELD_BUILD_RELEASE", "1");
    flannel_tests::agent::flanneld();
    let cc = congestion_control(options.tcp_cc.as_deref())?;
    let quick = options.quick;
    let (rounds, seconds, changes) = if quick { (1, 2, 50) } else { (3, 5, 200) };
    let rounds = options.rounds.unwrap_or(rounds);
    let runs = |part| options.only.is_none_or(|only| only == part);
    let underlays = match options.underlay {
        Some(one) => vec![one.underlay()],
        None if quick => vec![Underlay::NicLike],
        None => vec![Underlay::NicLike, Underlay::Passthrough],
    };
    let rows: Vec<Row> = ROWS
        .into_iter()
        .filter(|row| options.rows.is_empty() || options.rows.contains(row))
        .collect();
    let mut datapath: Vec<UnderlayRun> = underlays
        .iter()
        .filter(|_| runs(Part::Datapath))
        .map(|&underlay| UnderlayRun {
            underlay,
            rows: rows.iter().map(|&row| (row, Vec::new())).collect(),
        })
        .collect();
    let mut scale: Vec<Vec<scale::Sample>> = vec![
        Vec::new();
        if runs(Part::Scale) {
            scale::SIZES.len()
        } else {
            0
        }
    ];
    for round in 1..=rounds {
        for run in &mut datapath {
            for (row, samples) in &mut run.rows {
                let what = format!("{}, {} underlay", row.name(), run.underlay.name());
                eprintln!("round {round}/{rounds}: {what}");
                let sample = measure(*row, run.underlay, seconds, &cc)
                    .with_context(|| format!("bench row {what}"))?;
                samples.push(sample);
            }
        }
        for (leases, samples) in scale::SIZES.iter().zip(&mut scale) {
            eprintln!("round {round}/{rounds}: control plane with {leases} leases");
            let sample = scale::measure(*leases, changes)
                .with_context(|| format!("control plane with {leases} leases"))?;
            samples.push(sample);
        }
    }
    let Report {
        markdown: md,
        json,
        charts,
    } = report(&datapath, &scale, rounds, seconds, changes, &cc)?;
    println!("{md}");
    let dir = workspace_root().join("target/bench");
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("report.md"), &md)?;
    fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    for (file, svg) in charts {
        fs::write(dir.join(file), svg)?;
    }
    eprintln!("wrote {}", dir.join("report.md").display());
    Ok(())
}

/// `chosen`, if this kernel has it, or the machine's default congestion control.
fn congestion_control(chosen: Option<&str>) -> Result<String> {
    let read = |file: &str| -> Result<String> {
        let path = format!("/proc/sys/net/ipv4/{file}");
        Ok(fs::read_to_string(&path)
            .with_context(|| format!("reading {path}"))?
            .trim()
            .to_owned())
    };
    let Some(chosen) = chosen else {
        return read("tcp_congestion_control");
    };
    let available = read("tcp_available_congestion_control")?;
    if !available.split_whitespace().any(|cc| cc == chosen) {
        bail!("--tcp-cc {chosen}: this kernel has {available}");
    }
    Ok(chosen.to_owned())
}

/// Builds a fresh testbed for `row` on `underlay`, checks that it carries traffic, and
/// measures it.
fn measure(row: Row, underlay: Underlay, seconds: u32, cc: &str) -> Result<Sample> {
    let (backend, flags) = row.setup();
    // The agents resync every second so the fast path learns the containers quickly.
    let flags = [&["--iptables-resync=1"], flags].concat();
    let ipv6 = if row.ipv6() {
        r#""EnableIPv6": true, "IPv6Network": "fd00:10::/48", "#
    } else {
        ""
    };
    let config = format!(r#"{{"Network": "10.1.0.0/16", {ipv6}"Backend": {{{backend}}}}}"#);
    let cluster = if row.ipv6() {
        Testbed::dual_stack_cluster_on
    } else {
        Testbed::cluster_on
    };
    let (bed, mut agents, containers) = cluster(underlay, &config, &[&flags, &flags])?;
    let (client, server) = (&containers[0], &containers[1]);
    let target = match server.ipv6 {
        Some(ipv6) if row.ipv6() => IpAddr::V6(ipv6),
        _ => IpAddr::V4(server.ip),
    };
    // Each host receives on its measuring program's CPU, as if on a machine of its own.
    bed.receive_on(0, CLIENT_CPU)?;
    bed.receive_on(1, server_cpu())?;
    // A row that can't pass traffic fails the bench; it never gets a number.
    wait_for("the row to pass traffic", Duration::from_secs(20), || {
        client.ping(target).is_ok()
    })?;
    // The fast path rows: measure once it knows the containers.
    for agent in agents.iter().filter(|_| row.fast_path()) {
        wait_for("the fast path endpoints", Duration::from_secs(20), || {
            agent.log().contains("fast path endpoints updated")
        })?;
    }
    let (busy, started) = (cpu_busy_seconds()?, std::time::Instant::now());
    let tcp_1 = iperf(client, server, target, 1, seconds, cc)?;
    let elapsed = started.elapsed().as_secs_f64();
    let busy: Vec<f64> = cpu_busy_seconds()?
        .iter()
        .zip(&busy)
        .map(|(after, before)| (after - before) / elapsed * 100.0 / tcp_1)
        .collect();
    let tcp_4 = iperf(client, server, target, 4, seconds, cc)?;
    let cpus = (CLIENT_CPU, server_cpu());
    let (lat_p50, lat_p99) = rr::latency(client, server, target, seconds, cpus)?;
    bed.share_receive_cpus()?;
    let udp_kpps = udp_rate(client, server, target, seconds)?;
    let rss: u64 = agents.iter().map(Agent::rss_kib).sum::<Result<u64>>()?;
    let converge_ms = convergence(&bed, &mut agents[1], client, server)?;
    Ok(Sample {
        tcp_1,
        tcp_4,
        lat_p50,
        lat_p99,
        cpu_per_gbit: busy.iter().sum(),
        cpu_tx_per_gbit: busy[CLIENT_CPU],
        cpu_rx_per_gbit: busy[server_cpu()],
        udp_kpps,
        rss_mib: rss as f64 / agents.len() as f64 / 1024.0,
        converge_ms,
    })
}

/// Milliseconds from a lease put in etcd to the first packet across: the server's host leaves
/// (agent stopped, lease deleted, the client can't reach it), then its agent starts again and
/// puts the lease back, while the client pings every 2 ms. From the agent's own log line for
/// the put to ping's timestamp of the first reply.
fn convergence(
    bed: &Testbed,
    agent: &mut Agent,
    client: &Container,
    server: &Container,
) -> Result<f64> {
    let key = agent.lease_key()?;
    agent.terminate()?;
    bed.etcd.etcdctl(&["del", &key])?;
    wait_for("the peer to be gone", Duration::from_secs(20), || {
        client.ping(server.ip).is_err()
    })?;
    let target = server.ip.to_string();
    let pings = std::thread::scope(|scope| -> Result<String> {
        let pinger = scope.spawn(|| {
            client.ns.exec(
                "ping",
                &["-D", "-i", "0.002", "-c", "2500", "-W", "1", &target],
            )
        });
        // ping is sending before the lease comes back.
        std::thread::sleep(Duration::from_millis(200));
        agent.restart()?;
        agent.wait_ready(Duration::from_secs(20))?;
        // Some packets get no reply: ping then exits non-zero, with its report on stdout.
        Ok(match pinger.join().expect("pinger thread") {
            Ok(out) => out,
            Err(e) => e.to_string(),
        })
    })?;
    let put = agent
        .log()
        .lines()
        .rfind(|l| l.contains("acquired a new lease"))
        .and_then(|l| rfc3339_seconds(l.split_whitespace().next()?))
        .context("no lease put in the agent's log")?;
    let first_reply = pings
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse::<f64>().ok())
        .find(|t| *t >= put)
        .context("no reply after the lease came back")?;
    Ok((first_reply - put) * 1000.0)
}

/// Seconds since the epoch of a UTC timestamp like `2026-11-22T16:51:39.636528Z`.
fn rfc3339_seconds(text: &str) -> Option<f64> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let mut ymd = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, d) = (ymd.next()?.ok()?, ymd.next()?.ok()?, ymd.next()?.ok()?);
    let mut hms = time.split(':');
    let (h, min, sec): (f64, f64, f64) = (
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
    );
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + sec)
}

/// TCP throughput in Gbit/s with `streams` streams under congestion control `cc`, which is
/// named rather than inherited: BBR paces, and its rate is then its model's as much as the
/// path's.
fn iperf(
    client: &Container,
    server: &Container,
    target: IpAddr,
    streams: u32,
    seconds: u32,
    cc: &str,
) -> Result<f64> {
    let (streams, seconds) = (streams.to_string(), seconds.to_string());
    let args = ["-P", &streams, "-t", &seconds, "-C", cc];
    let json = iperf3(client, server, target, &args)?;
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no iperf3 result")?;
    Ok(bps / 1e9)
}

/// One iperf3 run from `client` to a one-off server in `server` (at `target`), each on its
/// CPU, with the client's `args`: its JSON report.
fn iperf3(
    client: &Container,
    server: &Container,
    target: IpAddr,
    args: &[&str],
) -> Result<serde_json::Value> {
    server.ns.exec(
        "taskset",
        &pinned(&server_cpu().to_string(), "iperf3", &["-s", "-D", "-1"]),
    )?;
    let ip = target.to_string();
    let args = [&["-c", &ip, "-J"][..], args].concat();
    let mut out = None;
    wait_for("iperf3 to connect", Duration::from_secs(10), || {
        out = client
            .ns
            .exec("taskset", &pinned(&CLIENT_CPU.to_string(), "iperf3", &args))
            .ok();
        out.is_some()
    })?;
    Ok(serde_json::from_str(&out.unwrap())?)
}

/// The client's CPU. Its server runs on the last CPU, as if on another host: left to the
/// scheduler, both sometimes share a CPU and a single stream's rate changes by half.
const CLIENT_CPU: usize = 0;

fn server_cpu() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
}

/// `taskset` arguments that run `program args` on `cpu`.
fn pinned<'a>(cpu: &'a str, program: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    [&["-c", cpu, program][..], args].concat()
}

/// CPU time spent busy since boot, per CPU, from /proc/stat, in seconds.
fn cpu_busy_seconds() -> Result<Vec<f64>> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let stat = fs::read_to_string("/proc/stat")?;
    let per_cpu = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit));
    let busy: Vec<f64> = per_cpu
        .map(|line| {
            let fields: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .map(|f| f.parse().unwrap_or(0.0))
                .collect();
            // user nice system idle iowait irq softirq steal ...: all but idle and iowait.
            (fields.iter().take(8).sum::<f64>() - fields[3] - fields[4]) / ticks
        })
        .collect();
    if busy.len() <= server_cpu() {
        bail!("/proc/stat lists {} CPUs", busy.len());
    }
    Ok(busy)
}

/// 64-byte UDP datagrams as fast as iperf3 sends them: thousands received per second.
fn udp_rate(client: &Container, server: &Container, target: IpAddr, seconds: u32) -> Result<f64> {
    let seconds = seconds.to_string();
    let args = ["-u", "-l", "64", "-b", "0", "-t", &seconds];
    let json = iperf3(client, server, target, &args)?;
    let sum = &json["end"]["sum"];
    let sent = sum["packets"].as_f64().context("no UDP packet count")?;
    let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
    let secs = sum["seconds"].as_f64().context("no UDP duration")?;
    Ok((sent - lost) / secs / 1000.0)
}

/// Charts drawn from the run: (file, metric index, title, unit).
const CHARTS: [(&str, usize, &str, &str); 3] = [
    (
        "tcp-1-stream.svg",
        0,
        "TCP throughput, 1 stream (median, min-max)",
        "Gbit/s",
    ),
    (
        "tcp-4-streams.svg",
        1,
        "TCP throughput, 4 streams (median, min-max)",
        "Gbit/s",
    ),
    (
        "tcp-rr-p50.svg",
        2,
        "TCP request/response latency p50, RTT/2 (median, min-max)",
        "us",
    ),
];

/// A run's report: Markdown, JSON, and charts (file name, SVG).
struct Report {
    markdown: String,
    json: serde_json::Value,
    charts: Vec<(String, String)>,
}

/// The report of a run; `datapath` (per row) or `scale` (per size) is empty when not run.
fn report(
    datapath: &[UnderlayRun],
    scale: &[Vec<scale::Sample>],
    rounds: u32,
    seconds: u32,
    changes: usize,
    cc: &str,
) -> Result<Report> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?
        .trim()
        .to_owned();
    let cores = std::thread::available_parallelism()?.get();
    let mut md = String::new();
    // The command as run, options and all.
    let args: Vec<String> = std::env::args().skip_while(|a| a != "bench").collect();
    writeln!(md, "# cargo xtask {}\n", args.join(" "))?;
    let tools = tool_versions();
    writeln!(
        md,
        "Linux {kernel}, {cores} cores, flanneld {} (release build), {}; TCP congestion \
         control {cc} (iperf3 -C). {rounds} interleaved round(s); median (min-max).\n",
        env!("CARGO_PKG_VERSION"),
        tools.join(", ")
    )?;
    let mut json =
        json!({"kernel": kernel, "cores": cores, "rounds": rounds, "tools": tools, "tcp_cc": cc});
    let mut charts = Vec::new();
    if !datapath.is_empty() {
        json["seconds"] = json!(seconds);
        let sections = datapath
            .iter()
            .map(|run| datapath_section(&mut md, run, seconds, &mut charts))
            .collect::<Result<Vec<_>>>()?;
        json["underlays"] = json!(sections);
    }
    if !scale.is_empty() {
        json["changes"] = json!(changes);
        json["scale"] = scale_section(&mut md, scale, changes)?;
    }
    Ok(Report {
        markdown: md,
        json,
        charts,
    })
}

/// The first line of each measuring tool's version output, as "tool version".
fn tool_versions() -> Vec<String> {
    [("iperf3", "--version"), ("etcd", "--version")]
        .iter()
        .map(|(tool, flag)| {
            let output = std::process::Command::new(tool).arg(flag).output();
            let text = output
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let version = text
                .split_whitespace()
                .find(|word| word.starts_with(|c: char| c.is_ascii_digit()))
                .unwrap_or("unknown");
            format!("{tool} {version}")
        })
        .collect()
}

/// What each underlay is, for the report.
fn underlay_text(underlay: Underlay) -> &'static str {
    match underlay {
        Underlay::NicLike => {
            "What a real NIC does: the sending host segments every GSO packet into MTU-sized \
             frames (its underlay link has TSO and GSO off, as a NIC without tunnel offload), \
             and the receiving host merges them again with GRO; each link has one queue per \
             CPU, as a multi-queue NIC with RSS spreads flows (the 4-stream measure). Each \
             host's receive processing (its link's NAPI: GRO, decap, the container's stack) \
             runs on its measuring program's CPU, as on two machines, so the sender's and the \
             receiver's CPU are measured apart, and ahead of the programs there, as a NIC's \
             interrupt runs it (for the UDP flood, at their priority: the kernel's own \
             overload rule). The two hosts are joined by a cable: no host forwards frames for \
             a switch. These are the numbers users' hosts give."
        }
        Underlay::Passthrough => {
            "A plain veth underlay hands the sender's 64 KB GSO packets to the receiver \
             whole, which no NIC does: an upper bound, not what users' hosts give. The \
             receiving host's processing runs on the sender's CPU here (a veth delivers on the \
             sending CPU), so the sender and receiver CPU columns split the work only roughly. \
             The hosts' links meet on a bridge in a namespace of its own, the switch: it \
             forwards without netfilter, as a switch does, but on the sending host's CPU."
        }
    }
}

/// One underlay's datapath rows with their ratios and charts; returns them as JSON.
fn datapath_section(
    md: &mut String,
    run: &UnderlayRun,
    seconds: u32,
    charts: &mut Vec<(String, String)>,
) -> Result<serde_json::Value> {
    let underlay = run.underlay.name();
    writeln!(
        md,
        "## Datapaths, {underlay} underlay\n\n{} Two hosts in network namespaces (MTU 1500), \
         one container each, container to container; {seconds} s per measure. The measuring \
         clients run on CPU 0 and their servers on the last CPU, as on two hosts.\n",
        underlay_text(run.underlay)
    )?;
    let rows: Vec<(String, &[Sample])> = run
        .rows
        .iter()
        .map(|(row, s)| (row.name().to_owned(), s.as_slice()))
        .collect();
    let (stats, json_rows) = stats_table(md, &rows, &METRICS)?;
    // Ratios against plain routing and flannel's two tunnelling backends, round by round: a
    // round's rows run minutes apart, so what slows this shared machine for a while slows the
    // row and its baseline alike, and their ratio keeps what the datapaths differ by.
    for baseline in [
        Row::KernelVxlan,
        Row::TunUdp,
        Row::HostGw,
        Row::KernelVxlan6,
    ] {
        let Some(base) = run.rows.iter().position(|(r, _)| *r == baseline) else {
            continue;
        };
        let base = &run.rows[base].1;
        writeln!(
            md,
            "\nRatios to {}, each round's measure against the same round's {}: median (min-max) \
             over rounds (higher is better for throughput and rate; lower for latency, CPU and \
             memory):\n",
            baseline.name(),
            baseline.name()
        )?;
        table_header(md, &METRICS)?;
        for (row, samples) in &run.rows {
            write!(md, "| {} |", row.name())?;
            for (_, get) in METRICS {
                let ratio = round_ratios(samples, base, get);
                write!(
                    md,
                    " {:.2}x ({:.2}-{:.2}) |",
                    ratio.median, ratio.min, ratio.max
                )?;
            }
            writeln!(md)?;
        }
    }
    writeln!(md)?;
    let prefix = match run.underlay {
        Underlay::NicLike => "nic",
        Underlay::Passthrough => "veth",
    };
    for (file, m, title, unit) in CHARTS {
        let bars: Vec<chart::Bar> = run
            .rows
            .iter()
            .zip(&stats)
            .map(|((row, _), row_stats)| chart::Bar {
                label: row.name(),
                median: row_stats[m].median,
                min: row_stats[m].min,
                max: row_stats[m].max,
            })
            .collect();
        let title = format!("{title}, {underlay} underlay");
        let file = format!("{prefix}-{file}");
        charts.push((file.clone(), chart::svg(&title, unit, &bars)));
        writeln!(md, "![{title}]({file})")?;
    }
    Ok(json!({"underlay": underlay, "rows": json_rows}))
}

/// The control-plane rows, one per lease count; returns them as JSON.
fn scale_section(
    md: &mut String,
    samples: &[Vec<scale::Sample>],
    changes: usize,
) -> Result<serde_json::Value> {
    writeln!(
        md,
        "\n## Control plane at scale\n\nOne host on the eBPF vxlan datapath, started with the \
         given number of other hosts' leases in etcd (written by the bench). \"Start to all \
         peers\" runs from the agent's start until its pinned routes map holds every peer \
         subnet; a lease change is a peer moving to a new public IP, timed from the etcd put \
         until the map says so, {changes} changes one after another. The BPF hash maps are \
         preallocated for 16,384 peers; only the routes' LPM trie grows with the leases.\n"
    )?;
    let rows: Vec<(String, &[scale::Sample])> = scale::SIZES
        .iter()
        .zip(samples)
        .map(|(leases, s)| (format!("{leases} leases"), s.as_slice()))
        .collect();
    let (_, json_rows) = stats_table(md, &rows, &scale::METRICS)?;
    Ok(json!(json_rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_timestamps_to_epoch_seconds() {
        assert_eq!(rfc3339_seconds("1970-01-01T00:00:00Z"), Some(0.0));
        // date -u -d 2026-11-22T16:51:39Z +%s
        assert_eq!(
            rfc3339_seconds("2026-11-22T16:51:39Z"),
            Some(1_795_366_299.0)
        );
        let fraction = rfc3339_seconds("2026-11-22T16:51:39.636528Z").unwrap() - 1_795_366_299.0;
        assert!((fraction - 0.636528).abs() < 1e-6);
        assert_eq!(rfc3339_seconds("yesterday"), None);
    }
}
