//! `flashsale-load`: flash-sale scenarios against a running flashsale, with open-loop
//! scheduling, latency per outcome, reports, and the invariants a sale must keep.
//!
//! Buyers get tokens minted with the server's JWT signing key (`--jwt-secret`, the
//! server's FLASHSALE__AUTH__JWT_SECRET, or `--jwt-secret-file`, which embedded mode
//! keeps in data/jwt-secret), so 100,000 buyers cost no argon2 registrations.
//! Sales and products are created through the admin API.

pub mod ask_again;
pub mod checkout;
pub mod invariants;
pub mod logins;
pub mod poll;
pub mod report;
pub mod schedule;
pub mod stats;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rand::Rng;
use serde_json::{json, Value};

use invariants::{Attempt, Counters, Plan};
use report::{CountdownReport, Progress, Report};
use stats::{Outcome, Recorder};

#[derive(Debug, Parser)]
#[command(
    name = "flashsale-load",
    version,
    about = "Flash-sale load scenarios that check the sale stayed correct"
)]
pub struct Cli {
    /// Public URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080", global = true)]
    pub target: String,
    /// Admin URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:9090", global = true)]
    pub admin_url: String,
    #[arg(
        long,
        env = "FLASHSALE__ADMIN__TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// The server's JWT signing key, to mint buyer tokens.
    #[arg(
        long,
        env = "FLASHSALE__AUTH__JWT_SECRET",
        global = true,
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// A file holding the server's JWT signing key (embedded mode: data/jwt-secret).
    #[arg(long, global = true)]
    pub jwt_secret_file: Option<PathBuf>,
    /// Most requests in flight at once (open loop: later ones start late, and that
    /// lateness counts in their latency).
    #[arg(long, default_value_t = 512, global = true)]
    pub max_in_flight: usize,
    /// How long after the run to ask again the requests answered 503 or not at all, then
    /// how long to wait for every accepted order to complete (each). In checkout: how
    /// long the buyers may buy, then how long to wait for the last windows to lapse.
    #[arg(long, default_value_t = 120, global = true)]
    pub deadline_secs: u64,
    /// Write the report as JSON.
    #[arg(long, global = true)]
    pub report_json: Option<PathBuf>,
    /// Write a self-contained HTML report with charts.
    #[arg(long, global = true)]
    pub report_html: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// N buyers on S units, all arriving within a short window.
    Burst {
        #[arg(long, default_value_t = 10_000)]
        buyers: usize,
        #[arg(long, default_value_t = 1_000)]
        stock: i64,
        /// The arrivals are spread over this window.
        #[arg(long, default_value_t = 1_000)]
        window_ms: u64,
    },
    /// A constant arrival rate R for D seconds over K sales (a new buyer each request).
    Steady {
        #[arg(long, default_value_t = 1_000.0)]
        rate: f64,
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        #[arg(long, default_value_t = 4)]
        sales: usize,
        /// Units per sale (default: enough for every order).
        #[arg(long)]
        stock: Option<i64>,
        /// Draw the orders from this many buyers, each ordering again on its next turn
        /// (a new Idempotency-Key each time, and a per-user limit that allows every
        /// turn), instead of a new buyer every order. At least 7 × the rate: a buyer
        /// may send 10 requests in a minute's window, and its turns then come 7 s
        /// apart, each window holding at most 9 of them whatever the latency.
        #[arg(long)]
        buyers: Option<usize>,
    },
    /// Every buyer sends its request 1 + k times with the same Idempotency-Key, with jitter.
    RetryStorm {
        #[arg(long, default_value_t = 2_000)]
        buyers: usize,
        #[arg(long, default_value_t = 500)]
        stock: i64,
        /// Retries per buyer (at most 9: the rate limit allows 10 requests a minute).
        #[arg(long, default_value_t = 3)]
        retries: usize,
        #[arg(long, default_value_t = 50)]
        jitter_ms: u64,
    },
    /// Pollers watch a sale's countdown (`GET /flash-sales/{id}`, each poll a request
    /// of its own, as many at once as --max-in-flight) until it opens; then buyers
    /// burst in. Measures the read herd before a sale and the order burst after it.
    Countdown {
        /// Polls before the sale opens.
        #[arg(long, default_value_t = 100_000)]
        pollers: usize,
        /// Seconds from the start until the sale opens (polls that take longer find
        /// it open: see the report's answers).
        #[arg(long, default_value_t = 20)]
        countdown_secs: u64,
        #[arg(long, default_value_t = 10_000)]
        buyers: usize,
        #[arg(long, default_value_t = 1_000)]
        stock: i64,
        /// The buyers' arrivals once it opens are spread over this window.
        #[arg(long, default_value_t = 1_000)]
        window_ms: u64,
        /// First as many `GET /healthz` the same way: the server's HTTP-alone ceiling
        /// in the same run, to compare the polls with.
        #[arg(long)]
        baseline: bool,
    },
    /// One hot product among many quiet ones, at a constant rate.
    HotAndCold {
        #[arg(long, default_value_t = 1_000.0)]
        rate: f64,
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        /// Quiet products beside the hot one.
        #[arg(long, default_value_t = 20)]
        cold: usize,
        /// Share of buyers going for the hot product.
        #[arg(long, default_value_t = 0.9)]
        hot_share: f64,
        #[arg(long, default_value_t = 1_000)]
        hot_stock: i64,
        #[arg(long, default_value_t = 100)]
        cold_stock: i64,
    },
    /// The logins before a sale opens: ACCOUNTS registered first, then LOGINS logins
    /// spread over WINDOW_MS. Measures logins per second and their latency while
    /// password hashing is the bottleneck. Run the server with the per-address auth
    /// limit off (FLASHSALE__LIMITS__AUTH_PER_IP_PER_MINUTE=0): every login comes
    /// from this one address. Needs neither a JWT key nor an admin token.
    Logins {
        #[arg(long, default_value_t = 200)]
        accounts: usize,
        /// At most 10 per account (its per-address login limit a minute).
        #[arg(long, default_value_t = 2_000)]
        logins: usize,
        #[arg(long, default_value_t = 1_000)]
        window_ms: u64,
    },
    /// A sale with a payment window: each winner waits until its order awaits payment,
    /// then pays (a signed confirmation, as the shop's payment service sends) or lets it
    /// expire; losers and buyers whose order expired buy again, so that the units
    /// nobody paid for are sold again, until the whole stock is paid.
    Checkout(checkout::Args),
}

#[derive(serde::Serialize)]
struct Claims {
    sub: String,
    iat: u64,
    exp: u64,
}

/// Mints a buyer token the way the server signs them.
pub fn mint(secret: &str, user: &str) -> String {
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
    .expect("HS256 signing")
}

/// Why a run could not be made (as opposed to a run that found violations).
#[derive(Debug)]
pub struct Failure(pub String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The price of every product a scenario creates.
pub const PRICE_CENTS: i64 = 999;

struct Target {
    client: reqwest::Client,
    public: String,
    admin: String,
    admin_token: String,
}

impl Target {
    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.admin))
            .bearer_auth(&self.admin_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req
            .send()
            .await
            .map_err(|e| Failure(format!("admin API unreachable: {e}")))?;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(Failure(format!("admin {path} answered {status}: {body}")));
        }
        Ok(body)
    }

    async fn open_sale(
        &self,
        name: &str,
        stock: i64,
        per_user_limit: i64,
    ) -> Result<Plan, Failure> {
        self.open_sale_at(name, stock, per_user_limit, None).await
    }

    /// A sale that opens at `starts_at` (epoch ms; now when `None`).
    async fn open_sale_at(
        &self,
        name: &str,
        stock: i64,
        per_user_limit: i64,
        starts_at: Option<i64>,
    ) -> Result<Plan, Failure> {
        let terms = match starts_at {
            Some(ms) => json!({"startsAt": ms}),
            None => json!({}),
        };
        self.open_sale_with(name, stock, per_user_limit, terms)
            .await
    }

    /// A product at [`PRICE_CENTS`] and its sale, with the `terms` (more fields of the
    /// sale's PUT: `startsAt`, `paymentWindowSecs`…).
    async fn open_sale_with(
        &self,
        name: &str,
        stock: i64,
        per_user_limit: i64,
        terms: Value,
    ) -> Result<Plan, Failure> {
        let p = self
            .admin(
                reqwest::Method::POST,
                "/admin/products",
                Some(json!({"name": name, "priceCents": PRICE_CENTS})),
            )
            .await?;
        let product = p["id"]
            .as_i64()
            .ok_or_else(|| Failure(format!("no product id in {p}")))?;
        let mut body = json!({"stock": stock, "perUserLimit": per_user_limit});
        if let (Some(body), Value::Object(terms)) = (body.as_object_mut(), terms) {
            body.extend(terms);
        }
        self.admin(
            reqwest::Method::PUT,
            &format!("/admin/flash-sales/{product}"),
            Some(body),
        )
        .await?;
        Ok(Plan {
            product,
            stock,
            per_user_limit,
        })
    }

    async fn buy(&self, token: &str, product: i64, key: &str) -> (Outcome, Option<String>) {
        let placed = self.place(token, product, key).await;
        (placed.outcome, placed.order)
    }

    /// `POST /orders/flash-sale/{product}` once: the outcome, the order it names and
    /// the `Retry-After` of a 429 or 503.
    async fn place(&self, token: &str, product: i64, key: &str) -> Placed {
        let url = format!("{}/orders/flash-sale/{product}", self.public);
        let r = match self
            .client
            .post(url)
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .send()
            .await
        {
            Ok(r) => r,
            Err(_) => {
                return Placed {
                    outcome: Outcome::Error,
                    order: None,
                    retry_after: None,
                }
            }
        };
        let status = r.status().as_u16();
        let retry_after = retry_after(r.headers());
        let body: Value = r.json().await.unwrap_or(Value::Null);
        let order = body["orderId"].as_str().map(str::to_string);
        let outcome = match status {
            201 => Outcome::Created,
            200 => Outcome::Replayed,
            409 => Outcome::Conflict(body["error"].as_str().unwrap_or("conflict").to_string()),
            429 => Outcome::RateLimited,
            503 => Outcome::Unavailable,
            other => Outcome::Status(other),
        };
        Placed {
            outcome,
            order,
            retry_after,
        }
    }
}

/// What one order request was answered.
struct Placed {
    outcome: Outcome,
    order: Option<String>,
    retry_after: Option<Duration>,
}

/// The `Retry-After` header in seconds, when there is one.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// One request to make: who buys what with which key, when.
#[derive(Clone)]
struct Request {
    buyer: usize,
    product: i64,
    key: String,
    at: Duration,
}

/// Builds the plans and the requests of a scenario.
async fn prepare(
    target: &Target,
    scenario: &Scenario,
) -> Result<(Vec<Plan>, Vec<Request>, Value), Failure> {
    let mut rng = rand::rng();
    Ok(match scenario.clone() {
        Scenario::Burst {
            buyers,
            stock,
            window_ms,
        } => {
            let plan = target.open_sale("Burst item", stock, 1).await?;
            let at = schedule::burst(buyers, Duration::from_millis(window_ms));
            let reqs = at
                .into_iter()
                .enumerate()
                .map(|(b, at)| Request {
                    buyer: b,
                    product: plan.product,
                    key: "burst".into(),
                    at,
                })
                .collect();
            (
                vec![plan],
                reqs,
                json!({"buyers": buyers, "stock": stock, "windowMs": window_ms}),
            )
        }
        Scenario::Steady {
            rate,
            duration_secs,
            sales,
            stock,
            buyers,
        } => {
            let at = schedule::constant_rate(rate, Duration::from_secs(duration_secs));
            let crowd = buyers.unwrap_or(at.len()).max(1);
            if buyers.is_some() && (crowd as f64) < rate * 7.0 {
                return Err(Failure(format!(
                    "--buyers is at least 7 × --rate ({}): a buyer may send 10 requests a minute",
                    (rate * 7.0).ceil()
                )));
            }
            let turns = at.len().div_ceil(crowd).max(1) as i64;
            let per_sale = stock.unwrap_or(at.len() as i64);
            let mut plans = Vec::new();
            for i in 0..sales.max(1) {
                plans.push(
                    target
                        .open_sale(&format!("Steady item {i}"), per_sale, turns)
                        .await?,
                );
            }
            let reqs = at
                .into_iter()
                .enumerate()
                .map(|(n, at)| Request {
                    buyer: n % crowd,
                    product: plans[n % plans.len()].product,
                    key: format!("steady-{}", n / crowd),
                    at,
                })
                .collect();
            (
                plans,
                reqs,
                json!({"rate": rate, "durationSecs": duration_secs, "sales": sales,
                       "stockPerSale": per_sale, "buyers": crowd, "perUserLimit": turns}),
            )
        }
        Scenario::Countdown {
            pollers,
            countdown_secs,
            buyers,
            stock,
            window_ms,
            baseline,
        } => {
            let opens = now_ms() + countdown_secs as i64 * 1000;
            let plan = target
                .open_sale_at("Countdown item", stock, 1, Some(opens))
                .await?;
            let reqs = schedule::burst(buyers, Duration::from_millis(window_ms))
                .into_iter()
                .enumerate()
                .map(|(b, at)| Request {
                    buyer: b,
                    product: plan.product,
                    key: "countdown".into(),
                    at,
                })
                .collect();
            (
                vec![plan],
                reqs,
                json!({"pollers": pollers, "countdownSecs": countdown_secs, "buyers": buyers,
                       "stock": stock, "windowMs": window_ms, "baseline": baseline, "opensAtMs": opens}),
            )
        }
        Scenario::RetryStorm {
            buyers,
            stock,
            retries,
            jitter_ms,
        } => {
            if retries > 9 {
                return Err(Failure(
                    "--retries is at most 9 (10 requests a minute per buyer)".into(),
                ));
            }
            let plan = target.open_sale("Retry-storm item", stock, 1).await?;
            let first = schedule::burst(buyers, Duration::from_millis(1000));
            let mut reqs = Vec::new();
            for (b, at) in first.into_iter().enumerate() {
                for _ in 0..=retries {
                    let jitter = Duration::from_millis(rng.random_range(0..=jitter_ms));
                    reqs.push(Request {
                        buyer: b,
                        product: plan.product,
                        key: format!("storm-{b}"),
                        at: at + jitter,
                    });
                }
            }
            reqs.sort_by_key(|r| r.at);
            (
                vec![plan],
                reqs,
                json!({"buyers": buyers, "stock": stock, "retries": retries, "jitterMs": jitter_ms}),
            )
        }
        Scenario::Logins { .. } => {
            return Err(Failure(
                "the logins scenario buys nothing: see main_with".into(),
            ))
        }
        Scenario::Checkout(_) => {
            return Err(Failure(
                "the checkout scenario buys in rounds: see checkout::run".into(),
            ))
        }
        Scenario::HotAndCold {
            rate,
            duration_secs,
            cold,
            hot_share,
            hot_stock,
            cold_stock,
        } => {
            let mut plans = vec![target.open_sale("Hot item", hot_stock, 1).await?];
            for i in 0..cold {
                plans.push(
                    target
                        .open_sale(&format!("Cold item {i}"), cold_stock, 1)
                        .await?,
                );
            }
            let at = schedule::constant_rate(rate, Duration::from_secs(duration_secs));
            let reqs = at
                .into_iter()
                .enumerate()
                .map(|(b, at)| {
                    let product = if cold == 0 || rng.random_bool(hot_share.clamp(0.0, 1.0)) {
                        plans[0].product
                    } else {
                        plans[1 + rng.random_range(0..cold)].product
                    };
                    Request {
                        buyer: b,
                        product,
                        key: "hc".into(),
                        at,
                    }
                })
                .collect();
            let params = json!({"rate": rate, "durationSecs": duration_secs, "cold": cold, "hotShare": hot_share, "hotStock": hot_stock, "coldStock": cold_stock});
            (plans, reqs, params)
        }
    })
}

fn scenario_name(s: &Scenario) -> &'static str {
    match s {
        Scenario::Burst { .. } => "burst",
        Scenario::Steady { .. } => "steady",
        Scenario::RetryStorm { .. } => "retry-storm",
        Scenario::HotAndCold { .. } => "hot-and-cold",
        Scenario::Countdown { .. } => "countdown",
        Scenario::Logins { .. } => "logins",
        Scenario::Checkout(_) => "checkout",
    }
}

/// Looks at the sales' counters every `every` while `running`: how many orders were
/// accepted (201s answered so far) and how many completed (in their shards).
async fn sample_progress(
    target: Arc<Target>,
    products: Vec<i64>,
    started: Instant,
    every: Duration,
    accepted: Arc<std::sync::atomic::AtomicU64>,
    running: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<Progress> {
    let mut points = Vec::new();
    while running.load(std::sync::atomic::Ordering::Relaxed) {
        let mut completed = 0;
        for p in &products {
            let path = format!("/admin/flash-sales/{p}");
            if let Ok(c) = target.admin(reqwest::Method::GET, &path, None).await {
                completed += c["completed"].as_i64().unwrap_or(0);
            }
        }
        points.push(Progress {
            at_ms: started.elapsed().as_millis() as u64,
            accepted: accepted.load(std::sync::atomic::Ordering::Relaxed),
            completed,
        });
        tokio::time::sleep(every).await;
    }
    points
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// The countdown's polls (and the HTTP-alone baseline), then a wait until the sale opens.
async fn countdown(
    target: &Target,
    product: i64,
    pollers: usize,
    baseline: bool,
    opens_at: i64,
    in_flight: usize,
    quiet: bool,
) -> CountdownReport {
    let say = |what: &str| {
        if !quiet {
            eprintln!("{what}");
        }
    };
    let healthz = match baseline {
        true => {
            say(&format!("baseline: {pollers} x GET /healthz"));
            let url = format!("{}/healthz", target.public);
            Some(poll::hammer(&target.client, &url, pollers, in_flight, None).await)
        }
        false => None,
    };
    say(&format!(
        "countdown: {pollers} x GET /flash-sales/{product}"
    ));
    let url = format!("{}/flash-sales/{product}", target.public);
    let polls = poll::hammer(&target.client, &url, pollers, in_flight, Some("status")).await;
    let wait = opens_at - now_ms();
    if wait > 0 {
        say(&format!("the sale opens in {wait} ms"));
        tokio::time::sleep(Duration::from_millis(wait as u64 + 5)).await;
    }
    CountdownReport {
        polls: polls.count,
        seconds: polls.seconds,
        polls_per_second: polls.per_second(),
        latency_ms: polls.latency.clone(),
        answers: polls.answers.clone(),
        healthz_per_second: healthz.as_ref().map(poll::Polls::per_second),
        share_of_healthz: healthz
            .as_ref()
            .map(|h| polls.per_second() / h.per_second()),
        waited_for_opening_ms: wait.max(0),
    }
}

/// The HTTP client of every scenario.
fn http_client(max_in_flight: usize) -> Result<reqwest::Client, Failure> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(max_in_flight)
        // Below the server's keep-alive (120 s): a pooled connection is never reused
        // as the server closes it.
        .pool_idle_timeout(Duration::from_secs(60))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| Failure(e.to_string()))
}

/// Prints a scenario's summary and writes its JSON report; answers the report, or the
/// exit code of what failed.
fn conclude<T: serde::Serialize>(
    ran: Result<T, Failure>,
    summary: impl Fn(&T) -> String,
    json: Option<&std::path::Path>,
) -> Result<T, i32> {
    let report = ran.map_err(|e| {
        eprintln!("flashsale-load: {e}");
        2
    })?;
    print!("{}", summary(&report));
    if let Some(path) = json {
        let bytes = serde_json::to_vec_pretty(&report).expect("reports serialise");
        if let Err(e) = std::fs::write(path, bytes) {
            eprintln!("flashsale-load: cannot write {}: {e}", path.display());
            return Err(2);
        }
    }
    Ok(report)
}

/// The server a buying scenario runs against, and the key its buyers' tokens are
/// minted with.
fn connect(cli: &Cli) -> Result<(Arc<Target>, String), Failure> {
    let secret = match (&cli.jwt_secret, &cli.jwt_secret_file) {
        (Some(s), _) => s.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| Failure(format!("cannot read {}: {e}", path.display())))?
            .trim()
            .to_string(),
        (None, None) => {
            return Err(Failure(
                "--jwt-secret or --jwt-secret-file is required to mint buyer tokens".into(),
            ))
        }
    };
    let admin_token = cli
        .admin_token
        .clone()
        .ok_or_else(|| Failure("--admin-token is required".into()))?;
    let client = http_client(cli.max_in_flight)?;
    let target = Arc::new(Target {
        client,
        public: cli.target.trim_end_matches('/').to_string(),
        admin: cli.admin_url.trim_end_matches('/').to_string(),
        admin_token,
    });
    Ok((target, secret))
}

/// Runs the scenario and checks the sale; the report's `violations` say what broke.
pub async fn run(cli: &Cli) -> Result<Report, Failure> {
    let (target, secret) = connect(cli)?;
    if let Scenario::Checkout(args) = &cli.scenario {
        return checkout::run(cli, args, target, &secret).await;
    }
    let (plans, requests, parameters) = prepare(&target, &cli.scenario).await?;
    let countdown = match &cli.scenario {
        Scenario::Countdown {
            pollers, baseline, ..
        } => {
            let opens_at = parameters["opensAtMs"].as_i64().expect("set by prepare");
            let product = plans[0].product;
            let in_flight = cli.max_in_flight;
            Some(
                countdown(
                    &target, product, *pollers, *baseline, opens_at, in_flight, cli.quiet,
                )
                .await,
            )
        }
        _ => None,
    };
    let buyers = requests.iter().map(|r| r.buyer).max().map_or(0, |b| b + 1);
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..buyers)
            .map(|_| mint(&secret, &uuid::Uuid::new_v4().to_string()))
            .collect(),
    );

    let progress = if cli.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(requests.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} requests {per_sec}",
            )
            .expect("a valid template"),
        );
        bar
    };
    let offsets: Vec<Duration> = requests.iter().map(|r| r.at).collect();
    // Buckets that fit the run: a short one would be a point or two per second.
    let planned = offsets.last().copied().unwrap_or_default();
    let bucket_ms = if planned < Duration::from_secs(10) {
        100
    } else {
        1000
    };
    let started = Instant::now();
    let accepted_so_far = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = tokio::spawn(sample_progress(
        target.clone(),
        plans.iter().map(|p| p.product).collect(),
        started,
        Duration::from_millis(bucket_ms.max(200)),
        accepted_so_far.clone(),
        sampling.clone(),
    ));
    let reqs = Arc::new(requests);
    let results = schedule::run(&offsets, cli.max_in_flight, |i, intended| {
        let (target, tokens, reqs, progress, accepted_so_far) = (
            target.clone(),
            tokens.clone(),
            reqs.clone(),
            progress.clone(),
            accepted_so_far.clone(),
        );
        async move {
            let r = &reqs[i];
            let (outcome, order_id) = target.buy(&tokens[r.buyer], r.product, &r.key).await;
            if outcome == Outcome::Created {
                accepted_so_far.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let latency = tokio::time::Instant::now().duration_since(intended);
            progress.inc(1);
            let attempt = Attempt {
                buyer: r.buyer,
                key: r.key.clone(),
                product: r.product,
                outcome,
                order_id,
            };
            (attempt, r.at, latency)
        }
    })
    .await;
    let seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();

    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut progress_points = sampler.await.unwrap_or_default();
    let mut recorder = Recorder::with_bucket(bucket_ms);
    let mut attempts = Vec::with_capacity(results.len());
    for (attempt, at, latency) in results {
        recorder.record(
            &attempt.outcome,
            at.as_millis() as u64,
            latency.as_micros() as u64,
        );
        attempts.push(attempt);
    }
    let accepted = recorder.count("201");

    let budget = Duration::from_secs(cli.deadline_secs);
    let asked_again = ask_again::ask_again(
        &target,
        &tokens,
        &mut attempts,
        cli.max_in_flight,
        Instant::now() + budget,
    )
    .await;
    // Every accepted order must complete: wait for the server's counters to settle.
    let deadline = Instant::now() + budget;
    let mut counters: HashMap<i64, Counters> = HashMap::new();
    let completed_after = loop {
        counters.clear();
        for plan in &plans {
            let c = target
                .admin(
                    reqwest::Method::GET,
                    &format!("/admin/flash-sales/{}", plan.product),
                    None,
                )
                .await?;
            let c: Counters =
                serde_json::from_value(c).map_err(|e| Failure(format!("admin counters: {e}")))?;
            counters.insert(plan.product, c);
        }
        progress_points.push(Progress {
            at_ms: started.elapsed().as_millis() as u64,
            accepted,
            completed: counters.values().map(|c| c.completed).sum(),
        });
        let settled = plans.iter().all(|p| {
            let c = &counters[&p.product];
            let sold = attempts
                .iter()
                .filter(|a| a.product == p.product && a.outcome == Outcome::Created)
                .count() as i64;
            c.pending == 0 && c.completed >= sold
        });
        if settled {
            break Some(started.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut violations = invariants::check(&plans, &attempts, &counters);
    if completed_after.is_none() {
        violations.push(format!(
            "not every accepted order completed within {} s",
            cli.deadline_secs
        ));
    }

    Ok(Report {
        scenario: scenario_name(&cli.scenario).into(),
        parameters,
        seconds,
        requests: recorder.total(),
        requests_per_second: recorder.total() as f64 / seconds,
        accepted,
        accepted_per_second: accepted as f64 / seconds,
        status_counts: recorder.status_counts(),
        latency_ms: recorder.overall(),
        latency_by_outcome_ms: recorder.latency_by_outcome_ms(),
        bucket_ms,
        timeline: recorder.timeline(),
        latency_distribution_ms: recorder.distribution_ms(),
        progress: progress_points,
        completed_after_seconds: completed_after,
        asked_again,
        countdown,
        checkout: None,
        violations,
    })
}

/// Runs, prints and writes the reports; returns the process exit code (0 clean, 1
/// violations, 2 the run could not be made).
pub async fn main_with(cli: Cli) -> i32 {
    let json = cli.report_json.as_deref();
    if let Scenario::Logins {
        accounts,
        logins,
        window_ms,
    } = cli.scenario
    {
        let ran = async {
            let client = http_client(cli.max_in_flight)?;
            let public = cli.target.trim_end_matches('/');
            logins::run(
                &client,
                public,
                accounts,
                logins,
                window_ms,
                cli.max_in_flight,
            )
            .await
        };
        return match conclude(ran.await, logins::LoginsReport::summary, json) {
            Ok(_) => 0,
            Err(code) => code,
        };
    }
    let report = match conclude(run(&cli).await, Report::summary, json) {
        Ok(r) => r,
        Err(code) => return code,
    };
    if let Some(path) = &cli.report_html {
        if let Err(e) = std::fs::write(path, report.html()) {
            eprintln!("flashsale-load: cannot write {}: {e}", path.display());
            return 2;
        }
    }
    if report.violations.is_empty() {
        0
    } else {
        1
    }
}
