//! The logins before a sale: accounts registered first (each retried while the server
//! answers 503), then a spike of logins spread over a window, open loop. Password
//! hashing is the costly part of both; the report gives logins per second, their
//! latency (from each login's planned start) and what they were answered.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::json;

use crate::stats::{histogram, Percentiles};
use crate::{schedule, Failure};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginsReport {
    pub accounts: usize,
    pub registration_seconds: f64,
    /// 503s answered to registrations before each was taken (and retried).
    pub registration_retries: u64,
    pub logins: usize,
    pub window_ms: u64,
    pub seconds: f64,
    /// Logins answered 200, per second of the spike.
    pub logins_per_second: f64,
    /// By HTTP status (`200`, `401`, `429`, `503`…) or `error` (no answer).
    pub answers: BTreeMap<String, u64>,
    /// Of the logins answered 200.
    pub latency_ms: Percentiles,
    /// Of every login, whatever its answer.
    pub all_latency_ms: Percentiles,
}

impl LoginsReport {
    pub fn summary(&self) -> String {
        let answers: Vec<String> = self
            .answers
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        format!(
            "logins: {} over {} ms on {} accounts: {:.0} logins/s answered 200, latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; answers {}\n\
             registration: {} accounts in {:.1} s, {} retries after 503\n",
            self.logins,
            self.window_ms,
            self.accounts,
            self.logins_per_second,
            self.latency_ms.p50,
            self.latency_ms.p99,
            self.latency_ms.max,
            answers.join(", "),
            self.accounts,
            self.registration_seconds,
            self.registration_retries,
        )
    }
}

/// Most times one registration is asked again after a 503.
const REGISTER_ATTEMPTS: usize = 50;

async fn register(
    client: &reqwest::Client,
    url: &str,
    email: &str,
    password: &str,
) -> Result<u64, Failure> {
    let body = json!({ "email": email, "password": password });
    for retries in 0..REGISTER_ATTEMPTS as u64 {
        let r = client
            .post(url)
            .json(&body)
            .send()
            .await
            .map_err(|e| Failure(format!("registering {email}: {e}")))?;
        match r.status().as_u16() {
            200 | 201 => return Ok(retries),
            503 => {
                let wait = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .map_or(Duration::from_millis(100), Duration::from_secs);
                tokio::time::sleep(wait.min(Duration::from_secs(2))).await;
            }
            s => {
                let text = r.text().await.unwrap_or_default();
                return Err(Failure(format!("registering {email}: {s} {text}")));
            }
        }
    }
    Err(Failure(format!(
        "registering {email}: still 503 after {REGISTER_ATTEMPTS} attempts"
    )))
}

pub async fn run(
    client: &reqwest::Client,
    public: &str,
    accounts: usize,
    logins: usize,
    window_ms: u64,
    max_in_flight: usize,
) -> Result<LoginsReport, Failure> {
    if accounts == 0 || logins == 0 {
        return Err(Failure("--accounts and --logins must be at least 1".into()));
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let emails: Vec<String> = (0..accounts)
        .map(|i| format!("load-{}-{i}@example.com", &run_id[..12]))
        .collect();
    let password = format!("pw-{run_id}");
    let register_url = format!("{public}/auth/register");
    let started = Instant::now();
    let registered: Vec<Result<u64, Failure>> = futures_util::stream::iter(&emails)
        .map(|email| register(client, &register_url, email, &password))
        .buffer_unordered(max_in_flight.max(1))
        .collect()
        .await;
    let mut registration_retries = 0;
    for r in registered {
        registration_retries += r?;
    }
    let registration_seconds = started.elapsed().as_secs_f64();

    // The logins, evenly over the window, account after account.
    let offsets: Vec<Duration> = (0..logins)
        .map(|i| Duration::from_micros(window_ms * 1000 * i as u64 / logins as u64))
        .collect();
    let login_url = format!("{public}/auth/login");
    let started = Instant::now();
    let results = schedule::run(&offsets, max_in_flight, |i, intended| {
        let client = client.clone();
        let url = login_url.clone();
        let body = json!({ "email": emails[i % accounts], "password": password });
        async move {
            let answer = match client.post(&url).json(&body).send().await {
                Ok(r) => {
                    let status = r.status().as_u16().to_string();
                    let _ = r.bytes().await;
                    status
                }
                Err(_) => "error".to_string(),
            };
            let latency = tokio::time::Instant::now().duration_since(intended);
            (answer, latency.as_micros() as u64)
        }
    })
    .await;
    let seconds = started.elapsed().as_secs_f64();
    let (mut ok, mut all) = (histogram(), histogram());
    let mut answers = BTreeMap::new();
    for (answer, micros) in results {
        let micros = micros.max(1);
        all.saturating_record(micros);
        if answer == "200" {
            ok.saturating_record(micros);
        }
        *answers.entry(answer).or_insert(0) += 1;
    }
    Ok(LoginsReport {
        accounts,
        registration_seconds,
        registration_retries,
        logins,
        window_ms,
        seconds,
        logins_per_second: ok.len() as f64 / seconds.max(1e-9),
        answers,
        latency_ms: Percentiles::of(&ok),
        all_latency_ms: Percentiles::of(&all),
    })
}
