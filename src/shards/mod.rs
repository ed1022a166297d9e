//! Order shards and the catalog: what their actors serve (the protocols below and in
//! [`catalog`]), the stable hash that places users, the backends and the migrations.
//!
//! Orders and users live on shard `hash(userId) % N`. Every shard operation is written
//! once over sqlx `Any` ([`store`]) for PostgreSQL and SQLite alike, except the hot
//! multi-row order insert, which PostgreSQL does in one `UNNEST` statement
//! ([`postgres`]). Inserts and delivered notifications are group-committed: one
//! transaction for everything that queued while the previous one ran.

pub mod catalog;
mod columns;
pub mod hash;
pub mod migrate;
pub mod outbox;
pub mod postgres;
pub mod replica;
pub mod reshard;
pub mod sqlite;
pub mod store;

use crate::domain::{
    OrderId, OrderMessage, OrderStatus, OrderView, ProductId, Quantity, SoldOrder, UserId,
};

/// Persist an order with its final status (idempotent on the order id).
#[derive(Debug)]
pub struct InsertOrder {
    pub order: OrderMessage,
    pub status: OrderStatus,
}

/// Record a delivered confirmation (idempotent on the order id).
#[derive(Debug)]
pub struct RecordNotification {
    pub order: OrderId,
    pub user: UserId,
    pub channel: String,
}

/// The writes of one batch, in the order they queued: the shard writes them in one
/// transaction ([`store`], or [`postgres`] for its multi-row form).
#[derive(Default)]
pub(crate) struct Writes<'a> {
    pub orders: Vec<&'a InsertOrder>,
    pub notifications: Vec<&'a RecordNotification>,
}

/// One order of one user; `None` when the shard has no such order of that user.
#[derive(Debug)]
pub struct GetOrder {
    pub order: OrderId,
    pub user: UserId,
}

/// A user's orders, newest first (at most 1,000).
#[derive(Debug)]
pub struct ListOrders {
    pub user: UserId,
}

/// Creates the user's row (and its `UserRegistered` event) unless it exists.
#[derive(Debug)]
pub struct CreateUser {
    pub user: UserId,
    pub email: String,
}

/// Changes the display name and emits `UserUpdated`; answers whether the user exists.
#[derive(Debug)]
pub struct UpdateUser {
    pub user: UserId,
    pub display_name: String,
    pub traceparent: Option<String>,
}

/// Units of one product on this shard, per final status.
#[derive(Debug)]
pub struct ProductTotals {
    pub product: ProductId,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnitTotals {
    pub completed: i64,
    pub cancelled: i64,
}

/// The owner cancels a completed order (emits `OrderCancelled` once).
#[derive(Debug)]
pub struct CancelOrder {
    pub order: OrderId,
    pub user: UserId,
    pub traceparent: Option<String>,
}

/// The order after a cancellation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancellation {
    pub order: OrderView,
    /// This request cancelled it (an earlier one did otherwise).
    pub now: bool,
    /// Its units are still to go back to the sale: the shard's `restocks` row of the
    /// order exists. Only then may the caller restock; once the partition has them
    /// (or a rebuild counted them as returned) the row is gone, and a cancellation
    /// asked again gives nothing back, whatever the partition remembers.
    pub restock_due: bool,
}

/// The completed orders of one product on this shard (a rebuild of its inventory).
#[derive(Debug)]
pub struct SaleOrders {
    pub product: ProductId,
}

/// Units of a cancelled order still to be given back, for the reconciler.
#[derive(Debug)]
pub struct PendingRestocks {
    /// Only those older than this (epoch ms): younger ones are their request's to do.
    pub before: i64,
    /// Only those of this product (all when `None`).
    pub product: Option<ProductId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRestock {
    pub order: OrderId,
    pub user: UserId,
    pub product: ProductId,
    pub quantity: Quantity,
}

/// The inventory partition has a cancelled order's units back.
#[derive(Debug)]
pub struct RestockDone {
    pub order: OrderId,
}

crate::protocol! {
    /// What a shard actor serves.
    pub enum ShardMsg {
        Insert(InsertOrder) -> (),
        Notified(RecordNotification) -> (),
        Get(GetOrder) -> Option<OrderView>,
        List(ListOrders) -> Vec<OrderView>,
        /// `true` when the user row was created now.
        CreateUser(CreateUser) -> bool,
        UpdateUser(UpdateUser) -> bool,
        Totals(ProductTotals) -> UnitTotals,
        SaleOrders(SaleOrders) -> Vec<SoldOrder>,
        PendingRestocks(PendingRestocks) -> Vec<PendingRestock>,
        RestockDone(RestockDone) -> (),
        /// `None` when the shard has no such order of that user.
        Cancel(CancelOrder) -> Option<Cancellation>,
    }
}

impl ShardMsg {
    /// Whether the message may write outbox rows (and so wake the shard's relay).
    pub fn emits_events(&self) -> bool {
        matches!(
            self,
            ShardMsg::Insert(..)
                | ShardMsg::CreateUser(..)
                | ShardMsg::UpdateUser(..)
                | ShardMsg::Cancel(..)
        )
    }
}
