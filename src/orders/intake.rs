//! Intake: the request half of the saga. One atomic step in the product's inventory
//! partition reserves the units (or names the order the key already has); the order
//! is published to the queue; the partition is told it is published. Each way the
//! publish can end has its compensation:
//!
//! | the publish | the reservation | the buyer |
//! |---|---|---|
//! | confirmed | marked published: the reconciler leaves it | `201` |
//! | refused, or never reached a publisher | released at once | `503`, nothing held |
//! | of unknown outcome | kept: the queue may have it | `503`; the same key finds it |
//!
//! A reservation whose order was never published, and never released, is found by
//! the reconciler.

use tracing::Instrument;

use super::OrderError;
use crate::actors::directory::Directory;
use crate::actors::inventory::{MarkPublished, Release, ReserveOutcome, ReserveRequest};
use crate::actors::queue::Publish;
use crate::domain::{
    now_ms, AmountCents, IdempotencyKey, OrderId, OrderMessage, ProductId, Quantity, UserId,
};
use crate::shards::catalog::GetProduct;
use crate::supervisors::slot::CallError;

/// An order as the buyer asked for it, every part already checked.
pub struct PlaceOrder {
    pub user: UserId,
    pub product: ProductId,
    pub key: IdempotencyKey,
    pub quantity: Quantity,
}

/// An order the queue has: new, or the one the key already named.
#[derive(Debug)]
pub struct Placed {
    pub order: OrderId,
    /// The key had an order already (its answer is a replay).
    pub replayed: bool,
}

/// Places an order: reserve, publish, mark published.
pub async fn place(dir: &Directory, request: PlaceOrder) -> Result<Placed, OrderError> {
    let PlaceOrder {
        user,
        product,
        key,
        quantity,
    } = request;
    let now = now_ms();
    let reserve = ReserveRequest {
        product,
        user: user.clone(),
        key: key.clone(),
        quantity,
        order: OrderId::generate(),
        now_ms: now,
    };
    let partition = dir.product_partition(product);
    let reserving = tracing::info_span!("inventory_reserve");
    let outcome = partition.call(reserve).instrument(reserving).await?;
    let (order, quantity, created_at, terms, replayed) = match outcome {
        ReserveOutcome::Created(order, terms) => (order, quantity, now, terms, false),
        ReserveOutcome::Replay(order) => {
            return Ok(Placed {
                order,
                replayed: true,
            })
        }
        // The key's order may not be in the queue yet: publish it (again) before
        // naming it. Consumers take an order once, however often it was published.
        ReserveOutcome::Unpublished(u) => (u.order, u.quantity, u.created_at, u.terms, true),
        ReserveOutcome::OutOfStock => return Err(OrderError::OutOfStock),
        ReserveOutcome::LimitReached => return Err(OrderError::LimitReached),
        ReserveOutcome::NotActive => return Err(OrderError::SaleNotActive),
        ReserveOutcome::Rebuilding => return Err(OrderError::Rebuilding),
        ReserveOutcome::NoSale => {
            return match dir.catalog.call(GetProduct { id: product }).await? {
                Some(_) => Err(OrderError::SaleNotActive),
                None => Err(OrderError::NotFound),
            }
        }
    };
    tracing::Span::current().record("order_id", tracing::field::display(&order));

    let message = OrderMessage {
        order_id: order.clone(),
        user_id: user,
        product_id: product,
        quantity,
        idempotency_key: key,
        created_at,
        amount_cents: AmountCents::of(quantity, terms.unit_price_cents),
        payment_window_secs: terms.payment_window,
        traceparent: crate::telemetry::current_traceparent(),
    };
    let publish = Publish {
        queue: dir.orders_queue.clone(),
        payload: serde_json::to_vec(&message).expect("orders serialise"),
        traceparent: message.traceparent.clone(),
    };
    let publishing = tracing::info_span!("queue_publish");
    match dir.publisher().call(publish).instrument(publishing).await {
        Ok(true) => {}
        Ok(false) | Err(CallError::Overloaded) => {
            partition.tell(Release { product, order });
            tracing::warn!("order publish failed; reservation released");
            return Err(OrderError::QueueUnavailable);
        }
        Err(e) => {
            tracing::warn!(error = %e, "order publish outcome unknown; reservation kept");
            return Err(OrderError::OutcomeUnknown);
        }
    }
    // Accepted once the partition knows the message is queued: from then on the
    // reconciler leaves the reservation alone, whatever the consumers' lag.
    let marked = partition.call(MarkPublished {
        product,
        order: order.clone(),
    });
    match marked.await {
        Ok(true) => Ok(Placed { order, replayed }),
        Ok(false) => {
            // Released as stale while its publish took too long: the queued message
            // will be recorded as cancelled.
            tracing::warn!("order released before its publish was confirmed");
            Err(OrderError::NotAcceptedInTime)
        }
        Err(e) => {
            tracing::warn!(error = %e, "order queued but not marked published");
            Err(OrderError::OutcomeUnknown)
        }
    }
}
