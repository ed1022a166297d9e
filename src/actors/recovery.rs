//! Rebuilding an inventory partition that lost its state (a Redis restart without
//! persistence, a flush) or part of it (a promoted replica that lagged, a server back
//! without its last writes after a host crash). The partition finds out itself: every
//! script refuses to run without the partition's epoch marker, the actor fails, and its
//! restart creates the marker as `rebuilding` when the catalog holds sales of the
//! partition; a connect that finds the server behind what the actor saw acknowledged
//! turns it `rebuilding` too ([`super::inventory::redis::LastWrite`]). From then on
//! its sales answer `503` while claims of orders accepted before the loss are honoured
//! and recorded. The reconciler finishes the job here once no order from before the
//! loss is on its way to a shard (held by a pod from the moment its consumer read it
//! until the shard committed it, [`super::inflight`], or waiting in the queue): each
//! sale comes back from the catalog's definition and the completed
//! orders in the shards, merged with the orders claimed meanwhile; what was sold is
//! kept, buyers' units and the orders' idempotency keys come back.
//!
//! The reconciler also finishes cancellations whose restock was cut off, and expiries
//! (the payment sweep's first): the shard keeps a row for each until the partition
//! has the units back.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures_util::future::join_all;
use ractor::ActorProcessingErr;

use super::directory::{CatalogSlot, Directory, InventorySlot};
use super::inventory::redis::HasSales;
use super::inventory::{
    PartitionState, RebuildStep, RebuildStopped, Recovery, Restock, Restocked, Step, StepDone,
};
use super::queue::{Publish, QueueDepth};
use super::registry::ListPods;
use crate::config::Role;
use crate::domain::{now_ms, ProductId, SaleDefinition, SoldOrder};
use crate::orders::persist::{Notice, NoticeKind};
use crate::shards::catalog::SaleDefinitions;
use crate::shards::hash::bucket;
use crate::shards::{LapsedNotices, PendingRestocks, RestockDone, SaleOrders};
use crate::supervisors::slot::{CallError, ItemError};

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
    /// A pod holds order messages of the partition that its shards do not have yet.
    Held { pod: String },
    /// A pod has not said since the rebuild's barrier what it holds.
    PodUnheard { pod: String },
    /// Orders wait in the queue to be claimed (and so counted).
    Queued(u64),
    /// Another pod's reconciler is rebuilding the partition.
    Rebuilding,
}

impl Wait {
    /// A label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Wait::Held { .. } => "held",
            Wait::PodUnheard { .. } => "pod_unheard",
            Wait::Queued(_) => "queued",
            Wait::Rebuilding => "other_reconciler",
        }
    }
}

/// Whether every order message of partition `index` has reached its shard (or is
/// claimed, and so counted, while the partition rebuilds): the condition for a
/// rebuild to read the shards.
///
/// `barrier` is a moment, kept between the reconciler's rounds, at which the order
/// queue held nothing ready. A message not in a shard was then held by a pod (from
/// the moment its consumer read it), or by a pod silent for so long that the broker
/// has given what it held back to the queue. So once every pod that is not silent
/// has said after the barrier that it holds nothing of the partition, and the queue
/// still holds nothing ready, no message of the partition is anywhere but in the
/// shards or counted. Anything held, queued, or given back since starts it again.
async fn settled(
    dir: &Directory,
    index: usize,
    barrier: &mut Option<i64>,
) -> Result<Option<Wait>, CallError> {
    let mut wait = None;
    if let Some(fleet) = &dir.fleet {
        let now = now_ms();
        for pod in fleet.registry.call(ListPods).await? {
            if pod.role == Role::Api.as_str() {
                continue;
            }
            let released_at = pod.heartbeat_at + fleet.released_after_ms;
            if released_at <= now {
                // Silent: what it held went back to the queue by `released_at`.
                if barrier.is_some_and(|b| released_at > b) {
                    *barrier = None;
                }
                continue;
            }
            // A heartbeat from ahead of this clock says nothing of when it was written.
            let ahead = pod.heartbeat_at > now + fleet.clock_skew_ms;
            match &pod.in_flight {
                Some(held) if !held.contains(&index) && !ahead => {
                    if barrier.is_none_or(|b| pod.heartbeat_at <= b + fleet.clock_skew_ms) {
                        wait.get_or_insert(Wait::PodUnheard { pod: pod.id });
                    }
                }
                _ if ahead => {
                    wait.get_or_insert(Wait::PodUnheard { pod: pod.id });
                }
                _ => {
                    *barrier = None;
                    return Ok(Some(Wait::Held { pod: pod.id }));
                }
            }
        }
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
        *barrier = None;
        return Ok(Some(Wait::Queued(queued)));
    }
    if dir.fleet.is_some() && barrier.is_none() {
        *barrier = Some(now_ms());
        return Ok(Some(Wait::PodUnheard {
            pod: "every pod, since the barrier".into(),
        }));
    }
    Ok(wait)
}

/// Rebuilds partition `index` if it lost its state, once no order from before the
/// loss is on its way to a shard: neither held by a pod nor queued (`barrier`: see
/// [`settled`]; the caller keeps it between rounds, `None` at first).
pub async fn rebuild_if_lost(
    dir: &Directory,
    index: usize,
    barrier: &mut Barrier,
) -> Result<Outcome, CallError> {
    let slot = &dir.inventory[index];
    let since = match slot.call(Recovery).await? {
        PartitionState::Ready => {
            *barrier = None;
            return Ok(Outcome::Ready);
        }
        PartitionState::Rebuilding { since } => since,
    };
    // A barrier of another loss proves nothing of this one.
    if barrier.is_some_and(|(of, _)| of != since) {
        *barrier = None;
    }
    let mut at = barrier.map(|(_, at)| at);
    let waiting = settled(dir, index, &mut at).await?;
    *barrier = at.map(|at| (since, at));
    if let Some(wait) = waiting {
        return Ok(Outcome::Waiting(wait));
    }
    let rebuild = Rebuild {
        slot,
        owner: dir.rebuild_owner.clone(),
        since,
    };
    if let Err(stopped) = rebuild.step(Step::Own).await? {
        return Ok(stopped.into());
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
                expired_before: i64::MAX,
                product: Some(*product),
            };
            for p in shard.call(unfinished).await? {
                // An expired order's buyer is still told the window lapsed.
                let done = RestockDone {
                    order: p.order,
                    notify: p.expired,
                };
                shard.call(done).await?;
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
        match rebuild.sale(*product, *sale, orders).await? {
            Ok(n) => sold += n,
            Err(stopped) => return Ok(stopped.into()),
        }
    }
    if let Err(stopped) = rebuild.step(Step::Finish).await? {
        return Ok(stopped.into());
    }
    Ok(Outcome::Rebuilt {
        sales: mine.len(),
        sold,
    })
}

/// The loss a barrier was set for, and the barrier ([`settled`]).
pub type Barrier = Option<(i64, i64)>;

impl From<RebuildStopped> for Outcome {
    fn from(stopped: RebuildStopped) -> Self {
        match stopped {
            // Another api pod's reconciler finished first; the sales are open again.
            RebuildStopped::Whole => Outcome::Ready,
            RebuildStopped::Taken => Outcome::Waiting(Wait::Rebuilding),
        }
    }
}

/// Orders (and buyers) per rebuild step: each step is one script, so none holds the
/// partition's Redis server for long, whatever the sale's size.
pub const REBUILD_CHUNK: usize = 1_000;

/// One reconciler's rebuild of a partition's loss at `since`.
pub struct Rebuild<'a> {
    pub slot: &'a InventorySlot,
    pub owner: String,
    pub since: i64,
}

impl Rebuild<'_> {
    pub async fn step(&self, step: Step) -> Result<Result<StepDone, RebuildStopped>, CallError> {
        let (owner, since) = (self.owner.clone(), self.since);
        self.slot.call(RebuildStep { owner, since, step }).await
    }

    /// Rebuilds one sale from its persisted orders, a chunk at a time (the rebuild
    /// must be owned already: [`Step::Own`]). Answers the units the sale has sold, or
    /// why the rebuild stopped.
    pub async fn sale(
        &self,
        product: ProductId,
        sale: SaleDefinition,
        orders: Vec<SoldOrder>,
    ) -> Result<Result<i64, RebuildStopped>, CallError> {
        let mut returned = HashSet::new();
        // At least one chunk, so that the sale is staged even without orders.
        let mut chunks: Vec<&[SoldOrder]> = orders.chunks(REBUILD_CHUNK).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for chunk in chunks {
            let orders = chunk.to_vec();
            match self
                .step(Step::Orders {
                    product,
                    sale,
                    orders,
                })
                .await?
            {
                Ok(StepDone::Returned(orders)) => returned.extend(orders),
                Ok(other) => return Err(unexpected(other)),
                Err(stopped) => return Ok(Err(stopped)),
            }
        }
        let mut per_buyer: HashMap<&str, i64> = HashMap::new();
        let mut sold = 0;
        let counted = orders
            .iter()
            .filter(|o| !o.cancelled && !returned.contains(o.order_id.as_str()));
        for o in counted {
            *per_buyer.entry(o.user_id.as_str()).or_default() += o.quantity.units();
            sold += o.quantity.units();
        }
        let buyers: Vec<(String, i64)> = per_buyer
            .into_iter()
            .map(|(u, n)| (u.to_string(), n))
            .collect();
        for chunk in buyers.chunks(REBUILD_CHUNK) {
            let buyers = chunk.to_vec();
            if let Err(stopped) = self
                .step(Step::Buyers {
                    product,
                    sale,
                    buyers,
                })
                .await?
            {
                return Ok(Err(stopped));
            }
        }
        match self
            .step(Step::Sale {
                product,
                sale,
                sold,
            })
            .await?
        {
            Ok(StepDone::Sold(n)) => Ok(Ok(n)),
            Ok(other) => Err(unexpected(other)),
            Err(stopped) => Ok(Err(stopped)),
        }
    }
}

fn unexpected(done: StepDone) -> CallError {
    CallError::Failed(ItemError::new(format!(
        "unexpected rebuild answer {done:?}"
    )))
}

/// How long a cancellation's own request has to give its units back before the
/// reconciler does it.
const RESTOCK_GRACE_MS: i64 = 5_000;

/// Which restocks a [`finish_restocks`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Expired orders' (nobody else returns them), and cancellations' whose request
    /// has had its grace period: the reconciler's round.
    All,
    /// Expired orders' only: the payment sweep's round.
    Expired,
}

/// Gives back the units of cancelled and expired orders whose shard has them due (the
/// partition takes them once per order), for the sales of the partitions in `ready`;
/// answers how many orders it finished. A restock cut off anywhere is done again by a
/// later round; a partition that is away leaves its restocks to a later round, not the
/// others'.
pub async fn finish_restocks(
    dir: &Directory,
    ready: &[bool],
    which: Finish,
) -> Result<usize, CallError> {
    let mut finished = 0;
    for shard in &dir.shards {
        let unfinished = PendingRestocks {
            before: match which {
                Finish::All => now_ms() - RESTOCK_GRACE_MS,
                Finish::Expired => i64::MIN,
            },
            expired_before: i64::MAX,
            product: None,
        };
        let mut away = vec![false; ready.len()];
        for p in shard.call(unfinished).await? {
            let partition = dir.partition_index(p.product);
            if !ready[partition] || away[partition] {
                continue;
            }
            let restock = Restock {
                product: p.product,
                order: p.order.clone(),
                user: p.user.clone(),
                quantity: p.quantity,
            };
            match dir.product_partition(p.product).call(restock).await {
                // Its rebuild counts the order's units as returned.
                Ok(Restocked::Rebuilding) => continue,
                Ok(_) => {}
                Err(CallError::Unavailable | CallError::Overloaded) => {
                    away[partition] = true;
                    continue;
                }
                Err(e) => return Err(e),
            }
            // The units are back; an expired order's buyer is told next.
            let done = RestockDone {
                order: p.order,
                notify: p.expired,
            };
            shard.call(done).await?;
            finished += 1;
        }
    }
    Ok(finished)
}

/// Tells the buyers of expired orders whose units are back that their payment window
/// lapsed (the notification queue; at least once); answers how many were queued. A
/// queue that refuses one stops the round: the rest wait for the next, and nothing
/// else waits for them.
pub async fn tell_lapsed(dir: &Directory) -> Result<usize, CallError> {
    if dir.publishers.is_empty() {
        return Ok(0); // a pod without publishers does not sweep
    }
    let mut told = 0;
    for shard in &dir.shards {
        let notices = shard.call(LapsedNotices).await?;
        if notices.is_empty() {
            continue;
        }
        let payload: Vec<Notice> = notices
            .iter()
            .map(|p| Notice {
                kind: NoticeKind::PaymentLapsed,
                order_id: p.order.clone(),
                user_id: p.user.clone(),
                product_id: p.product,
                quantity: p.quantity,
                created_at: None,
                pay_by: None,
                amount_cents: None,
                traceparent: None,
            })
            .collect();
        // One message for the shard's notices: the consumer takes each element alone.
        let publish = Publish {
            queue: dir.notifications_queue.clone(),
            payload: serde_json::to_vec(&payload).expect("notices serialise"),
            traceparent: None,
        };
        if !dir.publisher().call(publish).await? {
            return Ok(told);
        }
        for p in notices {
            let sent = RestockDone {
                order: p.order,
                notify: false,
            };
            shard.call(sent).await?;
            told += 1;
        }
    }
    Ok(told)
}
