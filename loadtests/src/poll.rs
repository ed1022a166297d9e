//! Closed-loop GETs, as many at once as the client allows: the countdown's pollers
//! (`GET /flash-sales/{id}`) and, for comparison in the same run, the same server's
//! HTTP-alone ceiling (`GET /healthz`).

use std::collections::BTreeMap;
use std::time::Instant;

use futures_util::StreamExt;
use serde_json::Value;

use crate::stats::{histogram, Percentiles};

/// What `n` GETs of one URL found.
pub struct Polls {
    pub count: u64,
    pub seconds: f64,
    pub latency: Percentiles,
    /// By the `field` of a 200's JSON body (the sale's status), else by HTTP status
    /// (`200`, `404`, `503`…) or `error`.
    pub answers: BTreeMap<String, u64>,
}

impl Polls {
    pub fn per_second(&self) -> f64 {
        self.count as f64 / self.seconds.max(1e-9)
    }
}

/// Sends `n` GETs of `url`, `in_flight` at a time, each on a task of its own.
pub async fn hammer(
    client: &reqwest::Client,
    url: &str,
    n: usize,
    in_flight: usize,
    field: Option<&'static str>,
) -> Polls {
    let started = Instant::now();
    let results: Vec<(u64, String)> = futures_util::stream::iter(0..n)
        .map(|_| {
            let (client, url) = (client.clone(), url.to_string());
            tokio::spawn(async move {
                let sent = Instant::now();
                let answer = match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => match field {
                        Some(f) => r
                            .json::<Value>()
                            .await
                            .ok()
                            .and_then(|v| v[f].as_str().map(str::to_string))
                            .unwrap_or_else(|| "200".into()),
                        None => {
                            let _ = r.bytes().await;
                            "200".into()
                        }
                    },
                    Ok(r) => r.status().as_u16().to_string(),
                    Err(_) => "error".into(),
                };
                (sent.elapsed().as_micros() as u64, answer)
            })
        })
        .buffer_unordered(in_flight.max(1))
        .map(|r| r.expect("a poll task panicked"))
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let mut h = histogram();
    let mut answers = BTreeMap::new();
    for (us, answer) in results {
        h.record(us.clamp(1, 3_600_000_000)).expect("in range");
        *answers.entry(answer).or_default() += 1;
    }
    Polls {
        count: h.len(),
        seconds,
        latency: Percentiles::of(&h),
        answers,
    }
}
