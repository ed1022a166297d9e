//! `flashsale-load`: drives flash-sale scenarios against a running server and checks
//! that the sale stayed correct.
//!
//! Buyers get tokens minted with the server's JWT signing key (`--jwt-secret`, the
//! same value as the server's FLASHSALE__AUTH__JWT_SECRET), so that setting up
//! 100,000 buyers does not cost 100,000 argon2 registrations.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "flashsale-load",
    version,
    about = "Flash-sale load scenarios with correctness checks"
)]
struct Cli {
    /// Public URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080", global = true)]
    target: String,
    /// Admin URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:9090", global = true)]
    admin_url: String,
    #[arg(
        long,
        env = "FLASHSALE__ADMIN__TOKEN",
        global = true,
        hide_env_values = true
    )]
    admin_token: Option<String>,
    /// The server's JWT signing key, to mint buyer tokens.
    #[arg(
        long,
        env = "FLASHSALE__AUTH__JWT_SECRET",
        global = true,
        hide_env_values = true
    )]
    jwt_secret: Option<String>,
    /// A file holding the server's JWT signing key (embedded mode keeps it in
    /// data/jwt-secret).
    #[arg(long, global = true)]
    jwt_secret_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// N buyers, S units, everyone arriving at once; then checks the sale.
    Burst {
        /// Number of buyers (one request each).
        #[arg(long, default_value_t = 10_000)]
        buyers: usize,
        /// Units on sale.
        #[arg(long, default_value_t = 1_000)]
        stock: i64,
        /// Requests in flight at once (connections).
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Write the report as JSON to this file.
        #[arg(long)]
        report_json: Option<std::path::PathBuf>,
    },
}

#[derive(serde::Serialize)]
struct Claims {
    sub: String,
    iat: u64,
    exp: u64,
}

fn mint(secret: &str, user: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = Claims {
        sub: user.into(),
        iat: now,
        exp: now + 3600,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signing")
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("flashsale-load: {msg}");
    std::process::exit(2);
}

async fn admin(
    client: &reqwest::Client,
    cli: &Cli,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> Value {
    let token = cli
        .admin_token
        .as_deref()
        .unwrap_or_else(|| fail("--admin-token is required"));
    let r = client
        .request(method, format!("{}{path}", cli.admin_url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| fail(format!("admin API unreachable: {e}")));
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        fail(format!("admin {path} answered {status}: {body}"));
    }
    body
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let Scenario::Burst {
        buyers,
        stock,
        concurrency,
        ref report_json,
    } = cli.scenario;
    let secret = match (&cli.jwt_secret, &cli.jwt_secret_file) {
        (Some(s), _) => s.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .unwrap_or_else(|e| fail(format!("cannot read {}: {e}", path.display())))
            .trim()
            .to_string(),
        (None, None) => fail("--jwt-secret or --jwt-secret-file is required to mint buyer tokens"),
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let product = admin(
        &client,
        &cli,
        reqwest::Method::POST,
        "/admin/products",
        json!({"name": "Burst item", "priceCents": 999}),
    )
    .await["id"]
        .as_i64()
        .unwrap_or_else(|| fail("no product id"));
    admin(
        &client,
        &cli,
        reqwest::Method::PUT,
        &format!("/admin/flash-sales/{product}"),
        json!({"stock": stock, "perUserLimit": 1}),
    )
    .await;
    let tokens: Vec<String> = (0..buyers)
        .map(|_| mint(&secret, &uuid::Uuid::new_v4().to_string()))
        .collect();
    eprintln!("burst: {buyers} buyers, {stock} units, {concurrency} in flight, product {product}");

    let url = Arc::new(format!("{}/orders/flash-sale/{product}", cli.target));
    let started = Instant::now();
    let results: Vec<(u16, u64, Option<String>)> = stream::iter(tokens)
        .map(|token| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let sent = Instant::now();
                let r = client
                    .post(url.as_str())
                    .bearer_auth(&token)
                    .header("Idempotency-Key", "burst")
                    .send()
                    .await;
                let (status, order) = match r {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let body: Value = r.json().await.unwrap_or(Value::Null);
                        (s, body["orderId"].as_str().map(str::to_string))
                    }
                    Err(_) => (0, None),
                };
                // From arrival (the burst start) and from send.
                (status, sent.elapsed().as_micros() as u64, order)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();

    let mut all = Histogram::<u64>::new(3).unwrap();
    let mut accepted = Histogram::<u64>::new(3).unwrap();
    let mut counts = std::collections::BTreeMap::<u16, usize>::new();
    let mut ids = HashSet::new();
    let mut dup = 0;
    for (status, us, order) in &results {
        *counts.entry(*status).or_default() += 1;
        all.record((*us).max(1)).unwrap();
        if *status == 201 {
            accepted.record((*us).max(1)).unwrap();
            if !ids.insert(order.clone()) {
                dup += 1;
            }
        }
    }
    let created = counts.get(&201).copied().unwrap_or(0);
    println!(
        "answered {} requests in {:.2} s: {:.0} requests/s, {:.0} accepted orders/s",
        results.len(),
        elapsed,
        results.len() as f64 / elapsed,
        created as f64 / elapsed
    );
    println!("status counts: {counts:?}");
    println!(
        "latency all      p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        pct(&all, 0.5),
        pct(&all, 0.9),
        pct(&all, 0.99),
        all.max() as f64 / 1000.0
    );
    println!(
        "latency accepted p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        pct(&accepted, 0.5),
        pct(&accepted, 0.9),
        pct(&accepted, 0.99),
        accepted.max() as f64 / 1000.0
    );

    // Invariants: exactly min(stock, buyers) sold, no order id twice, and the shards
    // get every accepted order.
    let mut violations = Vec::new();
    let expected = (stock as usize).min(buyers);
    if created != expected {
        violations.push(format!("accepted {created} orders, expected {expected}"));
    }
    if dup > 0 {
        violations.push(format!("{dup} order ids appeared twice"));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let counters = loop {
        let c = admin(
            &client,
            &cli,
            reqwest::Method::GET,
            &format!("/admin/flash-sales/{product}"),
            Value::Null,
        )
        .await;
        if c["completed"].as_i64() == Some(created as i64) || Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let completed_after = started.elapsed().as_secs_f64();
    println!("admin counters: {counters}");
    println!(
        "all accepted orders completed {:.2} s after the burst started",
        completed_after
    );
    if counters["completed"].as_i64() != Some(created as i64) {
        violations.push(format!(
            "{} orders completed, {created} accepted",
            counters["completed"]
        ));
    }
    if counters["sold"].as_i64() != Some(created as i64) {
        violations.push(format!(
            "inventory says {} sold, {created} accepted",
            counters["sold"]
        ));
    }
    if let Some(path) = report_json {
        let report = json!({
            "scenario": "burst", "buyers": buyers, "stock": stock, "concurrency": concurrency,
            "seconds": elapsed, "statusCounts": counts, "acceptedPerSecond": created as f64 / elapsed,
            "requestsPerSecond": results.len() as f64 / elapsed,
            "latencyMs": {"p50": pct(&all, 0.5), "p90": pct(&all, 0.9), "p99": pct(&all, 0.99), "p999": pct(&all, 0.999), "max": all.max() as f64 / 1000.0},
            "acceptedLatencyMs": {"p50": pct(&accepted, 0.5), "p99": pct(&accepted, 0.99)},
            "violations": violations,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&report).unwrap())
            .unwrap_or_else(|e| fail(e));
    }
    if violations.is_empty() {
        println!("invariants: ok");
    } else {
        for v in &violations {
            println!("VIOLATION: {v}");
        }
        std::process::exit(1);
    }
}
