//! One buyer at the checkout. It asks for a unit; a winner reads its order until it is
//! in its shard and awaiting payment, then pays after a random delay (with the
//! scenario's probability) or lets it expire; a loser waits for units to come back on
//! sale. Whoever has no paid order buys again, with a new `Idempotency-Key`, until it
//! has paid or the buying is over.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rand::Rng;
use serde::Deserialize;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use super::payment::{self, Confirmed};
use super::SaleCounters;
use crate::invariants::Attempt;
use crate::stats::Outcome;
use crate::Target;

/// The sale as the scenario last read it, and whether the buying is over.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Sale {
    /// When the admin counters were read; `None` before the first reading.
    pub read_at: Option<Instant>,
    pub counters: Option<SaleCounters>,
    /// The stock is all paid, `--deadline-secs` passed, or payments are refused.
    pub over: bool,
}

/// What every buyer shares.
pub(super) struct Shared {
    pub target: Arc<Target>,
    pub tokens: Vec<String>,
    pub product: i64,
    pub stock: i64,
    /// Requests in flight, all kinds together (`--max-in-flight`).
    pub permits: Semaphore,
    pub started: Instant,
    /// No request is sent, and none is waited for, past this.
    pub hard_deadline: Instant,
    pub window: Duration,
    pub pay_probability: f64,
    pub pay_delay: Duration,
    pub payment_secret: String,
    /// The sale's last reading, sent on by the sampler.
    pub sale: watch::Sender<Sale>,
    /// Buyers waiting for units to come back on sale.
    pub waiting: AtomicUsize,
    /// Orders accepted so far.
    pub accepted: AtomicU64,
    /// Why no payment can succeed, once a confirmation said so (a wrong secret, no
    /// endpoint): the buying stops.
    pub refused: Mutex<Option<String>>,
}

impl Shared {
    /// Ends the buying: no payment can succeed.
    fn refuse(&self, why: String) {
        self.refused
            .lock()
            .expect("never poisoned")
            .get_or_insert(why);
        self.sale.send_modify(|s| s.over = true);
    }
}

/// What happened to an accepted order, as its buyer saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fate {
    /// Its payment was confirmed (200).
    Paid,
    /// Its buyer chose not to pay, and let it expire.
    Declined,
    /// Its payment came after the window had closed (409 payment_window_closed).
    Late,
    /// It was no longer awaiting payment when its buyer first saw it in its shard.
    Missed,
    /// Its payment was refused otherwise (401, 404, another 409).
    Refused,
    /// The buying ended before its buyer paid.
    Abandoned,
    /// A confirmation may have reached the server but was never answered.
    Unknown,
}

impl Fate {
    pub fn name(self) -> &'static str {
        match self {
            Fate::Paid => "paid",
            Fate::Declined => "declined",
            Fate::Late => "late",
            Fate::Missed => "missed",
            Fate::Refused => "refused",
            Fate::Abandoned => "abandoned",
            Fate::Unknown => "unknown",
        }
    }

    /// Whether its buyer paid for it: `None` when nobody knows.
    pub fn paid(self) -> Option<bool> {
        match self {
            Fate::Paid => Some(true),
            Fate::Unknown => None,
            Fate::Declined | Fate::Late | Fate::Missed | Fate::Refused | Fate::Abandoned => {
                Some(false)
            }
        }
    }
}

/// An accepted order, as its buyer saw it.
#[derive(Debug, Clone)]
pub struct OrderLog {
    pub buyer: usize,
    pub order_id: String,
    /// From its acceptance until its buyer saw it awaiting payment.
    pub awaiting_after: Option<Duration>,
    /// What it owed (`amountCents`) when it awaited payment.
    pub amount_cents: Option<i64>,
    pub fate: Fate,
    /// How long after its `payBy` its buyer, who let it lapse, saw it expired.
    pub expired_after_pay_by: Option<Duration>,
    /// Its status once the run had settled (`None`: it could not be read).
    pub final_status: Option<String>,
}

/// All one buyer saw.
#[derive(Debug, Default)]
pub(super) struct Log {
    pub attempts: Vec<Attempt>,
    /// Each order request: its outcome, when it was meant to go (ms from the start),
    /// and its latency from then (µs).
    pub requests: Vec<(Outcome, u64, u64)>,
    pub orders: Vec<OrderLog>,
    /// Each payment confirmation: its answer and latency (µs).
    pub payments: Vec<(String, u64)>,
}

/// `GET /orders/{id}`, the fields the scenario reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct OrderView {
    pub status: String,
    pub amount_cents: Option<i64>,
    pub pay_by: Option<String>,
}

impl OrderView {
    /// Its `payBy` on this process's clock (the server's RFC 3339 time read against
    /// this machine's), else `seen` + the window.
    fn pay_by(&self, seen: Instant, window: Duration) -> Instant {
        let at = self
            .pay_by
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
        match at {
            Some(at) => match at.duration_since(SystemTime::now()) {
                Ok(ahead) => Instant::now() + ahead,
                Err(past) => Instant::now()
                    .checked_sub(past.duration())
                    .unwrap_or_else(Instant::now),
            },
            None => seen + window,
        }
    }
}

/// Reads `order` as buyer `me` until `deadline`: `None` for anything but a `200`.
pub(super) async fn read_order(
    shared: &Shared,
    me: usize,
    order: &str,
    deadline: Instant,
) -> Option<OrderView> {
    let url = format!("{}/orders/{order}", shared.target.public);
    let read = tokio::time::timeout_at(deadline, async {
        let _permit = shared.permits.acquire().await.expect("never closed");
        let r = shared
            .target
            .client
            .get(url)
            .bearer_auth(&shared.tokens[me])
            .send()
            .await
            .ok()?;
        match r.status().as_u16() {
            200 => r.json::<OrderView>().await.ok(),
            _ => None,
        }
    });
    read.await.ok().flatten()
}

/// Buyer `me`'s whole life, from its first request at `first` from the start.
pub(super) async fn buyer(shared: Arc<Shared>, me: usize, first: Duration) -> Log {
    let mut sale = shared.sale.subscribe();
    let mut log = Log::default();
    let mut intended = shared.started + first;
    tokio::time::sleep_until(intended).await;
    let mut limited = Duration::from_secs(1);
    let mut round = 0;
    while !sale.borrow().over {
        let key = format!("checkout-{round}");
        round += 1;
        match place(&shared, &mut log, me, &key, intended, &mut sale).await {
            Bought::Order(order) => match follow(&shared, &mut log, me, order, &mut sale).await {
                Fate::Paid | Fate::Refused | Fate::Abandoned | Fate::Unknown => break,
                // Expired: its unit and its place in the limit are back; buy again.
                Fate::Declined | Fate::Late | Fate::Missed => {}
            },
            Bought::SoldOut => {
                if !units_back(&shared, &mut sale).await {
                    break;
                }
            }
            // The unit of its expired order may be back on sale before its place in
            // the per-user limit is: ask again shortly.
            Bought::LimitReached => {
                if !pause(&mut sale, limited).await {
                    break;
                }
                limited = (limited * 2).min(Duration::from_secs(8));
            }
            Bought::Refused | Bought::Undecided => break,
        }
        intended = Instant::now();
    }
    log
}

/// An order the server accepted, and when.
struct Accepted {
    id: String,
    at: Instant,
}

/// How a request for a unit ended.
enum Bought {
    Order(Accepted),
    /// `409 out_of_stock`.
    SoldOut,
    /// `409 purchase_limit_reached`.
    LimitReached,
    /// Another final answer (`409 sale_not_active`, a `4xx`).
    Refused,
    /// Unanswered, or still `429`, when the buying ended.
    Undecided,
}

/// Asks for a unit with `key` until the answer is final. A `503` or no answer leaves
/// the order's fate open (the server may have taken it): the same key is sent again
/// until the run's deadline, as a buyer's app retries; a `429` is sent again while the
/// buying is on. Each waits as `Retry-After` says, else backs off from 250 ms to 8 s.
/// The first request's latency counts from `intended`, later ones' from their sending.
async fn place(
    shared: &Shared,
    log: &mut Log,
    me: usize,
    key: &str,
    mut intended: Instant,
    sale: &mut watch::Receiver<Sale>,
) -> Bought {
    let mut backoff = Duration::from_millis(250);
    loop {
        let at_ms = intended.duration_since(shared.started).as_millis() as u64;
        let answered = tokio::time::timeout_at(shared.hard_deadline, async {
            let _permit = shared.permits.acquire().await.expect("never closed");
            let token = &shared.tokens[me];
            shared.target.place(token, shared.product, key).await
        })
        .await;
        let Ok(placed) = answered else {
            return Bought::Undecided;
        };
        let latency = Instant::now().duration_since(intended).as_micros() as u64;
        log.requests.push((placed.outcome.clone(), at_ms, latency));
        log.attempts.push(Attempt {
            buyer: me,
            key: key.to_string(),
            product: shared.product,
            outcome: placed.outcome.clone(),
            order_id: placed.order.clone(),
        });
        match &placed.outcome {
            // A 200 names the order an unanswered request with this key made.
            Outcome::Created | Outcome::Replayed => {
                return match placed.order {
                    Some(id) => {
                        shared.accepted.fetch_add(1, Ordering::Relaxed);
                        Bought::Order(Accepted {
                            id,
                            at: Instant::now(),
                        })
                    }
                    // The invariants name an acceptance without an order id.
                    None => Bought::Refused,
                };
            }
            Outcome::Conflict(c) if c == "out_of_stock" => return Bought::SoldOut,
            Outcome::Conflict(c) if c == "purchase_limit_reached" => return Bought::LimitReached,
            Outcome::RateLimited => {
                let wait = placed.retry_after.unwrap_or(backoff);
                if !pause(sale, wait).await {
                    return Bought::Undecided;
                }
            }
            Outcome::Unavailable | Outcome::Error => {
                let wait = placed.retry_after.unwrap_or(backoff);
                if Instant::now() + wait >= shared.hard_deadline {
                    return Bought::Undecided;
                }
                tokio::time::sleep(wait).await;
            }
            Outcome::Status(s) if *s >= 500 => {
                if Instant::now() + backoff >= shared.hard_deadline {
                    return Bought::Undecided;
                }
                tokio::time::sleep(backoff).await;
            }
            Outcome::Conflict(_) | Outcome::Status(_) => return Bought::Refused,
        }
        backoff = (backoff * 2).min(Duration::from_secs(8));
        intended = Instant::now();
    }
}

/// Follows an accepted order until its buyer is done with it: paid, lapsed (the
/// buyer may buy again), or left when the buying ended.
async fn follow(
    shared: &Shared,
    log: &mut Log,
    me: usize,
    order: Accepted,
    sale: &mut watch::Receiver<Sale>,
) -> Fate {
    let mut seen = OrderLog {
        buyer: me,
        order_id: order.id.clone(),
        awaiting_after: None,
        amount_cents: None,
        fate: Fate::Abandoned,
        expired_after_pay_by: None,
        final_status: None,
    };
    seen.fate = checkout(shared, &mut log.payments, me, &order, sale, &mut seen).await;
    let fate = seen.fate;
    log.orders.push(seen);
    fate
}

/// The checkout of one order; writes what the buyer saw into `seen`.
async fn checkout(
    shared: &Shared,
    payments: &mut Vec<(String, u64)>,
    me: usize,
    order: &Accepted,
    sale: &mut watch::Receiver<Sale>,
    seen: &mut OrderLog,
) -> Fate {
    let Some(view) = in_shard(shared, me, &order.id, sale).await else {
        return Fate::Abandoned;
    };
    if view.status != "awaiting_payment" {
        return Fate::Missed;
    }
    let now = Instant::now();
    seen.awaiting_after = Some(now.duration_since(order.at));
    seen.amount_cents = view.amount_cents;
    let pay_by = view.pay_by(now, shared.window);
    let (pays, delay) = {
        let mut rng = rand::rng();
        let pays = rng.random_bool(shared.pay_probability);
        (pays, shared.pay_delay.mul_f64(rng.random::<f64>()))
    };
    let fate = if pays {
        if !pause(sale, delay).await {
            return Fate::Abandoned;
        }
        // An order that owes nothing said is paid at its price (the invariants name it).
        let amount = view.amount_cents.unwrap_or(crate::PRICE_CENTS);
        match payment::confirm(shared, payments, &order.id, amount).await {
            Confirmed::Paid => return Fate::Paid,
            Confirmed::WindowClosed => Fate::Late,
            Confirmed::Refused(answer) => {
                if answer.starts_with("401") || answer.starts_with("404") {
                    shared.refuse(format!(
                        "payments are refused ({answer}): is --payment-secret the server's payments.webhook_secret, and is one set on the server?"
                    ));
                }
                return Fate::Refused;
            }
            Confirmed::Unanswered { maybe_paid: true } => return Fate::Unknown,
            Confirmed::Unanswered { maybe_paid: false } => return Fate::Abandoned,
        }
    } else {
        Fate::Declined
    };
    let lapsed = lapsed(shared, me, &order.id, pay_by, sale).await;
    if fate == Fate::Declined {
        seen.expired_after_pay_by = lapsed;
    }
    fate
}

/// Reads an order until it is no longer `pending` (it is in its shard), every 100 ms
/// and less often, up to a second apart: its view, or `None` when the buying ended
/// first.
async fn in_shard(
    shared: &Shared,
    me: usize,
    order: &str,
    sale: &mut watch::Receiver<Sale>,
) -> Option<OrderView> {
    let mut every = Duration::from_millis(100);
    loop {
        if let Some(view) = read_order(shared, me, order, shared.hard_deadline).await {
            if view.status != "pending" {
                return Some(view);
            }
        }
        if !pause(sale, every).await {
            return None;
        }
        every = (every * 3 / 2).min(Duration::from_secs(1));
    }
}

/// Waits for an unpaid order to lapse: from its `payBy`, reads it until it no longer
/// awaits payment. How long after `payBy` it was seen so, or `None` when the buying
/// ended first.
async fn lapsed(
    shared: &Shared,
    me: usize,
    order: &str,
    pay_by: Instant,
    sale: &mut watch::Receiver<Sale>,
) -> Option<Duration> {
    if !pause(sale, pay_by.saturating_duration_since(Instant::now())).await {
        return None;
    }
    let mut every = Duration::from_millis(100);
    loop {
        if let Some(view) = read_order(shared, me, order, shared.hard_deadline).await {
            if view.status != "awaiting_payment" {
                return Some(Instant::now().saturating_duration_since(pay_by));
            }
        }
        if !pause(sale, every).await {
            return None;
        }
        every = (every * 3 / 2).min(Duration::from_secs(1));
    }
}

/// Waits for a reading, taken after this call, with units on sale again. Then it goes
/// for them with the chance min(1, 2 × units / buyers waiting), so that about twice as
/// many buyers as units ask: a thousand losers asking at every reading would spend
/// their rate limit (10 orders a minute each) on a few units. Whether the buying is
/// still on.
async fn units_back(shared: &Shared, sale: &mut watch::Receiver<Sale>) -> bool {
    let since = Instant::now();
    sale.borrow_and_update();
    shared.waiting.fetch_add(1, Ordering::Relaxed);
    let back = loop {
        if sale.changed().await.is_err() {
            break false;
        }
        let s = *sale.borrow_and_update();
        if s.over {
            break false;
        }
        let remaining = match (s.read_at, s.counters) {
            (Some(at), Some(c)) if at > since => c.remaining,
            _ => continue,
        };
        if remaining <= 0 {
            continue;
        }
        let waiting = shared.waiting.load(Ordering::Relaxed).max(1) as f64;
        let chance = (2.0 * remaining as f64 / waiting).min(1.0);
        if rand::rng().random_bool(chance) {
            break true;
        }
    };
    shared.waiting.fetch_sub(1, Ordering::Relaxed);
    back
}

/// Sleeps `d`, or less if the buying ends first: whether it is still on.
async fn pause(sale: &mut watch::Receiver<Sale>, d: Duration) -> bool {
    let slept = tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = sale.wait_for(|s| s.over) => false,
    };
    slept && !sale.borrow().over
}
