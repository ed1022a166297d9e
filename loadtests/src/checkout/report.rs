//! The checkout's part of the run's report: the units held, paid and expired over time
//! (one row per second, from the readings of the sale's counters), what became of the
//! orders, and the payment confirmations' answers and latency.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::{SaleCounters, Sample};
use crate::stats::Percentiles;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckoutReport {
    pub stock: i64,
    pub window_secs: u64,
    pub pay_probability: f64,
    pub pay_delay_ms: u64,
    /// Orders accepted (a `201`, or a `200` naming the order of an unanswered request).
    pub orders: u64,
    /// Orders accepted beyond the stock: units that expired and were sold again.
    pub sold_again: u64,
    /// What became of the orders, as their buyers saw it: paid, declined (let
    /// expire), late (paid after the window closed), missed (lapsed before its buyer
    /// saw it awaiting payment), refused, abandoned (the buying ended first), unknown.
    pub fates: BTreeMap<&'static str, u64>,
    /// When the counters first showed the whole stock paid, from the start.
    pub paid_after_seconds: Option<f64>,
    /// When nothing but paid units was held any more, from the start.
    pub settled_after_seconds: Option<f64>,
    /// `POST /payments/confirm` requests (repeats of one payment included).
    pub payments: u64,
    /// Their latency, from sending to the answer.
    pub payment_latency_ms: Percentiles,
    /// Their answers: `200`, `409 order_pending`, `409 payment_window_closed`, `503`,
    /// `error` (no answer)…
    pub payment_answers: BTreeMap<String, u64>,
    /// From a `201` until its buyer saw the order awaiting payment.
    pub awaiting_payment_after_ms: Percentiles,
    /// From an unpaid order's `payBy` until its buyer saw it expired.
    pub expired_after_pay_by_ms: Percentiles,
    /// The most units held (pending + awaiting payment + paid) at any reading.
    pub peak_held: i64,
    /// Readings of the sale's counters (`GET /admin/flash-sales/{id}`, every 200 ms).
    pub readings: usize,
    /// The last reading of each second.
    pub held: Vec<HeldRow>,
    /// The counters once the run settled.
    pub counters: Option<SaleCounters>,
}

/// The sale at the end of one second of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldRow {
    /// Seconds from the start.
    pub second: u64,
    /// pending + awaiting payment + paid.
    pub held: i64,
    pub pending: i64,
    pub awaiting_payment: i64,
    pub paid: i64,
    pub expired: i64,
    pub remaining: i64,
}

/// The last reading of every second that has one.
pub fn per_second(samples: &[Sample]) -> Vec<HeldRow> {
    let mut rows: BTreeMap<u64, HeldRow> = BTreeMap::new();
    for s in samples {
        let c = &s.counters;
        let second = s.at_ms / 1000;
        rows.insert(
            second,
            HeldRow {
                second,
                held: c.held(),
                pending: c.pending,
                awaiting_payment: c.awaiting_payment,
                paid: c.completed,
                expired: c.expired,
                remaining: c.remaining,
            },
        );
    }
    rows.into_values().collect()
}

/// "p50 …, p99 …, max … ms" with `decimals`, or "none" when nothing was measured.
fn spread(p: &Percentiles, decimals: usize) -> String {
    match p.count {
        0 => "none".into(),
        _ => format!(
            "p50 {:.d$} ms, p99 {:.d$} ms, max {:.d$} ms",
            p.p50,
            p.p99,
            p.max,
            d = decimals
        ),
    }
}

impl CheckoutReport {
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "checkout: {} units, a {} s payment window, {:.0}% of winners pay within {} ms of their order awaiting payment",
            self.stock,
            self.window_secs,
            self.pay_probability * 100.0,
            self.pay_delay_ms
        );
        let fates: Vec<String> = self.fates.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            out,
            "orders: {} accepted, {} of them units sold again after an expiry; {}",
            self.orders,
            self.sold_again,
            fates.join(", ")
        );
        let _ = match self.paid_after_seconds {
            Some(s) => writeln!(out, "the whole stock was paid {s:.2} s after the start"),
            None => writeln!(out, "the whole stock was never paid"),
        };
        if let Some(s) = self.settled_after_seconds {
            let _ = writeln!(out, "nothing but paid units held {s:.2} s after the start");
        }
        let answers: Vec<String> = self
            .payment_answers
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(
            out,
            "payments: {} requests, {}; answers {}",
            self.payments,
            spread(&self.payment_latency_ms, 2),
            answers.join(", ")
        );
        let _ = writeln!(
            out,
            "awaiting payment after the 201: {}; seen expired after payBy: {}",
            spread(&self.awaiting_payment_after_ms, 0),
            spread(&self.expired_after_pay_by_ms, 0)
        );
        let _ = writeln!(
            out,
            "units over time (the last of {} readings each second; at most {} held at once):",
            self.readings, self.peak_held
        );
        let _ = writeln!(
            out,
            "{:>6} {:>8} {:>8} {:>9} {:>8} {:>8} {:>9}",
            "second", "held", "pending", "awaiting", "paid", "expired", "remaining"
        );
        for r in &self.held {
            let _ = writeln!(
                out,
                "{:>6} {:>8} {:>8} {:>9} {:>8} {:>8} {:>9}",
                r.second, r.held, r.pending, r.awaiting_payment, r.paid, r.expired, r.remaining
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, awaiting: i64, paid: i64, expired: i64) -> Sample {
        Sample {
            at_ms,
            counters: SaleCounters {
                stock: 10,
                remaining: 10 - awaiting - paid,
                pending: 0,
                awaiting_payment: awaiting,
                completed: paid,
                cancelled: 0,
                expired,
                payment_window_secs: Some(3),
            },
        }
    }

    #[test]
    fn each_second_shows_its_last_reading_and_seconds_without_one_are_left_out() {
        let rows = per_second(&[
            sample(0, 4, 0, 0),
            sample(800, 10, 0, 0),
            sample(1200, 6, 3, 0),
            sample(3100, 0, 6, 4),
        ]);
        let seconds: Vec<u64> = rows.iter().map(|r| r.second).collect();
        assert_eq!(seconds, [0, 1, 3]);
        assert_eq!((rows[0].held, rows[0].awaiting_payment), (10, 10));
        assert_eq!((rows[1].held, rows[1].paid, rows[1].remaining), (9, 3, 1));
        assert_eq!(
            (rows[2].paid, rows[2].expired, rows[2].remaining),
            (6, 4, 4)
        );
    }

    #[test]
    fn the_summary_has_a_row_per_second_and_says_what_was_not_measured() {
        let none = || Percentiles::of(&crate::stats::histogram());
        let samples = [sample(0, 10, 0, 0), sample(1000, 0, 6, 4)];
        let report = CheckoutReport {
            stock: 10,
            window_secs: 3,
            pay_probability: 0.6,
            pay_delay_ms: 1000,
            orders: 10,
            sold_again: 0,
            fates: [("paid", 6), ("declined", 4)].into(),
            paid_after_seconds: None,
            settled_after_seconds: None,
            payments: 0,
            payment_latency_ms: none(),
            payment_answers: BTreeMap::new(),
            awaiting_payment_after_ms: none(),
            expired_after_pay_by_ms: none(),
            peak_held: 10,
            readings: 2,
            held: per_second(&samples),
            counters: None,
        };
        let text = report.summary();
        assert!(text.contains("payments: 0 requests, none;"), "{text}");
        assert!(text.contains("the whole stock was never paid"), "{text}");
        let rows: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("second"))
            .collect();
        assert_eq!(rows.len(), 3, "{text}");
        let last: Vec<&str> = rows[2].split_whitespace().collect();
        assert_eq!(last, ["1", "6", "0", "0", "6", "4", "4"]);
    }
}
