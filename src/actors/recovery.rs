//! Rebuilding an inventory partition that lost its state (a Redis restart without
//! persistence, a flush) or part of it (a promoted replica that lagged, a server back
//! without its last writes after a host crash). The partition finds out itself: every
//! script refuses to run without the partition's epoch marker, the actor fails, and its
//! restart creates the marker as `rebuilding` when the catalog holds sales of the
//! partition; a connect that finds the server behind what the actor saw acknowledged
//! turns it `rebuilding` too ([`super::inventory::redis::LastWrite`]). From then on
//! its sales answer `503` while claims of orders accepted before the loss are honoured
//! and recorded. The reconciler finishes the job here once no order from before the
//! loss is on its way to a shard (held by a pod's consumers between claim and commit,
//! [`super::claims`], or waiting in the queue): each sale comes back from the catalog's definition and the completed
//! orders in the shards, merged with the orders claimed meanwhile; what was sold is
//! kept, buyers' units and the orders' idempotency keys come back.
//!
//! The reconciler also finishes cancellations whose restock was cut off: the shard
//! keeps a row for each until the partition has the units back.

use std::sync::Arc;

use futures_util::future::join_all;
use ractor::ActorProcessingErr;

use super::claims::HeldClaim;
use super::directory::{CatalogSlot, Directory};
use super::inventory::redis::HasSales;
use super::inventory::{PartitionState, RebuildSale, Recovery, Restock, Restocked, NOT_REBUILDING};
use super::queue::QueueDepth;
use super::registry::ListPods;
use crate::config::Role;
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
    /// It waits before it rebuilds.
    Waiting(Wait),
    /// It was rebuilt: sales and the units they had sold.
    Rebuilt { sales: usize, sold: i64 },
}

/// What a rebuild waits for.
#[derive(Debug, PartialEq, Eq)]
pub enum Wait {
    /// A pod holds orders claimed before the loss that its shards do not have yet.
    ClaimsHeld { pod: String },
    /// A pod has not said since the loss what it holds, and may still hold deliveries.
    PodUnheard { pod: String },
    /// Orders wait in the queue to be claimed (and so counted).
    Queued(u64),
}

impl Wait {
    /// A label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Wait::ClaimsHeld { .. } => "claims_held",
            Wait::PodUnheard { .. } => "pod_unheard",
            Wait::Queued(_) => "queued",
        }
    }
}

/// Whether a pod may still commit an order it claimed from partition `index` before
/// the loss noticed at `since` (the era of the claims the rebuild counts itself).
/// Every pod that persists orders must have heartbeated since then without such a
/// claim, or be silent for so long that the broker has taken its deliveries back
/// (redelivered, they are claimed and counted meanwhile).
async fn claims_held(dir: &Directory, index: usize, since: i64) -> Result<Option<Wait>, CallError> {
    let Some(fleet) = &dir.fleet else {
        return Ok(None);
    };
    let now = now_ms();
    for pod in fleet.registry.call(ListPods).await? {
        if pod.role == Role::Api.as_str() || now - pod.heartbeat_at >= fleet.released_after_ms {
            continue;
        }
        if pod.heartbeat_at <= since + fleet.clock_skew_ms {
            return Ok(Some(Wait::PodUnheard { pod: pod.id }));
        }
        let earlier = |c: &HeldClaim| c.partition == index && c.era != since;
        match &pod.claims {
            Some(claims) if !claims.iter().any(earlier) => {}
            _ => return Ok(Some(Wait::ClaimsHeld { pod: pod.id })),
        }
    }
    Ok(None)
}

/// Rebuilds partition `index` if it lost its state, once no order from before the
/// loss is on its way to a shard: neither held by a pod nor queued.
pub async fn rebuild_if_lost(dir: &Directory, index: usize) -> Result<Outcome, CallError> {
    let slot = &dir.inventory[index];
    let since = match slot.call(Recovery { finish: false }).await? {
        PartitionState::Ready => return Ok(Outcome::Ready),
        PartitionState::Rebuilding { since } => since,
    };
    // Claims first: a delivery a pod gives up goes back to the queue, and is seen there.
    if let Some(wait) = claims_held(dir, index, since).await? {
        return Ok(Outcome::Waiting(wait));
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
        return Ok(Outcome::Waiting(Wait::Queued(queued)));
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
