//! Claims on their way to a shard. An order consumer holds each order it claimed as
//! sold from its inventory partition until the shard has committed it, or until the
//! consumer gives the batch up (its messages then go back to the queue). The pod
//! registry publishes what is held with every heartbeat.
//!
//! A partition that lost its state rebuilds each sale from the shards. An order
//! claimed before the loss whose shard commit lands after the rebuild read the shards
//! would be counted nowhere, and its units sold again. So the rebuild waits until no
//! pod holds a claim of an earlier era of the partition ([`super::recovery`]).
//!
//! An era is the epoch marker's `since`: `0` for a partition that never lost its
//! state, else when the loss was noticed. Claims made while the partition rebuilds
//! carry the new era and are counted by the rebuild itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One kind of claim a pod holds: of partition `partition`, in its era `era`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HeldClaim {
    pub partition: usize,
    pub era: i64,
}

/// The claims this pod's order consumers hold, counted by partition and era.
#[derive(Debug, Default)]
pub struct ClaimsInFlight {
    held: Mutex<HashMap<HeldClaim, usize>>,
}

impl ClaimsInFlight {
    /// Holds `claims` until the guard is dropped.
    pub fn hold(self: &Arc<Self>, claims: impl IntoIterator<Item = HeldClaim>) -> ClaimsGuard {
        let mut mine: HashMap<HeldClaim, usize> = HashMap::new();
        for c in claims {
            *mine.entry(c).or_default() += 1;
        }
        let mut held = self.held.lock().expect("not poisoned");
        for (c, n) in &mine {
            *held.entry(*c).or_default() += n;
        }
        ClaimsGuard {
            owner: self.clone(),
            claims: mine,
        }
    }

    /// What is held now: each (partition, era) once, in order.
    pub fn held(&self) -> Vec<HeldClaim> {
        let mut held: Vec<HeldClaim> = self
            .held
            .lock()
            .expect("not poisoned")
            .keys()
            .copied()
            .collect();
        held.sort();
        held
    }
}

/// Claims held for one batch; dropping it lets them go.
pub struct ClaimsGuard {
    owner: Arc<ClaimsInFlight>,
    claims: HashMap<HeldClaim, usize>,
}

impl Drop for ClaimsGuard {
    fn drop(&mut self) {
        let mut held = self.owner.held.lock().expect("not poisoned");
        for (c, n) in &self.claims {
            if let Some(count) = held.get_mut(c) {
                *count -= n;
                if *count == 0 {
                    held.remove(c);
                }
            }
        }
    }
}

/// As the registry keeps them: `partition@era`, separated by spaces.
pub fn encode(claims: &[HeldClaim]) -> String {
    let words: Vec<String> = claims
        .iter()
        .map(|c| format!("{}@{}", c.partition, c.era))
        .collect();
    words.join(" ")
}

/// Reads what [`encode`] wrote. A word that is no claim is an error: a pod whose
/// claims cannot be read holds anything, as far as a rebuild knows.
pub fn decode(text: &str) -> Result<Vec<HeldClaim>, String> {
    text.split_whitespace()
        .map(|word| {
            let (p, e) = word
                .split_once('@')
                .ok_or_else(|| format!("not a held claim: {word:?}"))?;
            Ok(HeldClaim {
                partition: p
                    .parse()
                    .map_err(|_| format!("not a partition: {word:?}"))?,
                era: e.parse().map_err(|_| format!("not an era: {word:?}"))?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(partition: usize, era: i64) -> HeldClaim {
        HeldClaim { partition, era }
    }

    #[test]
    fn claims_are_held_until_every_batch_holding_them_lets_go() {
        let claims = Arc::new(ClaimsInFlight::default());
        let first = claims.hold([claim(0, 0), claim(0, 0), claim(1, 7)]);
        let second = claims.hold([claim(0, 0)]);
        assert_eq!(claims.held(), vec![claim(0, 0), claim(1, 7)]);
        drop(first);
        assert_eq!(claims.held(), vec![claim(0, 0)]);
        drop(second);
        assert_eq!(claims.held(), Vec::new());
    }

    #[test]
    fn held_claims_read_back_as_written() {
        let held = vec![claim(0, 0), claim(3, 1_765_000_000_123)];
        assert_eq!(encode(&held), "0@0 3@1765000000123");
        assert_eq!(decode(&encode(&held)), Ok(held));
        assert_eq!(decode(""), Ok(Vec::new()));
        assert!(decode("0@x").is_err());
        assert!(decode("7").is_err());
    }
}
