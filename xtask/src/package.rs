//! `cargo xtask package [--revision N]`: flanneld as a Debian package,
//! `target/package/flanneld_<version>-<N>_<arch>.deb`, checked by lintian.
//!
//! Built with `dpkg-deb` from the tree `cargo xtask install --prefix /usr --destdir` stages,
//! the same tree the systemd test runs, rather than with cargo-deb: nothing more to install or
//! to keep in step with the install task, and the maintainer scripts are plain files in
//! `dist/debian`. It holds the release flanneld (programs embedded, stripped), its
//! `mk-docker-opts` name, the unit and the Docker drop-in, the example `/etc/sysconfig/flanneld`
//! (a conffile: an edited one survives upgrades), man pages and completions generated from the
//! command line, the alerting rules and dashboard, and the docs and changelogs.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{
    install::{self, Target},
    run_checked, workspace_root,
};

/// Where the package's files go, besides what `install` stages.
const SHARE: &str = "usr/share/flanneld";
const DOC: &str = "usr/share/doc/flanneld";
const MAINTAINER: &str = "flanneld (Rust, eBPF) developers <flanneld@lists.debian.invalid>";

#[derive(clap::Args, Debug)]
pub struct Options {
    /// The Debian revision: a rebuild of the same version takes a higher one.
    #[arg(long, default_value_t = 1)]
    revision: u32,
}

pub fn run(options: &Options) -> Result<()> {
    let version = format!("{}-{}", env!("CARGO_PKG_VERSION"), options.revision);
    let arch = output("dpkg", &["--print-architecture"])?;
    let out = workspace_root().join("target/package");
    let root = out.join(format!("flanneld_{version}_{arch}"));
    let _ = fs::remove_dir_all(&root);
    install::install(&Target::staged(Path::new("/usr"), &root))?;
    let flanneld = root.join("usr/bin/flanneld");
    run_checked(
        Command::new("strip")
            .args(["--strip-unneeded"])
            .arg(&flanneld),
    )?;
    generated(&root, &flanneld)?;
    extras(&root, &version)?;
    control(&root, &version, &arch, &flanneld)?;
    let deb = out.join(format!("flanneld_{version}_{arch}.deb"));
    run_checked(
        Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group", "-Zxz"])
            .arg(&root)
            .arg(&deb),
    )?;
    // The tags it suppresses, each explained, are in dist/debian/lintian-suppressed.
    run_checked(
        Command::new("lintian")
            .args(["--fail-on", "error,warning", "--suppress-tags-from-file"])
            .arg(workspace_root().join("dist/debian/lintian-suppressed"))
            .arg(&deb),
    )?;
    println!("{}", deb.display());
    Ok(())
}

/// The man pages (written by install) compressed, and the completions, from the command
/// line's definition in the binary.
fn generated(root: &Path, flanneld: &Path) -> Result<()> {
    let man = root.join("usr/share/man/man8");
    for entry in fs::read_dir(&man)? {
        let page = entry?.path();
        gzip(&page, &fs::read(&page)?)?;
        fs::remove_file(&page)?;
    }
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/flanneld"),
        ("zsh", "usr/share/zsh/vendor-completions/_flanneld"),
        ("fish", "usr/share/fish/vendor_completions.d/flanneld.fish"),
    ] {
        let script = Command::new(flanneld)
            .args(["completion", shell])
            .output()?;
        if !script.status.success() {
            bail!(
                "flanneld completion {shell}: {}",
                String::from_utf8_lossy(&script.stderr)
            );
        }
        write(&root.join(path), &script.stdout)?;
    }
    Ok(())
}

/// The alerting rules and dashboard, the docs, the changelogs and the copyright.
fn extras(root: &Path, version: &str) -> Result<()> {
    let dist = workspace_root().join("dist");
    for (from, to) in [
        (
            "prometheus/flanneld-alerts.yml",
            "prometheus/flanneld-alerts.yml",
        ),
        (
            "prometheus/flanneld-alerts.test.yml",
            "prometheus/flanneld-alerts.test.yml",
        ),
        ("grafana/flanneld.json", "grafana/flanneld.json"),
    ] {
        write(&root.join(SHARE).join(to), &fs::read(dist.join(from))?)?;
    }
    let doc = root.join(DOC);
    write(
        &doc.join("copyright"),
        &fs::read(dist.join("debian/copyright"))?,
    )?;
    gzip(
        &doc.join("changelog"),
        &fs::read(workspace_root().join("CHANGELOG.md"))?,
    )?;
    gzip(
        &doc.join("changelog.Debian"),
        debian_changelog(version).as_bytes(),
    )?;
    for page in fs::read_dir(workspace_root().join("docs"))? {
        let page = page?.path();
        if page.extension().is_some_and(|ext| ext == "md") {
            let name = page.file_name().expect("a file");
            write(&doc.join(name), &fs::read(&page)?)?;
        }
    }
    write(
        &doc.join("README.md"),
        &fs::read(workspace_root().join("README.md"))?,
    )?;
    Ok(())
}

/// The package's Debian changelog: this build's entry, pointing at the project's changelog.
fn debian_changelog(version: &str) -> String {
    let date = output("date", &["-R"]).unwrap_or_default();
    format!(
        "flanneld ({version}) unstable; urgency=medium\n\n  * Built from the flanneld \
         sources; what changed:\n    /usr/share/doc/flanneld/changelog.gz.\n\n \
         -- {MAINTAINER}  {date}\n"
    )
}

/// DEBIAN/: control (its dependencies from the binary's libraries), conffiles, the
/// maintainer scripts, md5sums.
fn control(root: &Path, version: &str, arch: &str, flanneld: &Path) -> Result<()> {
    let debian = root.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    let installed_kib = output(
        "du",
        &["-sk", "--exclude=DEBIAN", &root.display().to_string()],
    )?
    .split_whitespace()
    .next()
    .unwrap_or("0")
    .to_owned();
    let depends = shlibs(flanneld)?;
    let control = format!(
        "Package: flanneld\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: {MAINTAINER}\n\
         Installed-Size: {installed_kib}\n\
         Depends: {depends}, init-system-helpers (>= 1.54~)\n\
         Recommends: iptables\n\
         Suggests: nftables, docker.io\n\
         Section: net\n\
         Priority: optional\n\
         Homepage: https://github.com/flannel-io/flannel\n\
         Description: flannel's overlay network agent, with its packet path in eBPF\n \
         flanneld gives every container of a cluster an address of one overlay\n \
         network: each host leases a subnet in etcd and carries the traffic between\n \
         hosts in VXLAN or UDP, as flannel does, with flannel's flags, etcd keys,\n \
         subnet.env and wire formats. TC and XDP programs on the host's NIC\n \
         encapsulate and decapsulate.\n \
         .\n \
         iptables is needed for flannel's rules in iptables mode (the default);\n \
         with \"EnableNFTables\" the agent writes nftables tables through netlink.\n"
    );
    write(&debian.join("control"), control.as_bytes())?;
    write(&debian.join("conffiles"), b"/etc/sysconfig/flanneld\n")?;
    for script in ["postinst", "prerm", "postrm"] {
        let path = debian.join(script);
        write(
            &path,
            &fs::read(workspace_root().join("dist/debian").join(script))?,
        )?;
        chmod(&path, 0o755)?;
    }
    let sums = Command::new("sh")
        .arg("-c")
        .arg("find . -type f ! -path './DEBIAN/*' -printf '%P\\0' | sort -z | xargs -0 md5sum")
        .current_dir(root)
        .output()?;
    if !sums.status.success() {
        bail!("md5sum: {}", String::from_utf8_lossy(&sums.stderr));
    }
    write(&debian.join("md5sums"), &sums.stdout)?;
    Ok(())
}

/// The packages providing the libraries `binary` links, as dpkg-shlibdeps finds them.
fn shlibs(binary: &Path) -> Result<String> {
    // dpkg-shlibdeps wants a source package's debian/control to read.
    let dir = tempfile::tempdir()?;
    let control = "Source: flanneld\n\nPackage: flanneld\nArchitecture: any\n";
    write(&dir.path().join("debian/control"), control.as_bytes())?;
    let found = Command::new("dpkg-shlibdeps")
        .args(["-O", "-e"])
        .arg(binary)
        .current_dir(dir.path())
        .output()
        .context("running dpkg-shlibdeps")?;
    if !found.status.success() {
        bail!("dpkg-shlibdeps: {}", String::from_utf8_lossy(&found.stderr));
    }
    let text = String::from_utf8(found.stdout)?;
    text.lines()
        .find_map(|line| line.strip_prefix("shlibs:Depends="))
        .map(str::to_owned)
        .context("dpkg-shlibdeps named no dependency")
}

/// Writes `data` gzipped at `<path>.gz`.
fn gzip(path: &Path, data: &[u8]) -> Result<()> {
    let mut name = path.as_os_str().to_owned();
    name.push(".gz");
    // -n: no name or time in the header, so the same input gives the same file.
    let mut gzip = Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running gzip")?;
    gzip.stdin.take().expect("piped").write_all(data)?;
    let out = gzip.wait_with_output()?;
    if !out.status.success() {
        bail!("gzip failed");
    }
    write(&PathBuf::from(name), &out.stdout)
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

fn chmod(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("making {} executable", path.display()))
}

/// A command's trimmed stdout.
fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}
