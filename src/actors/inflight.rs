//! Orders on their way to a shard. A pod holds each order message it received, by the
//! inventory partition of its orders, from the moment its consumer reads it until the
//! message is acknowledged (the shard has committed its orders). A message given up
//! (a failed batch, a consumer that stops) is held a while longer, until the broker
//! has surely taken it back. The pod registry publishes the partitions held with
//! every heartbeat.
//!
//! A partition that lost its state rebuilds each sale from the shards. An order
//! claimed before the loss whose shard commit lands after the rebuild read the shards
//! would be counted nowhere, and its units sold again; one delivered but not yet
//! claimed when the rebuild finishes would be counted on top of a sale already
//! selling its units. So the rebuild waits until no pod holds a message of the
//! partition ([`super::recovery`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The messages this pod holds, counted by partition.
#[derive(Debug)]
pub struct InFlight {
    held: Mutex<HashMap<usize, usize>>,
    /// When the registry last published what is held (epoch ms), or when this pod
    /// started before it first did.
    published_at: AtomicI64,
}

impl Default for InFlight {
    fn default() -> Self {
        Self {
            held: Mutex::default(),
            published_at: AtomicI64::new(crate::domain::now_ms()),
        }
    }
}

impl InFlight {
    /// Holds a message of `partitions` until the guard is settled or, if dropped
    /// unsettled, for `linger` more.
    pub fn hold(self: &Arc<Self>, mut partitions: Vec<usize>, linger: Duration) -> Held {
        partitions.sort_unstable();
        partitions.dedup();
        let mut held = self.held.lock().expect("not poisoned");
        for p in &partitions {
            *held.entry(*p).or_default() += 1;
        }
        Held {
            owner: self.clone(),
            partitions,
            linger,
            settled: false,
            given_back: None,
        }
    }

    /// The partitions held now, in order.
    pub fn held(&self) -> Vec<usize> {
        let mut held: Vec<usize> = self
            .held
            .lock()
            .expect("not poisoned")
            .keys()
            .copied()
            .collect();
        held.sort_unstable();
        held
    }

    fn release(&self, partitions: &[usize]) {
        let mut held = self.held.lock().expect("not poisoned");
        for p in partitions {
            if let Some(count) = held.get_mut(p) {
                *count -= 1;
                if *count == 0 {
                    held.remove(p);
                }
            }
        }
    }

    /// The registry published what is held at `at_ms`.
    pub fn published(&self, at_ms: i64) {
        self.published_at.store(at_ms, Ordering::Relaxed);
    }

    /// When the registry last published what is held, or this pod started (epoch ms).
    pub fn published_at(&self) -> i64 {
        self.published_at.load(Ordering::Relaxed)
    }
}

/// One message held: [`Held::settle`] once it is acknowledged.
pub struct Held {
    owner: Arc<InFlight>,
    partitions: Vec<usize>,
    linger: Duration,
    settled: bool,
    /// Set once the broker confirmed it has the message back (its channel closed
    /// cleanly): then it is let go at once.
    given_back: Option<Arc<AtomicBool>>,
}

impl Held {
    /// The message was acknowledged: its orders are in their shards.
    pub fn settle(mut self) {
        self.settled = true;
    }

    /// `flag` says when the broker has the message back.
    pub fn given_back_when(mut self, flag: Arc<AtomicBool>) -> Self {
        self.given_back = Some(flag);
        self
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let (owner, partitions) = (self.owner.clone(), std::mem::take(&mut self.partitions));
        let given_back = self.given_back.take();
        let back = move || {
            given_back
                .as_ref()
                .is_some_and(|f| f.load(Ordering::SeqCst))
        };
        if self.settled || back() || self.linger.is_zero() {
            return owner.release(&partitions);
        }
        // Given up: the broker may deliver it again only once it has noticed, which
        // for a connection that died silently takes its heartbeat timeout, unless the
        // consumer hears from the broker that it has the message back.
        let deadline = tokio::time::Instant::now() + self.linger;
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    while !back() && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(GIVEN_BACK_POLL).await;
                    }
                    owner.release(&partitions);
                });
            }
            Err(_) => owner.release(&partitions),
        }
    }
}

/// How often a message given up looks whether the broker has it back.
const GIVEN_BACK_POLL: Duration = Duration::from_millis(50);

/// As the registry keeps them: partition numbers separated by spaces.
pub fn encode(partitions: &[usize]) -> String {
    let words: Vec<String> = partitions.iter().map(usize::to_string).collect();
    words.join(" ")
}

/// Reads what [`encode`] wrote. A word that is no partition is an error: a pod whose
/// report cannot be read holds anything, as far as a rebuild knows.
pub fn decode(text: &str) -> Result<Vec<usize>, String> {
    text.split_whitespace()
        .map(|w| w.parse().map_err(|_| format!("not a partition: {w:?}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_partition_is_held_until_every_message_of_it_is_settled() {
        let in_flight = Arc::new(InFlight::default());
        let first = in_flight.hold(vec![0, 0, 2], Duration::from_secs(60));
        let second = in_flight.hold(vec![0], Duration::from_secs(60));
        assert_eq!(in_flight.held(), vec![0, 2]);
        first.settle();
        assert_eq!(in_flight.held(), vec![0]);
        second.settle();
        assert_eq!(in_flight.held(), Vec::<usize>::new());
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_given_up_is_held_until_the_broker_has_it_back() {
        let in_flight = Arc::new(InFlight::default());
        drop(in_flight.hold(vec![1], Duration::from_secs(30)));
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(in_flight.held(), vec![1]);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(in_flight.held(), Vec::<usize>::new());
        // Unless the broker says it has it back, also after it was given up.
        let back = Arc::new(AtomicBool::new(false));
        let held = in_flight.hold(vec![2], Duration::from_secs(30));
        drop(held.given_back_when(back.clone()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(in_flight.held(), vec![2]);
        back.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(in_flight.held(), Vec::<usize>::new());
    }

    #[test]
    fn held_partitions_read_back_as_written() {
        assert_eq!(encode(&[0, 3]), "0 3");
        assert_eq!(decode("0 3"), Ok(vec![0, 3]));
        assert_eq!(decode(""), Ok(Vec::new()));
        assert!(decode("0 x").is_err());
    }
}
