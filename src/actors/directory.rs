//! The directory: where callers find the current actor of a shard, a partition or a
//! publisher. It holds slots, never actor references, so a restart is invisible to
//! callers except as a short `503`. It knows the protocols' message types, not the
//! actors that serve them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use futures_util::future::join_all;

use super::inflight::InFlight;
use super::inventory::InventoryMsg;
use super::queue::PublisherMsg;
use super::registry::RegistryMsg;
use crate::domain::{ProductId, UserId};
use crate::shards::catalog::CatalogMsg;
use crate::shards::hash::bucket;
use crate::shards::{ProductTotals, ShardMsg, UnitTotals};
use crate::supervisors::slot::{CallError, Slot};

pub type ShardSlot = Slot<ShardMsg>;
pub type InventorySlot = Slot<InventoryMsg>;
pub type CatalogSlot = Slot<CatalogMsg>;
pub type PublisherSlot = Slot<PublisherMsg>;

pub struct Directory {
    pub catalog: Arc<CatalogSlot>,
    pub shards: Vec<Arc<ShardSlot>>,
    pub inventory: Vec<Arc<InventorySlot>>,
    pub publishers: Vec<Arc<PublisherSlot>>,
    pub orders_queue: String,
    pub notifications_queue: String,
    /// The inventory event consumer's last comparison, per product.
    pub drift: DashMap<i64, InventoryDrift>,
    /// The order messages this pod holds until their shards have the orders.
    pub in_flight: Arc<InFlight>,
    /// The fleet: what every pod holds, for a rebuild to wait on.
    pub fleet: Option<Fleet>,
    /// Who this process's reconciler is when it owns a partition's rebuild.
    pub rebuild_owner: String,
    next_publisher: AtomicUsize,
}

/// The pod registry, and how long the fleet's silences mean what.
pub struct Fleet {
    pub registry: Arc<Slot<RegistryMsg>>,
    /// A heartbeat is trusted to be later than a moment on another pod's clock only
    /// when it is this much later (the fleet's clocks are in step to well under it).
    pub clock_skew_ms: i64,
    /// A pod silent for this long holds no message any more: it has stopped taking
    /// orders, and the broker has closed its connection (missed heartbeats) and put
    /// what it held back in the queue.
    pub released_after_ms: i64,
}

/// A product's units as its inventory partition counts them against the orders its
/// shards hold. `drift` is `sold - pending - persisted`: zero when they agree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryDrift {
    pub product_id: i64,
    pub stock: i64,
    pub remaining: i64,
    pub pending: i64,
    pub persisted: i64,
    pub drift: i64,
    pub checked_at: String,
}

impl Directory {
    pub fn new(
        catalog: Arc<CatalogSlot>,
        shards: Vec<Arc<ShardSlot>>,
        inventory: Vec<Arc<InventorySlot>>,
        publishers: Vec<Arc<PublisherSlot>>,
        orders_queue: String,
        notifications_queue: String,
    ) -> Self {
        Self {
            catalog,
            shards,
            inventory,
            publishers,
            orders_queue,
            notifications_queue,
            drift: DashMap::new(),
            in_flight: Arc::new(InFlight::default()),
            fleet: None,
            rebuild_owner: format!("reconciler-{}", uuid::Uuid::new_v4().simple()),
            next_publisher: AtomicUsize::new(0),
        }
    }

    /// Gives the directory the fleet's registry (a rebuild waits on the claims pods hold).
    pub fn with_fleet(mut self, fleet: Fleet) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// The shard of a user: `murmur3(userId) % N`.
    pub fn shard_index(&self, user: &UserId) -> usize {
        bucket(user.as_str(), self.shards.len())
    }

    pub fn shard(&self, user: &UserId) -> &ShardSlot {
        &self.shards[self.shard_index(user)]
    }

    /// The inventory partition of a product: `murmur3(productId) % P`.
    pub fn product_partition(&self, product: ProductId) -> &InventorySlot {
        &self.inventory[self.partition_index(product)]
    }

    pub fn partition_index(&self, product: ProductId) -> usize {
        bucket(&product.to_string(), self.inventory.len())
    }

    /// The partition that keeps a rate-limit window (a user's, a client address's).
    pub fn rate_partition(&self, key: &str) -> &InventorySlot {
        &self.inventory[bucket(key, self.inventory.len())]
    }

    pub fn publisher(&self) -> &PublisherSlot {
        let i = self.next_publisher.fetch_add(1, Ordering::Relaxed);
        &self.publishers[i % self.publishers.len()]
    }

    /// Units of a product completed and cancelled, summed over every shard.
    pub async fn product_totals(&self, product: ProductId) -> Result<UnitTotals, CallError> {
        let replies = join_all(
            self.shards
                .iter()
                .map(|s| s.call(ProductTotals { product })),
        )
        .await;
        let mut sum = UnitTotals::default();
        for r in replies {
            let r = r?;
            sum.completed += r.completed;
            sum.cancelled += r.cancelled;
            sum.awaiting_payment += r.awaiting_payment;
            sum.expired += r.expired;
        }
        Ok(sum)
    }

    /// Whether work told to the actors is still waiting in an inbox (a release, a
    /// cache write): at shutdown the tree stops only once it has been done.
    pub fn queued_work(&self) -> i64 {
        let inventory = self.inventory.iter().map(|s| s.stats.mailbox());
        let shards = self.shards.iter().map(|s| s.stats.mailbox());
        let publishers = self.publishers.iter().map(|s| s.stats.mailbox());
        inventory
            .chain(shards)
            .chain(publishers)
            .chain([self.catalog.stats.mailbox()])
            .sum()
    }

    /// The order path can accept: every inventory partition and a publisher are up.
    pub fn order_path_ready(&self) -> bool {
        self.inventory.iter().all(|s| s.stats.is_running())
            && self.publishers.iter().any(|s| s.stats.is_running())
    }
}
