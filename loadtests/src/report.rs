//! The run's report: a summary table on the terminal, JSON for machines, and a
//! self-contained HTML page (inline SVG charts, no CDN) for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::ask_again::AskedAgain;
use crate::checkout::CheckoutReport;
use crate::stats::{Bucket, Percentiles, DISTRIBUTION};

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
    /// The width of the timeline's buckets: 100 ms for a run planned under 10 s.
    pub bucket_ms: u64,
    pub timeline: Vec<Bucket>,
    /// Per outcome, [percentile, latency ms] from p50 to the maximum.
    pub latency_distribution_ms: BTreeMap<String, Vec<(f64, f64)>>,
    /// Orders accepted (201s answered) and completed (in their shards, from the admin
    /// counters) from the start of the run until every accepted one completed.
    pub progress: Vec<Progress>,
    pub completed_after_seconds: Option<f64>,
    /// The requests answered `503` or not at all, asked again with their keys after
    /// the run (the invariants count the orders they made).
    pub asked_again: AskedAgain,
    /// The countdown scenario's polls before the sale opened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub countdown: Option<CountdownReport>,
    /// The checkout scenario's units held, paid and expired over time, and its payments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkout: Option<CheckoutReport>,
    pub violations: Vec<String>,
}

/// One look at the run's progress.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub at_ms: u64,
    pub accepted: u64,
    pub completed: i64,
}

/// The polls of `GET /flash-sales/{id}` before a sale opens.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CountdownReport {
    pub polls: u64,
    pub seconds: f64,
    pub polls_per_second: f64,
    pub latency_ms: Percentiles,
    /// By the sale's status in a 200, else by HTTP status or `error`.
    pub answers: BTreeMap<String, u64>,
    /// The same number of `GET /healthz` the same way (with --baseline).
    pub healthz_per_second: Option<f64>,
    /// The polls' rate as a share of that HTTP-alone ceiling.
    pub share_of_healthz: Option<f64>,
    /// How long the polls finished before the sale opened (0: it was open already).
    pub waited_for_opening_ms: i64,
}

impl Report {
    pub fn summary(&self) -> String {
        let mut out = String::new();
        if let Some(c) = &self.countdown {
            let answers: Vec<String> = c.answers.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(
                out,
                "polls before the opening: {} in {:.2} s, {:.0} polls/s, p50 {:.2} ms, p99 {:.2} ms ({})",
                c.polls,
                c.seconds,
                c.polls_per_second,
                c.latency_ms.p50,
                c.latency_ms.p99,
                answers.join(", ")
            );
            if let (Some(h), Some(share)) = (c.healthz_per_second, c.share_of_healthz) {
                let _ = writeln!(
                    out,
                    "HTTP alone (GET /healthz, same run): {h:.0} requests/s; the polls ran at {:.0}% of it",
                    share * 100.0
                );
            }
        }
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
        let again = &self.asked_again;
        if again.requests > 0 {
            let _ = writeln!(
                out,
                "asked again with their keys: {} requests answered 503 or not at all: {} found their order, {} made one, {} refused, {} still open",
                again.requests, again.found, again.created, again.refused, again.undecided
            );
        }
        if let Some(c) = &self.checkout {
            out.push_str(&c.summary());
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
        let secs = |ms: u64| ms as f64 / 1000.0;
        let throughput: Vec<Series> = labels
            .iter()
            .zip(colours)
            .map(|(l, c)| Series {
                label: l.to_string(),
                colour: c,
                points: self
                    .timeline
                    .iter()
                    .map(|b| (secs(b.start_ms), *b.counts.get(l).unwrap_or(&0) as f64))
                    .collect(),
            })
            .filter(|s| s.points.iter().any(|p| p.1 > 0.0))
            .collect();
        // Latency where requests were sent: an empty bucket has none.
        let answered = |b: &&Bucket| b.counts.values().sum::<u64>() > 0;
        let latency: Vec<Series> = [("p50", "#1565c0"), ("p99", "#c62828")]
            .into_iter()
            .map(|(l, c)| Series {
                label: l.into(),
                colour: c,
                points: self
                    .timeline
                    .iter()
                    .filter(answered)
                    .map(|b| {
                        (
                            secs(b.start_ms),
                            if l == "p50" { b.p50_ms } else { b.p99_ms },
                        )
                    })
                    .collect(),
            })
            .collect();
        let progress = vec![
            Series {
                label: "accepted".into(),
                colour: "#2e7d32",
                points: self
                    .progress
                    .iter()
                    .map(|p| (secs(p.at_ms), p.accepted as f64))
                    .collect(),
            },
            Series {
                label: "completed".into(),
                colour: "#1565c0",
                points: self
                    .progress
                    .iter()
                    .map(|p| (secs(p.at_ms), p.completed as f64))
                    .collect(),
            },
        ];
        let held = match &self.checkout {
            None => String::new(),
            Some(c) => {
                let series =
                    |label: &str, colour, of: fn(&crate::checkout::HeldRow) -> i64| Series {
                        label: label.into(),
                        colour,
                        points: c
                            .held
                            .iter()
                            .map(|r| (r.second as f64, of(r) as f64))
                            .collect(),
                    };
                let lines = [
                    series("held", "#ef6c00", |r| r.held),
                    series("awaiting", "#6a1b9a", |r| r.awaiting_payment),
                    series("paid", "#2e7d32", |r| r.paid),
                    series("expired", "#c62828", |r| r.expired),
                ];
                format!(
                    "<h2>Units held, awaiting payment, paid and expired (the last reading of each second)</h2>{}",
                    svg_chart("held", &lines, &Axis::Time, "units")
                )
            }
        };
        let distribution: Vec<Series> = self
            .latency_distribution_ms
            .iter()
            .map(|(label, at)| Series {
                label: label.clone(),
                colour: labels
                    .iter()
                    .position(|l| l == label)
                    .map_or("#424242", |i| colours[i]),
                points: at
                    .iter()
                    .enumerate()
                    .map(|(i, (_, ms))| (i as f64, *ms))
                    .collect(),
            })
            .collect();
        let percentiles: Vec<String> = DISTRIBUTION
            .iter()
            .map(|p| match *p {
                100.0 => "max".to_string(),
                p => format!("p{p}"),
            })
            .collect();
        let bucket = match self.bucket_ms {
            1000 => "second".to_string(),
            ms => format!("{ms} ms"),
        };
        let json = serde_json::to_string_pretty(self)
            .unwrap_or_default()
            .replace("</", "<\\/");
        format!(
            r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>flashsale-load: {scenario}</title>
<style>body{{font:14px system-ui,sans-serif;margin:2rem;color:#222}}pre{{background:#f5f5f5;padding:1rem;overflow:auto}}
svg{{background:#fff;border:1px solid #ddd}}h2{{font-size:1.05rem;margin-top:2rem}}</style></head><body>
<h1>flashsale-load: {scenario}</h1>
<pre>{summary}</pre>
<h2>Requests per {bucket}, by outcome</h2>{tp}
<h2>Latency per {bucket} (ms, from the intended send time)</h2>{lat}
<h2>Orders accepted and completed</h2>{progress}
{held}
<h2>Latency distribution by outcome (ms)</h2>{dist}
<h2>Report</h2><pre>{json}</pre></body></html>"#,
            scenario = self.scenario,
            summary = html_escape(&self.summary()),
            tp = svg_chart(
                "throughput",
                &throughput,
                &Axis::Time,
                &format!("requests per {bucket}")
            ),
            lat = svg_chart("latency", &latency, &Axis::Time, "ms"),
            progress = svg_chart("progress", &progress, &Axis::Time, "orders"),
            dist = svg_chart(
                "distribution",
                &distribution,
                &Axis::Categories(percentiles),
                "ms"
            ),
        )
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One line of a chart.
struct Series {
    label: String,
    colour: &'static str,
    /// (x, y): seconds from the start, or the index of a category.
    points: Vec<(f64, f64)>,
}

/// What a chart's x axis is.
enum Axis {
    /// Seconds from the start.
    Time,
    /// Named categories at 0, 1, 2…
    Categories(Vec<String>),
}

/// A step of 1, 2 or 5 times a power of ten that cuts `range` into about five.
fn nice_step(range: f64) -> f64 {
    let raw = (range / 5.0).max(1e-9);
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|m| m * magnitude >= raw)
        .unwrap_or(10.0);
    step * magnitude
}

fn tick_label(v: f64) -> String {
    match v.fract() == 0.0 && v.abs() < 1e15 {
        true => format!("{v:.0}"),
        false => format!("{}", (v * 1000.0).round() / 1000.0),
    }
}

/// A chart of `series` as inline SVG: axes with ticks and titles, each series as a
/// line with its points marked (a one-bucket run is still drawn), and a legend.
fn svg_chart(id: &str, series: &[Series], x_axis: &Axis, y_title: &str) -> String {
    let (w, h) = (800.0, 300.0);
    let (left, right, top, bottom) = (64.0, 20.0, 34.0, 46.0);
    let all = || series.iter().flat_map(|s| s.points.iter());
    let y_step = nice_step(all().map(|p| p.1).fold(0.0, f64::max).max(1.0));
    let y_max = (all().map(|p| p.1).fold(0.0, f64::max) / y_step)
        .ceil()
        .max(1.0)
        * y_step;
    let (x_max, x_ticks): (f64, Vec<(f64, String)>) = match x_axis {
        Axis::Time => {
            let data_max = all().map(|p| p.0).fold(0.0, f64::max);
            let step = nice_step(data_max.max(0.1));
            let max = (data_max / step).ceil().max(1.0) * step;
            let n = (max / step).round() as usize;
            let ticks = (0..=n)
                .map(|i| (i as f64 * step, tick_label(i as f64 * step)))
                .collect();
            (max, ticks)
        }
        Axis::Categories(names) => {
            let max = names.len().saturating_sub(1).max(1) as f64;
            (
                max,
                names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (i as f64, n.clone()))
                    .collect(),
            )
        }
    };
    let x = |v: f64| left + (w - left - right) * v / x_max;
    let y = |v: f64| h - bottom - (h - top - bottom) * v / y_max;
    let mut svg = format!(
        r##"<svg id="{id}" width="{w}" height="{h}" viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg" font-size="11">"##
    );
    let _ = write!(
        svg,
        r##"<line x1="{left}" y1="{b}" x2="{r}" y2="{b}" stroke="#999"/><line x1="{left}" y1="{top}" x2="{left}" y2="{b}" stroke="#999"/>"##,
        b = h - bottom,
        r = w - right,
    );
    let mut v = 0.0;
    while v <= y_max + y_step / 2.0 {
        let yy = y(v);
        let _ = write!(
            svg,
            r##"<line class="tick" x1="{a}" y1="{yy:.1}" x2="{r}" y2="{yy:.1}" stroke="#eee"/><text x="{t}" y="{ty:.1}" text-anchor="end">{label}</text>"##,
            a = left - 4.0,
            r = w - right,
            t = left - 6.0,
            ty = yy + 4.0,
            label = tick_label(v),
        );
        v += y_step;
    }
    for (at, label) in &x_ticks {
        let xx = x(*at);
        let _ = write!(
            svg,
            r##"<line class="tick" x1="{xx:.1}" y1="{b}" x2="{xx:.1}" y2="{b4}" stroke="#999"/><text x="{xx:.1}" y="{ty}" text-anchor="middle">{label}</text>"##,
            b = h - bottom,
            b4 = h - bottom + 4.0,
            ty = h - bottom + 16.0,
            label = html_escape(label),
        );
    }
    let x_title = match x_axis {
        Axis::Time => "seconds from the start",
        Axis::Categories(_) => "percentile",
    };
    let _ = write!(
        svg,
        r##"<text x="{cx}" y="{ty}" text-anchor="middle" fill="#555">{x_title}</text><text transform="translate(14 {cy}) rotate(-90)" text-anchor="middle" fill="#555">{y_title}</text>"##,
        cx = left + (w - left - right) / 2.0,
        ty = h - 8.0,
        cy = top + (h - top - bottom) / 2.0,
        y_title = html_escape(y_title),
    );
    for (k, s) in series.iter().enumerate() {
        let points: Vec<String> = s
            .points
            .iter()
            .map(|(px, py)| format!("{:.1},{:.1}", x(*px), y(*py)))
            .collect();
        let _ = write!(
            svg,
            r##"<g class="series" data-label="{label}"><polyline fill="none" stroke="{c}" stroke-width="2" points="{pts}"/>"##,
            label = html_escape(&s.label),
            c = s.colour,
            pts = points.join(" "),
        );
        for (px, py) in &s.points {
            let _ = write!(
                svg,
                r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{c}"/>"##,
                x(*px),
                y(*py),
                c = s.colour
            );
        }
        let _ = write!(
            svg,
            r##"<text x="{lx}" y="{ly}" font-size="12" fill="{c}">{label}</text></g>"##,
            lx = left + 10.0 + 80.0 * k as f64,
            ly = top - 14.0,
            c = s.colour,
            label = html_escape(&s.label),
        );
    }
    svg.push_str("</svg>");
    svg
}
