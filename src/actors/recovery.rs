//! Rebuilding an inventory partition that lost its state (a Redis restart without
//! persistence, a flush) or part of it (a promoted replica that lagged, a server back
//! without its last writes after a host crash). The partition finds out itself: every
//! script refuses to run without the partition's epoch marker, the actor fails, and its
//! restart creates the marker as `rebuilding` when the catalog holds sales of the
//! partition; a connect that finds the server behind what the actor saw acknowledged
//! turns it `rebuilding` too ([`super::inventory::redis::LastWrite`]). From then on
//! its sales answer `503` while claims of orders accepted before the loss are honoured
//! and recorded. The reconciler finishes the job here once the order queue has
//! drained: each sale comes back from the catalog's definition and the completed
//! orders in the shards, merged with the orders claimed meanwhile; what was sold is
//! kept, buyers' units and the orders' idempotency keys come back.
//!
//! The reconciler also finishes cancellations whose restock was cut off: the shard
//! keeps a row for each until the partition has the units back.

use std::sync::Arc;

use futures_util::future::join_all;
use ractor::ActorProcessingErr;

use super::directory::{CatalogSlot, Directory};
use super::inventory::redis::HasSales;
use super::inventory::{RebuildSale, Recovery, Restock, Restocked, NOT_REBUILDING};
use super::queue::QueueDepth;
use crate::domain::now_ms;
use crate::shards::catalog::SaleDefinitions;
use crate::shards::hash::bucket;
use crate::shards::{PendingRestocks, RestockDone, SaleOrders};
use crate::supervisors::slot::CallError;

/// Whether the catalog holds a sale of one partition.
pub struct CatalogSales {
    pub catalog: Arc<CatalogSlot>,
    pub partition: usize,
    pub partitions: usize,
}

#[ractor::async_trait]
impl HasSales for CatalogSales {
    async fn has_sales(&self) -> Result<bool, ActorProcessingErr> {
        let sales = self.catalog.call(SaleDefinitions).await?;
        Ok(sales
            .iter()
            .any(|(p, _)| bucket(&p.to_string(), self.partitions) == self.partition))
    }
}

/// What one look at a partition found.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its state is whole.
    Ready,
    /// It waits for orders still in the queue to be claimed first.
    Waiting { queued: u64 },
    /// It was rebuilt: sales and the units they had sold.
    Rebuilt { sales: usize, sold: i64 },
}

/// Rebuilds partition `index` if it lost its state and the order queue has drained.
pub async fn rebuild_if_lost(dir: &Directory, index: usize) -> Result<Outcome, CallError> {
    let slot = &dir.inventory[index];
    if slot.call(Recovery { finish: false }).await? == super::inventory::PartitionState::Ready {
        return Ok(Outcome::Ready);
    }
    // Orders in the queue are not in the shards yet: they are counted as they are
    // claimed, and the sale reopens only once none is left waiting.
    let queued = dir
        .publisher()
        .call(QueueDepth {
            queue: dir.orders_queue.clone(),
        })
        .await?;
    if queued > 0 {
        return Ok(Outcome::Waiting { queued });
    }
    let sales = dir.catalog.call(SaleDefinitions).await?;
    let mine: Vec<_> = sales
        .into_iter()
        .filter(|(p, _)| dir.partition_index(*p) == index)
        .collect();
    let mut sold = 0;
    for (product, sale) in &mine {
        // A cancelled order is not counted as sold: units a cancellation had yet to
        // give back are in the rebuilt sale already.
        for shard in &dir.shards {
            let unfinished = PendingRestocks {
                before: i64::MAX,
                product: Some(*product),
            };
            for p in shard.call(unfinished).await? {
                shard.call(RestockDone { order: p.order }).await?;
            }
        }
        let per_shard = join_all(
            dir.shards
                .iter()
                .map(|s| s.call(SaleOrders { product: *product })),
        )
        .await;
        let mut orders = Vec::new();
        for part in per_shard {
            orders.extend(part?);
        }
        let rebuild = RebuildSale {
            product: *product,
            sale: *sale,
            orders,
        };
        match slot.call(rebuild).await? {
            // Another api pod's reconciler finished first; the sales are open again.
            NOT_REBUILDING => return Ok(Outcome::Ready),
            n => sold += n,
        }
    }
    slot.call(Recovery { finish: true }).await?;
    Ok(Outcome::Rebuilt {
        sales: mine.len(),
        sold,
    })
}

/// How long a cancellation's own request has to give its units back before the
/// reconciler does it.
const RESTOCK_GRACE_MS: i64 = 5_000;

/// Gives back the units of cancellations whose request failed after the shard had
/// cancelled the order (the partition takes them once per order), for the sales of the
/// partitions in `ready`; answers how many orders it finished.
pub async fn finish_restocks(dir: &Directory, ready: &[bool]) -> Result<usize, CallError> {
    let mut finished = 0;
    for shard in &dir.shards {
        let unfinished = PendingRestocks {
            before: now_ms() - RESTOCK_GRACE_MS,
            product: None,
        };
        for p in shard.call(unfinished).await? {
            if !ready[dir.partition_index(p.product)] {
                continue;
            }
            let restock = Restock {
                product: p.product,
                order: p.order.clone(),
                user: p.user,
                quantity: p.quantity,
            };
            if dir.product_partition(p.product).call(restock).await? == Restocked::Rebuilding {
                continue; // its rebuild counts the order's units as returned
            }
            shard.call(RestockDone { order: p.order }).await?;
            finished += 1;
        }
    }
    Ok(finished)
}
