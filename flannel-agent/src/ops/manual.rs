//! The manual pages and shell completions, generated from the command line's definition
//! (clap_mangen, clap_complete): `flanneld completion <shell>`, and `flanneld man <dir>` for
//! packagers.

use std::{io::Write, path::Path};

use anyhow::{Context, Result};
use clap::{CommandFactory, ValueEnum};
use clap_complete::Shell;

use crate::{
    cli::Args,
    control::docker_opts::DockerOptsArgs,
    ops::{monitor::MonitorArgs, status::StatusArgs},
};

/// How flannel's flags are written, for the manual's readers.
const FLAG_STYLE: &str = "As flannel's, flags take one dash or two (-etcd-endpoints or \
    --etcd-endpoints) and a value after = or a space (-iface=eth0, -iface eth0); booleans are \
    -ip-masq or -ip-masq=false. Each flag can also come from the environment as \
    FLANNELD_<NAME> (FLANNELD_ETCD_ENDPOINTS, FLANNELD_IP_MASQ), used when the flag is not \
    given.";

/// flanneld with its subcommands, as documented.
fn command() -> clap::Command {
    Args::command()
        .after_long_help(FLAG_STYLE)
        .subcommand(StatusArgs::command().name("status"))
        .subcommand(MonitorArgs::command().name("monitor"))
        .subcommand(DockerOptsArgs::command().name("mk-docker-opts"))
        .subcommand(
            clap::Command::new("completion")
                .about("Print a shell's completion script for flanneld")
                .arg(clap::arg!(<shell> "bash, zsh or fish").value_parser(["bash", "zsh", "fish"])),
        )
}

/// Writes flanneld.8 and a page per subcommand (flanneld-status.8, ..., mk-docker-opts.8)
/// into `dir`.
pub fn write_man_pages(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let flanneld = command();
    let mut pages = vec![("flanneld".to_owned(), flanneld.clone())];
    for sub in flanneld.get_subcommands() {
        let name = match sub.get_name() {
            "mk-docker-opts" => "mk-docker-opts".to_owned(),
            other => format!("flanneld-{other}"),
        };
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.8"));
        let mut text = Vec::new();
        clap_mangen::Man::new(page).section("8").render(&mut text)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `flanneld completion <shell>`: the completion script, printed. Bash's also completes the
/// single-dash forms flannel's users type.
pub fn print_completion(shell: &str) -> Result<()> {
    let shell = Shell::from_str(shell, true).map_err(anyhow::Error::msg)?;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command(), "flanneld", &mut script);
    let mut script = String::from_utf8(script)?;
    if shell == Shell::Bash {
        script = with_single_dash_flags(&script);
    }
    std::io::stdout().write_all(script.as_bytes())?;
    Ok(())
}

/// A bash completion script whose option lists also hold `-flag` for each `--flag`.
fn with_single_dash_flags(script: &str) -> String {
    let lines = script.lines().map(|line| {
        let Some((head, list)) = line.split_once("opts=\"") else {
            return line.to_owned();
        };
        let Some((words, tail)) = list.split_once('"') else {
            return line.to_owned();
        };
        let single = words
            .split_whitespace()
            .filter_map(|word| word.strip_prefix("--").map(|name| format!("-{name}")));
        let words: Vec<String> = words
            .split_whitespace()
            .map(str::to_owned)
            .chain(single)
            .collect();
        format!("{head}opts=\"{}\"{tail}", words.join(" "))
    });
    lines.collect::<Vec<_>>().join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bash_completes_flannels_single_dash_flags() {
        let script = "        opts=\"-h --help --etcd-endpoints\"\n";
        assert_eq!(
            with_single_dash_flags(script),
            "        opts=\"-h --help --etcd-endpoints -help -etcd-endpoints\"\n"
        );
    }

    /// docs/configuration.md is where users look a flag up: each one is there.
    #[test]
    fn every_flag_is_documented() {
        let docs = include_str!("../../../docs/configuration.md");
        let undocumented: Vec<String> = Args::command()
            .get_arguments()
            .filter(|arg| !arg.is_hide_set())
            .filter_map(|arg| arg.get_long())
            .filter(|long| !["help", "version"].contains(long))
            .filter(|long| !docs.contains(&format!("-{long}`")))
            .map(|long| format!("--{long}"))
            .collect();
        assert!(
            undocumented.is_empty(),
            "not in docs/configuration.md: {undocumented:?}"
        );
    }

    #[test]
    fn every_page_is_written() {
        let dir = tempfile::tempdir().unwrap();
        write_man_pages(dir.path()).unwrap();
        for page in [
            "flanneld",
            "flanneld-status",
            "flanneld-monitor",
            "mk-docker-opts",
        ] {
            let text = std::fs::read_to_string(dir.path().join(format!("{page}.8"))).unwrap();
            assert!(text.contains(".TH"), "{page}: {text}");
        }
        let main = std::fs::read_to_string(dir.path().join("flanneld.8")).unwrap();
        assert!(main.contains("etcd\\-endpoints") && main.contains("one dash or two"));
    }
}
