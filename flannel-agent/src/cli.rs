//! flanneld's command line: flannel's flags with flannel's defaults, Go-style.
//!
//! Go's flag package accepts `-flag` and `--flag`, `-flag=value` and `-flag value`; booleans
//! are `--flag` or `--flag=false`. Every flag can also come from `FLANNELD_<NAME>`, used only
//! when the flag is not on the command line.

use std::{
    ffi::OsString,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use clap::{builder::BoolishValueParser, Parser, ValueEnum};

use crate::{
    control::registry::EtcdOptions,
    datapath::{Choice, Decap, Options as DatapathOptions},
    host::iface::IfaceOptions,
};

const FLANNEL: &str = "flannel flags";
const OURS: &str = "flanneld (Rust, eBPF) flags";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the agent pins its maps: shared by the agent, `flanneld status` and `flanneld monitor`.
#[derive(clap::Args, Debug, Clone)]
pub struct PinDirArg {
    /// bpffs directory for this agent's pinned programs and maps (one per network namespace)
    #[arg(long, env = "FLANNELD_BPF_PIN_DIR", default_value = "/sys/fs/bpf/flannel", help_heading = OURS)]
    pub bpf_pin_dir: PathBuf,
}

/// How to reach etcd: flannel's flags, shared by the agent and `flanneld status`.
#[derive(clap::Args, Debug, Clone)]
pub struct EtcdArgs {
    /// etcd endpoints, comma separated
    #[arg(long, env = "FLANNELD_ETCD_ENDPOINTS", value_delimiter = ',', help_heading = FLANNEL,
          default_value = "http://127.0.0.1:4001,http://127.0.0.1:2379",
          value_parser = etcd_endpoint)]
    pub etcd_endpoints: Vec<String>,
    /// etcd prefix
    #[arg(long, env = "FLANNELD_ETCD_PREFIX", default_value = "/coreos.com/network", help_heading = FLANNEL)]
    pub etcd_prefix: String,
    /// SSL key file used to secure etcd communication
    #[arg(long, env = "FLANNELD_ETCD_KEYFILE", help_heading = FLANNEL)]
    pub etcd_keyfile: Option<PathBuf>,
    /// SSL certification file used to secure etcd communication
    #[arg(long, env = "FLANNELD_ETCD_CERTFILE", help_heading = FLANNEL)]
    pub etcd_certfile: Option<PathBuf>,
    /// SSL Certificate Authority file used to secure etcd communication
    #[arg(long, env = "FLANNELD_ETCD_CAFILE", help_heading = FLANNEL)]
    pub etcd_cafile: Option<PathBuf>,
    /// username for BasicAuth to etcd
    #[arg(long, env = "FLANNELD_ETCD_USERNAME", help_heading = FLANNEL)]
    pub etcd_username: Option<String>,
    /// password for BasicAuth to etcd
    #[arg(long, env = "FLANNELD_ETCD_PASSWORD", help_heading = FLANNEL)]
    pub etcd_password: Option<String>,
}

impl EtcdArgs {
    pub fn options(&self) -> EtcdOptions {
        EtcdOptions {
            endpoints: self.etcd_endpoints.clone(),
            prefix: self.etcd_prefix.clone(),
            cafile: self.etcd_cafile.clone(),
            certfile: self.etcd_certfile.clone(),
            keyfile: self.etcd_keyfile.clone(),
            username: self.etcd_username.clone(),
            password: self.etcd_password.clone(),
        }
    }
}

/// flanneld: flannel's agent, with the packet path in eBPF.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "flanneld",
    version,
    max_term_width = 100,
    args_override_self = true
)]
pub struct Args {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// interface to use (IP or name) for inter-host communication; repeatable
    #[arg(long, env = "FLANNELD_IFACE", help_heading = FLANNEL)]
    pub iface: Vec<String>,
    /// regex of the interface (IP or name) to use; repeatable
    #[arg(long, env = "FLANNELD_IFACE_REGEX", help_heading = FLANNEL)]
    pub iface_regex: Vec<String>,
    /// use the interface that routes to this address
    #[arg(long, env = "FLANNELD_IFACE_CAN_REACH", help_heading = FLANNEL)]
    pub iface_can_reach: Option<std::net::IpAddr>,
    /// IP accessible by other nodes for inter-host communication
    #[arg(long, env = "FLANNELD_PUBLIC_IP", help_heading = FLANNEL)]
    pub public_ip: Option<Ipv4Addr>,
    /// IPv6 accessible by other nodes for inter-host communication
    #[arg(long, env = "FLANNELD_PUBLIC_IPV6", help_heading = FLANNEL)]
    pub public_ipv6: Option<Ipv6Addr>,
    /// filename where env variables (subnet, MTU, ...) will be written to
    #[arg(long, env = "FLANNELD_SUBNET_FILE", default_value = "/run/flannel/subnet.env", help_heading = FLANNEL)]
    pub subnet_file: PathBuf,
    /// subnet lease renewal margin, in minutes
    #[arg(long, env = "FLANNELD_SUBNET_LEASE_RENEW_MARGIN", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..=1439), help_heading = FLANNEL)]
    pub subnet_lease_renew_margin: u32,
    /// setup IP masquerade rule for traffic destined outside of overlay network
    #[arg(long, env = "FLANNELD_IP_MASQ", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          value_parser = BoolishValueParser::new(), help_heading = FLANNEL)]
    pub ip_masq: bool,
    /// disable fully-random mode for MASQUERADE
    #[arg(long, env = "FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          value_parser = BoolishValueParser::new(), help_heading = FLANNEL)]
    pub ip_masq_fully_random_disable: bool,
    /// add a blackhole route for this host's subnet: what no container here holds is dropped,
    /// not sent out of the default route
    #[arg(long, env = "FLANNELD_IP_BLACKHOLE_ROUTE", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          value_parser = BoolishValueParser::new(), help_heading = FLANNEL)]
    pub ip_blackhole_route: bool,
    /// resync period for iptables rules, in seconds
    #[arg(long, env = "FLANNELD_IPTABLES_RESYNC", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..), help_heading = FLANNEL)]
    pub iptables_resync: u64,
    /// add default accept rules to FORWARD chain in iptables
    #[arg(long, env = "FLANNELD_IPTABLES_FORWARD_RULES", num_args = 0..=1, require_equals = true,
          default_value = "true", default_missing_value = "true",
          value_parser = BoolishValueParser::new(), help_heading = FLANNEL)]
    pub iptables_forward_rules: bool,
    /// the IP address for healthz server to listen
    #[arg(long, env = "FLANNELD_HEALTHZ_IP", default_value = "0.0.0.0", help_heading = FLANNEL)]
    pub healthz_ip: IpAddr,
    /// the port for healthz server to listen (0 to disable)
    #[arg(long, env = "FLANNELD_HEALTHZ_PORT", default_value_t = 0, help_heading = FLANNEL)]
    pub healthz_port: u16,
    /// log level (klog's -v): 0 info, 1+ debug, 3+ trace
    #[arg(short = 'v', long = "v", env = "FLANNELD_V", default_value_t = 0, help_heading = FLANNEL)]
    pub verbosity: u8,

    /// packet path: our eBPF programs or the classic kernel devices
    #[arg(long, env = "FLANNELD_DATAPATH", value_enum, default_value = "ebpf", help_heading = OURS)]
    pub datapath: Choice,
    #[command(flatten)]
    pub pins: PinDirArg,
    /// subnet lease TTL in seconds (flannel's is fixed at 24 h); renewal comes
    /// --subnet-lease-renew-margin minutes before it runs out
    #[arg(long, env = "FLANNELD_SUBNET_LEASE_TTL", default_value_t = crate::control::acquire::DEFAULT_LEASE_TTL.as_secs(), hide = true,
          value_parser = clap::value_parser!(u64).range(61..), help_heading = OURS)]
    pub subnet_lease_ttl: u64,
    /// where tunnel packets are decapsulated; tc (with a GRO device) measured fastest on
    /// NIC-like hosts for both backends
    #[arg(long, env = "FLANNELD_BPF_DECAP", value_enum, default_value = "tc", help_heading = OURS)]
    pub bpf_decap: Decap,
    /// log format: human text, or one JSON object per line
    #[arg(long, env = "FLANNELD_LOG_FORMAT", value_enum, default_value = "text", help_heading = OURS)]
    pub log_format: LogFormat,
    /// remove everything flanneld installed on this host (TCX links and TC filters, overlay and
    /// GRO devices, routes, iptables chains and nftables tables, pins) and exit
    #[arg(long, help_heading = OURS)]
    pub cleanup: bool,
    /// drop a peer's tunnel packet whose inner source lies in the network but outside the
    /// peer's subnet (a peer may forward outside clients' packets, not speak for other hosts)
    #[arg(long, env = "FLANNELD_BPF_CHECK_INNER_SOURCE", num_args = 0..=1, require_equals = true,
          default_value = "true", default_missing_value = "true",
          value_parser = BoolishValueParser::new(), help_heading = OURS)]
    pub bpf_check_inner_source: bool,
    /// the fast path: container traffic is encapsulated before the bridge and decapsulated
    /// packets go straight into their container, so the host's FORWARD chain (Docker's
    /// DOCKER-USER, network policies) never sees overlay traffic; false: it crosses FORWARD as
    /// with flannel, and those rules apply
    #[arg(long, env = "FLANNELD_BPF_FAST_PATH", num_args = 0..=1, require_equals = true,
          default_value = "true", default_missing_value = "true",
          value_parser = BoolishValueParser::new(), help_heading = OURS)]
    pub bpf_fast_path: bool,
    /// load the eBPF programs from this object instead of the embedded one
    #[arg(long, env = "FLANNELD_BPF_OBJECT", help_heading = OURS)]
    pub bpf_object: Option<PathBuf>,
    #[command(flatten)]
    kubernetes: KubernetesFlags,
}

/// flannel's flags for what this flanneld does not have, its Kubernetes mode and klog's
/// per-file logging: given, each is refused by name (flannel would quietly ignore the
/// Kubernetes ones without `--kube-subnet-mgr`).
#[derive(clap::Args, Debug, Clone)]
struct KubernetesFlags {
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true", value_parser = kubernetes_only)]
    kube_subnet_mgr: Option<String>,
    #[arg(long, hide = true, value_parser = kubernetes_only)]
    kube_api_url: Option<String>,
    #[arg(long, hide = true, value_parser = kubernetes_only)]
    kube_annotation_prefix: Option<String>,
    #[arg(long, hide = true, value_parser = kubernetes_only)]
    kubeconfig_file: Option<String>,
    #[arg(long, hide = true, value_parser = kubernetes_only)]
    net_config_path: Option<String>,
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true", value_parser = kubernetes_only)]
    set_node_network_unavailable: Option<String>,
    /// klog's flags that flannel copies besides `-v`.
    #[arg(long, hide = true, value_parser = klog_only)]
    vmodule: Option<String>,
    #[arg(long = "log_backtrace_at", hide = true, value_parser = klog_only)]
    log_backtrace_at: Option<String>,
}

fn klog_only(_: &str) -> Result<String, String> {
    Err(
        "klog's per-file logging is not supported by this flanneld: -v sets the level, and \
         RUST_LOG (e.g. RUST_LOG=flannel_agent::datapath=debug) filters by module"
            .into(),
    )
}

fn kubernetes_only(_: &str) -> Result<String, String> {
    Err(
        "flannel's Kubernetes mode is not supported by this flanneld, which leases subnets \
         from etcd (--etcd-endpoints)"
            .into(),
    )
}

impl Args {
    /// Parses a command line, Go-style dashes included.
    pub fn parse_go_style(args: impl IntoIterator<Item = OsString>) -> Result<Self, clap::Error> {
        Self::try_parse_from(go_style(args))
    }

    pub fn etcd_options(&self) -> EtcdOptions {
        self.etcd.options()
    }

    pub fn datapath_options(&self) -> DatapathOptions {
        DatapathOptions {
            choice: self.datapath,
            bpf_object: self.bpf_object.clone(),
            pin_dir: self.pins.bpf_pin_dir.clone(),
            decap: self.bpf_decap,
            check_inner_source: self.bpf_check_inner_source,
            fast_path: self.bpf_fast_path,
        }
    }

    pub fn iface_options(&self) -> IfaceOptions {
        IfaceOptions {
            iface: self.iface.clone(),
            iface_regex: self.iface_regex.clone(),
            iface_can_reach: self.iface_can_reach,
            public_ip: self.public_ip,
            public_ipv6: self.public_ipv6,
        }
    }
}

/// An etcd endpoint as etcd's clients take it, `http://` or `https://` then a host and an
/// optional port, refused at once otherwise (it would fail every connection, forever). An
/// empty entry (a trailing comma) is left for the registry to skip.
fn etcd_endpoint(text: &str) -> Result<String, String> {
    let url = text.trim();
    if url.is_empty() {
        return Ok(String::new());
    }
    let want = "want http://host:port or https://host:port";
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("{url:?} is not a URL ({want})"));
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!("{url:?}: scheme {scheme:?} ({want})"));
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    // A port follows the last colon, unless that colon is inside an IPv6 [address].
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (authority, None),
    };
    if host.is_empty() || host.contains(['/', '?', '#', '@']) {
        return Err(format!("{url:?}: no host ({want})"));
    }
    if let Some(port) = port {
        port.parse::<u16>()
            .map_err(|_| format!("{url:?}: port {port:?} is not a number up to 65535"))?;
    }
    Ok(url.to_owned())
}

/// Turns Go's single-dash long flags (`-etcd-endpoints=...`) into clap's `--etcd-endpoints=...`.
/// Single letters (`-v`, `-h`) and everything after `--` stay as they are.
pub fn go_style(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut rest = false;
    args.into_iter()
        .enumerate()
        .map(|(i, arg)| {
            let text = arg.to_string_lossy();
            if i == 0 || rest {
                return arg;
            }
            if text == "--" {
                rest = true;
                return arg;
            }
            let name = text
                .strip_prefix('-')
                .filter(|t| !t.starts_with('-'))
                .unwrap_or("");
            let name_len = name.split('=').next().unwrap_or("").len();
            if name_len > 1 && name.starts_with(|c: char| c.is_ascii_alphabetic()) {
                OsString::from(format!("-{text}"))
            } else {
                arg
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::parse_go_style(
            std::iter::once("flanneld")
                .chain(args.iter().copied())
                .map(OsString::from),
        )
    }

    #[test]
    fn flannels_defaults() {
        let args = parse(&[]).unwrap();
        assert_eq!(
            args.etcd.etcd_endpoints,
            ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
        );
        assert_eq!(args.etcd.etcd_prefix, "/coreos.com/network");
        assert_eq!(args.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(args.subnet_lease_renew_margin, 60);
        assert!(!args.ip_masq);
        assert_eq!(args.iptables_resync, 5);
        assert!(args.iptables_forward_rules);
        assert_eq!(args.healthz_ip.to_string(), "0.0.0.0");
        assert_eq!(args.healthz_port, 0);
        assert_eq!(args.datapath, Choice::Ebpf);
        assert_eq!(args.pins.bpf_pin_dir, PathBuf::from("/sys/fs/bpf/flannel"));
    }

    #[test]
    fn go_style_dashes_and_values() {
        let args = parse(&[
            "-etcd-endpoints=http://10.0.0.1:2379,http://10.0.0.2:2379",
            "-etcd-prefix",
            "/my/net",
            "--iface=eth1",
            "-iface",
            "10.0.0.5",
            "-ip-masq",
            "--iptables-forward-rules=false",
            "-v",
            "2",
        ])
        .unwrap();
        assert_eq!(
            args.etcd.etcd_endpoints,
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(args.etcd.etcd_prefix, "/my/net");
        assert_eq!(args.iface, ["eth1", "10.0.0.5"]);
        assert!(args.ip_masq);
        assert!(!args.iptables_forward_rules);
        assert_eq!(args.verbosity, 2);
        assert!(parse(&["-ip-masq=true"]).unwrap().ip_masq);
        assert!(!parse(&["--ip-masq=false"]).unwrap().ip_masq);
        // flannel v0.28's flags.
        let args = parse(&["-ip-masq-fully-random-disable", "-ip-blackhole-route"]).unwrap();
        assert!(args.ip_masq_fully_random_disable && args.ip_blackhole_route);
        let args = parse(&[]).unwrap();
        assert!(!args.ip_masq_fully_random_disable && !args.ip_blackhole_route);
    }

    #[test]
    fn flannels_kubernetes_mode_is_refused_by_name() {
        for (args, flag) in [
            (&["-kube-subnet-mgr"][..], "--kube-subnet-mgr"),
            (&["--kube-api-url=https://k8s:6443"], "--kube-api-url"),
            (
                &["--kubeconfig-file", "/etc/kubeconfig"],
                "--kubeconfig-file",
            ),
            (&["--kube-annotation-prefix=x"], "--kube-annotation-prefix"),
            (
                &["--net-config-path=/etc/kube-flannel/net-conf.json"],
                "--net-config-path",
            ),
            (
                &["--set-node-network-unavailable=false"],
                "--set-node-network-unavailable",
            ),
        ] {
            let message = parse(args).unwrap_err().to_string();
            assert!(
                message.contains(flag) && message.contains("Kubernetes mode is not supported"),
                "{args:?}: {message}"
            );
        }
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        for (args, flag) in [
            (
                &["--subnet-lease-renew-margin=0"][..],
                "--subnet-lease-renew-margin",
            ),
            (
                &["--subnet-lease-renew-margin=1440"],
                "--subnet-lease-renew-margin",
            ),
            (&["--public-ip=nope"], "--public-ip"),
            (&["--datapath=tun"], "--datapath"),
            (&["--ip-masq=maybe"], "--ip-masq"),
            (&["--etcd-endpoints=notaurl"], "--etcd-endpoints"),
            (
                &["--etcd-endpoints=ftp://10.0.0.1:2379"],
                "--etcd-endpoints",
            ),
            (
                &["--etcd-endpoints=http://10.0.0.1:2379,http://:2379"],
                "--etcd-endpoints",
            ),
            (
                &["--etcd-endpoints=http://10.0.0.1:99999"],
                "--etcd-endpoints",
            ),
            (&["--no-such-flag"], "--no-such-flag"),
        ] {
            let message = parse(args).unwrap_err().to_string();
            assert!(message.contains(flag), "{args:?}: {message}");
        }
    }

    #[test]
    fn etcd_endpoints_take_urls_as_etcds_clients_do() {
        let args = parse(&[
            "--etcd-endpoints=http://10.0.0.1:2379,https://etcd.example.com,http://[::1]:2379/,",
        ])
        .unwrap();
        assert_eq!(
            args.etcd.etcd_endpoints,
            [
                "http://10.0.0.1:2379",
                "https://etcd.example.com",
                "http://[::1]:2379/",
                ""
            ]
        );
        let message = parse(&["--etcd-endpoints=notaurl"])
            .unwrap_err()
            .to_string();
        assert!(message.contains("\"notaurl\" is not a URL"), "{message}");
    }

    #[test]
    fn help_groups_flannels_flags_apart_from_ours() {
        let help = parse(&["--help"]).unwrap_err().to_string();
        let flannel = help.find("flannel flags:").expect("flannel's heading");
        let ours = help
            .find("flanneld (Rust, eBPF) flags:")
            .expect("our heading");
        assert!(help[flannel..ours].contains("--etcd-endpoints"));
        assert!(help[ours..].contains("--datapath"));
        assert!(!help[flannel..ours].contains("--bpf-pin-dir"));
    }
}
