//! Inventory partitions: the operations one partition actor serves, in batches.
//! Products are routed to partition `hash(productId) % P`, users' rate-limit counters
//! to `hash(userId) % P`. The cluster backend is Redis ([`redis`]); every reservation
//! is one atomic script: idempotency, sale window, per-user limit and stock together.

pub mod local;
pub mod redis;

use crate::domain::{IdempotencyKey, OrderId, ProductId, Quantity, UserId};

#[derive(Debug, Clone)]
pub struct ReserveRequest {
    pub product: ProductId,
    pub user: UserId,
    pub key: IdempotencyKey,
    pub quantity: Quantity,
    /// The id the order gets if this request creates it.
    pub order: OrderId,
    pub now_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// Stock reserved under this new order id.
    Created(OrderId),
    /// The key was seen before: its order id, unchanged.
    Replay(OrderId),
    OutOfStock,
    LimitReached,
    NotActive,
    /// No flash sale is loaded for the product.
    NoSale,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaleDefinition {
    pub stock: i64,
    pub per_user_limit: i64,
    /// Epoch milliseconds; `None` is unbounded.
    pub starts_at: Option<i64>,
    pub ends_at: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaleCounters {
    pub stock: i64,
    pub remaining: i64,
    /// Units reserved whose order has not yet been written to its shard.
    pub pending: i64,
    pub per_user_limit: i64,
    pub starts_at: Option<i64>,
    pub ends_at: Option<i64>,
}

impl SaleCounters {
    /// Whether the sale window contains `now_ms`.
    pub fn active_at(&self, now_ms: i64) -> bool {
        self.starts_at.is_none_or(|s| now_ms >= s) && self.ends_at.is_none_or(|e| now_ms < e)
    }
}

/// An accepted order not yet in its shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingOrder {
    pub user: String,
    pub product: i64,
    pub quantity: i64,
    pub created_at: i64,
}

#[derive(Debug)]
pub enum InventoryOp {
    Reserve(ReserveRequest),
    /// The order message is safely in the queue: the reconciler must leave it alone.
    MarkPublished {
        product: ProductId,
        order: OrderId,
    },
    /// The publish failed: give the units back and forget the key.
    Release {
        product: ProductId,
        order: OrderId,
    },
    /// A consumer takes the order: `true` to persist it, `false` when it was released
    /// meanwhile and must be recorded as cancelled.
    Claim {
        product: ProductId,
        order: OrderId,
    },
    /// A cancelled order's units go back to the sale, once per order (answers
    /// `Restocked(false)` for every later call, and for a released order).
    Restock {
        product: ProductId,
        order: OrderId,
        user: String,
        quantity: i64,
    },
    RateCheck {
        user: UserId,
        window_ms: i64,
    },
    LoadSale {
        product: ProductId,
        sale: SaleDefinition,
    },
    Counters {
        product: ProductId,
    },
    Lookup {
        order: OrderId,
    },
    CacheGet {
        key: String,
    },
    CacheSet {
        key: String,
        value: String,
        ttl_secs: u64,
    },
    CacheDel {
        key: String,
    },
    /// Releases reservations never published (the reconciler's sweep).
    ReleaseStale {
        now_ms: i64,
    },
    /// Every sale of the partition: (product id, stock, remaining, starts, ends).
    Sales,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventoryReply {
    Reserved(ReserveOutcome),
    Done,
    Claimed(bool),
    Restocked(bool),
    /// Requests counted in the current window, and milliseconds until it resets.
    Rate {
        count: i64,
        reset_ms: i64,
    },
    /// `Err(sold)` when the new stock is below what is already sold.
    SaleLoaded(Result<SaleCounters, i64>),
    Counters(Option<SaleCounters>),
    Lookup(Option<PendingOrder>),
    Cached(Option<String>),
    Released(i64),
    Sales(Vec<(i64, i64, i64, Option<i64>, Option<i64>)>),
}
