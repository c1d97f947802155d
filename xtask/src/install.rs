//! `cargo xtask install [--prefix P]` and `uninstall`: the release binary, its `mk-docker-opts`
//! name, the systemd unit, a Docker drop-in and an example `/etc/sysconfig/flanneld`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::{cargo, run_checked, workspace_root};

/// Where each file goes under a prefix.
struct Layout {
    prefix: PathBuf,
    bindir: PathBuf,
    unitdir: PathBuf,
    sysconfdir: PathBuf,
}

impl Layout {
    fn new(prefix: &Path) -> Self {
        // A system prefix keeps its configuration in /etc; any other prefix under itself.
        let sysconfdir = if prefix == Path::new("/usr") || prefix == Path::new("/usr/local") {
            PathBuf::from("/etc")
        } else {
            prefix.join("etc")
        };
        Self {
            prefix: prefix.to_owned(),
            bindir: prefix.join("bin"),
            unitdir: prefix.join("lib/systemd/system"),
            sysconfdir,
        }
    }

    fn flanneld(&self) -> PathBuf {
        self.bindir.join("flanneld")
    }

    fn mk_docker_opts(&self) -> PathBuf {
        self.bindir.join("mk-docker-opts")
    }

    fn unit(&self) -> PathBuf {
        self.unitdir.join("flanneld.service")
    }

    fn docker_dropin(&self) -> PathBuf {
        self.unitdir.join("docker.service.d/flannel.conf")
    }

    fn sysconfig(&self) -> PathBuf {
        self.sysconfdir.join("sysconfig/flanneld")
    }

    fn unit_text(&self) -> Result<String> {
        let template = fs::read_to_string(workspace_root().join("dist/flanneld.service"))?;
        Ok(template
            .replace("@BINDIR@", &self.bindir.to_string_lossy())
            .replace("@SYSCONFDIR@", &self.sysconfdir.to_string_lossy()))
    }
}

fn example_sysconfig() -> Result<String> {
    Ok(fs::read_to_string(
        workspace_root().join("dist/flanneld.sysconfig"),
    )?)
}

pub fn install(prefix: &Path) -> Result<()> {
    let layout = Layout::new(prefix);
    run_checked(cargo().args([
        "build",
        "--release",
        "-p",
        "flannel-agent",
        "--bin",
        "flanneld",
    ]))?;
    let built = workspace_root().join("target/release/flanneld");
    for dir in [
        &layout.bindir,
        &layout.unitdir.join("docker.service.d"),
        &layout.sysconfdir.join("sysconfig"),
    ] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    copy(&built, &layout.flanneld())?;
    let _ = fs::remove_file(layout.mk_docker_opts());
    std::os::unix::fs::symlink("flanneld", layout.mk_docker_opts())
        .with_context(|| format!("linking {}", layout.mk_docker_opts().display()))?;
    write(&layout.unit(), &layout.unit_text()?)?;
    write(
        &layout.docker_dropin(),
        &fs::read_to_string(workspace_root().join("dist/docker-flannel.conf"))?,
    )?;
    // An operator's own settings are never overwritten.
    if !layout.sysconfig().exists() {
        write(&layout.sysconfig(), &example_sysconfig()?)?;
    }
    println!(
        "installed {}, {}, {}, {}, {}",
        layout.flanneld().display(),
        layout.mk_docker_opts().display(),
        layout.unit().display(),
        layout.docker_dropin().display(),
        layout.sysconfig().display()
    );
    Ok(())
}

pub fn uninstall(prefix: &Path) -> Result<()> {
    let layout = Layout::new(prefix);
    let mut files = vec![
        layout.flanneld(),
        layout.mk_docker_opts(),
        layout.unit(),
        layout.docker_dropin(),
    ];
    // The example configuration goes only if nobody edited it.
    if fs::read_to_string(layout.sysconfig()).ok() == example_sysconfig().ok() {
        files.push(layout.sysconfig());
    }
    for file in &files {
        match fs::remove_file(file) {
            Ok(()) => println!("removed {}", file.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", file.display())),
        }
        remove_empty_parents(file, &layout.prefix);
    }
    Ok(())
}

/// Removes the directories above `file` that are now empty, up to and excluding `stop`'s
/// parent (the prefix itself goes too when nothing is left in it).
fn remove_empty_parents(file: &Path, stop: &Path) {
    let mut dir = file.parent();
    while let Some(current) = dir {
        if !current.starts_with(stop) || fs::remove_dir(current).is_err() {
            break;
        }
        dir = current.parent();
    }
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_prefixes_keep_configuration_in_etc() {
        assert_eq!(
            Layout::new(Path::new("/usr/local")).sysconfig(),
            Path::new("/etc/sysconfig/flanneld")
        );
        assert_eq!(
            Layout::new(Path::new("/opt/f")).sysconfig(),
            Path::new("/opt/f/etc/sysconfig/flanneld")
        );
    }

    #[test]
    fn the_unit_points_at_the_installed_files() {
        let unit = Layout::new(Path::new("/opt/f")).unit_text().unwrap();
        assert!(unit
            .contains("ExecStart=/opt/f/bin/flanneld -etcd-endpoints=${FLANNEL_ETCD_ENDPOINTS}"));
        assert!(unit.contains("EnvironmentFile=-/opt/f/etc/sysconfig/flanneld"));
        assert!(unit.contains("ExecStartPost=/opt/f/bin/mk-docker-opts -k DOCKER_NETWORK_OPTIONS -d /run/flannel/docker"));
        assert!(unit.contains("Type=notify") && unit.contains("Restart=on-failure"));
        assert!(!unit.contains('@'), "every placeholder filled: {unit}");
    }

    #[test]
    fn install_then_uninstall_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("prefix");
        install(&prefix).unwrap();
        let layout = Layout::new(&prefix);
        for file in [
            layout.flanneld(),
            layout.unit(),
            layout.docker_dropin(),
            layout.sysconfig(),
        ] {
            assert!(file.is_file(), "{}", file.display());
        }
        let link = fs::read_link(layout.mk_docker_opts()).unwrap();
        assert_eq!(link, Path::new("flanneld"));
        let help = std::process::Command::new(layout.flanneld())
            .arg("--version")
            .output()
            .unwrap();
        assert!(help.status.success());
        uninstall(&prefix).unwrap();
        assert!(!prefix.exists(), "the prefix is empty and gone");
    }

    #[test]
    fn uninstall_keeps_an_edited_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("prefix");
        let layout = Layout::new(&prefix);
        fs::create_dir_all(layout.sysconfig().parent().unwrap()).unwrap();
        fs::write(layout.sysconfig(), "FLANNEL_OPTIONS=\"-iface=eth1\"\n").unwrap();
        install(&prefix).unwrap();
        assert_eq!(
            fs::read_to_string(layout.sysconfig()).unwrap(),
            "FLANNEL_OPTIONS=\"-iface=eth1\"\n"
        );
        uninstall(&prefix).unwrap();
        assert!(layout.sysconfig().exists());
        assert!(!layout.flanneld().exists());
    }
}
