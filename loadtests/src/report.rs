//! The run's report: a summary table on the terminal, JSON for machines, and a
//! self-contained HTML page (inline SVG charts, no CDN) for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::{Percentiles, Second};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub scenario: String,
    pub parameters: serde_json::Value,
    pub seconds: f64,
    pub requests: u64,
    pub requests_per_second: f64,
    pub accepted: u64,
    pub accepted_per_second: f64,
    pub status_counts: BTreeMap<String, u64>,
    pub latency_ms: Percentiles,
    pub latency_by_outcome_ms: BTreeMap<String, Percentiles>,
    pub timeline: Vec<Second>,
    pub completed_after_seconds: Option<f64>,
    pub violations: Vec<String>,
}

impl Report {
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: {} requests in {:.2} s, {:.0} requests/s, {} accepted ({:.0} accepted orders/s)",
            self.scenario,
            self.requests,
            self.seconds,
            self.requests_per_second,
            self.accepted,
            self.accepted_per_second
        );
        let _ = writeln!(
            out,
            "{:<8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "outcome", "count", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        let mut rows: Vec<(&str, &Percentiles)> = self
            .latency_by_outcome_ms
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        rows.push(("all", &self.latency_ms));
        for (label, p) in rows {
            let _ = writeln!(
                out,
                "{label:<8} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                p.count, p.p50, p.p90, p.p99, p.p999, p.max
            );
        }
        if let Some(s) = self.completed_after_seconds {
            let _ = writeln!(
                out,
                "every accepted order completed {s:.2} s after the start"
            );
        }
        if self.violations.is_empty() {
            let _ = writeln!(out, "invariants: ok");
        } else {
            for v in &self.violations {
                let _ = writeln!(out, "VIOLATION: {v}");
            }
        }
        out
    }

    pub fn html(&self) -> String {
        let labels = ["201", "200", "409", "429", "503", "error"];
        let colours = [
            "#2e7d32", "#1565c0", "#ef6c00", "#6a1b9a", "#c62828", "#424242",
        ];
        let throughput: Vec<(&str, &str, Vec<f64>)> = labels
            .iter()
            .zip(colours)
            .map(|(l, c)| {
                (
                    *l,
                    c,
                    self.timeline
                        .iter()
                        .map(|s| *s.counts.get(l).unwrap_or(&0) as f64)
                        .collect(),
                )
            })
            .filter(|(_, _, v): &(&str, &str, Vec<f64>)| v.iter().any(|x| *x > 0.0))
            .collect();
        let latency = vec![
            (
                "p50",
                "#1565c0",
                self.timeline.iter().map(|s| s.p50_ms).collect::<Vec<_>>(),
            ),
            (
                "p99",
                "#c62828",
                self.timeline.iter().map(|s| s.p99_ms).collect::<Vec<_>>(),
            ),
        ];
        let json = serde_json::to_string_pretty(self)
            .unwrap_or_default()
            .replace("</", "<\\/");
        format!(
            r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>flashsale-load: {scenario}</title>
<style>body{{font:14px system-ui,sans-serif;margin:2rem;color:#222}}pre{{background:#f5f5f5;padding:1rem;overflow:auto}}
svg{{background:#fff;border:1px solid #ddd}}h2{{font-size:1.05rem;margin-top:2rem}}</style></head><body>
<h1>flashsale-load: {scenario}</h1>
<pre>{summary}</pre>
<h2>Throughput per second, by outcome</h2>{tp}
<h2>Latency per second (ms, from the intended send time)</h2>{lat}
<h2>Report</h2><pre>{json}</pre></body></html>"#,
            scenario = self.scenario,
            summary = html_escape(&self.summary()),
            tp = svg_chart(&throughput),
            lat = svg_chart(&latency),
        )
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line chart of series over seconds, as inline SVG.
fn svg_chart(series: &[(&str, &str, Vec<f64>)]) -> String {
    let (w, h, pad) = (760.0, 260.0, 40.0);
    let n = series.iter().map(|s| s.2.len()).max().unwrap_or(0).max(2);
    let top = series
        .iter()
        .flat_map(|s| s.2.iter().copied())
        .fold(0.0f64, f64::max)
        .max(1.0);
    let x = |i: usize| pad + (w - 2.0 * pad) * i as f64 / (n - 1) as f64;
    let y = |v: f64| h - pad - (h - 2.0 * pad) * v / top;
    let mut svg = format!(
        r#"<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg">"#
    );
    let _ = write!(
        svg,
        r##"<line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" stroke="#999"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{b}" stroke="#999"/><text x="4" y="{t}" font-size="11">{top:.0}</text><text x="4" y="{b}" font-size="11">0</text><text x="{r}" y="{lb}" font-size="11" text-anchor="end">{n} s</text>"##,
        b = h - pad,
        r = w - pad,
        t = pad + 4.0,
        lb = h - pad + 16.0,
    );
    for (k, (label, colour, values)) in series.iter().enumerate() {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/><text x="{lx}" y="{ly}" font-size="12" fill="{colour}">{label}</text>"#,
            points.join(" "),
            lx = pad + 10.0 + 60.0 * k as f64,
            ly = pad - 10.0,
        );
    }
    svg.push_str("</svg>");
    svg
}
