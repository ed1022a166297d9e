//! The directory: where callers find the current actor of a shard, a partition or a
//! publisher. It holds slots, never actor references, so a restart is invisible to
//! callers except as a short `503`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::slot::Slot;
use crate::actors::catalog::{CatalogOp, CatalogReply};
use crate::actors::inventory::{InventoryOp, InventoryReply};
use crate::actors::queue::{PublishOp, PublishReply};
use crate::actors::shard::{ShardOp, ShardReply};
use crate::domain::ProductId;
use crate::shards::hash::bucket;

pub type ShardSlot = Slot<ShardOp, ShardReply>;
pub type InventorySlot = Slot<InventoryOp, InventoryReply>;
pub type CatalogSlot = Slot<CatalogOp, CatalogReply>;
pub type PublisherSlot = Slot<PublishOp, PublishReply>;

pub struct Directory {
    pub catalog: Arc<CatalogSlot>,
    pub shards: Vec<Arc<ShardSlot>>,
    pub inventory: Vec<Arc<InventorySlot>>,
    pub publishers: Vec<Arc<PublisherSlot>>,
    pub orders_queue: String,
    pub notifications_queue: String,
    next_publisher: AtomicUsize,
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
            next_publisher: AtomicUsize::new(0),
        }
    }

    /// The shard of a user: `murmur3(userId) % N`.
    pub fn shard_index(&self, user: &str) -> usize {
        bucket(user, self.shards.len())
    }

    pub fn shard(&self, user: &str) -> &ShardSlot {
        &self.shards[self.shard_index(user)]
    }

    /// The inventory partition of a product: `murmur3(productId) % P`.
    pub fn product_partition(&self, product: ProductId) -> &InventorySlot {
        &self.inventory[bucket(&product.to_string(), self.inventory.len())]
    }

    /// The partition that keeps a user's rate-limit window.
    pub fn user_partition(&self, user: &str) -> &InventorySlot {
        &self.inventory[bucket(user, self.inventory.len())]
    }

    pub fn publisher(&self) -> &PublisherSlot {
        let i = self.next_publisher.fetch_add(1, Ordering::Relaxed);
        &self.publishers[i % self.publishers.len()]
    }

    /// The order path can accept: every inventory partition and a publisher are up.
    pub fn order_path_ready(&self) -> bool {
        self.inventory.iter().all(|s| s.stats.is_running())
            && self.publishers.iter().any(|s| s.stats.is_running())
    }
}
