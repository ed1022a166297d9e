//! The order saga, as domain code: what happens to an order from the request that
//! places it to the shard that keeps it, and back when its owner cancels it. The HTTP
//! layer parses a request, calls one of these steps and maps its outcome; the queue
//! consumers run the persistence half.
//!
//! - [`intake`]: reserve a unit in the product's inventory partition, publish the
//!   order, mark it published, and undo the reservation when the publish failed;
//! - [`persist`]: the consumers' half: claim each queued order from its partition,
//!   have its shard write it, confirm it to the buyer;
//! - [`lookup`]: an order as its buyer sees it, stored or still on its way;
//! - [`cancel`]: the owner takes a completed order back; its units return once;
//! - [`payment`]: the shop's payment service pays an order awaiting payment, and the
//!   sweep that expires the unpaid ones, whose units return once.
//!
//! Every step answers an [`OrderError`] the API maps to its codes; a backend that is
//! away is [`OrderError::Backend`], for the caller to shed with `503`.

pub mod cancel;
pub mod intake;
pub mod lookup;
pub mod payment;
pub mod persist;

use crate::supervisors::slot::CallError;

/// Why a step of the saga did not go through.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("the product is sold out")]
    OutOfStock,
    #[error("the buyer has bought as many as this sale allows")]
    LimitReached,
    #[error("the flash sale is not active")]
    SaleNotActive,
    #[error("no such order or product")]
    NotFound,
    /// The order is accepted but not in its shard yet.
    #[error("the order is still being processed; retry shortly")]
    Pending,
    /// The product's partition is rebuilding its lost state.
    #[error("the sale's inventory is being rebuilt after a failure; retry shortly")]
    Rebuilding,
    /// Refused before the queue had it: nothing stays reserved.
    #[error("the order queue is unavailable; retry shortly")]
    QueueUnavailable,
    /// Released as stale while its publish took too long; the key is free again.
    #[error("the order was not accepted in time; retry shortly")]
    NotAcceptedInTime,
    /// The order may have been accepted: asking again with its key finds it.
    #[error("the order may have been accepted; retry with the same Idempotency-Key to find it")]
    OutcomeUnknown,
    /// Its payment window lapsed: the order is expired (the shop refunds).
    #[error("the order's payment window has closed; it expired and its units went back on sale")]
    PaymentWindowClosed,
    #[error("the order was cancelled")]
    OrderCancelled,
    #[error("the amount is not what the order costs ({expected} cents)")]
    AmountMismatch { expected: String },
    /// Paid by another payment, or nothing to pay.
    #[error("{0}")]
    AlreadyPaid(&'static str),
    /// The stores disagree with what the saga just did to them.
    #[error("{0}")]
    Inconsistent(String),
    #[error(transparent)]
    Backend(#[from] CallError),
}
