//! Order shards: what a shard actor does for its users. Orders and users live on shard
//! `hash(userId) % N`. Inserts and delivered notifications are group-committed: one
//! transaction for everything that queued while the previous one ran.

use serde::Serialize;

use crate::domain::{rfc3339, OrderId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Completed,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Completed => "completed",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(OrderStatus::Pending),
            "completed" => Some(OrderStatus::Completed),
            "cancelled" => Some(OrderStatus::Cancelled),
            _ => None,
        }
    }
}

/// An order as the queue carries it and the shard stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderMessage {
    pub order_id: String,
    pub user_id: String,
    pub product_id: i64,
    pub quantity: i64,
    pub idempotency_key: String,
    pub created_at: i64,
    /// The W3C trace context of the request that accepted the order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// An order as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    pub order_id: String,
    pub user_id: String,
    pub product_id: i64,
    pub quantity: i64,
    pub status: OrderStatus,
    pub created_at: String,
}

impl OrderView {
    pub fn new(order: &OrderMessage, status: OrderStatus) -> Self {
        Self {
            order_id: order.order_id.clone(),
            user_id: order.user_id.clone(),
            product_id: order.product_id,
            quantity: order.quantity,
            status,
            created_at: rfc3339(order.created_at),
        }
    }
}

#[derive(Debug)]
pub enum ShardOp {
    /// Persist an order with its final status (idempotent on the order id).
    Insert {
        order: OrderMessage,
        status: OrderStatus,
    },
    /// Record a delivered confirmation (idempotent on the order id).
    Notified {
        order: OrderId,
        user: String,
        channel: String,
    },
    Get {
        order: OrderId,
        user: String,
    },
    List {
        user: String,
    },
    CreateUser {
        user: String,
        email: String,
    },
    /// Units per status for one product on this shard.
    ProductTotals {
        product: i64,
    },
    /// The owner cancels a completed order (emits `OrderCancelled` once).
    Cancel {
        order: OrderId,
        user: String,
        traceparent: Option<String>,
    },
    /// Emits `UserUpdated` when the user exists.
    UpdateUser {
        user: String,
        display_name: String,
        traceparent: Option<String>,
    },
}

impl ShardOp {
    /// Whether the operation may write outbox rows (and so wake the shard's relay).
    pub fn emits_events(&self) -> bool {
        matches!(
            self,
            ShardOp::Insert { .. }
                | ShardOp::CreateUser { .. }
                | ShardOp::UpdateUser { .. }
                | ShardOp::Cancel { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardReply {
    Done,
    Order(Option<OrderView>),
    Orders(Vec<OrderView>),
    Totals {
        completed: i64,
        cancelled: i64,
    },
    /// The order after a cancellation, and whether this call cancelled it; `None`
    /// when the shard has no such order of that user.
    Cancelled(Option<(OrderView, bool)>),
    /// Whether the user exists.
    UserUpdated(bool),
}
