//! A real etcd (Debian's etcd-server 3.4) for tests, with its own data directory and ports,
//! stopped on drop.

use std::{
    net::{Ipv4Addr, Ipv6Addr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::netns::Netns;

/// Client TLS material for `Etcd::start_tls`.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

pub struct Etcd {
    child: Option<Child>,
    dir: TempDir,
    /// The namespace etcd runs in, None for the test's own.
    netns: Option<String>,
    ip: Ipv4Addr,
    /// An IPv6 address it also serves clients on, for hosts without IPv4.
    ipv6: Option<Ipv6Addr>,
    client_port: u16,
    peer_port: u16,
    tls: Option<TlsFiles>,
}

/// Two distinct TCP ports nobody listens on right now (both held while picked: the kernel may
/// hand out a port it just freed again).
fn free_ports() -> (u16, u16) {
    let bind = || TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let (a, b) = (bind(), bind());
    let port = |l: &TcpListener| l.local_addr().unwrap().port();
    (port(&a), port(&b))
}

impl Etcd {
    /// etcd on 127.0.0.1 in the test's namespace.
    pub fn start() -> Result<Self> {
        Self::launch(None, Ipv4Addr::LOCALHOST, None, None)
    }

    /// etcd inside `ns`, listening on `ip` (an address of that namespace).
    pub fn start_in(ns: &Netns, ip: Ipv4Addr) -> Result<Self> {
        Self::launch(Some(ns.name.clone()), ip, None, None)
    }

    /// `start_in`, serving clients on `ipv6` (an address of that namespace) too.
    pub fn start_in_dual(ns: &Netns, ip: Ipv4Addr, ipv6: Ipv6Addr) -> Result<Self> {
        Self::launch(Some(ns.name.clone()), ip, Some(ipv6), None)
    }

    /// etcd on 127.0.0.1 that requires client certificates.
    pub fn start_tls(tls: TlsFiles) -> Result<Self> {
        Self::launch(None, Ipv4Addr::LOCALHOST, None, Some(tls))
    }

    fn launch(
        netns: Option<String>,
        ip: Ipv4Addr,
        ipv6: Option<Ipv6Addr>,
        tls: Option<TlsFiles>,
    ) -> Result<Self> {
        let (client_port, peer_port) = free_ports();
        let mut etcd = Self {
            child: None,
            dir: tempfile::tempdir()?,
            netns,
            ip,
            ipv6,
            client_port,
            peer_port,
            tls,
        };
        etcd.resume()?;
        Ok(etcd)
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.ip, self.client_port)
    }

    /// The client URL on its IPv6 address, if it serves one.
    pub fn ipv6_endpoint(&self) -> Option<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        (self.ipv6).map(|ip| format!("{scheme}://[{ip}]:{}", self.client_port))
    }

    /// Starts etcd (again, on the same data and ports) and waits until it serves.
    pub fn resume(&mut self) -> Result<()> {
        let peer = format!("http://{}:{}", self.ip, self.peer_port);
        let mut args: Vec<String> = vec![
            "--name=test".into(),
            format!("--data-dir={}", self.dir.path().join("data").display()),
            format!(
                "--listen-client-urls={}",
                [Some(self.endpoint()), self.ipv6_endpoint()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            format!("--advertise-client-urls={}", self.endpoint()),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=test={peer}"),
        ];
        if let Some(tls) = &self.tls {
            args.extend([
                format!("--cert-file={}", tls.server_cert.display()),
                format!("--key-file={}", tls.server_key.display()),
                format!("--trusted-ca-file={}", tls.ca.display()),
                "--client-cert-auth".into(),
            ]);
        }
        let log = std::fs::File::create(self.dir.path().join("etcd.log"))?;
        let child = self
            .command("etcd")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting etcd (Debian's etcd-server; run `cargo xtask setup`)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.etcdctl(&["endpoint", "health"]).is_err() {
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
                bail!("etcd did not become healthy in 20 s:\n{log}");
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops etcd, keeping its data for `resume`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, program]);
                cmd
            }
            None => Command::new(program),
        }
    }

    /// `etcdctl` (v3 API) against this etcd; returns stdout.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let mut full: Vec<String> = vec![format!("--endpoints={}", self.endpoint())];
        if let Some(tls) = &self.tls {
            full.push(format!("--cacert={}", tls.ca.display()));
            full.push(format!("--cert={}", tls.client_cert.display()));
            full.push(format!("--key={}", tls.client_key.display()));
        }
        full.extend(args.iter().map(|a| a.to_string()));
        let output = self
            .command("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(&full)
            .output()
            .context("running etcdctl")?;
        if !output.status.success() {
            bail!(
                "etcdctl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        self.etcdctl(&["put", key, value]).map(drop)
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<String>> {
        let out = self.etcdctl(&["get", key, "--print-value-only"])?;
        Ok(out
            .strip_suffix('\n')
            .map(str::to_owned)
            .filter(|v| !v.is_empty()))
    }

    /// Keys under `prefix`, in order.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .etcdctl(&["get", prefix, "--prefix", "--keys-only"])?
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// The etcd lease attached to `key` (0: none), from `etcdctl -w json`.
    pub fn lease_of(&self, key: &str) -> Result<i64> {
        let out = self.etcdctl(&["get", key, "-w", "json"])?;
        let json: serde_json::Value = serde_json::from_str(&out)?;
        Ok(json["kvs"][0]["lease"].as_i64().unwrap_or(0))
    }

    /// The store's current revision.
    pub fn revision(&self) -> Result<i64> {
        let out = self.etcdctl(&["get", "/", "-w", "json"])?;
        let json: serde_json::Value = serde_json::from_str(&out)?;
        json["header"]["revision"]
            .as_i64()
            .context("no revision in etcdctl's answer")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits for `what` to hold, polling every 20 ms, up to `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
