//! What the queue consumers do. An order consumer claims each order from its
//! inventory partition, has its shard write it (completed, or cancelled when the
//! reconciler released it first), sends the confirmation to the notification queue,
//! and only then lets its batch be acknowledged. A notification consumer delivers
//! confirmations and records each one on the user's shard.

use std::sync::Arc;

use futures_util::future::try_join_all;
use ractor::ActorProcessingErr;

use super::directory::Directory;
use super::inventory::Claim;
use super::queue::{DeliveryHandler, Outbound, QueueMessage};
use crate::domain::{OrderId, OrderMessage, OrderStatus, ProductId};
use crate::shards::{InsertOrder, RecordNotification};
use crate::telemetry::{start_child_span, start_order_span, traceparent_of};

/// How far behind a consumer is: the age of the oldest order in its batch.
fn record_lag(queue: &'static str, orders: &[OrderMessage]) {
    if let Some(oldest) = orders.iter().map(|o| o.created_at).min() {
        let lag = (crate::domain::now_ms() - oldest).max(0) as f64 / 1000.0;
        metrics::gauge!("flashsale_consumer_lag_seconds", "queue" => queue).set(lag);
    }
}

/// A message carries one order (an object) or several (an array).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Carried {
    One(OrderMessage),
    Many(Vec<OrderMessage>),
}

fn parse_orders(batch: &[QueueMessage]) -> Vec<OrderMessage> {
    let mut orders = Vec::with_capacity(batch.len());
    for d in batch {
        match serde_json::from_slice::<Carried>(&d.payload) {
            Ok(Carried::One(o)) => orders.push(o),
            Ok(Carried::Many(many)) => orders.extend(many),
            Err(e) => {
                // A message nobody can read would block the queue for ever.
                tracing::error!(error = %e, "dropping an unreadable order message");
                metrics::counter!("flashsale_queue_poison_messages_total").increment(1);
            }
        }
    }
    orders
}

pub struct OrderHandler {
    pub directory: Arc<Directory>,
}

#[ractor::async_trait]
impl DeliveryHandler for OrderHandler {
    async fn handle(
        &self,
        out: &dyn Outbound,
        batch: &[QueueMessage],
    ) -> Result<usize, ActorProcessingErr> {
        let dir = &self.directory;
        let orders = parse_orders(batch);
        record_lag("orders", &orders);
        // One span per order, in the trace of the request that accepted it; each ends
        // when this batch is done with it.
        let spans: Vec<_> = orders
            .iter()
            .map(|o| start_order_span("consume_order", o.traceparent.as_deref(), &o.order_id))
            .collect();
        let claims = try_join_all(orders.iter().zip(&spans).map(|(o, cx)| async move {
            let _claim = start_child_span(cx, "inventory_claim");
            let product = ProductId::from_db(o.product_id);
            let order = OrderId::parse(&o.order_id).map_err(|e| e.to_string())?;
            dir.product_partition(product)
                .call(Claim { product, order })
                .await
                .map_err(|e| format!("claim: {e}"))
        }))
        .await?;
        try_join_all(
            orders
                .iter()
                .zip(&claims)
                .zip(&spans)
                .map(|((o, claimed), cx)| {
                    let status = if *claimed {
                        OrderStatus::Completed
                    } else {
                        OrderStatus::Cancelled
                    };
                    async move {
                        let _write = start_child_span(cx, "shard_write");
                        dir.shard(&o.user_id)
                            .call(InsertOrder {
                                order: o.clone(),
                                status,
                            })
                            .await
                            .map_err(|e| format!("shard write: {e}"))
                    }
                }),
        )
        .await?;
        let mut confirmations = Vec::new();
        for ((o, claimed), span) in orders.iter().zip(&claims).zip(&spans) {
            let outcome = if *claimed { "completed" } else { "cancelled" };
            metrics::counter!("flashsale_orders_persisted_total", "status" => outcome).increment(1);
            if !*claimed {
                tracing::warn!(order_id = %o.order_id, "order was released before it was persisted; recorded as cancelled");
                continue;
            }
            let mut confirmation = o.clone();
            confirmation.traceparent = traceparent_of(span).or_else(|| o.traceparent.clone());
            confirmations.push(confirmation);
        }
        // The batch's confirmations travel as one message.
        if !confirmations.is_empty() {
            let payload = serde_json::to_vec(&confirmations).expect("orders serialise");
            out.publish(&[(dir.notifications_queue.as_str(), payload.as_slice())])
                .await?;
        }
        Ok(orders.len())
    }
}

pub struct NotificationHandler {
    pub directory: Arc<Directory>,
    /// Where confirmations are POSTed, if anywhere.
    pub webhook: Option<Webhook>,
}

pub struct Webhook {
    pub client: reqwest::Client,
    pub url: String,
}

impl Webhook {
    async fn deliver(&self, order: &OrderMessage) -> Result<(), String> {
        let body = serde_json::json!({
            "type": "order.confirmed",
            "orderId": order.order_id,
            "userId": order.user_id,
            "productId": order.product_id,
            "quantity": order.quantity,
            "createdAt": crate::domain::rfc3339(order.created_at),
        });
        let r = self
            .client
            .post(&self.url)
            .header("Idempotency-Key", &order.order_id)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("webhook: {e}"))?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!("webhook answered {}", r.status()))
        }
    }
}

#[ractor::async_trait]
impl DeliveryHandler for NotificationHandler {
    async fn handle(
        &self,
        _out: &dyn Outbound,
        batch: &[QueueMessage],
    ) -> Result<usize, ActorProcessingErr> {
        let dir = &self.directory;
        let orders = parse_orders(batch);
        record_lag("notifications", &orders);
        let _spans: Vec<_> = orders
            .iter()
            .map(|o| {
                start_order_span(
                    "deliver_confirmation",
                    o.traceparent.as_deref(),
                    &o.order_id,
                )
            })
            .collect();
        let webhook = self.webhook.as_ref();
        // Delivered before it is recorded: a failed delivery is retried on redelivery.
        if let Some(hook) = webhook {
            try_join_all(orders.iter().map(|o| hook.deliver(o))).await?;
        }
        let channel = if webhook.is_some() { "webhook" } else { "log" };
        try_join_all(orders.iter().map(|o| async move {
            let order = OrderId::parse(&o.order_id).map_err(|e| e.to_string())?;
            dir.shard(&o.user_id)
                .call(RecordNotification {
                    order,
                    user: o.user_id.clone(),
                    channel: channel.into(),
                })
                .await
                .map_err(|e| format!("record notification: {e}"))
        }))
        .await?;
        if !orders.is_empty() {
            tracing::info!(count = orders.len(), "delivered order confirmations");
        }
        metrics::counter!("flashsale_notifications_delivered_total").increment(orders.len() as u64);
        Ok(orders.len())
    }
}
