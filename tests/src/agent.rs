//! flanneld processes for tests: started inside a netns host, ready when they say READY=1 on
//! their NOTIFY_SOCKET, killed on drop.

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::netns::{run, Netns};

/// The flanneld binary of this workspace, built once per process; cargo says where it is.
/// A debug build, unless `FLANNELD_BUILD_RELEASE` is set (the bench measures release code).
pub fn flanneld() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let release = std::env::var_os("FLANNELD_BUILD_RELEASE").map(|_| "--release");
        let output = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "--message-format=json",
                "-p",
                "flannel-agent",
            ])
            .args(["--bin", "flanneld"])
            .args(release)
            .stderr(Stdio::inherit())
            .output()
            .expect("running cargo build for flanneld");
        assert!(output.status.success(), "building flanneld failed");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find_map(|message| message["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported no flanneld executable")
    })
}

pub struct Agent {
    child: Option<Child>,
    dir: TempDir,
    notify: UnixDatagram,
    netns: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Agent {
    /// Starts flanneld in `host` with `args` (its subnet file is in a temp dir, see
    /// `subnet_file`); does not wait for it to be ready.
    pub fn spawn(host: &Netns, args: &[&str]) -> Result<Self> {
        Self::spawn_with_env(host, args, &[])
    }

    /// `spawn`, with extra environment variables.
    pub fn spawn_with_env(host: &Netns, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&socket)?;
        let mut agent = Self {
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            notify,
            netns: host.name.clone(),
            dir,
        };
        agent.start()?;
        Ok(agent)
    }

    fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(flanneld())
            .arg(format!("--subnet-file={}", self.subnet_file().display()))
            .args(&self.args)
            .env("NOTIFY_SOCKET", self.dir.path().join("notify.sock"))
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting flanneld")?;
        self.child = Some(child);
        Ok(())
    }

    pub fn subnet_file(&self) -> PathBuf {
        self.dir.path().join("subnet.env")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("flanneld.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits for the next `READY=1` on the notify socket.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        self.wait_notify("READY=1", timeout).map(drop)
    }

    /// Waits for a notify message with a line `line`; returns the whole message.
    pub fn wait_notify(&mut self, line: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 512];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "no {line} from flanneld within {timeout:?}; its log:\n{}",
                    self.log()
                );
            }
            self.notify
                .set_read_timeout(Some(left.min(Duration::from_millis(200))))?;
            if let Ok(len) = self.notify.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..len]).into_owned();
                if message.lines().any(|l| l == line) {
                    return Ok(message);
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "flanneld exited ({status}) before {line}; its log:\n{}",
                    self.log()
                );
            }
        }
    }

    /// The subnet in its subnet.env (`FLANNEL_SUBNET`'s network).
    pub fn subnet(&self) -> Result<String> {
        let net: ipnet::Ipv4Net = self.subnet_env("FLANNEL_SUBNET")?.parse()?;
        Ok(net.trunc().to_string())
    }

    /// Its lease's key, as flannel names it: `<prefix>/subnets/10.1.83.0-24`, with
    /// `&<IPv6 subnet>-<len>` appended in a dual-stack network (and `0.0.0.0-0` for IPv4 in
    /// an IPv6-only one).
    pub fn lease_key(&self) -> Result<String> {
        let subnet = match self.subnet_env("FLANNEL_SUBNET") {
            Ok(_) => self.subnet()?,
            Err(_) => "0.0.0.0/0".into(),
        };
        let mut key = crate::testbed::lease_key(&subnet);
        if let Ok(subnet6) = self.subnet_env("FLANNEL_IPV6_SUBNET") {
            let subnet6: ipnet::Ipv6Net = subnet6.parse()?;
            key.push_str(&format!("&{}-{}", subnet6.network(), subnet6.prefix_len()));
        }
        Ok(key)
    }

    /// `FLANNEL_MTU` of its subnet.env.
    pub fn mtu(&self) -> Result<u32> {
        Ok(self.subnet_env("FLANNEL_MTU")?.parse()?)
    }

    /// A variable of its subnet.env.
    pub fn subnet_env(&self, name: &str) -> Result<String> {
        let text = std::fs::read_to_string(self.subnet_file()).context("reading subnet.env")?;
        let prefix = format!("{name}=");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(str::to_owned)
            .with_context(|| format!("no {name} in subnet.env"))
    }

    /// Its resident memory, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS")
    }

    /// flanneld's pid (`ip netns exec` execs it, so it is the child's).
    pub fn pid(&self) -> Result<u32> {
        Ok(self.child.as_ref().context("not running")?.id())
    }

    /// Sends SIGTERM and waits; returns the exit status.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        run("kill", &["-TERM", &self.pid()?.to_string()])?;
        self.wait_exit(Duration::from_secs(30))
    }

    /// Starts it again with the same arguments and files.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.terminate()?;
        }
        self.start()
    }

    /// Waits for the process to exit by itself; returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().context("not running")?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "flanneld still running after {timeout:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
