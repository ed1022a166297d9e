//! What a sale with a payment window must keep, checked after the checkout scenario:
//! never more units held than the stock at any reading of its counters, no more paid
//! than the stock, every accepted order ended `completed` (paid), `cancelled` or
//! `expired`, each as its buyer's payment says, and the server's counts of paid and
//! expired units agree with what the buyers saw. Each violation is a sentence.

use std::collections::BTreeMap;

use super::buyer::OrderLog;
use super::{SaleCounters, Sample};
use crate::invariants::{self, Attempt};

/// What the run saw.
pub struct Observed<'a> {
    pub stock: i64,
    /// What one unit owes.
    pub price_cents: i64,
    pub attempts: &'a [Attempt],
    pub orders: &'a [OrderLog],
    /// The sale's counters, read over the whole run.
    pub samples: &'a [Sample],
    /// Its counters once the run settled.
    pub last: Option<&'a SaleCounters>,
}

/// The statuses an order may end in.
const FINAL: [&str; 3] = ["completed", "cancelled", "expired"];

pub fn check(seen: &Observed) -> Vec<String> {
    let mut violations = invariants::one_order_per_key(seen.attempts);
    let stock = seen.stock;

    let mut over = Tally::default();
    let mut over_paid = Tally::default();
    for s in seen.samples {
        let c = &s.counters;
        let at = format!("{:.1} s", s.at_ms as f64 / 1000.0);
        if c.held() > stock {
            over.add(format!(
                "{at}: {} pending + {} awaiting payment + {} paid",
                c.pending, c.awaiting_payment, c.completed
            ));
        }
        if c.completed > stock {
            over_paid.add(format!("{at}: {}", c.completed));
        }
    }
    over.report(
        &mut violations,
        &format!("readings of the sale held more units than its stock of {stock}"),
    );
    over_paid.report(
        &mut violations,
        &format!("readings of the sale counted more paid units than its stock of {stock}"),
    );

    let mut by_kind: BTreeMap<&str, Tally> = BTreeMap::new();
    for o in seen.orders {
        let id = &o.order_id;
        let status = o.final_status.as_deref();
        let kind = match (status, o.fate.paid()) {
            (None, _) => Some("orders could not be read after the run"),
            (Some(s), _) if !FINAL.contains(&s) => {
                Some("orders were not completed, cancelled or expired after the run settled")
            }
            (Some("completed"), Some(false)) => Some("orders are completed but were never paid"),
            (Some(s), Some(true)) if s != "completed" => {
                Some("orders were paid (200) but are not completed")
            }
            (Some("cancelled"), _) => Some("orders were cancelled though nobody cancelled them"),
            _ => None,
        };
        if let Some(kind) = kind {
            let example = format!("{id} ({}, {})", status.unwrap_or("unread"), o.fate.name());
            by_kind.entry(kind).or_default().add(example);
        }
        if o.awaiting_after.is_some() && o.amount_cents != Some(seen.price_cents) {
            let owed = o
                .amount_cents
                .map_or("nothing said".into(), |a| a.to_string());
            by_kind
                .entry("orders owed another amount than the unit price")
                .or_default()
                .add(format!("{id} ({owed}, price {})", seen.price_cents));
        }
    }
    for (kind, tally) in &by_kind {
        tally.report(&mut violations, kind);
    }

    let count =
        |paid: Option<bool>| seen.orders.iter().filter(|o| o.fate.paid() == paid).count() as i64;
    let (paid, unpaid, unknown) = (count(Some(true)), count(Some(false)), count(None));
    if paid > stock {
        violations.push(format!(
            "buyers paid for {paid} units of a stock of {stock}"
        ));
    }
    let Some(c) = seen.last else {
        violations.push("no counters of the sale after the run".into());
        return violations;
    };
    if c.completed > stock {
        violations.push(format!(
            "the server counts {} paid units of a stock of {stock}",
            c.completed
        ));
    }
    if c.pending != 0 || c.awaiting_payment != 0 {
        violations.push(format!(
            "after the run the sale still holds {} pending and {} awaiting payment units",
            c.pending, c.awaiting_payment
        ));
    } else if c.remaining != c.stock - c.completed {
        violations.push(format!(
            "after the run {} units remain of a stock of {} with {} paid: expired units were not returned once each",
            c.remaining, c.stock, c.completed
        ));
    }
    let maybe = |n: i64| match unknown {
        0 => n.to_string(),
        u => format!("{n} to {}", n + u),
    };
    if c.completed < paid || c.completed > paid + unknown {
        violations.push(format!(
            "the server counts {} paid units, the buyers paid for {}",
            c.completed,
            maybe(paid)
        ));
    }
    if c.expired < unpaid || c.expired > unpaid + unknown {
        violations.push(format!(
            "the server counts {} expired units, the buyers left {} unpaid",
            c.expired,
            maybe(unpaid)
        ));
    }
    violations
}

/// Cases of one kind of violation: reported once, with a count and a few examples.
#[derive(Default)]
struct Tally {
    count: usize,
    examples: Vec<String>,
}

impl Tally {
    fn add(&mut self, example: String) {
        self.count += 1;
        if self.examples.len() < 3 {
            self.examples.push(example);
        }
    }

    fn report(&self, violations: &mut Vec<String>, what: &str) {
        if self.count > 0 {
            violations.push(format!(
                "{} {what}: {}",
                self.count,
                self.examples.join("; ")
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::checkout::Fate;
    use crate::stats::Outcome;

    fn counters(pending: i64, awaiting: i64, completed: i64, expired: i64) -> SaleCounters {
        SaleCounters {
            stock: 2,
            remaining: 2 - pending - awaiting - completed,
            pending,
            awaiting_payment: awaiting,
            completed,
            cancelled: 0,
            expired,
            payment_window_secs: Some(5),
        }
    }

    fn order(id: &str, fate: Fate, status: &str) -> OrderLog {
        OrderLog {
            buyer: 0,
            order_id: id.into(),
            awaiting_after: Some(Duration::from_millis(20)),
            amount_cents: Some(999),
            fate,
            expired_after_pay_by: None,
            final_status: Some(status.into()),
        }
    }

    /// Two units: a declined order expires and its unit is sold again; both units paid.
    struct Run {
        attempts: Vec<Attempt>,
        orders: Vec<OrderLog>,
        samples: Vec<Sample>,
        last: SaleCounters,
    }

    impl Run {
        fn good() -> Self {
            let attempt = |buyer, key: &str, outcome, id: Option<&str>| Attempt {
                buyer,
                key: key.into(),
                product: 1,
                outcome,
                order_id: id.map(str::to_string),
            };
            let sample = |at_ms, c| Sample { at_ms, counters: c };
            Run {
                attempts: vec![
                    attempt(0, "checkout-0", Outcome::Created, Some("a")),
                    attempt(1, "checkout-0", Outcome::Created, Some("b")),
                    attempt(
                        2,
                        "checkout-0",
                        Outcome::Conflict("out_of_stock".into()),
                        None,
                    ),
                    attempt(2, "checkout-1", Outcome::Created, Some("c")),
                ],
                orders: vec![
                    order("a", Fate::Paid, "completed"),
                    order("b", Fate::Declined, "expired"),
                    order("c", Fate::Paid, "completed"),
                ],
                samples: vec![
                    sample(0, counters(2, 0, 0, 0)),
                    sample(200, counters(0, 2, 0, 0)),
                    sample(400, counters(0, 1, 1, 0)),
                    sample(5400, counters(0, 0, 1, 1)),
                    sample(5600, counters(0, 1, 1, 1)),
                    sample(6000, counters(0, 0, 2, 1)),
                ],
                last: counters(0, 0, 2, 1),
            }
        }

        fn check(&self) -> Vec<String> {
            check(&Observed {
                stock: 2,
                price_cents: 999,
                attempts: &self.attempts,
                orders: &self.orders,
                samples: &self.samples,
                last: Some(&self.last),
            })
        }
    }

    fn caught(v: &[String], what: &str) -> bool {
        v.iter().any(|v| v.contains(what))
    }

    #[test]
    fn a_sale_sold_again_after_an_expiry_passes() {
        assert_eq!(Run::good().check(), Vec::<String>::new());
    }

    #[test]
    fn holding_more_than_the_stock_at_any_reading_is_caught() {
        let mut run = Run::good();
        run.samples[4].counters = counters(1, 1, 1, 1);
        let v = run.check();
        assert!(
            caught(&v, "1 readings of the sale held more units than its stock of 2: 5.6 s: 1 pending + 1 awaiting payment + 1 paid"),
            "{v:?}"
        );
    }

    #[test]
    fn a_paid_order_that_is_not_completed_is_caught() {
        let mut run = Run::good();
        run.orders[2].final_status = Some("expired".into());
        let v = run.check();
        assert!(
            caught(
                &v,
                "were paid (200) but are not completed: c (expired, paid)"
            ),
            "{v:?}"
        );
    }

    #[test]
    fn an_order_left_awaiting_payment_is_caught() {
        let mut run = Run::good();
        run.orders[1].final_status = Some("awaiting_payment".into());
        run.last = counters(0, 1, 1, 0);
        let v = run.check();
        assert!(caught(&v, "not completed, cancelled or expired"), "{v:?}");
        assert!(
            caught(&v, "still holds 0 pending and 1 awaiting payment"),
            "{v:?}"
        );
    }

    #[test]
    fn counts_that_disagree_with_the_buyers_are_caught() {
        let mut run = Run::good();
        run.last.expired = 2;
        let v = run.check();
        assert!(
            caught(&v, "counts 2 expired units, the buyers left 1 unpaid"),
            "{v:?}"
        );
        let mut run = Run::good();
        run.orders[0].fate = Fate::Declined;
        let v = run.check();
        assert!(
            caught(&v, "counts 2 paid units, the buyers paid for 1"),
            "{v:?}"
        );
        assert!(caught(&v, "completed but were never paid"), "{v:?}");
    }

    #[test]
    fn a_unit_returned_twice_is_caught() {
        let mut run = Run::good();
        run.last.remaining = 1;
        let v = run.check();
        assert!(
            caught(&v, "1 units remain of a stock of 2 with 2 paid"),
            "{v:?}"
        );
    }

    #[test]
    fn an_unanswered_payment_may_have_gone_either_way() {
        let mut run = Run::good();
        run.orders[2].fate = Fate::Unknown;
        assert_eq!(run.check(), Vec::<String>::new());
    }

    #[test]
    fn a_wrong_amount_is_caught() {
        let mut run = Run::good();
        run.orders[0].amount_cents = Some(1000);
        let v = run.check();
        assert!(
            caught(
                &v,
                "owed another amount than the unit price: a (1000, price 999)"
            ),
            "{v:?}"
        );
    }
}
