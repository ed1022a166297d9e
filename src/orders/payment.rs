//! The payment window: an order of a sale with one waits in its shard as
//! `awaiting_payment` until the shop's payment service confirms its payment
//! ([`confirm`]) or its `payBy` passes ([`sweep`]). Both are decided by one
//! conditional update in the order's shard, so exactly one of them wins; an expired
//! order's units go back to its sale through the shard's `restocks` row, as a
//! cancellation's do, once.
//!
//! The confirmation names the order alone; the order lives on its buyer's shard. The
//! inventory partitions remember each accepted order's buyer for as long as its
//! idempotency key, so the buyer's shard alone is asked; an order older than that is
//! looked for on every shard.

use futures_util::future::join_all;

use super::OrderError;
use crate::actors::directory::Directory;
use crate::actors::inventory::Lookup;
use crate::actors::recovery::{finish_restocks, tell_lapsed, Finish};
use crate::domain::{now_ms, AmountCents, OrderId, OrderView, PaymentId, UserId};
use crate::shards::{ConfirmPayment, ExpireDue, PaymentOutcome, MOST_EXPIRED};
use crate::supervisors::slot::CallError;

/// A payment as the shop's payment service confirms it, its signature checked.
#[derive(Debug, Clone)]
pub struct Payment {
    pub order: OrderId,
    pub payment: PaymentId,
    pub amount: AmountCents,
}

/// A confirmed payment: the order is `completed`.
#[derive(Debug)]
pub struct Paid {
    pub order: OrderView,
    /// The same payment was confirmed before.
    pub repeat: bool,
}

/// Pays an order awaiting payment, or says why it cannot be paid.
pub async fn confirm(dir: &Directory, payment: Payment) -> Result<Paid, OrderError> {
    let ask = ConfirmPayment {
        order: payment.order.clone(),
        payment: payment.payment,
        amount: payment.amount,
        traceparent: crate::telemetry::current_traceparent(),
    };
    let outcome = match buyer(dir, &payment.order).await? {
        // Accepted: in its buyer's shard, or on its way there.
        Some(user) => dir
            .shard(&user)
            .call(ask)
            .await?
            .ok_or(OrderError::Pending)?,
        None => everywhere(dir, ask).await?.ok_or(OrderError::NotFound)?,
    };
    let answer = answer(outcome);
    let label = match &answer {
        Ok(Paid { repeat: false, .. }) => "paid",
        Ok(Paid { repeat: true, .. }) => "repeat",
        Err(OrderError::PaymentWindowClosed) => "window_closed",
        Err(OrderError::OrderCancelled) => "cancelled",
        Err(OrderError::AmountMismatch { .. }) => "amount_mismatch",
        Err(_) => "already_paid",
    };
    metrics::counter!("flashsale_payments_total", "outcome" => label).increment(1);
    answer
}

/// The buyer of an accepted order, as the inventory partitions remember it.
async fn buyer(dir: &Directory, order: &OrderId) -> Result<Option<UserId>, CallError> {
    let lookups = join_all(dir.inventory.iter().map(|p| {
        p.call(Lookup {
            order: order.clone(),
        })
    }))
    .await;
    for reply in lookups {
        if let Some(p) = reply? {
            return Ok(Some(p.user));
        }
    }
    Ok(None)
}

/// Asks every shard; `None` when none has the order.
async fn everywhere(
    dir: &Directory,
    ask: ConfirmPayment,
) -> Result<Option<PaymentOutcome>, CallError> {
    let replies = join_all(dir.shards.iter().map(|s| s.call(ask.clone()))).await;
    let mut away = None;
    for reply in replies {
        match reply {
            Ok(Some(outcome)) => return Ok(Some(outcome)),
            Ok(None) => {}
            // The order may be on the shard that is away.
            Err(e @ (CallError::Unavailable | CallError::Overloaded)) => away = Some(e),
            Err(e) => return Err(e),
        }
    }
    match away {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

fn answer(outcome: PaymentOutcome) -> Result<Paid, OrderError> {
    match outcome {
        PaymentOutcome::Paid(order) => Ok(Paid {
            order,
            repeat: false,
        }),
        PaymentOutcome::Repeat(order) => Ok(Paid {
            order,
            repeat: true,
        }),
        PaymentOutcome::WindowClosed => Err(OrderError::PaymentWindowClosed),
        PaymentOutcome::Cancelled => Err(OrderError::OrderCancelled),
        PaymentOutcome::AmountMismatch { expected } => Err(OrderError::AmountMismatch {
            expected: expected.map_or("unknown".into(), |a| a.get().to_string()),
        }),
        PaymentOutcome::AlreadyPaid => Err(OrderError::AlreadyPaid(
            "the order is paid already by another payment, or has nothing to pay",
        )),
    }
}

/// What one [`sweep`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Orders that expired now.
    pub expired: i64,
    /// Expired orders whose units went back to their sale (now, or cut off before).
    pub returned: usize,
    /// Buyers told that their window lapsed.
    pub told: usize,
}

/// Expires the orders past their `payBy` on every shard that answers, gives the units
/// of expired orders back to their sales, then tells each buyer their window lapsed
/// (a notification queue that is away delays the notices, never the units). Safe on
/// every pod at once: each order expires in one shard transaction,
/// and a partition takes an order's units back once.
pub async fn sweep(dir: &Directory) -> Swept {
    let mut swept = Swept::default();
    for (index, shard) in dir.shards.iter().enumerate() {
        // Bounded: a sweep never runs for ever behind a flood of lapsing orders.
        for _ in 0..100 {
            match shard.call(ExpireDue { now: now_ms() }).await {
                Ok(n) => {
                    swept.expired += n;
                    if n < MOST_EXPIRED {
                        break;
                    }
                }
                // The shard is away: its orders expire when it is back (a payment
                // arriving first finds the window closed all the same).
                Err(e) => {
                    tracing::debug!(shard = index, error = %e, "expiry skipped");
                    break;
                }
            }
        }
    }
    match finish_restocks(dir, &vec![true; dir.inventory.len()], Finish::Expired).await {
        Ok(n) => swept.returned = n,
        Err(e) => tracing::debug!(error = %e, "returning expired units skipped"),
    }
    match tell_lapsed(dir).await {
        Ok(n) => swept.told = n,
        Err(e) => tracing::debug!(error = %e, "lapse notices skipped"),
    }
    swept
}
