//! `cargo xtask install [--prefix P] [--destdir D]` and `uninstall`: the release binary, its
//! `mk-docker-opts` name, the systemd unit, a Docker drop-in, the man pages (which the unit's
//! `Documentation=` names) and an example `/etc/sysconfig/flanneld`. `--destdir` stages the files under D as packagers do (the unit
//! still names the files under the prefix).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::{cargo, run_checked, workspace_root};

/// Where to install.
#[derive(clap::Args, Debug)]
pub struct Target {
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
    /// Write the files under this directory instead of `/` (DESTDIR).
    #[arg(long)]
    destdir: Option<PathBuf>,
}

impl Target {
    /// `prefix`'s files, staged under `destdir`.
    pub fn staged(prefix: &Path, destdir: &Path) -> Self {
        Self {
            prefix: prefix.to_owned(),
            destdir: Some(destdir.to_owned()),
        }
    }
}

/// Where each file goes under a prefix (as installed; `staged` adds the destdir).
struct Layout {
    destdir: PathBuf,
    prefix: PathBuf,
    bindir: PathBuf,
    unitdir: PathBuf,
    mandir: PathBuf,
    sysconfdir: PathBuf,
}

/// The pages `flanneld man` writes: flanneld's and one per subcommand.
const MAN_PAGES: [&str; 5] = [
    "flanneld",
    "flanneld-status",
    "flanneld-monitor",
    "mk-docker-opts",
    "flanneld-completion",
];

impl Layout {
    fn new(target: &Target) -> Self {
        let prefix = target.prefix.as_path();
        // A system prefix keeps its configuration in /etc; any other prefix under itself.
        let sysconfdir = if prefix == Path::new("/usr") || prefix == Path::new("/usr/local") {
            PathBuf::from("/etc")
        } else {
            prefix.join("etc")
        };
        Self {
            destdir: target.destdir.clone().unwrap_or_else(|| "/".into()),
            prefix: prefix.to_owned(),
            bindir: prefix.join("bin"),
            unitdir: prefix.join("lib/systemd/system"),
            mandir: prefix.join("share/man/man8"),
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

    fn man_pages(&self) -> impl Iterator<Item = PathBuf> + '_ {
        MAN_PAGES
            .iter()
            .map(|page| self.mandir.join(format!("{page}.8")))
    }

    /// Where `path` is written: under the destdir.
    fn staged(&self, path: &Path) -> PathBuf {
        self.destdir.join(path.strip_prefix("/").unwrap_or(path))
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

pub fn install(target: &Target) -> Result<()> {
    let layout = Layout::new(target);
    run_checked(cargo().args([
        "build",
        "--release",
        "-p",
        "flannel-agent",
        "--bin",
        "flanneld",
    ]))?;
    let built = workspace_root().join("target/release/flanneld");
    let staged = |path: PathBuf| layout.staged(&path);
    for dir in [
        layout.bindir.clone(),
        layout.unitdir.join("docker.service.d"),
        layout.sysconfdir.join("sysconfig"),
    ] {
        let dir = staged(dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    copy(&built, &staged(layout.flanneld()))?;
    let link = staged(layout.mk_docker_opts());
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink("flanneld", &link)
        .with_context(|| format!("linking {}", link.display()))?;
    write(&staged(layout.unit()), &layout.unit_text()?)?;
    write(
        &staged(layout.docker_dropin()),
        &fs::read_to_string(workspace_root().join("dist/docker-flannel.conf"))?,
    )?;
    run_checked(
        std::process::Command::new(&built)
            .arg("man")
            .arg(staged(layout.mandir.clone())),
    )?;
    // An operator's own settings are never overwritten.
    let sysconfig = staged(layout.sysconfig());
    if !sysconfig.exists() {
        write(&sysconfig, &example_sysconfig()?)?;
    }
    let files = [
        layout.flanneld(),
        layout.mk_docker_opts(),
        layout.unit(),
        layout.docker_dropin(),
        layout.sysconfig(),
    ];
    let names: Vec<String> = files
        .into_iter()
        .chain(layout.man_pages())
        .map(|file| staged(file).display().to_string())
        .collect();
    println!("installed {}", names.join(", "));
    Ok(())
}

pub fn uninstall(target: &Target) -> Result<()> {
    let layout = Layout::new(target);
    let mut files = vec![
        layout.flanneld(),
        layout.mk_docker_opts(),
        layout.unit(),
        layout.docker_dropin(),
    ];
    files.extend(layout.man_pages());
    // The example configuration goes only if nobody edited it.
    if fs::read_to_string(layout.staged(&layout.sysconfig())).ok() == example_sysconfig().ok() {
        files.push(layout.sysconfig());
    }
    let top = layout.staged(&layout.prefix);
    for file in files {
        let file = layout.staged(&file);
        match fs::remove_file(&file) {
            Ok(()) => println!("removed {}", file.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", file.display())),
        }
        remove_empty_parents(&file, &top);
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

    fn target(prefix: &Path, destdir: Option<&Path>) -> Target {
        Target {
            prefix: prefix.to_owned(),
            destdir: destdir.map(Path::to_owned),
        }
    }

    fn layout(prefix: &str) -> Layout {
        Layout::new(&target(Path::new(prefix), None))
    }

    #[test]
    fn system_prefixes_keep_configuration_in_etc() {
        assert_eq!(
            layout("/usr/local").sysconfig(),
            Path::new("/etc/sysconfig/flanneld")
        );
        assert_eq!(
            layout("/opt/f").sysconfig(),
            Path::new("/opt/f/etc/sysconfig/flanneld")
        );
    }

    #[test]
    fn the_unit_points_at_the_installed_files() {
        let unit = layout("/opt/f").unit_text().unwrap();
        assert!(unit
            .contains("ExecStart=/opt/f/bin/flanneld -etcd-endpoints=${FLANNEL_ETCD_ENDPOINTS}"));
        assert!(unit.contains("EnvironmentFile=-/opt/f/etc/sysconfig/flanneld"));
        assert!(unit.contains("ExecStartPost=/opt/f/bin/mk-docker-opts -k DOCKER_NETWORK_OPTIONS -d /run/flannel/docker"));
        assert!(unit.contains("Type=notify") && unit.contains("Restart=always"));
        for placeholder in ["@BINDIR@", "@SYSCONFDIR@"] {
            assert!(
                !unit.contains(placeholder),
                "{placeholder} filled in: {unit}"
            );
        }
    }

    /// `systemd-analyze` on an installed unit, its man pages on the search path; its stdout
    /// and stderr.
    fn analyze(args: &[&str], unit: &Path, layout: &Layout) -> String {
        let output = std::process::Command::new("systemd-analyze")
            .env("MANPATH", layout.mandir.parent().unwrap())
            .args(args)
            .arg(unit)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "systemd-analyze {args:?}: {text}");
        text
    }

    #[test]
    fn install_then_uninstall_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("prefix");
        let target = target(&prefix, None);
        install(&target).unwrap();
        let layout = Layout::new(&target);
        for file in [
            layout.flanneld(),
            layout.unit(),
            layout.docker_dropin(),
            layout.sysconfig(),
        ]
        .into_iter()
        .chain(layout.man_pages())
        {
            assert!(file.is_file(), "{}", file.display());
        }
        let pages = fs::read_dir(&layout.mandir).unwrap().count();
        assert_eq!(pages, MAN_PAGES.len(), "flanneld man wrote other pages");
        let link = fs::read_link(layout.mk_docker_opts()).unwrap();
        assert_eq!(link, Path::new("flanneld"));
        let help = std::process::Command::new(layout.flanneld())
            .arg("--version")
            .output()
            .unwrap();
        assert!(help.status.success());
        // systemd accepts every line of the unit, its man page included, and its sandbox
        // scores "OK" or better (exposure 2.2 of 10; the unit without it scored 9.6, "UNSAFE").
        let verify = analyze(&["verify"], &layout.unit(), &layout);
        assert!(!verify.contains("flanneld.service"), "{verify}");
        analyze(
            &["security", "--offline=true", "--threshold=25"],
            &layout.unit(),
            &layout,
        );
        uninstall(&target).unwrap();
        assert!(!prefix.exists(), "the prefix is empty and gone");
    }

    #[test]
    fn a_destdir_stages_the_files_of_a_system_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let target = target(Path::new("/usr/local"), Some(dir.path()));
        install(&target).unwrap();
        let root = dir.path();
        let unit =
            fs::read_to_string(root.join("usr/local/lib/systemd/system/flanneld.service")).unwrap();
        assert!(
            unit.contains("ExecStart=/usr/local/bin/flanneld "),
            "{unit}"
        );
        assert!(unit.contains("EnvironmentFile=-/etc/sysconfig/flanneld"));
        assert!(root.join("usr/local/bin/flanneld").is_file());
        assert!(root.join("etc/sysconfig/flanneld").is_file());
        uninstall(&target).unwrap();
        assert!(!root.join("usr/local").exists());
        assert!(!root.join("etc/sysconfig/flanneld").exists());
    }

    #[test]
    fn uninstall_keeps_an_edited_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let target = target(&dir.path().join("prefix"), None);
        let layout = Layout::new(&target);
        fs::create_dir_all(layout.sysconfig().parent().unwrap()).unwrap();
        fs::write(layout.sysconfig(), "FLANNEL_OPTIONS=\"-iface=eth1\"\n").unwrap();
        install(&target).unwrap();
        assert_eq!(
            fs::read_to_string(layout.sysconfig()).unwrap(),
            "FLANNEL_OPTIONS=\"-iface=eth1\"\n"
        );
        uninstall(&target).unwrap();
        assert!(layout.sysconfig().exists());
        assert!(!layout.flanneld().exists());
    }
}
