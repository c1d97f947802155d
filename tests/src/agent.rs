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

/// The release users ran before this one (the last commit of the previous session's work):
/// upgrades start from its state.
pub const PREVIOUS_RELEASE: &str = "a6f961512f70033e9c1402c331c01baa848002b3";

/// flanneld built from [`PREVIOUS_RELEASE`]'s sources (from this repository's history), once
/// per process, into `target/previous-release`. Its intermediate artifacts share our build
/// directory, so the dependencies both releases use are built once.
pub fn previous_flanneld() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let build_dir = flanneld()
            .parent()
            .and_then(Path::parent)
            .expect("target dir");
        let target_dir = build_dir.join("previous-release");
        let sources = target_dir.join("src");
        let _ = std::fs::remove_dir_all(&sources);
        std::fs::create_dir_all(&sources).expect("creating the sources' directory");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let extract = format!(
            "git -C '{}' archive {PREVIOUS_RELEASE} | tar -x -C '{}'",
            root.display(),
            sources.display()
        );
        // A shallow clone lacks the commit: say so rather than fail obscurely.
        run("sh", &["-c", &extract]).unwrap_or_else(|e| {
            panic!("the previous release {PREVIOUS_RELEASE} is not in this clone's history: {e:#}")
        });
        // Cargo names a workspace's artifacts by package and version, not by path: under one
        // version the two releases' builds would overwrite each other's.
        let manifest = std::fs::read_to_string(sources.join("Cargo.toml")).unwrap();
        let ours = format!("version = \"{}\"", env!("CARGO_PKG_VERSION"));
        assert!(
            !manifest.lines().any(|line| line == ours),
            "the previous release has our {ours}: a release needs a version of its own"
        );
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&sources)
            .args([
                "build",
                "--quiet",
                "-p",
                "flannel-agent",
                "--bin",
                "flanneld",
            ])
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("CARGO_BUILD_BUILD_DIR", build_dir)
            .status()
            .expect("running cargo build for the previous release");
        assert!(status.success(), "building the previous release failed");
        target_dir.join("debug/flanneld")
    })
}

pub struct Agent {
    child: Option<Child>,
    /// The flanneld it runs.
    binary: PathBuf,
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
        Self::spawn_binary(flanneld(), host, args, env)
    }

    /// `spawn_with_env`, running `binary` (another release's flanneld).
    pub fn spawn_binary(
        binary: &Path,
        host: &Netns,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&socket)?;
        let mut agent = Self {
            child: None,
            binary: binary.to_path_buf(),
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
            .arg(&self.binary)
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

    /// The IPv6 subnet in its subnet.env (`FLANNEL_IPV6_SUBNET`'s network), in a network with
    /// IPv6.
    pub fn ipv6_subnet(&self) -> Result<ipnet::Ipv6Net> {
        let net: ipnet::Ipv6Net = self.subnet_env("FLANNEL_IPV6_SUBNET")?.parse()?;
        Ok(net.trunc())
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

    /// Kills it (SIGKILL): nothing of its own runs at exit.
    pub fn kill(&mut self) -> Result<()> {
        run("kill", &["-KILL", &self.pid()?.to_string()])?;
        self.wait_exit(Duration::from_secs(30)).map(drop)
    }

    /// Starts it again with the same arguments and files.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.terminate()?;
        }
        self.start()
    }

    /// Restarts it as this release's flanneld, as an upgrade does.
    pub fn upgrade(&mut self) -> Result<()> {
        self.binary = flanneld().to_path_buf();
        self.restart()
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
