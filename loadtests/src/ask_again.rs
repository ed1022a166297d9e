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
    matches!(outcome, Outcome::Unavailable | Outcome::Error)
}

/// Asks each open request again (at most `in_flight` at once, each backing off from
/// 1 s to 8 s) until `deadline`, and writes what it learns into `attempts`.
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
                let mut pause = Duration::from_secs(1);
                loop {
                    let (outcome, order) = target.buy(token, product, &key).await;
                    let waiting = open(&outcome) || outcome == Outcome::RateLimited;
                    if !waiting || Instant::now() + pause > deadline {
                        return (i, outcome, order);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(8));
                }
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
    let mut created_keys: HashSet<(usize, String, i64)> = attempts
        .iter()
        .filter(|a| a.outcome == Outcome::Created)
        .map(|a| (a.buyer, a.key.clone(), a.product))
        .collect();
    let mut found = AskedAgain {
        requests: answers.len() as u64,
        ..AskedAgain::default()
    };
    for (i, outcome, order) in answers {
        let a = &mut attempts[i];
        let key = (a.buyer, a.key.clone(), a.product);
        match outcome {
            Outcome::Created => found.created += 1,
            Outcome::Replayed => found.found += 1,
            Outcome::Unavailable | Outcome::Error | Outcome::RateLimited => {
                found.undecided += 1;
                continue;
            }
            _ => found.refused += 1,
        }
        let made = matches!(outcome, Outcome::Created | Outcome::Replayed);
        a.outcome = if made && created_keys.insert(key) {
            Outcome::Created
        } else {
            outcome
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
        ];
        let id = |s: &str| Some(s.to_string());
        let answers = vec![
            (0, Outcome::Replayed, id("A")),
            (2, Outcome::Replayed, id("B")),
            (3, Outcome::Created, id("C")),
            (4, Outcome::Conflict("out_of_stock".into()), None),
            (5, Outcome::RateLimited, None),
        ];
        let found = resolve(&mut attempts, answers);
        assert_eq!(
            found,
            AskedAgain {
                requests: 5,
                found: 2,
                created: 1,
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
            ]
        );
        assert_eq!(attempts[0].order_id.as_deref(), Some("A"));
    }
}
