//! The checkout scenario: a sale with a payment window. Buyers arrive like a burst
//! (or at a rate); each winner waits until its order awaits payment and then pays,
//! signed as the shop's payment service signs, or lets it expire; losers and buyers
//! whose order expired buy again, so that every unit nobody paid for is sold again,
//! until the whole stock is paid or `--deadline-secs` passes. Meanwhile the sale's
//! counters are read every 200 ms: never may more units be held (pending, awaiting
//! payment or paid) than the stock. Once the last windows have lapsed, every accepted
//! order is read: each ended paid (`completed`), `cancelled` or `expired` as its
//! buyer's payment says, and the server's counts agree with the buyers'.
//!
//! `buyer` is one buyer's life, `payment` the signed confirmation, `check` the
//! invariants and `report` the report's part.

mod buyer;
mod check;
pub mod payment;
mod report;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

pub use buyer::{Fate, OrderLog};
pub use check::{check, Observed};
pub use report::{per_second, CheckoutReport, HeldRow};

use crate::ask_again::AskedAgain;
use crate::report::{Progress, Report};
use crate::stats::{histogram, Percentiles, Recorder};
use crate::{mint, schedule, Cli, Failure, Target, PRICE_CENTS};
use buyer::{Sale, Shared};

/// How often the sale's counters are read.
const READ_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Buyers, at least the stock: each pays for one unit at most (the sale's per-user
    /// limit is 1).
    #[arg(long, default_value_t = 2_000)]
    pub buyers: usize,
    #[arg(long, default_value_t = 1_000)]
    pub stock: i64,
    /// The sale's payment window, 1 to 86,400 s: an order unpaid this long after it
    /// reached its shard expires, and its unit goes back on sale.
    #[arg(long, default_value_t = 5)]
    pub window_secs: u64,
    /// The buyers' first requests are spread evenly over this window.
    #[arg(long, default_value_t = 1_000)]
    pub arrivals_ms: u64,
    /// The buyers' first requests arrive at this rate instead (per second).
    #[arg(long)]
    pub rate: Option<f64>,
    /// A winner who pays does so after a random delay, uniform from 0 to this, from the
    /// moment it sees its order awaiting payment (a delay past the window makes a late
    /// payment, answered 409 payment_window_closed).
    #[arg(long, default_value_t = 1_000)]
    pub pay_delay_ms: u64,
    /// The chance that a winner pays, drawn for each order.
    #[arg(long, default_value_t = 0.6)]
    pub pay_probability: f64,
    /// The server's payments.webhook_secret, which the confirmations are signed with.
    #[arg(
        long,
        env = "FLASHSALE__PAYMENTS__WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub payment_secret: Option<String>,
}

impl Args {
    /// Checks the arguments; answers the payment secret.
    fn validate(&self) -> Result<String, Failure> {
        let refuse = |why: &str| Err(Failure(why.into()));
        if self.stock < 1 {
            return refuse("--stock is at least 1");
        }
        if (self.buyers as i64) < self.stock {
            return refuse("--buyers is at least --stock: each buyer pays for one unit at most");
        }
        if !(1..=86_400).contains(&self.window_secs) {
            return refuse("--window-secs is from 1 to 86400");
        }
        if !(0.0..=1.0).contains(&self.pay_probability) {
            return refuse("--pay-probability is from 0 to 1");
        }
        if self.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            return refuse("--rate is a positive number of buyers a second");
        }
        match self.payment_secret.as_deref() {
            Some(s) if !s.is_empty() => Ok(s.to_string()),
            _ => refuse(
                "--payment-secret (or FLASHSALE__PAYMENTS__WEBHOOK_SECRET) is required: the server's payments.webhook_secret, which payments are signed with",
            ),
        }
    }

    /// When each buyer first asks, from the start.
    fn arrivals(&self) -> Vec<Duration> {
        match self.rate {
            Some(rate) => (0..self.buyers)
                .map(|i| Duration::from_secs_f64(i as f64 / rate))
                .collect(),
            None => schedule::burst(self.buyers, Duration::from_millis(self.arrivals_ms)),
        }
    }
}

/// The sale's counters (`GET /admin/flash-sales/{id}`), those of the payment window
/// included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SaleCounters {
    pub stock: i64,
    pub remaining: i64,
    /// Units of orders not yet in their shard.
    pub pending: i64,
    pub awaiting_payment: i64,
    /// Paid units.
    pub completed: i64,
    #[serde(default)]
    pub cancelled: i64,
    pub expired: i64,
    pub payment_window_secs: Option<u64>,
}

impl SaleCounters {
    /// Units taken from the stock: pending, awaiting payment or paid.
    pub fn held(&self) -> i64 {
        self.pending + self.awaiting_payment + self.completed
    }
}

/// One reading of the sale's counters, at `at_ms` from the start.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    pub at_ms: u64,
    pub counters: SaleCounters,
}

async fn read_counters(target: &Target, product: i64) -> Result<SaleCounters, Failure> {
    let path = format!("/admin/flash-sales/{product}");
    let c = target.admin(reqwest::Method::GET, &path, None).await?;
    serde_json::from_value(c.clone()).map_err(|e| {
        Failure(format!(
            "the sale's counters lack the payment window's ({e}): {c}"
        ))
    })
}

/// What the readings of the sale found.
#[derive(Default)]
struct Readings {
    samples: Vec<Sample>,
    progress: Vec<Progress>,
    paid_after: Option<f64>,
}

/// Reads the sale's counters every [`READ_EVERY`] while `reading`, sends each reading
/// on to the buyers, and ends the buying once the stock is all paid or `buy_until`
/// passes.
async fn read_sale(
    shared: Arc<Shared>,
    buy_until: Instant,
    reading: Arc<AtomicBool>,
    bar: indicatif::ProgressBar,
) -> Readings {
    let mut found = Readings::default();
    while reading.load(Ordering::Relaxed) {
        let read = read_counters(&shared.target, shared.product).await;
        let now = Instant::now();
        let at = now.duration_since(shared.started);
        let late = now >= buy_until;
        match read {
            Ok(c) => {
                let at_ms = at.as_millis() as u64;
                if c.completed >= shared.stock && found.paid_after.is_none() {
                    found.paid_after = Some(at.as_secs_f64());
                }
                found.samples.push(Sample { at_ms, counters: c });
                found.progress.push(Progress {
                    at_ms,
                    accepted: shared.accepted.load(Ordering::Relaxed),
                    completed: c.completed,
                });
                bar.set_position(c.completed.max(0) as u64);
                bar.set_message(format!("held {}, expired {}", c.held(), c.expired));
                let paid_out = found.paid_after.is_some();
                shared.sale.send_modify(|s| {
                    s.read_at = Some(now);
                    s.counters = Some(c);
                    s.over |= paid_out || late;
                });
            }
            Err(_) => shared.sale.send_modify(|s| s.over |= late),
        }
        tokio::time::sleep(READ_EVERY).await;
    }
    found
}

/// Waits, until `deadline`, for a reading taken after `after` that holds nothing but
/// paid units, every other unit back on sale: when (from the start), if it came.
async fn settle(shared: &Shared, after: Instant, deadline: Instant) -> Option<f64> {
    let mut sale = shared.sale.subscribe();
    let settled = sale.wait_for(|s| match (s.read_at, s.counters) {
        (Some(at), Some(c)) => {
            at > after
                && c.pending == 0
                && c.awaiting_payment == 0
                && c.remaining == c.stock - c.completed
        }
        _ => false,
    });
    let settled = matches!(tokio::time::timeout_at(deadline, settled).await, Ok(Ok(_)));
    settled.then(|| shared.started.elapsed().as_secs_f64())
}

/// Reads every order once more, as its buyer, until `deadline`: its final status.
async fn final_statuses(
    shared: &Shared,
    orders: &mut [OrderLog],
    in_flight: usize,
    deadline: Instant,
) {
    let read: Vec<(usize, Option<String>)> =
        futures_util::stream::iter(orders.iter().enumerate().map(|(i, o)| async move {
            loop {
                if let Some(v) = buyer::read_order(shared, o.buyer, &o.order_id, deadline).await {
                    return (i, Some(v.status));
                }
                if Instant::now() + Duration::from_millis(500) >= deadline {
                    return (i, None);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }))
        .buffer_unordered(in_flight.max(1))
        .collect()
        .await;
    for (i, status) in read {
        orders[i].final_status = status;
    }
}

/// Percentiles of durations.
fn percentiles(values: impl Iterator<Item = Duration>) -> Percentiles {
    let mut h = histogram();
    for d in values {
        h.saturating_record((d.as_micros() as u64).max(1));
    }
    Percentiles::of(&h)
}

/// Runs the checkout scenario and checks the sale.
pub(crate) async fn run(
    cli: &Cli,
    args: &Args,
    target: Arc<Target>,
    jwt_secret: &str,
) -> Result<Report, Failure> {
    let payment_secret = args.validate()?;
    let window = args.window_secs;
    let plan = target
        .open_sale_with(
            "Checkout item",
            args.stock,
            1,
            json!({"paymentWindowSecs": window}),
        )
        .await?;
    let opened = read_counters(&target, plan.product).await?;
    if opened.payment_window_secs != Some(window) {
        return Err(Failure(format!(
            "the sale was opened without its payment window (paymentWindowSecs {:?}, asked {window}): does this server have the payment step?",
            opened.payment_window_secs
        )));
    }
    let tokens = (0..args.buyers)
        .map(|_| mint(jwt_secret, &uuid::Uuid::new_v4().to_string()))
        .collect();
    let budget = Duration::from_secs(cli.deadline_secs);
    let started = Instant::now();
    let buy_until = started + budget;
    let shared = Arc::new(Shared {
        target: target.clone(),
        tokens,
        product: plan.product,
        stock: args.stock,
        permits: Semaphore::new(cli.max_in_flight.max(1)),
        started,
        hard_deadline: buy_until + budget,
        window: Duration::from_secs(window),
        pay_probability: args.pay_probability,
        pay_delay: Duration::from_millis(args.pay_delay_ms),
        payment_secret,
        sale: watch::channel(Sale::default()).0,
        waiting: AtomicUsize::new(0),
        accepted: AtomicU64::new(0),
        refused: Mutex::new(None),
    });

    let bar = if cli.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(args.stock as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} units paid, {msg}",
            )
            .expect("a valid template"),
        );
        bar
    };
    let reading = Arc::new(AtomicBool::new(true));
    let reader = tokio::spawn(read_sale(
        shared.clone(),
        buy_until,
        reading.clone(),
        bar.clone(),
    ));
    let buyers: Vec<_> = args
        .arrivals()
        .into_iter()
        .enumerate()
        .map(|(b, at)| tokio::spawn(buyer::buyer(shared.clone(), b, at)))
        .collect();
    let mut logs = Vec::with_capacity(buyers.len());
    for b in buyers {
        logs.push(b.await.expect("a buyer panicked"));
    }
    let seconds = started.elapsed().as_secs_f64();
    shared.sale.send_modify(|s| s.over = true);

    // The last windows lapse, then every order is read once more.
    let settle_until = Instant::now() + budget;
    let settled_after = settle(&shared, Instant::now(), settle_until).await;
    let mut orders: Vec<OrderLog> = logs.iter_mut().flat_map(|l| l.orders.drain(..)).collect();
    final_statuses(
        &shared,
        &mut orders,
        cli.max_in_flight,
        Instant::now() + budget,
    )
    .await;
    let last = read_counters(&target, plan.product).await.ok();
    reading.store(false, Ordering::Relaxed);
    let readings = reader.await.expect("the sale's reader panicked");
    bar.finish_and_clear();
    let last = last.or_else(|| readings.samples.last().map(|s| s.counters));

    let attempts: Vec<_> = logs
        .iter()
        .flat_map(|l| l.attempts.iter().cloned())
        .collect();
    let mut violations = check(&Observed {
        stock: args.stock,
        price_cents: PRICE_CENTS,
        attempts: &attempts,
        orders: &orders,
        samples: &readings.samples,
        last: last.as_ref(),
    });
    if let Some(why) = shared.refused.lock().expect("never poisoned").clone() {
        violations.push(why);
    }
    let paid = orders.iter().filter(|o| o.fate == Fate::Paid).count() as i64;
    if args.pay_probability > 0.0 && paid < args.stock {
        violations.push(format!(
            "the stock was not all paid: {paid} of {} units when the buying ended after {seconds:.1} s (--deadline-secs {})",
            args.stock, cli.deadline_secs
        ));
    }

    let mut recorder = Recorder::new();
    for (outcome, at_ms, latency_us) in logs.iter().flat_map(|l| &l.requests) {
        recorder.record(outcome, *at_ms, *latency_us);
    }
    let mut fates: BTreeMap<&'static str, u64> = BTreeMap::new();
    for o in &orders {
        *fates.entry(o.fate.name()).or_default() += 1;
    }
    let mut payment_answers: BTreeMap<String, u64> = BTreeMap::new();
    let payments = logs.iter().flat_map(|l| &l.payments);
    for (answer, _) in payments.clone() {
        *payment_answers.entry(answer.clone()).or_default() += 1;
    }
    let accepted = orders.len() as u64;
    let checkout = CheckoutReport {
        stock: args.stock,
        window_secs: window,
        pay_probability: args.pay_probability,
        pay_delay_ms: args.pay_delay_ms,
        orders: accepted,
        sold_again: accepted.saturating_sub(args.stock as u64),
        fates,
        paid_after_seconds: readings.paid_after,
        settled_after_seconds: settled_after,
        payments: payments.clone().count() as u64,
        payment_latency_ms: percentiles(payments.map(|(_, us)| Duration::from_micros(*us))),
        payment_answers,
        awaiting_payment_after_ms: percentiles(orders.iter().filter_map(|o| o.awaiting_after)),
        expired_after_pay_by_ms: percentiles(orders.iter().filter_map(|o| o.expired_after_pay_by)),
        peak_held: readings
            .samples
            .iter()
            .map(|s| s.counters.held())
            .max()
            .unwrap_or(0),
        readings: readings.samples.len(),
        held: per_second(&readings.samples),
        counters: last,
    };
    let arrivals = match args.rate {
        Some(rate) => json!({"rate": rate}),
        None => json!({"arrivalsMs": args.arrivals_ms}),
    };
    let mut parameters = json!({
        "buyers": args.buyers, "stock": args.stock, "windowSecs": window,
        "payDelayMs": args.pay_delay_ms, "payProbability": args.pay_probability,
        "priceCents": PRICE_CENTS, "product": plan.product,
    });
    if let (Some(p), serde_json::Value::Object(a)) = (parameters.as_object_mut(), arrivals) {
        p.extend(a);
    }
    Ok(Report {
        scenario: "checkout".into(),
        parameters,
        seconds,
        requests: recorder.total(),
        requests_per_second: recorder.total() as f64 / seconds,
        accepted,
        accepted_per_second: accepted as f64 / seconds,
        status_counts: recorder.status_counts(),
        latency_ms: recorder.overall(),
        latency_by_outcome_ms: recorder.latency_by_outcome_ms(),
        bucket_ms: recorder.bucket_ms(),
        timeline: recorder.timeline(),
        latency_distribution_ms: recorder.distribution_ms(),
        progress: readings.progress,
        completed_after_seconds: None,
        asked_again: AskedAgain::default(),
        countdown: None,
        checkout: Some(checkout),
        violations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(line: &str) -> Args {
        let argv = format!("flashsale-load checkout {line}");
        match Cli::try_parse_from(argv.split_whitespace()) {
            Ok(Cli {
                scenario: crate::Scenario::Checkout(a),
                ..
            }) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_flags_parse_and_are_checked() {
        let a = args(
            "--stock 50 --buyers 100 --window-secs 3 --pay-probability 0.5 --payment-secret s",
        );
        assert_eq!((a.stock, a.buyers, a.window_secs), (50, 100, 3));
        assert_eq!(a.validate().unwrap(), "s");
        assert_eq!(a.arrivals().len(), 100);
        let refused = |line: &str| args(line).validate().unwrap_err().0;
        assert!(refused("--stock 10 --buyers 5 --payment-secret s").contains("--buyers"));
        assert!(refused("--window-secs 0 --payment-secret s").contains("--window-secs"));
        assert!(refused("--pay-probability 1.5 --payment-secret s").contains("--pay-probability"));
    }

    #[test]
    fn a_rate_spaces_the_first_requests() {
        let a = args("--buyers 4 --stock 4 --rate 2");
        let at = a.arrivals();
        assert_eq!(at, [0, 500, 1000, 1500].map(Duration::from_millis));
    }

    #[test]
    fn counters_without_the_payment_window_are_refused() {
        let old = json!({"stock": 5, "remaining": 5, "pending": 0, "completed": 0});
        assert!(serde_json::from_value::<SaleCounters>(old).is_err());
        let new = json!({"productId": 1, "stock": 5, "remaining": 4, "sold": 1, "pending": 0,
            "awaitingPayment": 1, "completed": 0, "cancelled": 0, "expired": 0,
            "paymentWindowSecs": 5});
        let c: SaleCounters = serde_json::from_value(new).unwrap();
        assert_eq!((c.held(), c.payment_window_secs), (1, Some(5)));
    }
}
