use std::{ffi::OsString, io::IsTerminal, path::Path, process::ExitCode};

use clap::Parser;
use flannel_agent::{
    cli::{go_style, Args, LogFormat},
    control::docker_opts,
    daemon,
    ops::{
        cleanup, manual,
        monitor::{self, MonitorArgs},
        status::{self, StatusArgs},
    },
};
use tracing::Level;
use tracing_subscriber::{
    fmt::{
        format::{self, Writer},
        FmtContext, FormatEvent, FormatFields,
    },
    registry::LookupSpan,
    EnvFilter,
};

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let invoked_as = argv
        .first()
        .and_then(|arg0| Path::new(arg0).file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    // `mk-docker-opts [flags]` (an installed link) or `flanneld mk-docker-opts [flags]`.
    if invoked_as.starts_with("mk-docker-opts") {
        return mk_docker_opts(argv);
    }
    if argv.get(1).is_some_and(|arg| arg == "mk-docker-opts") {
        return mk_docker_opts(argv.into_iter().skip(1).collect());
    }
    if argv.get(1).is_some_and(|arg| arg == "status") {
        let args = StatusArgs::try_parse_from(go_style(argv.into_iter().skip(1)))
            .unwrap_or_else(|e| e.exit());
        return match runtime().block_on(status::run(&args)) {
            Ok(true) => ExitCode::SUCCESS,
            // The report is printed, but etcd's part of it is missing.
            Ok(false) => ExitCode::from(2),
            Err(e) if args.json => {
                println!("{}", serde_json::json!({ "error": format!("{e:#}") }));
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("flanneld status: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if argv.get(1).is_some_and(|arg| arg == "completion") {
        let shell = argv.get(2).map(|s| s.to_string_lossy().into_owned());
        return report(
            "flanneld completion",
            manual::print_completion(&shell.unwrap_or_default()),
        );
    }
    // For packagers: the manual pages, into a directory.
    if argv.get(1).is_some_and(|arg| arg == "man") {
        let dir = argv
            .get(2)
            .map_or_else(|| ".".into(), std::path::PathBuf::from);
        return report("flanneld man", manual::write_man_pages(&dir));
    }
    if argv.get(1).is_some_and(|arg| arg == "monitor") {
        let args = MonitorArgs::try_parse_from(go_style(argv.into_iter().skip(1)))
            .unwrap_or_else(|e| e.exit());
        return report("flanneld monitor", monitor::run(&args));
    }
    let args = Args::parse_go_style(argv).unwrap_or_else(|e| e.exit());
    init_logging(args.verbosity, args.log_format);
    let work = async {
        if args.cleanup {
            cleanup::run(&args.pins.bpf_pin_dir).await
        } else {
            daemon::run(args).await
        }
    };
    match runtime().block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A subcommand's exit: its error, if any, on stderr.
fn report(what: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{what}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn mk_docker_opts(argv: Vec<OsString>) -> ExitCode {
    let args = docker_opts::DockerOptsArgs::parse_from(argv);
    match docker_opts::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mk-docker-opts: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// flannel's `-v` levels: 0 info, 1-2 debug, 3+ trace; RUST_LOG overrides.
fn init_logging(verbosity: u8, format: LogFormat) {
    let level = match verbosity {
        0 => "info",
        1 | 2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        // Under systemd, each line goes to the journal at its level: journald reads a
        // "<priority>" prefix, and stamps the time itself.
        LogFormat::Text if stderr_is_journal() => logs
            .event_format(SyslogPriority(format::format().without_time()))
            .init(),
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// A log line format, prefixed with the syslog priority of the event's level.
struct SyslogPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for SyslogPriority<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Whether stderr is the journal's stream: systemd says which in JOURNAL_STREAM ("dev:inode").
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    nix::sys::stat::fstat(std::io::stderr())
        .is_ok_and(|stat| stream.to_string_lossy() == format!("{}:{}", stat.st_dev, stat.st_ino))
}
