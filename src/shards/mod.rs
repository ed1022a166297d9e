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
    AmountCents, OrderId, OrderMessage, OrderStatus, OrderView, PaymentId, ProductId, Quantity,
    SoldOrder, UserId,
};

/// Persist an order with its status: `completed` or `cancelled`, or
/// `awaiting_payment` when its sale has a payment window (idempotent on the order id).
/// Answers its `payBy` (epoch ms) when it awaits payment: the shard's clock when it
/// was first written, plus the window.
#[derive(Debug)]
pub struct InsertOrder {
    pub order: OrderMessage,
    pub status: OrderStatus,
}

/// Record a delivered notice (idempotent on the order id and the notice's kind).
#[derive(Debug)]
pub struct RecordNotification {
    pub order: OrderId,
    pub user: UserId,
    pub channel: String,
    /// `confirmed`, `payment_due` or `payment_lapsed`.
    pub kind: &'static str,
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
    pub awaiting_payment: i64,
    pub expired: i64,
}

/// The shop's payment service confirms a payment of an order (found by id alone: the
/// caller asks every shard). Paying and expiring are decided here, in one transaction
/// each, so exactly one of them wins.
#[derive(Debug, Clone)]
pub struct ConfirmPayment {
    pub order: OrderId,
    pub payment: PaymentId,
    pub amount: AmountCents,
    pub traceparent: Option<String>,
}

/// What a [`ConfirmPayment`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentOutcome {
    /// Paid now: the order is `completed`.
    Paid(OrderView),
    /// Paid before by this same payment.
    Repeat(OrderView),
    /// Its window lapsed (now, or before): the order is `expired`.
    WindowClosed,
    Cancelled,
    /// It costs another amount.
    AmountMismatch {
        expected: Option<AmountCents>,
    },
    /// Paid by another payment, or it has nothing to pay (its sale had no window).
    AlreadyPaid,
}

/// Expires the orders still awaiting payment past their `payBy` by the shard's clock
/// (at most [`MOST_EXPIRED`] a call, the oldest first): each becomes `expired`, emits
/// `OrderExpired` and is due a restock, in one transaction. Answers how many.
#[derive(Debug)]
pub struct ExpireDue {
    /// When the change is recorded (`updated_at`, the events' time).
    pub now: i64,
}

/// Most orders one [`ExpireDue`] expires.
pub const MOST_EXPIRED: i64 = 500;

/// The owner cancels a completed order, or one awaiting payment (emits
/// `OrderCancelled` once).
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

/// The persisted orders of one product on this shard (a rebuild of its inventory).
#[derive(Debug)]
pub struct SaleOrders {
    pub product: ProductId,
}

/// Units of a cancelled or expired order still to be given back, for the reconciler.
#[derive(Debug)]
pub struct PendingRestocks {
    /// Only cancellations older than this (epoch ms): younger ones are their
    /// request's to do.
    pub before: i64,
    /// Only expiries older than this: nobody else gives theirs back.
    pub expired_before: i64,
    /// Only those of this product (all when `None`).
    pub product: Option<ProductId>,
}

/// Expired orders whose units are back but whose buyer is still to be told the
/// window lapsed (at most 500, the oldest first).
#[derive(Debug)]
pub struct LapsedNotices;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRestock {
    pub order: OrderId,
    pub user: UserId,
    pub product: ProductId,
    pub quantity: Quantity,
    /// Its payment window lapsed (else its owner cancelled it).
    pub expired: bool,
}

/// The inventory partition has a cancelled or expired order's units back. An expired
/// order's row stays, as a notice to send ([`LapsedNotices`]), when `notify`; without
/// it the row is gone (and so is a notice once it is sent).
#[derive(Debug)]
pub struct RestockDone {
    pub order: OrderId,
    pub notify: bool,
}

crate::protocol! {
    /// What a shard actor serves.
    pub enum ShardMsg {
        Insert(InsertOrder) -> Option<i64>,
        Notified(RecordNotification) -> (),
        Get(GetOrder) -> Option<OrderView>,
        List(ListOrders) -> Vec<OrderView>,
        /// `true` when the user row was created now.
        CreateUser(CreateUser) -> bool,
        UpdateUser(UpdateUser) -> bool,
        Totals(ProductTotals) -> UnitTotals,
        SaleOrders(SaleOrders) -> Vec<SoldOrder>,
        PendingRestocks(PendingRestocks) -> Vec<PendingRestock>,
        LapsedNotices(LapsedNotices) -> Vec<PendingRestock>,
        RestockDone(RestockDone) -> (),
        /// `None` when the shard has no such order of that user.
        Cancel(CancelOrder) -> Option<Cancellation>,
        /// `None` when the shard has no such order.
        Pay(ConfirmPayment) -> Option<PaymentOutcome>,
        Expire(ExpireDue) -> i64,
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
                | ShardMsg::Pay(..)
                | ShardMsg::Expire(..)
        )
    }
}
