//! Network namespaces as test hosts, removed on drop (also when the test fails).

use std::{
    fs::File,
    net::IpAddr,
    os::fd::AsRawFd,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// Runs a command and returns its stdout; a failure names the command and its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `program` as a check: true when it succeeds, false when it exits with status 1 (the
/// "no" of a check: `ping` got no reply, `test` found nothing, `dpkg -s` knows no such
/// package); an error otherwise, so a check whose tool failed never passes.
pub fn check(program: &str, args: &[&str]) -> Result<bool> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    match output.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    }
}

/// A network namespace with a name unique to this process and test.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "ft-{role}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        run("ip", &self.entering(program, args))
    }

    /// `check` inside the namespace.
    pub fn check(&self, program: &str, args: &[&str]) -> Result<bool> {
        check("ip", &self.entering(program, args))
    }

    /// `ip`'s arguments that run `program` with `args` inside the namespace.
    fn entering<'a>(&'a self, program: &'a str, args: &[&'a str]) -> Vec<&'a str> {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        full
    }

    /// Whether the namespace has an interface `name` (listing them must work).
    pub fn has_link(&self, name: &str) -> Result<bool> {
        let links: Vec<serde_json::Value> =
            serde_json::from_str(&self.ip(&["-j", "link", "show"])?)?;
        Ok(links.iter().any(|link| link["ifname"] == name))
    }

    /// Runs `f` on a thread that has entered this namespace: sockets and netlink calls it
    /// makes (aya's attach, for instance) act inside the namespace.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns on this thread only, with a valid namespace fd.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        bail!(
                            "setns into {}: {}",
                            self.name,
                            std::io::Error::last_os_error()
                        );
                    }
                    Ok(f())
                })
                .join()
                .expect("netns thread panicked")
        })
    }

    /// Pings `to` every 10 ms, `count` times, while `during` runs (it starts once a first
    /// reply has come back: traffic flows); returns how many of them got no reply.
    pub fn pings_lost_while(
        &self,
        to: impl Into<IpAddr>,
        count: u32,
        during: impl FnOnce(),
    ) -> Result<u32> {
        use std::io::{BufRead, BufReader};
        let (target, count_arg) = (to.into().to_string(), count.to_string());
        let mut ping = Command::new("ip")
            .args([
                "netns", "exec", &self.name, "ping", "-i", "0.01", "-c", &count_arg,
            ])
            .args(["-W", "1", &target])
            .stdout(Stdio::piped())
            .spawn()
            .context("running ping")?;
        let stdout = ping.stdout.take().context("ping's output")?;
        let (replied, first_reply) = std::sync::mpsc::channel();
        // Each reply is a line "64 bytes from ..."; the summary "300 packets transmitted,
        // 298 received, ..." comes last.
        let reader = thread::spawn(move || {
            let mut summary = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains(" bytes from ") {
                    let _ = replied.send(());
                } else if line.contains(" received") {
                    summary = Some(line);
                }
            }
            summary
        });
        if first_reply.recv_timeout(Duration::from_secs(5)).is_err() {
            let _ = ping.kill();
            bail!("no reply from {target} within 5 s: nothing to measure against");
        }
        during();
        ping.wait().context("waiting for ping")?;
        let summary = reader.join().expect("the reading thread");
        let received = (summary.as_deref())
            .and_then(|s| {
                s.split(", ")
                    .find_map(|p| p.strip_suffix(" received")?.parse::<u32>().ok())
            })
            .with_context(|| format!("no ping summary from ping to {target}"))?;
        Ok(count - received)
    }

    /// How many packets matching the tcpdump `filter` cross `dev` while `during` runs.
    pub fn packets_seen(&self, dev: &str, filter: &str, during: impl FnOnce()) -> Result<usize> {
        use std::io::{BufRead, BufReader, Read};
        let mut tcpdump = Command::new("ip")
            .args([
                "netns", "exec", &self.name, "tcpdump", "-i", dev, "-n", "-l", "-q",
            ])
            .arg("--immediate-mode")
            .args(filter.split_whitespace())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running tcpdump")?;
        // It says so on stderr once it captures.
        let mut stderr = BufReader::new(tcpdump.stderr.take().expect("piped"));
        let mut line = String::new();
        while !line.contains("listening on") {
            line.clear();
            if stderr.read_line(&mut line)? == 0 {
                bail!("tcpdump on {}'s {dev} stopped: {line}", self.name);
            }
        }
        during();
        // What was captured is flushed as it exits on SIGINT.
        run("kill", &["-INT", &tcpdump.id().to_string()])?;
        let mut captured = String::new();
        tcpdump
            .stdout
            .take()
            .expect("piped")
            .read_to_string(&mut captured)?;
        tcpdump.wait()?;
        Ok(captured
            .lines()
            .filter(|line| !line.trim().is_empty())
            .count())
    }

    /// Waits, as a container runtime does, until no IPv6 address of `devs` is tentative: the
    /// kernel holds an interface's first IPv6 packets while duplicate address detection runs
    /// (about a second). Fails on an address whose detection failed, or after 10 s.
    pub fn settle_ipv6(&self, devs: &[&str]) -> Result<()> {
        const BOUND: Duration = Duration::from_secs(10);
        let deadline = Instant::now() + BOUND;
        for dev in devs {
            loop {
                let unsettled = self.ip(&["-6", "addr", "show", "dev", dev, "tentative"])?;
                if unsettled.contains("dadfailed") {
                    bail!(
                        "duplicate address detection failed on {}'s {dev}: {unsettled}",
                        self.name
                    );
                }
                if unsettled.trim().is_empty() {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{}'s {dev} still has tentative IPv6 addresses after {BOUND:?}: {unsettled}", self.name);
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// The programs (name, id) on `dev`'s TCX `kind` hook (bpftool here predates TCX).
    pub fn tcx_programs(
        &self,
        dev: &str,
        kind: aya::programs::TcAttachType,
    ) -> Result<Vec<(String, u32)>> {
        let query = self.enter(|| aya::programs::SchedClassifier::query_tcx(dev, kind))?;
        let (_, programs) = query.with_context(|| format!("querying TCX on {dev}"))?;
        Ok(programs
            .iter()
            .map(|program| {
                let name = program.name_as_str().unwrap_or_default();
                (name.to_owned(), program.id())
            })
            .collect())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A bpffs mounted on a temporary directory, unmounted on drop: pins there are visible both
/// to the test and to agents under `ip netns exec` (which remounts `/sys`, hiding /sys/fs/bpf).
pub struct Bpffs(tempfile::TempDir);

impl Bpffs {
    pub fn mount() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().to_str().context("temp dir path")?;
        run("mount", &["-t", "bpf", "bpf", path])?;
        Ok(Bpffs(dir))
    }

    pub fn path(&self) -> &std::path::Path {
        self.0.path()
    }

    /// A pin directory `name` here, with the agent flag that names it.
    pub fn pin_dir(&self, name: &str) -> (std::path::PathBuf, String) {
        let dir = self.path().join(name);
        let flag = format!("--bpf-pin-dir={}", dir.display());
        (dir, flag)
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        if let Some(path) = self.0.path().to_str() {
            let _ = run("umount", &[path]);
        }
    }
}

/// Joins two namespaces with a veth pair, `a_if` in `a` and `b_if` in `b`, each with an
/// address (CIDR) and up.
pub fn link(
    a: &Netns,
    a_if: &str,
    a_addr: &str,
    b: &Netns,
    b_if: &str,
    b_addr: &str,
) -> Result<()> {
    link_with(a, a_if, a_addr, b, b_if, b_addr, &[])
}

/// `link`, with `ip link add` options (`numtxqueues 2`, ...) for both ends.
pub fn link_with(
    a: &Netns,
    a_if: &str,
    a_addr: &str,
    b: &Netns,
    b_if: &str,
    b_addr: &str,
    options: &[&str],
) -> Result<()> {
    a.ip(&[
        &["link", "add", a_if][..],
        options,
        &["type", "veth", "peer", "name", b_if],
        options,
        &["netns", &b.name],
    ]
    .concat())?;
    for (ns, ifname, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        ns.ip(&["addr", "add", addr, "dev", ifname])?;
        ns.ip(&["link", "set", ifname, "up"])?;
    }
    Ok(())
}

/// Removes every namespace this process created, killing what runs inside: for a Ctrl-C
/// handler, where destructors don't run.
pub fn remove_own_namespaces() {
    let tag = format!("-{}-", std::process::id());
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("ft-") && name.contains(&tag) {
            if let Ok(pids) = run("ip", &["netns", "pids", &name]) {
                for pid in pids.split_whitespace() {
                    let _ = run("kill", &["-KILL", pid]);
                }
            }
            let _ = run("ip", &["netns", "del", &name]);
        }
    }
}

/// Sets `host` up as flanneld's kernel vxlan backend does: `flannel.1` (VNI 1, port 8472,
/// learning off, MTU 1450) on `eth0` from `local`, holding `<subnet>.0/32`; for an IPv6
/// `local` and subnet, `flannel-v6.1` (MTU 1430, as the kernel caps it) holding
/// `<subnet>::/128`. Returns its MAC.
pub fn kernel_vxlan(host: &Netns, local: impl Into<IpAddr>, subnet: &str) -> Result<String> {
    let local = local.into();
    let (device, mtu) = vxlan_device(&local);
    let local = local.to_string();
    host.ip(&[
        "link",
        "add",
        device,
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        &local,
        "dev",
        "eth0",
        "dstport",
        "8472",
        "nolearning",
    ])?;
    host.ip(&["link", "set", device, "mtu", mtu, "up"])?;
    let net: ipnet::IpNet = subnet.parse()?;
    let host_len = if net.addr().is_ipv4() { 32 } else { 128 };
    let address = format!("{}/{host_len}", net.network());
    host.ip(&["addr", "add", &address, "dev", device, "nodad"])?;
    Ok(host
        .exec("cat", &[&format!("/sys/class/net/{device}/address")])?
        .trim()
        .to_owned())
}

/// flannel's vxlan device for a family, and its MTU on a 1500-byte `eth0`.
fn vxlan_device(local: &IpAddr) -> (&'static str, &'static str) {
    match local {
        IpAddr::V4(_) => ("flannel.1", "1450"),
        IpAddr::V6(_) => ("flannel-v6.1", "1430"),
    }
}

/// On a `kernel_vxlan` host, what flanneld does per peer lease (on the device of the peer's
/// family): neighbour, fdb, route.
pub fn kernel_vxlan_peer(
    host: &Netns,
    peer_subnet: &str,
    peer_mac: &str,
    peer_ip: impl Into<IpAddr>,
) -> Result<()> {
    let peer_ip = peer_ip.into();
    let (device, _) = vxlan_device(&peer_ip);
    let net: ipnet::IpNet = peer_subnet.parse()?;
    let gateway = net.network().to_string();
    host.ip(&[
        "neigh",
        "replace",
        &gateway,
        "dev",
        device,
        "lladdr",
        peer_mac,
        "nud",
        "permanent",
    ])?;
    host.exec(
        "bridge",
        &[
            "fdb",
            "replace",
            peer_mac,
            "dev",
            device,
            "dst",
            &peer_ip.to_string(),
            "self",
            "permanent",
        ],
    )?;
    host.ip(&[
        "route",
        "replace",
        peer_subnet,
        "via",
        &gateway,
        "dev",
        device,
        "onlink",
    ])?;
    Ok(())
}

/// A frame as a Linux vxlan device set up as flannel's sends it, captured on the wire: the
/// device (`kernel_vxlan`) holds `subnet` at `local`, and its peer entry sends `our_subnet` to
/// the VTEP MAC `our_mac` at `ours`; `payload` goes over UDP from the device's address to
/// `.2` (`::2`) of `our_subnet`, port 9999. Both ends are namespaces of their own, linked on
/// 192.168.64.0/24 (and fd64::/64 for IPv6 addresses).
pub fn kernel_vxlan_frame(
    (local, subnet): (IpAddr, &str),
    (ours, our_subnet, our_mac): (IpAddr, &str, &str),
    payload: &[u8],
) -> Result<Vec<u8>> {
    let kernel = Netns::new("kvx")?;
    let we = Netns::new("kvx-ours")?;
    link(
        &kernel,
        "eth0",
        "192.168.64.3/24",
        &we,
        "eth0",
        "192.168.64.2/24",
    )?;
    for (ns, addr) in [(&kernel, local), (&we, ours)]
        .iter()
        .filter(|(_, a)| a.is_ipv6())
    {
        let addr = format!("{addr}/64");
        ns.ip(&["-6", "addr", "add", &addr, "dev", "eth0", "nodad"])?;
    }
    kernel_vxlan(&kernel, local, subnet)?;
    kernel_vxlan_peer(&kernel, our_subnet, our_mac, ours)?;
    let from: ipnet::IpNet = subnet.parse()?;
    let to: ipnet::IpNet = our_subnet.parse()?;
    let to = match to.network() {
        IpAddr::V4(net) => IpAddr::V4((u32::from(net) + 2).into()),
        IpAddr::V6(net) => IpAddr::V6((u128::from(net) + 2).into()),
    };
    let capture = we.enter(|| crate::packet::capture_udp(flannel_common::VXLAN_PORT))?;
    kernel.enter(|| -> Result<()> {
        let socket = std::net::UdpSocket::bind((from.network(), 0))?;
        socket.send_to(payload, (to, 9999))?;
        Ok(())
    })??;
    capture
        .join()
        .expect("the capture thread")
        .context("no VXLAN frame from the kernel's device")
}
