//! The reconciler: every few seconds it asks each inventory partition to release the
//! reservations whose order was never published (the process died between reserving
//! and publishing), so no stock is held for ever; and it rebuilds a partition that
//! lost its state ([`super::recovery`]).

use std::sync::Arc;

use ractor::ActorProcessingErr;

use super::directory::Directory;
use super::inventory::{ReleaseStale, MOST_RELEASED};
use super::recovery::{finish_restocks, rebuild_if_lost, Barrier, Finish, Outcome};
use crate::domain::now_ms;
use crate::supervisors::slot::Wake;
use crate::supervisors::worker::{Backend, Batch, Connect, Tick};

pub struct ReconcilerConnect {
    pub directory: Arc<Directory>,
}

pub struct Reconciler {
    directory: Arc<Directory>,
    /// Per partition, the barrier its rebuild waits past ([`super::recovery`]).
    barriers: Vec<Barrier>,
    /// Per partition, what its rebuild waited for at the last round.
    waits: Vec<Option<&'static str>>,
}

#[ractor::async_trait]
impl Connect for ReconcilerConnect {
    type Backend = Reconciler;

    async fn connect(&self) -> Result<Reconciler, ActorProcessingErr> {
        Ok(Reconciler {
            directory: self.directory.clone(),
            barriers: vec![None; self.directory.inventory.len()],
            waits: vec![None; self.directory.inventory.len()],
        })
    }
}

#[ractor::async_trait]
impl Backend for Reconciler {
    type Msg = Wake;

    async fn process(&mut self, _wakes: Batch<Self>) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn tick(&mut self) -> Result<Tick, ActorProcessingErr> {
        let mut ready = vec![false; self.directory.inventory.len()];
        let mut waiting = vec![None; self.directory.inventory.len()];
        for (partition, ready) in ready.iter_mut().enumerate() {
            let barrier = &mut self.barriers[partition];
            match rebuild_if_lost(&self.directory, partition, barrier).await {
                Ok(Outcome::Ready) => *ready = true,
                Ok(Outcome::Waiting(wait)) => {
                    let reason = wait.reason();
                    if self.waits[partition] == Some(reason) {
                        tracing::debug!(partition, ?wait, "rebuild still waits");
                    } else {
                        tracing::warn!(
                            partition,
                            ?wait,
                            "rebuild waits for orders from before the loss"
                        );
                    }
                    waiting[partition] = Some(reason);
                }
                Ok(Outcome::Rebuilt { sales, sold }) => {
                    tracing::warn!(
                        partition,
                        sales,
                        sold,
                        "inventory partition rebuilt from the shards; its sales reopen"
                    );
                    metrics::counter!("flashsale_inventory_rebuilds_total", "partition" => partition.to_string())
                        .increment(1);
                    *ready = true;
                }
                Err(e) => tracing::warn!(partition, error = %e, "rebuild check skipped"),
            }
        }
        self.waits.clone_from(&waiting);
        for (partition, wait) in waiting.iter().enumerate() {
            for reason in WAIT_REASONS {
                let now = f64::from(u8::from(*wait == Some(reason)));
                metrics::gauge!("flashsale_inventory_rebuild_waiting", "partition" => partition.to_string(), "reason" => reason)
                    .set(now);
            }
        }
        match finish_restocks(&self.directory, &ready, Finish::All).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                orders = n,
                "finished the restocks of cancellations cut off by a failure"
            ),
            Err(e) => tracing::debug!(error = %e, "restocks skipped"),
        }
        for (partition, slot) in self.directory.inventory.iter().enumerate() {
            match release_stale(slot).await {
                Ok(n) if n > 0 => {
                    tracing::warn!(
                        partition,
                        released = n,
                        "released reservations that were never published"
                    );
                    metrics::counter!("flashsale_reservations_released_total", "partition" => partition.to_string())
                        .increment(n as u64);
                }
                Ok(_) => {}
                // The partition is restarting; the next sweep catches up.
                Err(e) => tracing::debug!(partition, error = %e, "reconcile skipped"),
            }
        }
        Ok(Tick::idle())
    }
}

/// Why a rebuild may wait ([`super::recovery::Wait::reason`]).
const WAIT_REASONS: [&str; 4] = ["held", "pod_unheard", "queued", "other_reconciler"];

/// Releases a partition's stale reservations, a bounded call at a time (a pile of them
/// after a crash never makes one long script); answers how many.
async fn release_stale(
    slot: &crate::actors::directory::InventorySlot,
) -> Result<i64, crate::supervisors::slot::CallError> {
    let mut released = 0;
    // Bounded too: a sweep never runs for ever behind a flood of new reservations.
    for _ in 0..100 {
        let n = slot.call(ReleaseStale { now_ms: now_ms() }).await?;
        released += n;
        if n < MOST_RELEASED {
            break;
        }
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ractor::Actor;

    use super::*;
    use crate::actors::inventory::local::LocalInventoryConnect;
    use crate::actors::inventory::{
        Counters, LoadSale, MarkPublished, ReserveOutcome, ReserveRequest,
    };
    use crate::domain::{IdempotencyKey, OrderId, ProductId, Quantity, SaleDefinition, UserId};
    use crate::supervisors::slot::Slot;
    use crate::supervisors::stats::{Kind, NodeStats};
    use crate::supervisors::worker::Worker;

    fn node(name: &str) -> Arc<NodeStats> {
        NodeStats::new(
            name,
            format!("{name}-{}", uuid::Uuid::new_v4()),
            Kind::Actor,
        )
    }

    /// An embedded inventory partition and a reconciler sweeping it every 20 ms, with
    /// reservations counted stale after 200 ms.
    #[tokio::test]
    async fn unpublished_reservations_are_released_and_published_ones_kept() {
        let dir = std::env::temp_dir().join(format!("fs_reconciler_{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let timeout = Duration::from_secs(5);
        let partition = Slot::new(node("inventory-0"), 100, timeout);
        let inventory = Worker {
            connect: Arc::new(LocalInventoryConnect {
                path: dir.join("inventory-0.db"),
                stale_ms: 200,
                idempotency_ttl_secs: 3600,
            }),
            slot: partition.clone(),
            max_batch: 64,
            tick: None,
        };
        let (inv_actor, inv_done) = Actor::spawn(None, inventory, ()).await.unwrap();
        let directory = Arc::new(Directory::new(
            Slot::new(node("catalog"), 1, timeout),
            Vec::new(),
            vec![partition.clone()],
            Vec::new(),
            "orders".into(),
            "notifications".into(),
        ));

        let product = ProductId::from_db(7);
        let sale = SaleDefinition {
            stock: 5,
            per_user_limit: 5,
            starts_at: None,
            ends_at: None,
            payment_window: None,
            unit_price_cents: 100,
        };
        partition
            .call(LoadSale { product, sale })
            .await
            .unwrap()
            .unwrap();
        let reserve = |key: &str| ReserveRequest {
            product,
            user: UserId::new_random(),
            key: IdempotencyKey::parse(key).unwrap(),
            quantity: Quantity::ONE,
            order: OrderId::generate(),
            now_ms: now_ms(),
        };
        let (lost, kept) = (reserve("lost"), reserve("kept"));
        let kept_order = kept.order.clone();
        for r in [lost, kept] {
            assert!(matches!(
                partition.call(r).await.unwrap(),
                ReserveOutcome::Created(..)
            ));
        }
        partition
            .call(MarkPublished {
                product,
                order: kept_order,
            })
            .await
            .unwrap();

        let reconciler = Worker {
            connect: Arc::new(ReconcilerConnect { directory }),
            slot: Slot::<Wake>::new(node("reconciler"), 1, timeout),
            max_batch: 1,
            tick: Some(Duration::from_millis(20)),
        };
        let (rec_actor, rec_done) = Actor::spawn(None, reconciler, ()).await.unwrap();

        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let counters = loop {
            let c = partition.call(Counters { product }).await.unwrap().unwrap();
            if c.remaining == 4 || std::time::Instant::now() > deadline {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(
            (counters.remaining, counters.pending),
            (4, 1),
            "the unpublished unit is back, the published one still held"
        );

        rec_actor.stop(None);
        inv_actor.stop(None);
        let _ = (rec_done.await, inv_done.await);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
