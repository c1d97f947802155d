//! Horizontal bar charts with min-max whiskers, as plain SVG. Written by hand: plotters needs
//! system font libraries to lay out text, which a fresh machine of this kind lacks.

use std::fmt::Write as _;

/// One bar: its label, median, and the min and max around it.
pub struct Bar<'a> {
    pub label: &'a str,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

const WIDTH: f64 = 760.0;
const LABEL: f64 = 210.0;
const ROW: f64 = 34.0;
const TOP: f64 = 44.0;

pub fn svg(title: &str, unit: &str, bars: &[Bar]) -> String {
    let scale_max = bars
        .iter()
        .map(|b| b.max)
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE)
        * 1.1;
    let plot = WIDTH - LABEL - 90.0;
    let x = |v: f64| LABEL + v / scale_max * plot;
    let height = TOP + ROW * bars.len() as f64 + 20.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="10" y="24" font-size="16" font-weight="bold">{}</text>"#,
        escape(title)
    );
    for (i, bar) in bars.iter().enumerate() {
        let y = TOP + ROW * i as f64;
        let mid = y + ROW / 2.0 - 4.0;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            LABEL - 8.0,
            mid + 4.0,
            escape(bar.label)
        );
        let _ = writeln!(
            out,
            r##"<rect x="{LABEL}" y="{}" width="{:.1}" height="{}" fill="#4878a8"/>"##,
            y + 4.0,
            x(bar.median) - LABEL,
            ROW - 16.0
        );
        let (lo, hi) = (x(bar.min), x(bar.max));
        let _ = writeln!(
            out,
            r#"<line x1="{lo:.1}" y1="{mid}" x2="{hi:.1}" y2="{mid}" stroke="black"/>"#
        );
        for end in [lo, hi] {
            let _ = writeln!(
                out,
                r#"<line x1="{end:.1}" y1="{}" x2="{end:.1}" y2="{}" stroke="black"/>"#,
                mid - 5.0,
                mid + 5.0
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}">{:.2} {unit}</text>"#,
            hi + 6.0,
            mid + 4.0,
            bar.median
        );
    }
    out.push_str("</svg>\n");
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_max() {
        let bars = [
            Bar {
                label: "a & b",
                median: 10.0,
                min: 9.0,
                max: 11.0,
            },
            Bar {
                label: "c",
                median: 5.0,
                min: 5.0,
                max: 5.0,
            },
        ];
        let svg = svg("Throughput", "Gbit/s", &bars);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("a &amp; b"));
        assert!(svg.contains("10.00 Gbit/s") && svg.contains("5.00 Gbit/s"));
        // The widest bar (median 10 of a 12.1 scale) is twice the other.
        let widths: Vec<f64> = svg
            .lines()
            .filter(|l| l.contains("fill=\"#4878a8\""))
            .map(|l| {
                l.split("width=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert!((widths[0] / widths[1] - 2.0).abs() < 0.01, "{widths:?}");
    }
}
