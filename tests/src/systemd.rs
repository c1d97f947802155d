//! A real systemd as PID 1 of its own PID and mount namespaces, in a test host's network
//! namespace, with `cargo xtask install`'s files at /usr/local, or with /usr, /etc and /var
//! writable for `dpkg` (overlays whose writes go to a temporary directory); killed (with all it
//! started) on drop.
//!
//! Its mount namespace hides what its boot would touch on the machine: /run, /tmp and /var/tmp
//! (systemd-tmpfiles empties /tmp at boot) and the journal are fresh tmpfs, and a bpffs is at
//! /sys/fs/bpf. It boots basic.target, so the machine's enabled services (Docker, databases)
//! stay off. Its cgroups are the machine's: one such systemd at a time.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::{
    etcd::wait_for,
    netns::{check, run, Netns},
};

/// nsenter's arguments that run `program` with `args` in the PID, mount and network
/// namespaces of process `pid`.
fn entering<'a>(pid: &'a str, program: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut full = vec!["-t", pid, "-p", "-m", "-n", program];
    full.extend_from_slice(args);
    full
}

pub struct Systemd {
    unshare: Child,
    /// systemd's PID in the test's PID namespace.
    pid: u32,
    destdir: TempDir,
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl Systemd {
    /// Installs flanneld with `cargo xtask install --prefix /usr/local --destdir D`, boots
    /// systemd in `host` with D/usr/local at /usr/local, and waits until it is up.
    pub fn boot(host: &Netns) -> Result<Self> {
        Self::boot_with(host, true)
    }

    /// Boots systemd in `host` with /usr, /etc and /var writable, for `dpkg` to install
    /// packages there (their writes land in a temporary directory), and waits until it is up.
    pub fn boot_for_packages(host: &Netns) -> Result<Self> {
        Self::boot_with(host, false)
    }

    fn boot_with(host: &Netns, install: bool) -> Result<Self> {
        static ONE: Mutex<()> = Mutex::new(());
        let guard = ONE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let destdir = tempfile::tempdir()?;
        let root = destdir.path().display();
        let files = if install {
            xtask("install", destdir.path())?;
            format!("mount --bind {root}/usr/local /usr/local")
        } else {
            format!(
                "for dir in usr etc var; do \
                 mkdir -p {root}/$dir-upper {root}/$dir-work && \
                 mount -t overlay overlay -o lowerdir=/$dir,upperdir={root}/$dir-upper,\
                 workdir={root}/$dir-work /$dir || exit 1; done"
            )
        };
        let script = format!(
            "{files} && \
             for dir in /run /tmp /var/tmp; do mount -t tmpfs tmpfs $dir || exit 1; done && \
             if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi && \
             mount -t bpf bpf /sys/fs/bpf && \
             exec /lib/systemd/systemd --system --unit=basic.target"
        );
        let unshare = Command::new("ip")
            .args(["netns", "exec", &host.name])
            .args(["unshare", "--pid", "--fork", "--mount-proc", "--mount"])
            .args(["--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting unshare")?;
        // `ip netns exec` execs unshare; unshare forks the namespace's PID 1.
        let children = format!("/proc/{0}/task/{0}/children", unshare.id());
        let mut pid = None;
        wait_for("systemd to start", Duration::from_secs(10), || {
            pid = std::fs::read_to_string(&children)
                .ok()
                .and_then(|text| text.split_whitespace().next()?.parse().ok());
            pid.is_some()
        })?;
        let systemd = Self {
            unshare,
            pid: pid.expect("waited for"),
            destdir,
            _one_at_a_time: guard,
        };
        wait_for("systemd to boot", Duration::from_secs(30), || {
            systemd
                .systemctl(&["is-system-running", "--wait"])
                .is_ok_and(|state| state.trim() == "running")
        })?;
        Ok(systemd)
    }

    /// Runs a command in systemd's PID, mount and network namespaces.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let pid = self.pid.to_string();
        run("nsenter", &entering(&pid, program, args))
    }

    /// Copies `file` into the host's /run and returns its path there: the host's /tmp and
    /// /var/tmp are its own, so a file under the machine's (a checkout in /tmp) is not seen.
    pub fn copy_in(&self, file: &Path) -> Result<String> {
        let name = file.file_name().context("a file")?.to_string_lossy();
        let inside = format!("/run/copied/{name}");
        let contents =
            std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        self.write(&inside, contents)?;
        Ok(inside)
    }

    /// `check` inside the host: true on exit 0, false on exit 1, an error otherwise.
    pub fn check(&self, program: &str, args: &[&str]) -> Result<bool> {
        let pid = self.pid.to_string();
        check("nsenter", &entering(&pid, program, args))
    }

    pub fn systemctl(&self, args: &[&str]) -> Result<String> {
        self.exec("systemctl", args)
    }

    /// One property of a unit (`systemctl show -p NAME --value`).
    pub fn property(&self, unit: &str, name: &str) -> Result<String> {
        Ok(self
            .systemctl(&["show", unit, "-p", name, "--value"])?
            .trim()
            .to_owned())
    }

    /// Waits until `unit` is in `state` (ActiveState).
    pub fn wait_state(&self, unit: &str, state: &str, timeout: Duration) -> Result<()> {
        wait_for(&format!("{unit} to be {state}"), timeout, || {
            self.property(unit, "ActiveState").is_ok_and(|s| s == state)
        })
        .with_context(|| self.journal(unit).unwrap_or_default())
    }

    /// Writes `contents` to `path` inside (its directory is created).
    pub fn write(&self, path: &str, contents: impl AsRef<[u8]>) -> Result<()> {
        let dir = Path::new(path).parent().context("a file path")?;
        self.exec("mkdir", &["-p", &dir.to_string_lossy()])?;
        let status = Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-p", "-m", "-n", "sh", "-c"])
            .arg(format!("cat > {path}"))
            .stdin(Stdio::piped())
            .spawn()
            .and_then(|mut cat| {
                use std::io::Write;
                cat.stdin
                    .take()
                    .expect("piped")
                    .write_all(contents.as_ref())?;
                cat.wait()
            })?;
        if !status.success() {
            bail!("writing {path}: {status}");
        }
        Ok(())
    }

    pub fn read(&self, path: &str) -> Result<String> {
        self.exec("cat", &[path])
    }

    /// The unit's journal, one JSON object per line.
    pub fn journal_json(&self, unit: &str) -> Result<Vec<serde_json::Value>> {
        let text = self.exec("journalctl", &["-u", unit, "-o", "json", "--no-pager"])?;
        text.lines()
            .map(|line| serde_json::from_str(line).context("a journal entry"))
            .collect()
    }

    pub fn journal(&self, unit: &str) -> Result<String> {
        self.exec("journalctl", &["-u", unit, "--no-pager", "-n", "60"])
    }

    /// `cargo xtask uninstall` of what `boot` installed.
    pub fn uninstall(&self) -> Result<()> {
        xtask("uninstall", self.destdir.path())
    }

    /// Where the installed files are staged outside (the destdir).
    pub fn destdir(&self) -> PathBuf {
        self.destdir.path().to_owned()
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        // PID 1's death kills everything in its namespace.
        let _ = run("kill", &["-KILL", &self.pid.to_string()]);
        let _ = self.unshare.wait();
    }
}

/// `cargo xtask package --revision <revision>`: the .deb it built.
pub fn package(revision: u32) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(cargo)
        .current_dir(workspace)
        .args(["xtask", "package", "--revision", &revision.to_string()])
        .output()
        .context("running cargo xtask package")?;
    if !output.status.success() {
        bail!(
            "cargo xtask package failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8(output.stdout)?;
    let deb = stdout.lines().last().context("no package named")?;
    Ok(PathBuf::from(deb))
}

fn xtask(task: &str, destdir: &Path) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(cargo)
        .current_dir(workspace)
        .args(["xtask", task, "--prefix", "/usr/local", "--destdir"])
        .arg(destdir)
        .output()
        .with_context(|| format!("running cargo xtask {task}"))?;
    if !output.status.success() {
        bail!(
            "cargo xtask {task} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
