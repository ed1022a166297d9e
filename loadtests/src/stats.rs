//! Measurements: one HDR histogram of latency per outcome, and counts and latency per
//! time bucket of the run (a second, or 100 ms for a short run). Recorders merge, so
//! workers can record apart and be summed.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// What one request came to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Outcome {
    /// 201: a new order.
    Created,
    /// 200: a replay of an earlier request with the same key.
    Replayed,
    /// 409 with its error code.
    Conflict(String),
    RateLimited,
    Unavailable,
    /// Any other status.
    Status(u16),
    /// No HTTP answer (connection refused, reset, timeout).
    Error,
}

impl Outcome {
    /// The report's column: 201, 200, 409, 429, 503 or error.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Created => "201",
            Outcome::Replayed => "200",
            Outcome::Conflict(_) => "409",
            Outcome::RateLimited => "429",
            Outcome::Unavailable => "503",
            Outcome::Status(_) | Outcome::Error => "error",
        }
    }
}

pub(crate) fn histogram() -> Histogram<u64> {
    // 1 µs to 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// One bucket of the run: requests sent from `start_ms` (from the start) for the
/// report's `bucket_ms`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bucket {
    pub start_ms: u64,
    pub counts: BTreeMap<&'static str, u64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The percentiles the latency distribution is drawn at.
pub const DISTRIBUTION: [f64; 8] = [50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99, 100.0];

#[derive(Clone)]
pub struct Recorder {
    bucket_ms: u64,
    by_outcome: BTreeMap<&'static str, Histogram<u64>>,
    by_bucket: BTreeMap<u64, (BTreeMap<&'static str, u64>, Histogram<u64>)>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// Buckets of a second.
    pub fn new() -> Self {
        Self::with_bucket(1000)
    }

    pub fn with_bucket(bucket_ms: u64) -> Self {
        Self {
            bucket_ms: bucket_ms.max(1),
            by_outcome: BTreeMap::new(),
            by_bucket: BTreeMap::new(),
        }
    }

    pub fn bucket_ms(&self) -> u64 {
        self.bucket_ms
    }

    /// Records a request intended at `at_ms` (from the start) that took `latency_us`
    /// from its intended send time.
    pub fn record(&mut self, outcome: &Outcome, at_ms: u64, latency_us: u64) {
        let v = latency_us.clamp(1, 3_600_000_000);
        self.by_outcome
            .entry(outcome.label())
            .or_insert_with(histogram)
            .record(v)
            .expect("in range");
        let (counts, h) = self
            .by_bucket
            .entry(at_ms / self.bucket_ms)
            .or_insert_with(|| (BTreeMap::new(), histogram()));
        *counts.entry(outcome.label()).or_default() += 1;
        h.record(v).expect("in range");
    }

    pub fn merge(&mut self, other: &Recorder) {
        for (label, h) in &other.by_outcome {
            self.by_outcome
                .entry(label)
                .or_insert_with(histogram)
                .add(h)
                .expect("same bounds");
        }
        assert_eq!(self.bucket_ms, other.bucket_ms, "recorders of one run");
        for (bucket, (counts, h)) in &other.by_bucket {
            let (mine, mh) = self
                .by_bucket
                .entry(*bucket)
                .or_insert_with(|| (BTreeMap::new(), histogram()));
            for (label, n) in counts {
                *mine.entry(label).or_default() += n;
            }
            mh.add(h).expect("same bounds");
        }
    }

    pub fn count(&self, label: &str) -> u64 {
        self.by_outcome.get(label).map(|h| h.len()).unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.by_outcome.values().map(|h| h.len()).sum()
    }

    pub fn percentiles(&self) -> BTreeMap<&'static str, Percentiles> {
        self.by_outcome
            .iter()
            .map(|(l, h)| (*l, Percentiles::of(h)))
            .collect()
    }

    /// All outcomes together.
    pub fn overall(&self) -> Percentiles {
        let mut all = histogram();
        for h in self.by_outcome.values() {
            all.add(h).expect("same bounds");
        }
        Percentiles::of(&all)
    }

    /// Every bucket from the first to the last, empty ones included (a chart of a
    /// burst with a gap must show the gap).
    pub fn timeline(&self) -> Vec<Bucket> {
        let Some((&last, _)) = self.by_bucket.last_key_value() else {
            return Vec::new();
        };
        (0..=last)
            .map(|b| match self.by_bucket.get(&b) {
                Some((counts, h)) => Bucket {
                    start_ms: b * self.bucket_ms,
                    counts: counts.clone(),
                    p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
                    p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
                },
                None => Bucket {
                    start_ms: b * self.bucket_ms,
                    counts: BTreeMap::new(),
                    p50_ms: 0.0,
                    p99_ms: 0.0,
                },
            })
            .collect()
    }

    /// The report's request counts: per label of [`Outcome::label`], those with any.
    pub fn status_counts(&self) -> BTreeMap<String, u64> {
        ["201", "200", "409", "429", "503", "error"]
            .iter()
            .map(|l| (l.to_string(), self.count(l)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// The report's latency per outcome.
    pub fn latency_by_outcome_ms(&self) -> BTreeMap<String, Percentiles> {
        self.percentiles()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    /// The report's distribution: per outcome, [percentile, latency ms] pairs.
    pub fn distribution_ms(&self) -> BTreeMap<String, Vec<(f64, f64)>> {
        self.distribution()
            .into_iter()
            .map(|(k, v)| (k.to_string(), DISTRIBUTION.iter().copied().zip(v).collect()))
            .collect()
    }

    /// Per outcome, the latency (ms) at each percentile of [`DISTRIBUTION`].
    pub fn distribution(&self) -> BTreeMap<&'static str, Vec<f64>> {
        self.by_outcome
            .iter()
            .map(|(l, h)| {
                let at = DISTRIBUTION
                    .iter()
                    .map(|p| h.value_at_quantile(p / 100.0) as f64 / 1000.0)
                    .collect();
                (*l, at)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_equals_recording_everything_in_one() {
        let samples: Vec<(Outcome, u64, u64)> = (0..2000u64)
            .map(|i| {
                let o = match i % 4 {
                    0 => Outcome::Created,
                    1 => Outcome::Conflict("out_of_stock".into()),
                    2 => Outcome::Unavailable,
                    _ => Outcome::Error,
                };
                (o, i * 3, 100 + (i * 7919) % 50_000)
            })
            .collect();
        let mut one = Recorder::new();
        let (mut a, mut b) = (Recorder::new(), Recorder::new());
        for (i, (o, at, lat)) in samples.iter().enumerate() {
            one.record(o, *at, *lat);
            if i % 3 == 0 {
                a.record(o, *at, *lat)
            } else {
                b.record(o, *at, *lat)
            }
        }
        a.merge(&b);
        assert_eq!(a.total(), 2000);
        assert_eq!(a.count("201"), one.count("201"));
        assert_eq!(a.count("error"), 500);
        let (pa, po) = (a.percentiles(), one.percentiles());
        for label in ["201", "409", "503", "error"] {
            assert_eq!(pa[label].p99, po[label].p99, "{label}");
            assert_eq!(pa[label].max, po[label].max, "{label}");
        }
        let (sa, so) = (a.timeline(), one.timeline());
        assert_eq!(sa.len(), so.len());
        assert_eq!(sa[2].counts, so[2].counts);
        assert_eq!(sa[2].p99_ms, so[2].p99_ms);
    }

    #[test]
    fn percentiles_come_from_the_recorded_values() {
        let mut r = Recorder::new();
        for ms in 1..=100u64 {
            r.record(&Outcome::Created, 0, ms * 1000);
        }
        let p = &r.percentiles()["201"];
        assert_eq!(p.count, 100);
        assert!((p.p50 - 50.0).abs() < 0.1, "{}", p.p50);
        assert!((p.p99 - 99.0).abs() < 0.1, "{}", p.p99);
        assert!((p.max - 100.0).abs() < 0.1);
        assert_eq!(Outcome::Status(404).label(), "error");
        let d = &r.distribution()["201"];
        assert_eq!(d.len(), DISTRIBUTION.len());
        assert!(d.windows(2).all(|w| w[0] <= w[1]), "{d:?}");
        assert!(
            (d[0] - 50.0).abs() < 0.1 && (d[7] - 100.0).abs() < 0.1,
            "{d:?}"
        );
    }

    #[test]
    fn short_runs_bucket_by_100_ms_and_keep_their_gaps() {
        let mut r = Recorder::with_bucket(100);
        r.record(&Outcome::Created, 20, 1000);
        r.record(&Outcome::Created, 80, 1000);
        r.record(&Outcome::Unavailable, 350, 1000);
        let t = r.timeline();
        let starts: Vec<u64> = t.iter().map(|b| b.start_ms).collect();
        assert_eq!(starts, [0, 100, 200, 300]);
        assert_eq!(t[0].counts["201"], 2);
        assert!(t[1].counts.is_empty() && t[2].counts.is_empty());
        assert_eq!(t[3].counts["503"], 1);
    }
}
