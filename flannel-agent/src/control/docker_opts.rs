//! `flanneld mk-docker-opts` (also installed as `mk-docker-opts`): flannel's mk-docker-opts.sh,
//! same flags, same output. Unlike the script, a missing or unreadable env file is an error
//! rather than an empty set of options.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;

use crate::control::{atomic_write::write_atomic, subnet_env::read_vars};

/// Generate Docker daemon options based on flannel env file.
#[derive(Parser, Debug)]
#[command(name = "mk-docker-opts", disable_version_flag = true)]
pub struct DockerOptsArgs {
    /// Path to flannel env file.
    #[arg(short = 'f', default_value = "/run/flannel/subnet.env")]
    pub flannel_env: PathBuf,
    /// Path to Docker env file to write to.
    #[arg(short = 'd', default_value = "/run/docker_opts.env")]
    pub docker_env: PathBuf,
    /// Output each Docker option as individual var. e.g. DOCKER_OPT_MTU=1500
    #[arg(short = 'i')]
    pub individual: bool,
    /// Output combined Docker options into DOCKER_OPTS var.
    #[arg(short = 'c')]
    pub combined: bool,
    /// Set the combined options key to this value.
    #[arg(short = 'k', default_value = "DOCKER_OPTS")]
    pub key: String,
    /// Do not output --ip-masq (useful for older Docker version).
    #[arg(short = 'm')]
    pub no_ip_masq: bool,
}

/// The output file's text, given the flannel env vars and the combined key's current value in
/// the environment (the script prepends it).
pub fn render(
    args: &DockerOptsArgs,
    vars: &BTreeMap<String, String>,
    existing: Option<&str>,
) -> Result<String> {
    let (individual, combined) = match (args.individual, args.combined) {
        (false, false) => (true, true),
        flags => flags,
    };
    // Sorted by name, as the script's `set | grep DOCKER_OPT_` lists them.
    let mut opts = BTreeMap::new();
    if let Some(subnet) = vars.get("FLANNEL_SUBNET").filter(|v| !v.is_empty()) {
        opts.insert("DOCKER_OPT_BIP", format!("--bip={subnet}"));
    }
    if let Some(mtu) = vars.get("FLANNEL_MTU").filter(|v| !v.is_empty()) {
        opts.insert("DOCKER_OPT_MTU", format!("--mtu={mtu}"));
    }
    if let Some(masq) = vars
        .get("FLANNEL_IPMASQ")
        .filter(|v| !v.is_empty() && !args.no_ip_masq)
    {
        // flannel masquerades, so Docker must not, and the other way round.
        let docker_masq = match masq.as_str() {
            "true" => "false",
            "false" => "true",
            other => bail!("Invalid value of FLANNEL_IPMASQ: {other}"),
        };
        opts.insert("DOCKER_OPT_IPMASQ", format!("--ip-masq={docker_masq}"));
    }

    let mut out = String::new();
    let mut all = match existing.filter(|v| !v.is_empty()) {
        Some(existing) => format!("{existing} "),
        None => String::new(),
    };
    for (name, value) in &opts {
        if individual {
            out.push_str(&format!("{name}=\"{value}\"\n"));
        }
        all.push(' ');
        all.push_str(value);
    }
    if combined {
        out.push_str(&format!("{}=\"{all}\"\n", args.key));
    }
    Ok(out)
}

pub fn run(args: &DockerOptsArgs) -> Result<()> {
    let vars = read_vars(&args.flannel_env)
        .with_context(|| format!("reading flannel env file {}", args.flannel_env.display()))?;
    let existing = std::env::var(&args.key).ok();
    let text = render(args, &vars, existing.as_deref())?;
    write_atomic(&args.docker_env, &text, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> DockerOptsArgs {
        DockerOptsArgs::try_parse_from(
            std::iter::once("mk-docker-opts").chain(flags.iter().copied()),
        )
        .unwrap()
    }

    fn vars(masq: &str) -> BTreeMap<String, String> {
        [
            ("FLANNEL_NETWORK", "10.1.0.0/16"),
            ("FLANNEL_SUBNET", "10.1.74.1/24"),
            ("FLANNEL_MTU", "1472"),
            ("FLANNEL_IPMASQ", masq),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn default_output_has_individual_and_combined_vars() {
        assert_eq!(
            render(&args(&[]), &vars("false"), None).unwrap(),
            "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\nDOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"
        );
    }

    #[test]
    fn each_flag_combination() {
        let cases: &[(&[&str], &str, &str)] = &[
            (
                &["-i"],
                "true",
                "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\n",
            ),
            (&["-c"], "true", "DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=false --mtu=1472\"\n"),
            (&["-c", "-m"], "true", "DOCKER_OPTS=\" --bip=10.1.74.1/24 --mtu=1472\"\n"),
            (
                &["-ic", "-k", "DOCKER_NETWORK_OPTIONS"],
                "true",
                "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\nDOCKER_NETWORK_OPTIONS=\" --bip=10.1.74.1/24 --ip-masq=false --mtu=1472\"\n",
            ),
            (
                &["-i", "-m"],
                "true",
                "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\n",
            ),
        ];
        for (flags, masq, expected) in cases {
            assert_eq!(
                render(&args(flags), &vars(masq), None).unwrap(),
                *expected,
                "{flags:?}"
            );
        }
    }

    #[test]
    fn an_existing_combined_value_is_kept_in_front() {
        assert_eq!(
            render(&args(&["-c"]), &vars("true"), Some("--log-level=debug")).unwrap(),
            "DOCKER_OPTS=\"--log-level=debug  --bip=10.1.74.1/24 --ip-masq=false --mtu=1472\"\n"
        );
    }

    #[test]
    fn bad_ipmasq_is_refused() {
        let err = render(&args(&[]), &vars("yes"), None).unwrap_err();
        assert_eq!(err.to_string(), "Invalid value of FLANNEL_IPMASQ: yes");
    }

    #[test]
    fn files_in_and_out() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("subnet.env");
        std::fs::write(&input, "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n").unwrap();
        let output = dir.path().join("docker");
        let parsed = args(&[
            "-f",
            input.to_str().unwrap(),
            "-d",
            output.to_str().unwrap(),
            "-c",
            "-k",
            "FLANNEL_TEST_UNSET_KEY",
        ]);
        run(&parsed).unwrap();
        assert_eq!(
            std::fs::read_to_string(&output).unwrap(),
            "FLANNEL_TEST_UNSET_KEY=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"
        );
        let missing = args(&[
            "-f",
            "/nonexistent/subnet.env",
            "-d",
            output.to_str().unwrap(),
        ]);
        let err = format!("{:#}", run(&missing).unwrap_err());
        assert!(
            err.starts_with("reading flannel env file /nonexistent/subnet.env"),
            "{err}"
        );
    }
}
