//! The reconciler: every few seconds it asks each inventory partition to release the
//! reservations whose order was never published (the process died between reserving
//! and publishing), so no stock is held for ever.

use std::sync::Arc;

use ractor::ActorProcessingErr;

use crate::actors::inventory::{InventoryOp, InventoryReply};
use crate::actors::worker::{Backend, Batch, Connect, Tick};
use crate::domain::now_ms;
use crate::supervisors::directory::Directory;

pub struct ReconcilerConnect {
    pub directory: Arc<Directory>,
}

pub struct Reconciler {
    directory: Arc<Directory>,
}

#[ractor::async_trait]
impl Connect for ReconcilerConnect {
    type Backend = Reconciler;

    async fn connect(&self) -> Result<Reconciler, ActorProcessingErr> {
        Ok(Reconciler {
            directory: self.directory.clone(),
        })
    }
}

#[ractor::async_trait]
impl Backend for Reconciler {
    type Op = ();
    type Reply = ();

    async fn process(&mut self, batch: Batch<Self>) -> Result<(), ActorProcessingErr> {
        for e in batch {
            e.answer(());
        }
        Ok(())
    }

    async fn tick(&mut self) -> Result<Tick, ActorProcessingErr> {
        for (partition, slot) in self.directory.inventory.iter().enumerate() {
            match slot
                .call(InventoryOp::ReleaseStale { now_ms: now_ms() })
                .await
            {
                Ok(InventoryReply::Released(n)) if n > 0 => {
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
