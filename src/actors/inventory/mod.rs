//! Inventory partitions: the operations one partition actor serves, in batches.
//! Products are routed to partition `hash(productId) % P`, users' rate-limit counters
//! to `hash(userId) % P`. The cluster backend is Redis ([`redis`]); every reservation
//! is one atomic script: idempotency, sale window, per-user limit and stock together.

pub mod local;
pub mod redis;
pub mod sentinel;

use crate::domain::{
    IdempotencyKey, OrderId, PaymentWindow, ProductId, Quantity, SaleDefinition, SoldOrder, Terms,
    UserId,
};

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
    /// Stock reserved under this new order id, on the sale's terms now.
    Created(OrderId, Terms),
    /// The key was seen before and its order is in the queue (or beyond): its order
    /// id, unchanged.
    Replay(OrderId),
    /// The key was seen before, but its order may not be in the queue yet (its
    /// publish is under way, failed without a release, or timed out): whoever asks
    /// again publishes it before answering.
    Unpublished(UnpublishedOrder),
    OutOfStock,
    LimitReached,
    NotActive,
    /// No flash sale is loaded for the product.
    NoSale,
    /// The partition lost its state and is rebuilding it: retry shortly.
    Rebuilding,
}

/// A reservation whose order message is not known to be in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpublishedOrder {
    pub order: OrderId,
    pub quantity: Quantity,
    pub created_at: i64,
    /// The sale's terms now: the order is accepted on them when it is published.
    pub terms: Terms,
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
    pub payment_window: Option<PaymentWindow>,
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
    pub user: UserId,
    pub product: ProductId,
    pub quantity: Quantity,
    pub created_at: i64,
}

/// The order message is safely in the queue: the reconciler must leave it alone.
/// Answers `false` when the reservation was released meanwhile (its message will be
/// claimed as cancelled).
#[derive(Debug)]
pub struct MarkPublished {
    pub product: ProductId,
    pub order: OrderId,
}

/// The publish failed: give the units back and forget the key (unless the order was
/// published meanwhile by a retry with the same key).
#[derive(Debug)]
pub struct Release {
    pub product: ProductId,
    pub order: OrderId,
}

/// A consumer takes the order from its partition before its shard persists it. The
/// order's details must be those of its reservation; they count it when it was
/// accepted before the partition lost its state.
#[derive(Debug)]
pub struct Claim {
    pub product: ProductId,
    pub order: OrderId,
    pub user: UserId,
    pub quantity: Quantity,
    pub key: IdempotencyKey,
    pub created_at: i64,
}

/// A cancelled or expired order's units go back to the sale, once per order.
#[derive(Debug)]
pub struct Restock {
    pub product: ProductId,
    pub order: OrderId,
    pub user: UserId,
    pub quantity: Quantity,
}

/// What a [`Claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// Persist it as sold: its reservation was here (or it was claimed before, or it
    /// was accepted before the partition lost its state).
    Sold,
    /// Record it as cancelled: its reservation was released before it was persisted.
    Released,
    /// Never reserved here, or not with these details (a forged or altered message):
    /// it is a dead letter, never a sale.
    Unknown,
}

/// What a [`Restock`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restocked {
    /// The units are back on sale.
    Returned,
    /// Nothing: this order's units came back before, or its reservation was released.
    Already,
    /// Nothing: the partition is rebuilding its sales, which counts a cancelled order's
    /// units as returned.
    Rebuilding,
}

/// Counts a request in a rate-limit window: a user's, an account's logins, a client
/// address's requests (keys of each kind have a prefix of their own).
#[derive(Debug)]
pub struct RateCheck {
    pub key: String,
    pub window_ms: i64,
}

/// Requests counted in the current window, and milliseconds until it resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateWindow {
    pub count: i64,
    pub reset_ms: i64,
}

/// Loads (or changes) a product's sale; what is already sold is kept.
#[derive(Debug)]
pub struct LoadSale {
    pub product: ProductId,
    pub sale: SaleDefinition,
}

/// Why a sale was not loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaleRefused {
    /// The new stock is below what is already sold.
    BelowSold { sold: i64 },
    /// The partition is rebuilding its state: what is sold is not known yet.
    Rebuilding,
}

/// Whether the partition's state is whole, or being rebuilt after it was lost.
#[derive(Debug)]
pub struct Recovery;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionState {
    Ready,
    /// Lost at `since` (epoch ms): orders accepted before then are counted as they
    /// are claimed.
    Rebuilding {
        since: i64,
    },
}

/// How long a reconciler keeps the rebuild it owns without taking a step: another
/// takes it over (from scratch) once it has been silent this long.
pub const REBUILD_LEASE_MS: i64 = 30_000;

/// One bounded step of rebuilding a partition that lost its state
/// ([`crate::actors::recovery`]). One reconciler owns the rebuild at a time, under a
/// lease each of its steps renews; the steps of any other are refused.
#[derive(Debug)]
pub struct RebuildStep {
    /// The reconciler taking the step.
    pub owner: String,
    /// The loss the rebuild is of ([`PartitionState::Rebuilding`]): once the partition
    /// loses its state again, the steps of this rebuild are refused.
    pub since: i64,
    pub step: Step,
}

#[derive(Debug)]
pub enum Step {
    /// Takes the rebuild, or keeps it. A new owner starts from scratch: what an
    /// earlier one staged is dropped.
    Own,
    /// A chunk of a sale's persisted orders: a reservation kept of any of them holds
    /// nothing any more, a cancelled one is remembered as returned, and a sold one's
    /// key comes back. Answers the sold ones that the partition remembers as returned
    /// (cancelled since the snapshot was read): they count for nothing.
    Orders {
        product: ProductId,
        sale: SaleDefinition,
        orders: Vec<SoldOrder>,
    },
    /// Each buyer's units among a sale's persisted orders (a chunk of buyers).
    Buyers {
        product: ProductId,
        sale: SaleDefinition,
        buyers: Vec<(String, i64)>,
    },
    /// The sale itself, with the units its persisted orders sold: the orders claimed
    /// meanwhile and the reservations still held are added, and it sells again once
    /// the rebuild finishes (claims count on it from now). Answers the units sold.
    Sale {
        product: ProductId,
        sale: SaleDefinition,
        sold: i64,
    },
    /// Every sale is rebuilt: the partition is whole again.
    Finish,
}

/// What a [`RebuildStep`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepDone {
    Owned,
    /// The sold orders of the chunk the partition remembers as returned.
    Returned(Vec<String>),
    Staged,
    /// The units the rebuilt sale has sold.
    Sold(i64),
    Finished,
}

/// Why a rebuild stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebuildStopped {
    /// The partition is whole again: another reconciler finished (this one's snapshot
    /// of the shards is stale and must not overwrite what was sold since).
    Whole,
    /// Another reconciler owns the rebuild, or the partition lost its state again.
    Taken,
}

#[derive(Debug)]
pub struct Counters {
    pub product: ProductId,
}

/// An accepted order not yet in its shard, by id.
#[derive(Debug)]
pub struct Lookup {
    pub order: OrderId,
}

#[derive(Debug)]
pub struct CacheGet {
    pub key: String,
}

#[derive(Debug)]
pub struct CacheSet {
    pub key: String,
    pub value: String,
    pub ttl_secs: u64,
}

#[derive(Debug)]
pub struct CacheDel {
    pub key: String,
}

/// Releases reservations never published (the reconciler's sweep), the oldest first,
/// at most [`MOST_RELEASED`] in one call (a sweep is one script, which Redis runs
/// alone); answers how many.
#[derive(Debug)]
pub struct ReleaseStale {
    pub now_ms: i64,
}

/// Most reservations one [`ReleaseStale`] releases; the reconciler asks again while a
/// call releases that many.
pub const MOST_RELEASED: i64 = 1_000;

/// Every sale of the partition.
#[derive(Debug)]
pub struct ListSales;

/// One sale of a partition, as the metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaleSummary {
    pub product: i64,
    pub stock: i64,
    pub remaining: i64,
    pub starts_at: Option<i64>,
    pub ends_at: Option<i64>,
    pub payment_window: Option<PaymentWindow>,
}

impl SaleSummary {
    /// Whether the sale window contains `now_ms`.
    pub fn active_at(&self, now_ms: i64) -> bool {
        self.starts_at.is_none_or(|s| now_ms >= s) && self.ends_at.is_none_or(|e| now_ms < e)
    }
}

crate::protocol! {
    /// What an inventory partition serves.
    pub enum InventoryMsg {
        Reserve(ReserveRequest) -> ReserveOutcome,
        MarkPublished(MarkPublished) -> bool,
        Release(Release) -> (),
        Claim(Claim) -> Claimed,
        Restock(Restock) -> Restocked,
        RateCheck(RateCheck) -> RateWindow,
        LoadSale(LoadSale) -> Result<SaleCounters, SaleRefused>,
        Counters(Counters) -> Option<SaleCounters>,
        Lookup(Lookup) -> Option<PendingOrder>,
        CacheGet(CacheGet) -> Option<String>,
        CacheSet(CacheSet) -> (),
        CacheDel(CacheDel) -> (),
        ReleaseStale(ReleaseStale) -> i64,
        Sales(ListSales) -> Vec<SaleSummary>,
        Recovery(Recovery) -> PartitionState,
        Rebuild(RebuildStep) -> Result<StepDone, RebuildStopped>,
    }
}

/// Where the product cache keeps a product's JSON.
pub fn product_cache_key(id: ProductId) -> String {
    format!("product:{id}")
}
