//! What must hold after a sale, whatever the load: the part generic load tools do not
//! check. Each violation is a sentence; an empty list means the sale stayed correct.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use crate::stats::Outcome;

/// A sale the scenario opened.
#[derive(Debug, Clone)]
pub struct Plan {
    pub product: i64,
    pub stock: i64,
    pub per_user_limit: i64,
}

/// One request as the buyer saw it.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub buyer: usize,
    pub key: String,
    pub product: i64,
    pub outcome: Outcome,
    pub order_id: Option<String>,
}

/// The server's own account of a sale (`GET /admin/flash-sales/{id}`).
#[derive(Debug, Clone, Deserialize)]
pub struct Counters {
    pub stock: i64,
    pub remaining: i64,
    pub pending: i64,
    pub completed: i64,
}

pub fn check(
    plans: &[Plan],
    attempts: &[Attempt],
    counters: &HashMap<i64, Counters>,
) -> Vec<String> {
    let mut violations = one_order_per_key(attempts);
    violations.extend(sold_as_counted(plans, attempts, counters));
    violations
}

/// One order per (buyer, key), and no order id shared by two of them.
pub fn one_order_per_key(attempts: &[Attempt]) -> Vec<String> {
    let mut violations = Vec::new();
    let mut by_key: HashMap<(usize, &str, i64), (usize, HashSet<&str>)> = HashMap::new();
    for a in attempts {
        let entry = by_key
            .entry((a.buyer, a.key.as_str(), a.product))
            .or_default();
        if a.outcome == Outcome::Created {
            entry.0 += 1;
        }
        if matches!(a.outcome, Outcome::Created | Outcome::Replayed) {
            match &a.order_id {
                Some(id) => {
                    entry.1.insert(id);
                }
                None => violations.push(format!(
                    "buyer {} got {:?} without an order id",
                    a.buyer, a.outcome
                )),
            }
        }
    }
    let mut owner: HashMap<&str, (usize, &str)> = HashMap::new();
    for ((buyer, key, _), (created, ids)) in &by_key {
        if *created > 1 {
            violations.push(format!(
                "buyer {buyer} key {key:?} was answered 201 {created} times"
            ));
        }
        if ids.len() > 1 {
            violations.push(format!(
                "buyer {buyer} key {key:?} got {} different order ids",
                ids.len()
            ));
        }
        for id in ids {
            if let Some((b, k)) = owner.insert(id, (*buyer, key)) {
                if (b, k) != (*buyer, *key) {
                    violations.push(format!("order id {id} appears for two buyers or keys"));
                }
            }
        }
    }
    violations
}

/// Each sale sold what its buyers were accepted for, no more than its stock, and every
/// accepted order completed.
fn sold_as_counted(
    plans: &[Plan],
    attempts: &[Attempt],
    counters: &HashMap<i64, Counters>,
) -> Vec<String> {
    let mut violations = Vec::new();
    for plan in plans {
        let mine: Vec<&Attempt> = attempts
            .iter()
            .filter(|a| a.product == plan.product)
            .collect();
        let sold = mine
            .iter()
            .filter(|a| a.outcome == Outcome::Created)
            .count() as i64;
        if sold > plan.stock {
            violations.push(format!(
                "product {}: {sold} orders accepted, stock {}",
                plan.product, plan.stock
            ));
        }
        // With every request answered, exactly what the buyers could buy is sold.
        let undecided = mine.iter().any(|a| {
            matches!(
                a.outcome,
                Outcome::RateLimited | Outcome::Unavailable | Outcome::Error | Outcome::Status(_)
            )
        });
        if !undecided {
            let mut keys: HashMap<usize, HashSet<&str>> = HashMap::new();
            for a in &mine {
                keys.entry(a.buyer).or_default().insert(&a.key);
            }
            let capacity: i64 = keys
                .values()
                .map(|k| (k.len() as i64).min(plan.per_user_limit))
                .sum();
            let expected = plan.stock.min(capacity);
            if sold != expected {
                violations.push(format!(
                    "product {}: {sold} orders accepted, expected min(stock {}, what buyers could buy {capacity}) = {expected}",
                    plan.product, plan.stock
                ));
            }
        }
        match counters.get(&plan.product) {
            None => violations.push(format!("product {}: no admin counters", plan.product)),
            Some(c) => {
                if c.stock - c.remaining != sold {
                    violations.push(format!(
                        "product {}: the server sold {} units, buyers were accepted for {sold}",
                        plan.product,
                        c.stock - c.remaining
                    ));
                }
                if c.completed != sold || c.pending != 0 {
                    violations.push(format!(
                        "product {}: {} completed and {} pending, {sold} accepted",
                        plan.product, c.completed, c.pending
                    ));
                }
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(buyer: usize, key: &str, outcome: Outcome, id: Option<&str>) -> Attempt {
        Attempt {
            buyer,
            key: key.into(),
            product: 1,
            outcome,
            order_id: id.map(str::to_string),
        }
    }

    fn plan() -> Vec<Plan> {
        vec![Plan {
            product: 1,
            stock: 2,
            per_user_limit: 1,
        }]
    }

    fn counters(sold: i64, completed: i64) -> HashMap<i64, Counters> {
        [(
            1,
            Counters {
                stock: 2,
                remaining: 2 - sold,
                pending: 0,
                completed,
            },
        )]
        .into()
    }

    fn good_run() -> Vec<Attempt> {
        vec![
            attempt(0, "k", Outcome::Created, Some("a")),
            attempt(0, "k", Outcome::Replayed, Some("a")),
            attempt(1, "k", Outcome::Created, Some("b")),
            attempt(2, "k", Outcome::Conflict("out_of_stock".into()), None),
        ]
    }

    #[test]
    fn a_correct_sale_passes() {
        assert_eq!(
            check(&plan(), &good_run(), &counters(2, 2)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn overselling_is_caught() {
        let mut run = good_run();
        run[3] = attempt(2, "k", Outcome::Created, Some("c"));
        let v = check(&plan(), &run, &counters(2, 2));
        assert!(
            v.iter().any(|v| v.contains("3 orders accepted, stock 2")),
            "{v:?}"
        );
    }

    #[test]
    fn two_orders_for_one_key_are_caught() {
        let mut run = good_run();
        run[1] = attempt(0, "k", Outcome::Replayed, Some("z"));
        let v = check(&plan(), &run, &counters(2, 2));
        assert!(
            v.iter().any(|v| v.contains("2 different order ids")),
            "{v:?}"
        );
    }

    #[test]
    fn a_shared_order_id_is_caught() {
        let mut run = good_run();
        run[2] = attempt(1, "k", Outcome::Created, Some("a"));
        let v = check(&plan(), &run, &counters(2, 2));
        assert!(
            v.iter().any(|v| v.contains("order id a appears for two")),
            "{v:?}"
        );
    }

    #[test]
    fn underselling_with_every_request_answered_is_caught() {
        let mut run = good_run();
        run[2] = attempt(1, "k", Outcome::Conflict("out_of_stock".into()), None);
        let v = check(&plan(), &run, &counters(1, 1));
        assert!(v.iter().any(|v| v.contains("expected min")), "{v:?}");
    }

    #[test]
    fn disagreeing_counters_are_caught() {
        let v = check(&plan(), &good_run(), &counters(2, 1));
        assert!(v.iter().any(|v| v.contains("1 completed")), "{v:?}");
        let v = check(&plan(), &good_run(), &counters(1, 2));
        assert!(
            v.iter().any(|v| v.contains("the server sold 1 units")),
            "{v:?}"
        );
    }

    #[test]
    fn unanswered_requests_relax_only_the_exact_count() {
        let mut run = good_run();
        run[2] = attempt(1, "k", Outcome::Unavailable, None);
        assert_eq!(check(&plan(), &run, &counters(1, 1)), Vec::<String>::new());
    }
}
