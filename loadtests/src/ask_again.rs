//! A request answered `503` (or not at all) leaves its order's fate open: the server may
//! have queued the order before the answer was lost, and a buyer's retry with the same
//! `Idempotency-Key` finds it. After the run, each such request is asked again with its
//! key, as a buyer's app retries, until it is answered otherwise or the run's deadline
//! passes, so that the invariants count the orders those requests made.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;

use crate::invariants::Attempt;
use crate::stats::Outcome;
use crate::Target;

/// What asking again found.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AskedAgain {
    /// Requests answered `503` or not at all.
    pub requests: u64,
    /// Their order existed (`200`: the first request had made it).
    pub found: u64,
    /// No order existed, and asking again made one (`201`).
    pub created: u64,
    /// Asking again was refused (`409`, or another final answer).
    pub refused: u64,
    /// Still `503`, `429` or unanswered at the deadline.
    pub undecided: u64,
}

/// Whether an answer leaves the order's fate open.
fn open(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Unavailable | Outcome::Error => true,
        Outcome::Status(status) => *status >= 500,
        _ => false,
    }
}

/// Asks each open request again (at most `in_flight` at once, each backing off from
/// 1 s to 8 s) until `deadline`, and writes what it learns into `attempts`. No request
/// is sent, and none is waited for, past the deadline.
pub(crate) async fn ask_again(
    target: &Target,
    tokens: &[String],
    attempts: &mut [Attempt],
    in_flight: usize,
    deadline: Instant,
) -> AskedAgain {
    let asked: Vec<usize> = (0..attempts.len())
        .filter(|&i| open(&attempts[i].outcome))
        .collect();
    let answers: Vec<(usize, Outcome, Option<String>)> =
        futures_util::stream::iter(asked.iter().map(|&i| {
            let a = &attempts[i];
            let (token, product, key) = (&tokens[a.buyer], a.product, a.key.clone());
            async move {
                let deadline = tokio::time::Instant::from_std(deadline);
                let mut pause = Duration::from_secs(1);
                let mut last = (Outcome::Error, None);
                while tokio::time::Instant::now() < deadline {
                    let asked = tokio::time::timeout_at(deadline, target.buy(token, product, &key));
                    let Ok((outcome, order)) = asked.await else {
                        break;
                    };
                    if !open(&outcome) && outcome != Outcome::RateLimited {
                        return (i, outcome, order);
                    }
                    last = (outcome, order);
                    tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + pause))
                        .await;
                    pause = (pause * 2).min(Duration::from_secs(8));
                }
                (i, last.0, last.1)
            }
        }))
        .buffer_unordered(in_flight.max(1))
        .collect()
        .await;
    resolve(attempts, answers)
}

/// Writes the answers into the attempts they were asked for. A `200` names the order
/// the first request made, which counts as that key's `201` unless another request
/// with the key was already answered `201`.
pub fn resolve(
    attempts: &mut [Attempt],
    mut answers: Vec<(usize, Outcome, Option<String>)>,
) -> AskedAgain {
    answers.sort_by_key(|(i, ..)| *i);
    let key = |a: &Attempt| (a.buyer, a.key.clone(), a.product);
    // The keys answered 201, first or on asking again: a 200 for one of them names
    // that order again.
    let mut created_keys: HashSet<(usize, String, i64)> = attempts
        .iter()
        .filter(|a| a.outcome == Outcome::Created)
        .map(key)
        .chain(
            answers
                .iter()
                .filter(|(_, outcome, _)| *outcome == Outcome::Created)
                .map(|(i, ..)| key(&attempts[*i])),
        )
        .collect();
    let mut found = AskedAgain {
        requests: answers.len() as u64,
        ..AskedAgain::default()
    };
    for (i, outcome, order) in answers {
        let a = &mut attempts[i];
        match &outcome {
            Outcome::Created => found.created += 1,
            Outcome::Replayed => found.found += 1,
            o if open(o) || *o == Outcome::RateLimited => {
                found.undecided += 1;
                continue;
            }
            _ => found.refused += 1,
        }
        a.outcome = match outcome {
            // The order the first request made: the key's 201, unless another
            // request with the key has it.
            Outcome::Replayed if created_keys.insert(key(a)) => Outcome::Created,
            other => other,
        };
        a.order_id = order;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(key: &str, outcome: Outcome) -> Attempt {
        Attempt {
            buyer: 0,
            key: key.into(),
            product: 1,
            outcome,
            order_id: None,
        }
    }

    #[test]
    fn an_order_found_again_counts_once_for_its_key() {
        let mut attempts = vec![
            attempt("a", Outcome::Unavailable),
            attempt("b", Outcome::Created),
            attempt("b", Outcome::Unavailable),
            attempt("c", Outcome::Error),
            attempt("d", Outcome::Unavailable),
            attempt("e", Outcome::Unavailable),
            attempt("f", Outcome::Unavailable),
            attempt("f", Outcome::Unavailable),
        ];
        let id = |s: &str| Some(s.to_string());
        let answers = vec![
            (0, Outcome::Replayed, id("A")),
            (2, Outcome::Replayed, id("B")),
            (3, Outcome::Created, id("C")),
            (4, Outcome::Conflict("out_of_stock".into()), None),
            (5, Outcome::RateLimited, None),
            // Both asked again at once: one made the order, the other named it.
            (6, Outcome::Replayed, id("F")),
            (7, Outcome::Created, id("F")),
        ];
        let found = resolve(&mut attempts, answers);
        assert_eq!(
            found,
            AskedAgain {
                requests: 7,
                found: 3,
                created: 2,
                refused: 1,
                undecided: 1
            }
        );
        let outcomes: Vec<_> = attempts.iter().map(|a| a.outcome.clone()).collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Created,
                Outcome::Created,
                Outcome::Replayed,
                Outcome::Created,
                Outcome::Conflict("out_of_stock".into()),
                Outcome::Unavailable,
                Outcome::Replayed,
                Outcome::Created,
            ]
        );
        assert_eq!(attempts[0].order_id.as_deref(), Some("A"));
    }
}
