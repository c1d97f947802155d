//! The bench's statistics: measures over rounds (median, min, max), their ratios round by
//! round, and the Markdown tables they go into.

use std::fmt::Write as _;

use anyhow::{bail, Result};
use serde_json::json;

/// A measure's name and how to read it from a sample.
pub type Metric<S> = (&'static str, fn(&S) -> f64);

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// `| row | <metric> | ... |` and its separator line.
pub fn table_header<S>(md: &mut String, metrics: &[Metric<S>]) -> Result<()> {
    write!(md, "| row |")?;
    for (name, _) in metrics {
        write!(md, " {name} |")?;
    }
    writeln!(md, "\n|---|{}", "---|".repeat(metrics.len()))?;
    Ok(())
}

/// A measure over rounds.
#[derive(Clone, Copy)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    fn of(mut values: Vec<f64>) -> Self {
        Self {
            median: median(&mut values),
            min: values[0],
            max: values[values.len() - 1],
        }
    }
}

/// A table of `metrics` for `rows` (name, samples), each cell "median (min-max)"; returns the
/// stats per row and metric, and the rows as JSON.
pub fn stats_table<S>(
    md: &mut String,
    rows: &[(String, &[S])],
    metrics: &[Metric<S>],
) -> Result<(Vec<Vec<Stat>>, Vec<serde_json::Value>)> {
    if rows.iter().any(|(_, samples)| samples.is_empty()) {
        bail!("a row has no samples");
    }
    table_header(md, metrics)?;
    let mut stats = Vec::new();
    let mut json_rows = Vec::new();
    for (name, samples) in rows {
        write!(md, "| {name} |")?;
        let mut row_stats = Vec::new();
        let mut json_metrics = serde_json::Map::new();
        for (metric, get) in metrics {
            let values: Vec<f64> = samples.iter().map(get).collect();
            let stat = Stat::of(values.clone());
            write!(
                md,
                " {:.2} ({:.2}-{:.2}) |",
                stat.median, stat.min, stat.max
            )?;
            json_metrics.insert(
                metric.to_string(),
                json!({"median": stat.median, "rounds": values}),
            );
            row_stats.push(stat);
        }
        writeln!(md)?;
        json_rows.push(json!({"row": name, "metrics": json_metrics}));
        stats.push(row_stats);
    }
    Ok((stats, json_rows))
}

/// `get` of each round's sample against the same round's baseline, over rounds.
pub fn round_ratios<S>(samples: &[S], base: &[S], get: fn(&S) -> f64) -> Stat {
    Stat::of(
        samples
            .iter()
            .zip(base)
            .map(|(s, b)| get(s) / get(b))
            .collect(),
    )
}

/// The value at rank `p` (0-100, nearest rank) of sorted `values`.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_pair_each_round_with_its_baseline() {
        // The row is twice its baseline in rounds 1 and 2 (both fast in round 2) and half
        // of it in round 3: 2x over rounds, where the two medians (4 against 4) say 1x.
        let row = [2.0, 8.0, 4.0];
        let base = [1.0, 4.0, 8.0];
        let ratio = round_ratios(&row, &base, |v| *v);
        assert_eq!((ratio.median, ratio.min, ratio.max), (2.0, 0.5, 2.0));
    }
}
