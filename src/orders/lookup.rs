//! An order as its buyer sees it: from its shard once it is written, and from the
//! inventory partitions while it is still on its way there. A shard outage delays
//! persistence, not what the buyer sees.

use futures_util::future::join_all;

use super::OrderError;
use crate::actors::directory::Directory;
use crate::domain::{rfc3339, OrderId, OrderStatus, OrderView, UserId};
use crate::shards::GetOrder;
use crate::supervisors::slot::CallError;

/// The buyer's order, wherever it is now.
pub async fn find(
    dir: &Directory,
    user: &UserId,
    order: &OrderId,
) -> Result<OrderView, OrderError> {
    let shard_down = match stored(dir, user, order).await {
        Ok(Some(view)) => return Ok(view),
        Ok(None) => None,
        Err(e @ (CallError::Unavailable | CallError::Overloaded)) => Some(e),
        Err(e) => return Err(e.into()),
    };
    match (pending(dir, user, order).await?, shard_down) {
        (Some(view), _) => Ok(view),
        (None, Some(e)) => Err(e.into()),
        (None, None) => Err(OrderError::NotFound),
    }
}

/// The buyer's order as its shard holds it, if it is there yet.
pub async fn stored(
    dir: &Directory,
    user: &UserId,
    order: &OrderId,
) -> Result<Option<OrderView>, CallError> {
    let get = GetOrder {
        order: order.clone(),
        user: user.clone(),
    };
    dir.shard(user).call(get).await
}

/// An order accepted but not yet in its shard: the inventory partitions still know it.
pub async fn pending(
    dir: &Directory,
    user: &UserId,
    order: &OrderId,
) -> Result<Option<OrderView>, CallError> {
    let lookups = join_all(dir.inventory.iter().map(|p| {
        p.call(crate::actors::inventory::Lookup {
            order: order.clone(),
        })
    }))
    .await;
    for reply in lookups {
        if let Some(p) = reply? {
            if p.user == *user {
                return Ok(Some(OrderView {
                    order_id: order.clone(),
                    user_id: p.user,
                    product_id: p.product,
                    quantity: p.quantity,
                    status: OrderStatus::Pending,
                    created_at: rfc3339(p.created_at),
                    amount_cents: None,
                    pay_by: None,
                }));
            }
        }
    }
    Ok(None)
}
