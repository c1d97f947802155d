//! An agent's `/metrics` (`--healthz-port`), scraped from inside its host.

use anyhow::{Context, Result};

use crate::netns::Netns;

/// The port the tests give `--healthz-port`.
pub const PORT: u16 = 8471;
/// The flag that serves `/metrics` (and `/healthz`, `/readyz`) on [`PORT`].
pub const FLAG: &str = "--healthz-port=8471";

/// `host`'s agent's `/metrics` text, with the agent serving on `port`.
pub fn scrape_port(host: &Netns, port: u16) -> Result<String> {
    host.exec(
        "curl",
        &["-sf", &format!("http://127.0.0.1:{port}/metrics")],
    )
}

/// `host`'s agent's `/metrics` text, on [`PORT`].
pub fn scrape(host: &Netns) -> Result<String> {
    scrape_port(host, PORT)
}

/// The value of the first sample of `series` in `text`: a name (the sample may have labels)
/// or a name with its labels (`flannel_drops_total{reason="unknown_peer"}`).
pub fn value(text: &str, series: &str) -> Option<f64> {
    // The series, then its value (or, for a bare name, its labels).
    let follows =
        |rest: &str| rest.starts_with(' ') || (!series.ends_with('}') && rest.starts_with('{'));
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| line.strip_prefix(series).is_some_and(follows))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// `value` of `series` in `host`'s agent's `/metrics`; an error naming the series when there
/// is none.
pub fn read(host: &Netns, series: &str) -> Result<f64> {
    let text = scrape(host)?;
    value(&text, series).with_context(|| format!("no {series} in:\n{text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_found_by_name_or_by_name_and_labels() {
        let text = "# TYPE flannel_drops_total counter\n\
                    flannel_drops_total{reason=\"unknown_peer\"} 7\n\
                    flannel_drops_total{reason=\"wrong_vni\"} 2\n\
                    flannel_peers 3\n\
                    flannel_peers_extra 9\n";
        assert_eq!(value(text, "flannel_drops_total"), Some(7.0));
        assert_eq!(
            value(text, r#"flannel_drops_total{reason="wrong_vni"}"#),
            Some(2.0)
        );
        assert_eq!(value(text, "flannel_peers"), Some(3.0));
        assert_eq!(value(text, "flannel_ready"), None);
    }
}
