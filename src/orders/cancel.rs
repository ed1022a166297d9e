//! The owner cancels a completed order, or one awaiting payment, while its sale is
//! active: the order becomes `cancelled` (emitting `OrderCancelled`) and its units go
//! back to the sale, exactly once however often this is called. The shard decides whether units are still due
//! back (its restocks row); the partition takes them once per order. A cancellation
//! that stops between the two is finished by its retry, or by the reconciler when
//! nobody retries (a rebuild counts such units as returned).

use super::{lookup, OrderError};
use crate::actors::directory::Directory;
use crate::actors::inventory::{Counters, PartitionState, Recovery, Restock, Restocked};
use crate::domain::{now_ms, OrderId, OrderStatus, OrderView, UserId};
use crate::shards::{CancelOrder, Cancellation, RestockDone};

pub async fn cancel(
    dir: &Directory,
    user: &UserId,
    order: &OrderId,
) -> Result<OrderView, OrderError> {
    let Some(stored) = lookup::stored(dir, user, order).await? else {
        return match lookup::pending(dir, user, order).await? {
            Some(_) => Err(OrderError::Pending),
            None => Err(OrderError::NotFound),
        };
    };
    let product = stored.product_id;
    let partition = dir.product_partition(product);
    if matches!(
        stored.status,
        OrderStatus::Completed | OrderStatus::AwaitingPayment
    ) {
        match partition.call(Counters { product }).await? {
            Some(sale) if sale.active_at(now_ms()) => {}
            // No sale there: gone with the partition's state, until it is rebuilt.
            None if partition.call(Recovery).await? != PartitionState::Ready => {
                return Err(OrderError::Rebuilding)
            }
            _ => return Err(OrderError::SaleNotActive),
        }
    }
    let Cancellation {
        order: view,
        now,
        restock_due,
    } = dir
        .shard(user)
        .call(CancelOrder {
            order: order.clone(),
            user: user.clone(),
            traceparent: crate::telemetry::current_traceparent(),
        })
        .await?
        .ok_or(OrderError::NotFound)?;
    if view.status != OrderStatus::Cancelled {
        return Err(OrderError::Inconsistent(format!(
            "order {} is {} after its cancellation",
            view.order_id,
            view.status.as_str()
        )));
    }
    if restock_due {
        let restocked = partition
            .call(Restock {
                product,
                order: order.clone(),
                user: user.clone(),
                quantity: view.quantity,
            })
            .await?;
        if restocked == Restocked::Rebuilding {
            return Err(OrderError::Rebuilding);
        }
        dir.shard(user)
            .call(RestockDone {
                order: order.clone(),
                notify: false,
            })
            .await?;
        tracing::info!(now, restocked = ?restocked, "order cancelled by its owner");
    }
    Ok(view)
}
